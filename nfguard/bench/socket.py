"""`nfguard bench socket`: ns per datagram of the socket stage (the
cgroup_skb ingress program of bpf/nfguard.c) under BPF_PROG_TEST_RUN with
repeat, next to a bare cgroup_skb program that lets everything through,
measured in the same run, and to the XDP program on the same frame.

What a host pays: every datagram of every socket in the attached cgroup
meets the interface check; a datagram XDP judged whole costs the note's
lookup and decrement; only the datagrams XDP could not judge whole (GSO
segments, reassembled first fragments) are judged here in full. Like
`bench xdp`, each case's frame is checked first for the reason it is named
for, the process is pinned to one CPU and each figure is the best of
--rounds rounds (the median of --loads loads).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from nfguard import packets
from nfguard.bench.xdp import (
    ATTACKER_IP,
    PHONE_IP,
    REALM,
    USER,
    _configured,
    _Pinned,
    best_of,
    worst_case_invite,
)
from nfguard.errors import NfguardError

LO = 1  # the test runs' receiving interface
NO_SUCH_IFINDEX = (1 << 31) - 1

_BARE_ALLOW = b"""
int bare_allow(struct __sk_buff *skb)
{
\treturn 1;
}
"""


def socket_cases() -> list[tuple[str, bytes, str | None]]:
    """(name, frame, the reason the socket stage must give; None: it must
    leave the datagram alone)."""
    sip = packets.sip_request
    bound = packets.udp_frame(sip("INVITE", USER, REALM), src=PHONE_IP)
    return [
        ("other_interface", bound, None),
        ("non_sip_udp", packets.udp_frame(b"\x00" * 48, src=PHONE_IP, sport=40000, dport=53),
         None),
        ("noted_by_xdp", bound, None),
        ("register", packets.udp_frame(sip("REGISTER", USER, REALM), src=PHONE_IP),
         "method_not_guarded"),
        ("invite_no_auth", packets.udp_frame(sip("INVITE", USER, REALM, auth=""),
                                             src=PHONE_IP), "no_credentials"),
        ("invite_bound", bound, "bound"),
        ("invite_foreign", packets.udp_frame(sip("INVITE", USER, REALM), src=ATTACKER_IP),
         "not_bound"),
        ("invite_worst_case", worst_case_invite(PHONE_IP), "bound"),
    ]


def _interfaces_for(name: str) -> list[int]:
    return [NO_SUCH_IFINDEX] if name == "other_interface" else [LO]


def _check(prog, cases) -> None:
    for name, frame, reason in cases:
        prog.set_socket_interfaces(_interfaces_for(name))
        prog.forget_in_flight()
        if name == "noted_by_xdp":
            prog.test_run(frame)
        v = prog.socket_test_run(frame, ifindex=LO)
        got = v.reason if v else None
        if got != reason:
            raise NfguardError(f"bench case {name}: the socket stage says {got}, expected "
                               f"{reason}; the figure would not measure what it is named for")


def bench_socket(repeat: int, rounds: int, loads: int) -> dict:
    from nfguard.kernel.host import require_bpf_runtime

    require_bpf_runtime("bench socket")
    from bcc import BPF

    from nfguard.kernel.libbpf import skb_test_run
    from nfguard.kernel.program import Program

    cases = socket_cases()
    bare = None
    per_load: list[dict[str, int]] = []
    try:
        try:
            bare = BPF(text=_BARE_ALLOW)
            bare_fd = bare.load_func(b"bare_allow", BPF.CGROUP_SKB).fd
        except Exception as e:  # bcc raises bare Exception
            raise NfguardError(f"compiling the bare cgroup_skb program failed: {e}") from e
        for _ in range(loads):
            prog = _configured(Program(count_all=False, socket_stage=True))
            try:
                _check(prog, cases)

                def timed(name, frame, p=prog):
                    p.set_socket_interfaces(_interfaces_for(name))
                    p.forget_in_flight()
                    if name == "noted_by_xdp":
                        p.time_run(frame, repeat)  # one note a run
                    return p.socket_time_run(frame, repeat, ifindex=LO)

                fns: dict[str, Callable[[], int]] = {
                    "bare_allow": lambda: skb_test_run(bare_fd, cases[0][1], ifindex=LO,
                                                       repeat=repeat)[2],
                }
                for name, frame, _ in cases:
                    fns[name] = lambda n=name, f=frame: timed(n, f)
                    fns[f"xdp:{name}"] = lambda f=frame, p=prog: p.time_run(f, repeat)
                with _Pinned():
                    per_load.append(best_of(fns, rounds))
            finally:
                prog.close()
    finally:
        if bare is not None:
            bare.cleanup()
    best = {name: statistics.median_low(run[name] for run in per_load)
            for name in per_load[0]}
    bare_ns = best["bare_allow"]
    return {
        "bare_allow_ns": bare_ns,
        "cases": {
            name: {"ns": best[name], "ratio": round(best[name] / bare_ns, 2),
                   "xdp_ns": best[f"xdp:{name}"]}
            for name, _, _ in cases
        },
    }


def print_socket(result: dict, repeat: int, rounds: int, loads: int) -> None:
    of_loads = f", median of {loads} loads" if loads > 1 else ""
    print(f"socket stage cost per datagram (BPF_PROG_TEST_RUN, best of {rounds} x {repeat} "
          f"runs{of_loads}, one CPU); XDP on the same frame for comparison")
    print(f"  {'bare_allow':<18} {result['bare_allow_ns']:>6} ns   1.00x")
    for name, c in result["cases"].items():
        print(f"  {name:<18} {c['ns']:>6} ns  {c['ratio']:5.2f}x   (XDP {c['xdp_ns']} ns)")
