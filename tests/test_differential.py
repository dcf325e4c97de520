"""The kernel program and the Python reference classifier agree.

Frames come from tests/strategies.py (hypothesis strategies and limit
sweeps). Every frame goes through the XDP program with BPF_PROG_TEST_RUN
and through nfguard.reference.classify(); the verdicts (reason, action,
would, user, realm, XDP return code) must be equal. The reference alone,
without a kernel, is tested in tests/test_reference.py.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings

from nfguard import consts, packets, reference
from nfguard.packets import ETH_P_IPV6, IPPROTO_UDP

from strategies import (
    DST_V4,
    DST_V6,
    L2L4,
    SETTINGS,
    SMALL_SCAN,
    SWEEP_BINDINGS,
    SWEEPS,
    Case,
    big_cases,
    build_frame,
    fragment_cases,
    junk_cases,
    now_ns,
    sip_cases,
    sweep_frames,
)


def apply_case(prog, case: Case, now: int) -> None:
    """Put the program in the state the case describes."""
    prog.configure(mode=case.mode, action=case.action, methods=case.methods,
                   fragments=case.fragments, ipv6_prefix=case.ipv6_prefix,
                   rate_limits=case.rate_limits)
    prog.set_ports(list(case.ports))
    prog.clear_bindings()
    prog.clear_floods()
    for cidr in prog.trusted():
        prog.remove_trusted(cidr)
    for cidr in case.trusted:
        prog.add_trusted(cidr)
    latest: dict[str, int] = {}  # the bound map, as the controller keeps it
    for user, realm, ip, off in case.bindings:
        prog.add_binding(user, realm, ip, expires_ns=now + off)
        latest[ip] = max(now + off, latest.get(ip, 0))
    prog.update_bound(latest.items())
    for ip, off in case.bans:
        prog.set_ban(ip, now + off)


def run_both(prog, case: Case, scan_max: int = consts.SCAN_MAX):
    now = now_ns()
    apply_case(prog, case, now)
    for _ in range(case.repeat):
        prog.test_run(case.frame)
    kernel = prog.test_run(case.frame)
    ref = case.reference_verdict(now, scan_max)
    return kernel, ref


def check(prog, case: Case, scan_max: int = consts.SCAN_MAX):
    kernel, ref = run_both(prog, case, scan_max)
    event(ref.reason)
    assert kernel == ref, f"kernel {kernel}\nreference {ref}\n{case!r}"
    return ref


# ---------------------------------------------------------------------------
# Kernel == reference
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_program(program):
    """A second load, compiled with a 1 KiB scan limit."""
    from nfguard.kernel.program import Program

    p = Program(cflags=[f"-DNFG_SCAN_MAX={SMALL_SCAN}"])
    yield p
    p.close()


@pytest.mark.kernel
@settings(max_examples=800, **SETTINGS)
@given(case=sip_cases())
def test_sip_messages(prog, case):
    check(prog, case)


@pytest.mark.kernel
@settings(max_examples=400, **SETTINGS)
@given(case=sip_cases(wild=True))
def test_wild_sip_messages(prog, case):
    check(prog, case)


@pytest.mark.kernel
@settings(max_examples=300, **SETTINGS)
@given(case=sip_cases(plain_frames=True))
def test_sip_messages_plain_frames(prog, case):
    check(prog, case)


@pytest.mark.kernel
@settings(max_examples=300, **SETTINGS)
@given(case=fragment_cases())
def test_fragments(prog, case):
    check(prog, case)


@pytest.mark.kernel
@settings(max_examples=300, **SETTINGS)
@given(case=junk_cases())
def test_junk(prog, case):
    check(prog, case)


@pytest.mark.kernel
@settings(max_examples=300, **SETTINGS)
@given(case=big_cases())
def test_small_scan_limit(small_program, case):
    check(small_program, case, SMALL_SCAN)


@pytest.mark.kernel
@pytest.mark.parametrize("sweep", SWEEPS)
def test_limit_sweeps(prog, sweep):
    """Each limit, on both sides of its boundary."""
    bad = []
    for name, k, frame in sweep_frames():
        if name != sweep:
            continue
        kernel, refv = run_both(prog, Case(frame=frame, bindings=SWEEP_BINDINGS))
        if kernel != refv:
            bad.append((k, kernel.reason, refv.reason, frame))
    assert not bad, "\n".join(f"{sweep} k={k}: kernel {kr}, reference {rr}\n  {f!r}"
                               for k, kr, rr, f in bad)


@pytest.mark.kernel
@pytest.mark.parametrize("version", [4, 6])
def test_fragments_and_frames(prog, version):
    """A table of frame-level cases, each in both fragment policies."""
    src, dst = ("192.0.2.10", DST_V4) if version == 4 else ("2001:db8::10", DST_V6)
    msg = packets.sip_request(user="evil")
    frames = packets.udp_fragments(msg, 200, src=src, dst=dst)
    frames += packets.udp_fragments(b"INVITE sip:x SIP/2.0\r\n\r\n" + b"b" * 300, 40,
                                    src=src, dst=dst)
    frames += packets.udp_fragments(b"REGISTER sip:x SIP/2.0\r\n\r\n" + b"b" * 300, 16,
                                    src=src, dst=dst)
    for payload in [b"\r\n\r\n", b"INV", b"INVITE sip:x", b"\r\nOPTIONS"]:
        frames.append(build_frame(payload, L2L4(version=version, src=src, frag="first")))
    for fragments in ["verdict", "pass"]:
        for frame in frames:
            kernel, refv = run_both(prog, Case(frame=frame, fragments=fragments))
            assert kernel == refv, (frame, fragments)


def two_fragment_headers(payload: bytes, m1: bool, m2: bool) -> bytes:
    """An IPv6 frame with two Fragment headers (offset 0), M flags m1, m2."""
    udp = packets.udp_datagram("2001:db8::10", DST_V6, payload)
    chain = packets.ipv6_frag(44, 0, m1) + packets.ipv6_frag(IPPROTO_UDP, 0, m2)
    return packets.ethernet(ETH_P_IPV6, packets.ipv6("2001:db8::10", DST_V6, 44, chain + udp))


@pytest.mark.kernel
@pytest.mark.parametrize("m1,m2", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("fragments", ["verdict", "pass"])
def test_two_fragment_headers(prog, m1, m2, fragments):
    """§1.4: a Fragment header "whose M flag makes a first fragment", any of
    them (the reference reads it so)."""
    for payload in [b"\r\n", b"INVITE sip:x SIP/2.0\r\nVia: x\r\n"]:
        kernel, refv = run_both(prog, Case(frame=two_fragment_headers(payload, m1, m2),
                                           fragments=fragments))
        assert kernel == refv, (payload, kernel, refv)


# ---------------------------------------------------------------------------
# The flood rows of the kernel table (bans, rate limits): kernel == reference
# ---------------------------------------------------------------------------
def _table_rows():
    from cases import CASES

    return [c for c in CASES if c.bans or c.before or "rate_limits" in c.config
            or "ipv6_prefix" in c.config]


def _ns(now: int, expires_in) -> int:
    return (1 << 64) - 1 if expires_in is None else now + int(expires_in * 1e9)


@pytest.mark.parametrize("row", _table_rows(), ids=lambda c: c.name)
def test_table_flood_rows(prog, row):
    from test_classifier_kernel import setup_case

    now = now_ns()
    setup_case(prog, row)  # runs row.before through the kernel
    kernel = prog.test_run(row.frame)
    cfg = {"mode": "enforce", "action": "drop", **row.config}
    prefix = cfg.get("ipv6_prefix", 64)
    limits = cfg.get("rate_limits")
    kw = dict(mode=cfg["mode"], action=cfg["action"], trusted=row.trusted,
              bindings=[(u, r, ip, _ns(now, e)) for u, r, ip, e in row.bindings],
              bans=[(ip, _ns(now, e)) for ip, e in row.bans], ipv6_prefix=prefix, now_ns=now,
              limiter=reference.RateLimiter(limits, prefix) if limits is not None else None)
    for f in row.before:
        reference.classify(f, **kw)
    ref = reference.classify(row.frame, **kw)
    assert (kernel.reason, kernel.action, kernel.would, kernel.retval) == \
        (ref.reason, ref.action, ref.would, ref.retval) == \
        (row.reason, *(row.expected()[k] for k in ("action", "would", "retval")))
