"""`nfguard selftest`: can nfguard work on this host? A checklist, each
failure with its fix, and a non-zero exit when anything required fails.

1. privileges, kernel version, BTF, the BPF filesystem, nftables;
2. kernel headers, and compiling and loading the classifier;
3. the rule table: crafted frames through the kernel program, each held
   to its expected reason and to the Python reference classifier;
4. a round trip in network namespaces: the real daemon, a fake FreeSWITCH
   Event Socket registering a phone, and INVITEs from the phone and from a
   foreign address over veth (nfguard.lab). The host's interfaces and
   ruleset are never touched.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from nfguard.cli.common import add_config_argument
from nfguard.errors import NfguardError

MIN_KERNEL = (5, 18)  # bpf_xdp_load_bytes() and bpf_xdp_get_buff_len()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--skip-netns", action="store_true",
                        help="leave out the network-namespace round trip")


class Checklist:
    def __init__(self):
        self.failed = 0

    def item(self, state: str, what: str, fix: str = "") -> None:
        print(f"  {state:<5} {what}" + (f"\n        fix: {fix}" if fix else ""), flush=True)
        if state == "FAIL":
            self.failed += 1


def _kernel_version() -> tuple[int, ...]:
    nums = []
    for part in platform.release().split("-")[0].split(".")[:2]:
        nums.append(int("".join(c for c in part if c.isdigit()) or 0))
    return tuple(nums)


# (name, frame builder, expected reason); bindings: 1001@pbx.example.com at
# 198.51.100.20 (live) and 1002@pbx.example.com there (expired)
def _rules():
    from nfguard import packets as P
    phone, other, v6 = "198.51.100.20", "203.0.113.66", "2001:db8::20"
    inv = P.sip_request

    def frame(payload, src=phone, **kw):
        return P.udp_frame(payload, src=src, dst="192.0.2.1" if ":" not in src
                           else "2001:db8::1", **kw)
    return [
        ("bound credentials pass", frame(inv()), "bound"),
        ("the same credentials from elsewhere", frame(inv(), src=other), "not_bound"),
        ("no credentials pass (the PBX challenges)", frame(inv(auth="")), "no_credentials"),
        ("REGISTER is never guarded", frame(inv("REGISTER")), "method_not_guarded"),
        ("other ports are not SIP", frame(b"x" * 40, dport=53), "port_not_guarded"),
        ("Authorization counts too", frame(inv(header="Authorization"), src=other),
         "not_bound"),
        ("bare LF line ends", frame(inv(eol="\n"), src=other), "not_bound"),
        ("an expired binding", frame(inv(user="1002")), "expired"),
        ("IPv6", frame(inv(), src=v6), "bound"),
        ("two VLAN tags", frame(inv(), vlans=(10, 20)), "bound"),
        ("a duplicated username is ambiguous",
         frame(inv(auth='Digest username="1001", username="1009", realm="pbx.example.com", '
                        'nonce="n", uri="sip:x", response="r"')), "credential_ambiguous"),
        ("a truncated header section", frame(inv().split(b"\r\n\r\n")[0]), "headers_truncated"),
    ], phone, v6


def _rule_table(check: Checklist) -> None:
    from nfguard import reference
    from nfguard.kernel.program import Program, boottime_ns

    rules, phone, v6 = _rules()
    prog = Program()
    try:
        prog.configure(mode="enforce", action="drop")
        prog.set_ports([5060])
        now = boottime_ns()
        bindings = [("1001", "pbx.example.com", ip, now + 3600 * 10**9) for ip in (phone, v6)]
        bindings.append(("1002", "pbx.example.com", phone, now - 10 * 10**9))
        for user, realm, ip, expires_ns in bindings:
            prog.add_binding(user, realm, ip, expires_ns=expires_ns)
        bad = []
        for name, fr, want in rules:
            got = prog.test_run(fr).reason
            ref, _ = reference.classify_reason(fr, bindings=bindings)
            if got != want or ref != want:
                bad.append(f"{name}: kernel {got}, reference {ref}, expected {want}")
    finally:
        prog.close()
    if prog.reject_handoff == "map":
        check.item("ok", "reject marks: this kernel refuses bpf_xdp_adjust_meta, so XDP "
                   "hands them to the TC program through a map")
    else:
        check.item("ok", "reject marks: XDP hands them to the TC program as metadata")
    if bad:
        check.item("FAIL", f"rule table: {len(bad)} of {len(rules)} rules wrong: "
                   + "; ".join(bad), "report this: the kernel program and the spec disagree")
    else:
        check.item("ok", f"rule table: {len(rules)} rules in the kernel "
                   "(BPF_PROG_TEST_RUN), each equal to the reference classifier")


def _round_trip(check: Checklist) -> None:
    from nfguard.lab.fakeesl import register_frame
    from nfguard.lab.pbx import REALM
    from nfguard.lab.world import ADDR, USER, Lab
    from nfguard.packets import sip_request

    t0 = time.monotonic()
    with Lab(prefix="nfgself") as lab:
        lab.write_config(mode="enforce", action="drop")
        lab.start_daemon()
        lab.call(lab.esl.push(register_frame(USER, REALM, ADDR["phone"], 5060, "self-1")))
        lab.until(lambda st: st["bindings"]["bpf"] == 1 and st["bindings"]["nft"] == 1, 10,
                  "the registration in the kernel and nft")
        invite = sip_request("INVITE", user=USER, realm=REALM)
        for who, dst in (("phone", ADDR["pbx1"]), ("attacker", ADDR["pbx2"])):
            with lab.udp(who) as s:
                s.sendto(invite, (dst, 5060))
                s.sendto(sip_request("REGISTER", user=USER, realm=REALM), (dst, 5060))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(
                [r for r in lab.pbx.received if r.method == "REGISTER"]) < 2:
            time.sleep(0.02)
        got = {r.src for r in lab.pbx.received if r.method == "INVITE"}
        synced_after, bound = lab.synced_after, lab.sync_bound
    if got == {ADDR["phone"]}:
        check.item("ok", "namespace round trip: daemon, Event Socket, XDP on veth: the "
                   "phone's INVITE arrived, the attacker's was dropped "
                   f"({time.monotonic() - t0:.1f} s; the daemon synced after "
                   f"{synced_after:.1f} s of at most {bound:.0f})")
    else:
        check.item("FAIL", f"namespace round trip: INVITEs arrived from {sorted(got)}, "
                   f"expected only {ADDR['phone']}", "run the test suite to find which part")


def _interfaces(check: Checklist, config_path: str) -> None:
    """The config's interfaces as the kernel has them: generic XDP is a
    warning, with the kernel's reason for refusing native mode where the
    daemon kept it. Never attaches anything itself: trying native mode on
    an operator's NIC can reset its link."""
    from nfguard.cli.common import socket_path
    from nfguard.cli.status import xdp_mode_text
    from nfguard.daemon import control
    from nfguard.daemon.config import ConfigError, load_config
    from nfguard.daemon.status import interface_status

    if not os.path.exists(config_path):
        check.item("skip", f"interfaces: no config at {config_path}")
        return
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        check.item("warn", f"interfaces: the config cannot be read: {e}",
                   "`nfguard run` refuses it too: fix it first")
        return
    try:
        rows = control.request(socket_path(config_path), "status", timeout=5)["interfaces"]
    except NfguardError:
        rows = interface_status(cfg)  # the daemon is down: the kernel alone
    for row in rows:
        where = row["name"] + (f" (netns {row['netns']})" if row["netns"] else "")
        if row.get("error"):
            check.item("warn", f"interface {where}: {row['error']}")
        elif not row["nfguard_xdp"]:
            check.item("warn", f"interface {where}: nfguard is not attached",
                       "start the daemon (systemctl start nfguard)")
        elif row["xdp"]["mode"] == "generic":
            check.item("warn", f"interface {where}: XDP {xdp_mode_text(row)}",
                       "a driver with native XDP, or (veth) an MTU that fits one page")
        else:
            check.item("ok", f"interface {where}: XDP {row['xdp']['mode']}")


