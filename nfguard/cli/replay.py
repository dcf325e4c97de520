"""`nfguard replay`: run every packet of a capture through the kernel program.

The capture is pcap or pcapng (Wireshark's default) of Ethernet frames. Each
frame goes through the real XDP classifier (a private load of
bpf/nfguard.c, nothing attached, nothing pinned) with BPF_PROG_TEST_RUN,
and one line per packet says what the program did and why. Bindings
(`--bindings FILE`) and trusted networks (`--trusted`) are put into the
program's maps first; expiries count from the start of the replay, not from
the capture's timestamps.

--mode, --action, --fragments, --methods, --ports and --trusted are checked
by nfguard.policy, like the config file's keys of the same names: the same
values are refused with the same words.

Bindings file (YAML), a list of:

    - user: "1001"
      realm: pbx.example.com
      ip: 203.0.113.7
      expires_in: 3600     # optional, seconds; 0 or negative: already expired

Scalars are read as written (`user: 0123` is the username "0123", not 83).
Errors name the entry by its 0-based index, like packet indices, and its line.

With --json each line is one object with exactly the keys index (0-based),
action, reason, src, user and realm, plus `would` in monitor mode (what
enforce mode would do). action is pass, drop or mark (reject mode).

Packets the kernel program cannot be run on faithfully are reported, not
run, with action null (and would null) and one of these reasons, which are
not reasons of the program (consts.REASONS):

- frame_too_large: BPF_PROG_TEST_RUN gives an XDP program at most about
  3.5 KB of linear data (one page less headroom and tailroom; the exact limit
  is probed at start). Older kernels refuse larger test frames; newer ones
  put the rest into fragments the program never reads, so its verdict would
  not be the one an attached program gives. Jumbo frames and reassembled
  datagrams in a capture (tcpdump on a host with GRO/GSO) hit this.
- capture_truncated: the capture holds fewer bytes than the packet had (the
  snaplen cut it); capture again with `tcpdump -s 0`.
- frame_too_short: fewer than 14 bytes, not even an Ethernet header.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import struct
import sys

from nfguard import policy
from nfguard.cli.common import stdout_to_devnull
from nfguard.errors import NfguardError
from nfguard.kernel.host import require_bpf_runtime
from nfguard.kernel.program import check_credential
from nfguard.pcap import PcapReader

BINDING_KEYS = ("user", "realm", "ip", "expires_in")

# Reasons replay gives for packets it does not run (see the module docstring).
FRAME_TOO_LARGE = "frame_too_large"
FRAME_TOO_SHORT = "frame_too_short"
CAPTURE_TRUNCATED = "capture_truncated"
REPLAY_REASONS = (FRAME_TOO_LARGE, FRAME_TOO_SHORT, CAPTURE_TRUNCATED)

_ETH_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
_ETH_MAX_STANDARD = 1522  # 1500 bytes of IP, Ethernet header, one tag, FCS


# -- arguments -------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Bindings file: a YAML list of {user, realm, ip} with optional expires_in\n"
        "(seconds, counted from the start of the replay; 0 or negative: expired).\n"
        "Packets over the BPF_PROG_TEST_RUN frame limit (about 3.5 KB) are reported\n"
        "with reason frame_too_large and action null instead of being run; packets\n"
        "cut by the capture's snaplen with capture_truncated."
    )
    parser.add_argument("--pcap", metavar="FILE",
                        help="capture of Ethernet frames, pcap or pcapng (required)")
    parser.add_argument("--bindings", metavar="FILE",
                        help="YAML list of {user, realm, ip[, expires_in]}")
    parser.add_argument("--trusted", metavar="CIDR", nargs="+", action="extend", default=[],
                        help="trusted network(s), e.g. 10.0.0.0/8 (repeatable)")
    parser.add_argument("--mode", default="enforce", metavar="enforce|monitor",
                        help="default: enforce")
    parser.add_argument("--action", default="drop", metavar="drop|reject",
                        help="verdict action in enforce mode (default: drop)")
    parser.add_argument("--methods", action="append", metavar="INVITE,...",
                        help="guarded SIP methods, comma-separated (default: INVITE)")
    parser.add_argument("--ports", action="append", metavar="5060,...",
                        help="guarded UDP ports, comma-separated (default: 5060)")
    parser.add_argument("--fragments", default="verdict", metavar="verdict|pass",
                        help="first fragments that do not prove the packet harmless "
                        "(default: verdict)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def checked(check, value):
    """check(value), a check of nfguard.policy (the config file's and the
    program's), its refusal named by the option: --methods: ..."""
    try:
        return check(value)
    except policy.PolicyError as e:
        raise NfguardError(f"--{e.key}: {e.problem}") from None


def _comma_list(values: list[str]) -> list[str]:
    out = []
    for v in values:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def parse_methods(values: list[str] | None) -> tuple[str, ...]:
    # as written: SIP method names are case-sensitive, and the config refuses "invite"
    return checked(policy.methods, ["INVITE"] if values is None else _comma_list(values))


def parse_ports(values: list[str] | None) -> tuple[int, ...]:
    items = ["5060"] if values is None else _comma_list(values)
    # numbers become ints; anything else goes to the check as written ('sip')
    ports = [int(p) if p.isascii() and p.isdigit() else p for p in items]
    return checked(policy.ports, ports)


def parse_trusted(values: list[str]) -> tuple[str, ...]:
    return checked(policy.trusted, values)


# -- bindings file ---------------------------------------------------------
def _yaml_problem(e) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return " ".join(f"{problem}{where}".split())


def load_bindings(path: str) -> list[dict]:
    """The bindings of a YAML file as dicts with user, realm, ip and
    expires_in (None: no expiry); NfguardError names the entry and problem."""
    try:
        import yaml
    except ImportError:
        raise NfguardError("--bindings needs PyYAML: apt install python3-yaml") from None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except IsADirectoryError:
        raise NfguardError(f"cannot read bindings file {path}: it is a directory") from None
    except OSError as e:
        raise NfguardError(f"cannot read bindings file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise NfguardError(f"bindings file {path} is not UTF-8 text") from None
    try:
        # compose, not load: scalars stay exactly as written ("0123" is not 83)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise NfguardError(f"bindings file {path} is not valid YAML: {_yaml_problem(e)}") from None
    expect = "expected a list of bindings, each a mapping with user, realm and ip"
    if root is None:
        raise NfguardError(f"bindings file {path} is empty: {expect}")
    if not isinstance(root, yaml.SequenceNode):
        kind = "a mapping" if isinstance(root, yaml.MappingNode) else f"{root.value!r}"
        raise NfguardError(f"bindings file {path}: {expect}, not {kind}")
    null = "tag:yaml.org,2002:null"
    out = []
    for i, node in enumerate(root.value):
        where = f"bindings file {path}: entry {i} (line {node.start_mark.line + 1})"
        if not isinstance(node, yaml.MappingNode):
            raise NfguardError(f"{where}: expected a mapping with user, realm and ip")
        entry: dict[str, str | None] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise NfguardError(f"{where}: keys must be plain words")
            key = knode.value
            if key not in BINDING_KEYS:
                raise NfguardError(
                    f"{where}: unknown key {key!r} (known: {', '.join(BINDING_KEYS)})"
                )
            if key in entry:
                raise NfguardError(f"{where}: key {key!r} appears twice")
            if not isinstance(vnode, yaml.ScalarNode):
                raise NfguardError(f"{where}: {key} must be a single value, not a list or mapping")
            entry[key] = None if vnode.tag == null else vnode.value
        for key in ("user", "realm", "ip"):
            if key not in entry:
                raise NfguardError(f"{where}: missing key {key!r}")
            if not entry[key]:
                raise NfguardError(f"{where}: {key} is empty")
        try:
            check_credential(entry["user"], entry["realm"])
        except ValueError as e:
            raise NfguardError(f"{where}: {e}") from None
        try:
            ip = str(ipaddress.ip_address(entry["ip"]))
        except ValueError:
            raise NfguardError(f"{where}: ip {entry['ip']!r} is not an IP address") from None
        expires_in = None
        raw = entry.get("expires_in")
        if raw is not None:
            try:
                expires_in = float(raw)
            except ValueError:
                expires_in = math.nan
            if not math.isfinite(expires_in):
                raise NfguardError(
                    f"{where}: expires_in must be a number of seconds, not {raw!r} "
                    "(leave it out for no expiry)"
                )
        out.append({"user": entry["user"], "realm": entry["realm"], "ip": ip,
                    "expires_in": expires_in})
    return out


# -- frames ----------------------------------------------------------------
def frame_source(frame: bytes) -> str | None:
    """Source address of an Ethernet frame carrying IPv4 or IPv6 (behind up
    to four VLAN tags), or None."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    for _ in range(4):
        if ethertype not in _ETH_VLAN_TPIDS:
            break
        if len(frame) < off + 4:
            return None
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if ethertype == _ETH_P_IP and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        return str(ipaddress.IPv4Address(frame[off + 12:off + 16]))
    if ethertype == _ETH_P_IPV6 and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        return str(ipaddress.IPv6Address(frame[off + 8:off + 24]))
    return None


def xdp_test_run_limit() -> int | None:
    """The largest frame BPF_PROG_TEST_RUN hands an XDP program whole (its
    linear data), found with a four-instruction program that returns
    data_end - data; None when that cannot be found out."""
    from nfguard.kernel.libbpf import BPF_PROG_TYPE_XDP, insn, load_raw, prog_test_run

    insns = (
        insn(0x61, 2, 1, 0)  # r2 = ctx->data
        + insn(0x61, 0, 1, 4)  # r0 = ctx->data_end
        + insn(0x1F, 0, 2)  # r0 -= r2
        + insn(0x95, 0, 0)  # exit
    )
    fd = load_raw(BPF_PROG_TYPE_XDP, b"nfg_len_probe", insns)
    if fd < 0:
        return None

    def seen(n: int) -> int | None:
        try:
            return prog_test_run(fd, bytes(n))[0]
        except NfguardError:
            return None

    try:
        big = 16384
        got = seen(big)
        if got is not None:
            return got if got < big else None  # None: no limit below 16 KiB
        lo, hi = 14, big  # older kernels refuse what does not fit: bisect
        if seen(lo) is None:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if seen(mid) is None:
                hi = mid
            else:
                lo = mid
        return lo
    finally:
        os.close(fd)


# -- running ---------------------------------------------------------------
def _result(index: int, src: str | None, monitor: bool, *, action, reason, would=None,
            user=None, realm=None, ts=0.0) -> dict:
    out = {"index": index, "action": action, "reason": reason, "src": src,
           "user": user, "realm": realm}
    if monitor:
        out["would"] = would
    out["_ts"] = ts
    return out


def _text_lines(results: list[dict]) -> list[str]:
    if not results:
        return []
    t0 = results[0]["_ts"]
    rows = []
    for r in results:
        act = r["action"] or "-"
        if "would" in r and r["would"] and r["would"] != r["action"]:
            act = f"{act} (would {r['would']})"
        cred = f"{r['user']}@{r['realm']}" if r["user"] is not None else "-"
        rows.append((str(r["index"]), f"+{r['_ts'] - t0:.6f}", r["src"] or "-", act,
                     r["reason"], cred))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    return [
        "  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1])]
                  + [row[c].ljust(widths[c]) for c in (2, 3, 4)] + [row[5]])
        for row in rows
    ]


def run(args: argparse.Namespace) -> int:
    if not args.pcap:
        raise NfguardError("replay needs --pcap FILE")
    mode = checked(policy.mode, args.mode)
    action = checked(policy.action, args.action)
    fragments = checked(policy.fragments, args.fragments)
    methods = parse_methods(args.methods)
    ports = parse_ports(args.ports)
    trusted = parse_trusted(args.trusted)
    bindings = load_bindings(args.bindings) if args.bindings else []
    reader = PcapReader(args.pcap)  # checks the file header before the compile
    try:
        require_bpf_runtime("replay")
        from nfguard.kernel.program import Program

        prog = Program()
        try:
            return _replay(prog, reader, args.json, mode, action, fragments, methods,
                           ports, trusted, bindings)
        finally:
            prog.close()
    finally:
        reader.close()


def _replay(prog, reader: PcapReader, as_json: bool, mode, action, fragments, methods,
            ports, trusted, bindings) -> int:
    try:
        prog.configure(mode=mode, action=action, methods=methods, fragments=fragments)
        prog.set_ports(ports)
        for cidr in trusted:
            prog.add_trusted(cidr)
        for b in bindings:
            prog.add_binding(b["user"], b["realm"], b["ip"], expires_in=b["expires_in"])
    except ValueError as e:
        raise NfguardError(str(e)) from None
    limit = xdp_test_run_limit()
    monitor = mode == "monitor"
    results: list[dict] = []

    def emit(r: dict) -> None:
        if as_json:
            r = {k: v for k, v in r.items() if k != "_ts"}
            sys.stdout.write(json.dumps(r) + "\n")
        else:
            results.append(r)

    try:
        try:
            for rec in reader.records():
                frame = rec.data
                src = frame_source(frame)
                skip = None
                if rec.truncated:
                    skip = CAPTURE_TRUNCATED
                elif len(frame) < 14:
                    skip = FRAME_TOO_SHORT
                elif limit is not None and len(frame) > limit:
                    skip = FRAME_TOO_LARGE
                if skip is None:
                    try:
                        v = prog.test_run(frame)
                    except NfguardError:
                        if limit is not None or len(frame) <= _ETH_MAX_STANDARD:
                            raise
                        skip = FRAME_TOO_LARGE
                if skip:
                    emit(_result(rec.index, src, monitor, action=None, reason=skip,
                                 ts=rec.timestamp))
                else:
                    emit(_result(rec.index, src, monitor, action=v.action, reason=v.reason,
                                 would=v.would, user=v.user, realm=v.realm,
                                 ts=rec.timestamp))
        finally:
            # what was replayed before a damaged record is still shown
            for line in _text_lines(results):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except BrokenPipeError:
        # `nfguard replay ... | head`: stop quietly
        stdout_to_devnull()
        return 0
    return 0
