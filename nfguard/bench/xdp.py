"""`nfguard bench [TARGET]`: measure nfguard's costs.

Targets (one function each in TARGETS; `xdp` is the default):

- sync: 100,000 bindings into the map and nft sets, and registration to
  enforcement latency at 1,000 registrations a second (nfguard/bench/sync.py).
- esl: FreeSWITCH events parsed per second and a resync of 100,000
  registrations into the registry (nfguard/bench/esl.py).
- mirror: the ESL load of keeping the mirror exact at 1,000 registrations
  a second, and the lag of a move (nfguard/bench/mirror.py; --rounds is
  the seconds of events per traffic mix).
- attack: the real FreeSWITCH under INVITE floods and a REGISTER brute
  force while a bound phone calls, without and with nfguard
  (nfguard/bench/attack.py; its own --calls and --seconds).
- guard: FreeSWITCH's CPU per call without and with the FreeSWITCH-side
  guard (nfguard/bench/guard.py; its own --guard-calls and --guard-rounds).

- socket: ns per datagram of the socket stage, next to a bare cgroup_skb
  program and XDP on the same frames (nfguard/bench/socket.py).
- xdp: ns per packet of the XDP classifier under BPF_PROG_TEST_RUN with
  repeat, for a set of typical and worst-case frames, next to a bare XDP_PASS
  program measured in the same run (docs/design.md section 7: non-SIP UDP within
  1.2x of bare XDP_PASS; the worst-case 1,400-byte INVITE <= 500 ns).

The process is pinned to one CPU while measuring and each figure is the best
of several rounds: the machine is shared and noisy, the minimum is the
program's cost. Before timing, each case's frame is run once and must get
its expected reason, so a figure always measures the path it is named for.

Each load of the program lands the JIT image at a random offset (the kernel
randomises it against JIT spraying), and code alignment moves the worst case
by up to ~20 ns between loads of the same code. `--loads N` loads the
program N times and reports the median of the per-load figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

from nfguard import packets, policy
from nfguard.bench import attack, guard
from nfguard.bench.esl import bench_esl, print_esl
from nfguard.bench.mirror import bench_mirror, print_mirror
from nfguard.bench.sync import bench_sync, print_sync
from nfguard.errors import NfguardError

DEFAULT_REPEAT = 100_000
DEFAULT_ROUNDS = 5
DEFAULT_LOADS = 1

# The bound user's address; every other source is foreign. BANNED_IP is one
# of BANS banned sources; LIMITED_IP has run past its INVITE bucket.
PHONE_IP = "198.51.100.20"
ATTACKER_IP = "203.0.113.66"
BANNED_IP = "203.0.113.99"
LIMITED_IP = "203.0.113.77"
BANS = 1000
USER, REALM = "1001", "pbx.example.com"

_BARE_PASS = b"""
int bare_pass(struct xdp_md *ctx)
{
\treturn XDP_PASS;
}
"""


# -- frames ----------------------------------------------------------------
WORST_CASE_FRAME_LEN = 1400


def worst_case_invite(src: str = PHONE_IP, length: int = WORST_CASE_FRAME_LEN) -> bytes:
    """An INVITE frame of exactly `length` bytes whose header section fills
    it, padded with the headers a real call carries through proxies, and
    with the Proxy-Authorization header last before the empty line: every
    line is scanned before the credential is found."""
    target = f"sip:1002@{REALM}"
    head = [
        f"INVITE {target} SIP/2.0",
        f"Via: SIP/2.0/UDP {src}:5060;rport;branch=z9hG4bK-524287-1---d6a9b8c3f1e2a4b5",
        "Via: SIP/2.0/UDP 10.20.30.40:5070;received=10.20.30.40;branch=z9hG4bK3f9a.7e1c0a2b.0",
        "Record-Route: <sip:10.20.30.40:5070;lr;ftag=as6b9d1e2f>",
        "Record-Route: <sip:172.16.8.2;transport=udp;lr;r2=on;ftag=as6b9d1e2f>",
        "Max-Forwards: 67",
        f'From: "Alice Example" <sip:{USER}@{REALM}>;tag=as6b9d1e2f',
        f"To: <{target}>",
        "Call-ID: 3c26700d5b2d-7fj1qbhp3iw8@192.0.2.55",
        "CSeq: 102 INVITE",
        f"Contact: <sip:{USER}@{src}:5060;ob>",
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, "
        "INFO, UPDATE, PRACK",
        "Supported: replaces, path, timer, eventlist, 100rel, norefersub",
        "Allow-Events: talk, hold, conference, refer, check-sync",
        "Accept: application/sdp",
        "User-Agent: Yealink SIP-T54W 96.86.0.100 00:15:65:aa:bb:cc",
        f'P-Asserted-Identity: "Alice Example" <sip:{USER}@{REALM}>',
        "Session-Expires: 1800;refresher=uac",
        "Content-Type: application/sdp",
        "Content-Length: 0",
    ]
    auth = (
        f'Proxy-Authorization: Digest username="{USER}", realm="{REALM}", '
        'nonce="b9e2a4c6-6f1d-11ef-9a2b-0242ac120002", '
        f'uri="{target}", response="5c1d7f0e3b9a2c4d6e8f0a1b2c3d4e5f", algorithm=MD5, '
        'cnonce="0a4f113b9c8d7e6f", qop=auth, nc=00000001'
    )
    overhead = len(packets.udp_frame(b"", src=src))
    pad_name = "P-Charging-Vector: icid-value="
    fixed = len("\r\n".join(head + [pad_name, auth]) + "\r\n\r\n")
    pad = length - overhead - fixed
    if pad < 8:
        raise ValueError(f"a worst-case INVITE needs at least {length - pad + 8} bytes")
    # one more realistic header, sized to land exactly on `length`
    icid = ("4a6f1c3e9b2d" * 200)[:pad]
    lines = head + [pad_name + icid, auth]
    frame = packets.udp_frame(("\r\n".join(lines) + "\r\n\r\n").encode(), src=src)
    assert len(frame) == length, len(frame)
    return frame


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    reason: str  # what the program must say about frame


def xdp_cases() -> list[Case]:
    sip = packets.sip_request
    return [
        Case("non_sip_udp", packets.udp_frame(b"\x00" * 48, src=PHONE_IP, sport=40000,
                                              dport=53), "port_not_guarded"),
        Case("register", packets.udp_frame(sip("REGISTER", USER, REALM), src=PHONE_IP),
             "method_not_guarded"),
        Case("invite_no_auth", packets.udp_frame(sip("INVITE", USER, REALM, auth=""),
                                                 src=PHONE_IP), "no_credentials"),
        Case("invite_bound", packets.udp_frame(sip("INVITE", USER, REALM), src=PHONE_IP),
             "bound"),
        Case("invite_foreign", packets.udp_frame(sip("INVITE", USER, REALM), src=ATTACKER_IP),
             "not_bound"),
        # bound: the full scan, the lookup that succeeds and the pass path
        # cost a little more than the foreign verdict (rate-limited events)
        Case("invite_worst_case", worst_case_invite(PHONE_IP), "bound"),
        # dropped before the payload is read (docs/design.md §7: <= 3x bare)
        Case("banned_source", packets.udp_frame(sip("INVITE", USER, REALM), src=BANNED_IP),
             "banned"),
        Case("rate_limited", packets.udp_frame(sip("INVITE", USER, REALM, auth=""),
                                               src=LIMITED_IP), "rate_limited"),
    ]


def check_cases(prog, cases: list[Case]) -> None:
    """Raise unless the program gives each case's frame its expected reason."""
    _fill_bucket(prog, cases)
    for c in cases:
        v = prog.test_run(c.frame)
        if v.reason != c.reason:
            raise NfguardError(
                f"bench case {c.name}: the program says {v.reason}, expected {c.reason}; "
                "the figure would not measure what it is named for"
            )