def run(args: argparse.Namespace) -> int:
    from nfguard.kernel import host
    from nfguard.kernel.host import can_load_bpf, effective_caps

    check = Checklist()
    print("nfguard selftest")
    caps = effective_caps()
    root = bool(caps >> host.CAP_NET_ADMIN & 1) and can_load_bpf(caps)
    check.item("ok" if root else "FAIL", "privileges: CAP_NET_ADMIN and CAP_BPF"
               if root else "privileges: not root", "" if root else "run it as root (sudo)")
    ver = _kernel_version()
    good = ver >= MIN_KERNEL
    check.item("ok" if good else "FAIL", f"kernel {platform.release()} "
               f"({'>=' if good else '<'} {MIN_KERNEL[0]}.{MIN_KERNEL[1]})",
               "" if good else "Debian 12 ships 6.1: install linux-image-amd64")
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    check.item("ok" if btf else "warn", "BTF (/sys/kernel/btf/vmlinux)" if btf else
               "no BTF: nfguard does not need it, bpftool's map dumps are plainer")
    try:
        host.ensure_bpffs("/sys/fs/bpf")
        check.item("ok", "BPF filesystem on /sys/fs/bpf")
    except NfguardError as e:
        check.item("FAIL", f"BPF filesystem: {e}", "mount -t bpf bpf /sys/fs/bpf")
    try:
        import nftables
        n = nftables.Nftables()
        n.set_json_output(True)
        rc, _, err = n.json_cmd({"nftables": [{"list": {"tables": {}}}]})
        if rc:
            raise NfguardError(err.strip())
        check.item("ok", "nftables (libnftables JSON API)")
    except (ImportError, NfguardError) as e:
        check.item("FAIL", f"nftables: {e}", "apt install nftables python3-nftables")
    try:
        headers = host.require_headers()
        check.item("ok", f"kernel headers: {headers}")
    except NfguardError as e:
        check.item("FAIL", f"kernel headers: {e}",
                   f"apt install linux-headers-{platform.release()}")
    compiled = False
    if root:
        try:
            from nfguard.kernel.program import Program
            from nfguard.lab.world import note_compile

            t0 = time.monotonic()
            Program().close()
            compiled = True
            note_compile(time.monotonic() - t0)  # the round trip's wait scales with it
            check.item("ok", f"compile and load the classifier (bcc, verifier) in "
                       f"{time.monotonic() - t0:.1f} s")
        except NfguardError as e:
            check.item("FAIL", f"compile and load: {e}",
                       "apt install python3-bpfcc, and the headers above")
    if compiled:
        _rule_table(check)
        if args.skip_netns:
            check.item("skip", "namespace round trip (--skip-netns)")
        else:
            try:
                _round_trip(check)
            except NfguardError as e:
                check.item("FAIL", f"namespace round trip: {e}",
                           "check that iproute2 and network namespaces are available")
    else:
        check.item("skip", "rule table and namespace round trip (need the compile)")
    if root:
        _interfaces(check, args.config)
    print("result: " + ("all good" if not check.failed else f"{check.failed} failed"))
    return 1 if check.failed else 0