# -- measuring -------------------------------------------------------------
class _Pinned:
    """Run on one CPU until exit: the highest-numbered one allowed (CPU 0
    tends to take more of the housekeeping interrupts)."""

    def __enter__(self):
        self.saved = os.sched_getaffinity(0)
        cpu = max(self.saved)
        os.sched_setaffinity(0, {cpu})
        self.cpu = cpu
        return self

    def __exit__(self, *exc):
        os.sched_setaffinity(0, self.saved)


def best_of(fns: dict[str, Callable[[], int]], rounds: int) -> dict[str, int]:
    """Minimum of each measurement over rounds, interleaved so a noisy
    moment hits every figure alike."""
    best: dict[str, int] = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            ns = fn()
            if ns > 0:
                best[name] = min(best.get(name, ns), ns)
    for name in fns:
        if name not in best:
            raise NfguardError(
                f"BPF_PROG_TEST_RUN reported 0 ns for {name}: raise --repeat"
            )
    return best


def bench_xdp(repeat: int, rounds: int, loads: int = DEFAULT_LOADS) -> dict:
    from nfguard.kernel.host import require_bpf_runtime

    require_bpf_runtime("bench xdp")
    from bcc import BPF

    from nfguard.kernel.libbpf import prog_test_run
    from nfguard.kernel.program import Program

    # What is timed is the program as attached (count_all=False: traffic to
    # other ports is not counted); a twin that counts everything checks
    # first that every case gets the reason it is meant to measure.
    checker = None
    bare = None
    per_load: list[dict[str, int]] = []
    try:
        try:
            bare = BPF(text=_BARE_PASS)
            bare_fd = bare.load_func(b"bare_pass", BPF.XDP).fd
        except Exception as e:  # bcc raises bare Exception
            raise NfguardError(f"compiling the bare XDP_PASS program failed: {e}") from e
        checker = _configured(Program(count_all=True))
        cases = xdp_cases()
        check_cases(checker, cases)
        checker.close()  # only one nfguard program loaded while timing
        checker = None
        for _ in range(loads):
            prog = _configured(Program(count_all=False))
            try:
                _fill_bucket(prog, cases)
                fns: dict[str, Callable[[], int]] = {
                    "bare_pass": lambda: prog_test_run(bare_fd, cases[0].frame,
                                                       repeat=repeat)[1],
                }
                for c in cases:
                    fns[c.name] = lambda f=c.frame, p=prog: p.time_run(f, repeat)
                with _Pinned():
                    per_load.append(best_of(fns, rounds))
            finally:
                prog.close()
    finally:
        if checker is not None:
            checker.close()
        if bare is not None:
            bare.cleanup()
    # median_low: a figure one load really measured
    best = {name: statistics.median_low(run[name] for run in per_load)
            for name in per_load[0]}
    bare_ns = best["bare_pass"]
    return {
        "bare_pass_ns": bare_ns,
        "cases": {
            c.name: {"ns": best[c.name], "ratio": round(best[c.name] / bare_ns, 2)}
            for c in cases
        },
    }


def _configured(prog):
    """As the daemon configures it: the default rate limits, the phone's
    binding and its address in the bound map, and BANS bans."""
    from nfguard.kernel.program import NO_EXPIRY

    prog.configure(mode="enforce", action="drop", methods=["INVITE"],
                   rate_limits=policy.DEFAULT_RATE_LIMITS)
    prog.set_ports([5060])
    prog.add_binding(USER, REALM, PHONE_IP)
    prog.update_bound([(PHONE_IP, NO_EXPIRY)])
    for i in range(BANS - 1):
        prog.set_ban(f"10.{i >> 8 & 255}.{i & 255}.1", NO_EXPIRY)
    prog.set_ban(BANNED_IP, NO_EXPIRY)
    return prog


def _fill_bucket(prog, cases: list[Case]) -> None:
    """Run LIMITED_IP past its burst, so that its case is limited from the
    first timed run on."""
    limited = next(c.frame for c in cases if c.name == "rate_limited")
    _, burst = policy.DEFAULT_RATE_LIMITS["invite"]
    prog.time_run(limited, burst + 1)


def _print_xdp(result: dict, repeat: int, rounds: int, loads: int) -> None:
    of_loads = f", median of {loads} loads" if loads > 1 else ""
    print(f"XDP cost per packet (BPF_PROG_TEST_RUN, best of {rounds} x {repeat} runs"
          f"{of_loads}, one CPU)")
    print(f"  {'bare_pass':<18} {result['bare_pass_ns']:>6} ns   1.00x")
    for name, c in result["cases"].items():
        print(f"  {name:<18} {c['ns']:>6} ns  {c['ratio']:5.2f}x")


def _bench_socket(repeat: int, rounds: int, loads: int) -> dict:
    from nfguard.bench.socket import bench_socket  # imports this module's helpers

    return bench_socket(repeat, rounds, loads)


def _print_socket(result: dict, repeat: int, rounds: int, loads: int) -> None:
    from nfguard.bench.socket import print_socket

    print_socket(result, repeat, rounds, loads)


# target -> (measure(repeat, rounds, loads) -> dict,
#            print(result, repeat, rounds, loads))
TARGETS: dict[str, tuple[Callable[[int, int, int], dict],
                         Callable[[dict, int, int, int], None]]] = {
    "xdp": (bench_xdp, _print_xdp),
    "esl": (bench_esl, print_esl),
    "sync": (bench_sync, print_sync),
    "mirror": (bench_mirror, print_mirror),
    "socket": (_bench_socket, _print_socket),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default="xdp", metavar="TARGET",
                        help=f"what to measure: {', '.join(TARGETS)}, attack, guard "
                             "(default: xdp)")
    parser.add_argument("--repeat", default=str(DEFAULT_REPEAT), metavar="N",
                        help=f"runs per measurement (default: {DEFAULT_REPEAT})")
    parser.add_argument("--rounds", default=str(DEFAULT_ROUNDS), metavar="N",
                        help=f"rounds, the best is kept (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--loads", default=str(DEFAULT_LOADS), metavar="N",
                        help="load the program N times and report the median "
                             f"(JIT placement differs per load; default: {DEFAULT_LOADS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    attack.add_arguments(parser)
    guard.add_arguments(parser)


def _positive(option: str, value: str) -> int:
    if not str(value).isdigit() or int(value) < 1:
        raise NfguardError(f"{option} must be a positive whole number, not {value!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    if args.target == "attack":
        return attack.run(args)
    if args.target == "guard":
        return guard.run(args)
    if args.target not in TARGETS:
        raise NfguardError(
            f"unknown bench target {args.target!r} (known: {', '.join(TARGETS)}, attack, guard)"
        )
    repeat = _positive("--repeat", args.repeat)
    rounds = _positive("--rounds", args.rounds)
    loads = _positive("--loads", args.loads)
    if repeat > 1 << 31:
        raise NfguardError("--repeat must be below 2^31")
    measure, show = TARGETS[args.target]
    result = measure(repeat, rounds, loads)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        show(result, repeat, rounds, loads)
    return 0
