"""The XDP classifier in the kernel (BPF_PROG_TEST_RUN), table-driven.

Each row of tests/cases.py is one named frame with its set-up (bindings,
trusted networks, ports, config) and the verdict the program must give:
reason, action, would, XDP return code, and the (user, realm) it looked up
where that applies. Every row also checks that exactly the counter of its
reason moved. The expectations follow docs/classifier.md; rows whose `note`
starts with SPEC-UNSAFE expect what docs/design.md §2 requires where the page
would let an INVITE with credentials reach FreeSWITCH unchecked.

Rows marked program="small" run on a second load of the program built with
-DNFG_SCAN_MAX=1024, to reach the scan limit with frames that
BPF_PROG_TEST_RUN accepts.
"""

from __future__ import annotations

import collections
import ctypes
import ipaddress
import time

import pytest

from nfguard import consts
from nfguard.kernel.program import NO_EXPIRY, boottime_ns

from cases import ANY, CASES, OTHER, OTHER6, SRC, Case, R, U, f_inv, frame, msg, pa
from conftest import need_kernel

pytestmark = pytest.mark.kernel

SMALL_CFLAGS = ["-DNFG_SCAN_MAX=1024"]
FRAME_LIMIT = 3500


def reset(p) -> None:
    """The state the conftest `prog` fixture gives, for any Program."""
    p.configure(mode="enforce", action="drop")
    p.set_ports([5060])
    p.clear_bindings()
    p.clear_floods()
    for cidr in p.trusted():
        p.remove_trusted(cidr)
    p.reset_counters()


@pytest.fixture(scope="module")
def small_program(program):
    """The classifier built with a 1 KiB scan buffer (loads in ~1.5 s)."""
    need_kernel()
    from nfguard.kernel.program import Program

    p = Program(cflags=SMALL_CFLAGS)
    yield p
    p.close()


@pytest.fixture
def small_prog(small_program):
    reset(small_program)
    return small_program


def setup_case(p, case: Case) -> None:
    cfg = {"mode": "enforce", "action": "drop", **case.config}
    p.configure(**cfg)
    if case.ports is not None:
        p.set_ports(list(case.ports))
    for cidr in case.trusted:
        p.add_trusted(cidr)
    now = boottime_ns()
    latest: dict[str, int] = {}  # the bound map, as the controller keeps it
    for user, realm, ip, expires_in in case.bindings:
        expires_ns = NO_EXPIRY if expires_in is None else now + int(expires_in * 1e9)
        p.add_binding(user, realm, ip, expires_ns=expires_ns)
        latest[ip] = max(expires_ns, latest.get(ip, 0))
    p.update_bound(latest.items())
    for ip, expires_in in case.bans:
        p.set_ban(ip, NO_EXPIRY if expires_in is None else now + int(expires_in * 1e9))
    for f in case.before:
        p.test_run(f)
    p.reset_counters()


def observed(v, case: Case) -> dict:
    out = {"reason": v.reason, "action": v.action, "would": v.would, "retval": v.retval}
    if case.user is not ANY:
        out["user"] = v.user
    if case.realm is not ANY:
        out["realm"] = v.realm
    return out


def expected(case: Case) -> dict:
    out = case.expected()
    if case.user is not ANY:
        out["user"] = case.user
    if case.realm is not ANY:
        out["realm"] = case.realm
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_classifier(case: Case, request):
    p = request.getfixturevalue("small_prog" if case.program == "small" else "prog")
    setup_case(p, case)
    v = p.test_run(case.frame)
    assert observed(v, case) == expected(case), case.note or case.name
    counts = p.counters()
    assert counts[case.reason] == 1, counts
    assert sum(counts.values()) == 1, {k: n for k, n in counts.items() if n}


# -- the table itself -----------------------------------------------------------
# Reasons no frame can produce: an internal failure of the program itself.
UNREACHABLE = {"tail_call_failed"}


def test_table_covers_every_reason():
    seen = {c.reason for c in CASES}
    missing = set(consts.REASONS) - UNREACHABLE - seen
    assert not missing


def test_table_frames_fit_test_run():
    too_big = [c.name for c in CASES if len(c.frame) > FRAME_LIMIT]
    assert not too_big


def test_table_names_unique():
    names = collections.Counter(c.name for c in CASES)
    assert [n for n, k in names.items() if k > 1] == []


# -- counters -------------------------------------------------------------------
def test_counters_count_each_reason(prog):
    """One frame per reason (the first default-build row of each, run with
    its own set-up but without resetting counters in between): every
    counter holds exactly how many frames got its reason."""
    firsts: dict[str, Case] = {}
    for c in CASES:
        if c.program == "default" and c.reason not in firsts and not c.bindings \
                and not c.trusted and c.ports is None and not c.config and not c.note \
                and not c.bans and not c.before:
            firsts[c.reason] = c
    want = collections.Counter()
    for _ in range(2):
        for reason, c in firsts.items():
            v = prog.test_run(c.frame)
            assert v.reason == reason, c.name
            want[reason] += 1
    # Reasons needing set-up: bound, trusted, expired, banned, rate_limited.
    prog.add_binding(U, R, SRC)
    prog.add_binding(U, R, OTHER, expires_in=-5)
    prog.add_trusted("203.0.113.0/24")
    prog.set_ban("203.0.113.77", NO_EXPIRY)  # inside the trusted network: the ban wins
    prog.set_ban("198.51.100.99", NO_EXPIRY)
    assert prog.test_run(f_inv(pa())).reason == "bound"
    assert prog.test_run(f_inv(pa(), src=OTHER)).reason == "expired"
    assert prog.test_run(f_inv(pa(), src="203.0.113.5")).reason == "trusted"
    assert prog.test_run(f_inv(src="203.0.113.77")).reason == "banned"
    assert prog.test_run(f_inv(src="198.51.100.99")).reason == "banned"
    prog.configure(mode="enforce", rate_limits={"invite": (0.001, 1)})
    assert prog.test_run(f_inv(src="198.51.100.98")).reason == "no_credentials"
    assert prog.test_run(f_inv(src="198.51.100.98")).reason == "rate_limited"
    want.update(["bound", "expired", "trusted", "banned", "banned", "no_credentials",
                 "rate_limited"])
    got = prog.counters()
    assert {k: n for k, n in got.items() if n} == dict(want)


def test_counters_accumulate_and_reset(prog):
    for _ in range(5):
        prog.test_run(f_inv(pa(), src=OTHER))
    for _ in range(3):
        prog.test_run(f_inv())
    got = prog.counters()
    assert got["not_bound"] == 5 and got["no_credentials"] == 3
    assert sum(got.values()) == 8
    prog.reset_counters()
    assert sum(prog.counters().values()) == 0


def test_counters_in_monitor_mode(prog):
    prog.configure(mode="monitor")
    v = prog.test_run(f_inv(pa(), src=OTHER))
    assert (v.action, v.would) == ("pass", "drop")
    assert prog.counters()["not_bound"] == 1


# -- events -----------------------------------------------------------------------
_event_sinks: dict[int, list] = {}


@pytest.fixture
def events(prog):
    """Verdict events of the session program, drained before the test."""
    sink = _event_sinks.get(id(prog))
    if sink is None:
        sink = _event_sinks[id(prog)] = []
        prog.open_events(sink.append)
    prog.configure(mode="enforce", action="drop", events_per_sec=100000)
    for _ in range(100):  # drain whatever earlier tests left in the ring
        n = len(sink)
        prog.poll_events(0)
        if len(sink) == n:
            break
    sink.clear()
    return sink


def run_and_poll(prog, sink, frame_):
    v = prog.test_run(frame_)
    prog.poll_events(100 if v.is_verdict else 0)
    return v


def test_event_not_bound_v4(prog, events):
    prog.add_binding(U, R, SRC)
    v = run_and_poll(prog, events, f_inv(pa(), src=OTHER))
    assert v.reason == "not_bound"
    assert len(events) == 1, events
    e = events[0]
    assert (e.src, e.sport, e.dport) == (OTHER, 5060, 5060)
    assert (e.reason, e.action, e.would) == ("not_bound", "drop", "drop")
    assert (e.user, e.realm) == (U, R)
    assert e.ts_ns > 0


def test_event_not_bound_v6_lower_cased(prog, events):
    fr = frame(msg('Proxy-Authorization: Digest username="AlIcE", realm="PBX.Example.COM"'),
               src=OTHER6, dport=5080)
    prog.set_ports([5060, 5080])
    v = run_and_poll(prog, events, fr)
    assert v.reason == "not_bound"
    assert len(events) == 1, events
    e = events[0]
    assert (e.src, e.dport) == (OTHER6, 5080)
    assert (e.user, e.realm, e.reason) == ("alice", "pbx.example.com", "not_bound")


def test_event_expired(prog, events):
    prog.add_binding(U, R, SRC, expires_in=-1)
    run_and_poll(prog, events, f_inv(pa()))
    assert [(e.src, e.user, e.realm, e.reason) for e in events] == [(SRC, U, R, "expired")]


def test_event_without_credentials(prog, events):
    run_and_poll(prog, events, f_inv(pa(), end="", src=OTHER))
    assert len(events) == 1, events
    e = events[0]
    assert (e.src, e.reason, e.user, e.realm) == (OTHER, "headers_truncated", None, None)


def test_event_monitor_and_reject(prog, events):
    prog.configure(mode="monitor", action="reject", events_per_sec=100000)
    run_and_poll(prog, events, f_inv(pa(), src=OTHER))
    prog.configure(mode="enforce", action="reject", events_per_sec=100000)
    run_and_poll(prog, events, f_inv(pa(), src=OTHER))
    assert [(e.reason, e.action, e.would) for e in events] == [
        ("not_bound", "pass", "mark"), ("not_bound", "mark", "mark")]


def test_no_event_for_passing_frames(prog, events):
    prog.add_binding(U, R, SRC)
    for fr in (f_inv(pa()), f_inv(src=OTHER), f_inv(pa(), method="REGISTER", src=OTHER),
               f_inv(pa(), src=OTHER, frame_kw={"dport": 5061})):
        v = prog.test_run(fr)
        assert not v.is_verdict, v
    prog.poll_events(50)
    assert events == []


def test_no_event_for_floods(prog, events):
    """Bans and rate limits drop floods: an event each would crowd the
    credential alerts out of the ring (the counters count them)."""
    prog.configure(mode="enforce", events_per_sec=100000, rate_limits={"invite": (0.001, 1)})
    prog.set_ban("203.0.113.50", NO_EXPIRY)
    reasons = [prog.test_run(f_inv(pa(), src="203.0.113.50")).reason,
               prog.test_run(f_inv(src=OTHER)).reason, prog.test_run(f_inv(src=OTHER)).reason]
    assert reasons == ["banned", "no_credentials", "rate_limited"]
    prog.poll_events(50)
    assert events == []
    run_and_poll(prog, events, f_inv(pa(), src=OTHER))  # the ring still works
    assert [e.reason for e in events] == ["not_bound"]


def test_no_event_when_disabled(prog, events):
    prog.configure(mode="enforce", action="drop", events_per_sec=0)
    v = prog.test_run(f_inv(pa(), src=OTHER))
    assert v.reason == "not_bound" and v.action == "drop"
    prog.poll_events(50)
    assert events == []


def test_events_rate_limited(prog, events):
    """At most events_per_sec events a second per CPU: a burst of 50
    verdicts with a limit of 5 sends only a handful."""
    prog.configure(mode="enforce", action="drop", events_per_sec=5)
    # The bucket is capped at the new rate on its next refill (one token per
    # 0.2 s at 5/s): let one come due, so that the burst below starts from
    # at most 5 tokens whatever the previous rate left.
    time.sleep(0.3)
    for _ in range(50):
        prog.test_run(f_inv(pa(), src=OTHER))
    prog.poll_events(100)
    assert 1 <= len(events) <= 10, len(events)


# -- a few properties across the table ---------------------------------------------
def test_verdicts_never_pass_in_enforce_drop(prog):
    """Every verdict row, re-run in enforce/drop, returns XDP_DROP."""
    for c in CASES:
        if c.program != "default" or not consts.is_verdict(c.reason) or c.config:
            continue
        reset(prog)
        setup_case(prog, c)
        v = prog.test_run(c.frame)
        if v.reason == c.reason:
            assert (v.action, v.retval) == ("drop", 1), c.name


def test_binding_removed_takes_effect(prog):
    prog.add_binding(U, R, SRC)
    assert prog.test_run(f_inv(pa())).reason == "bound"
    assert prog.remove_binding(U, R, SRC)
    assert prog.test_run(f_inv(pa())).reason == "not_bound"


def test_trusted_removed_takes_effect(prog):
    prog.add_trusted("198.51.100.0/24")
    assert prog.test_run(f_inv(pa(), src=OTHER)).reason == "trusted"
    prog.remove_trusted("198.51.100.0/24")
    assert prog.test_run(f_inv(pa(), src=OTHER)).reason == "not_bound"


def test_state_does_not_leak_between_frames(prog):
    """A long frame followed by a short one: bytes past the short payload
    (left from the long one) must not change the short one's verdict."""
    prog.add_binding(U, R, SRC)
    base = b"INVITE sip:x SIP/2.0\r\nVia: x\r\n"
    long_ = frame(base + b"\r\n" + b"body" * 300)
    short = frame(base)
    for _ in range(3):
        assert prog.test_run(long_).reason == "no_credentials"
        assert prog.test_run(short).reason == "headers_truncated"
        assert prog.test_run(f_inv(pa())).reason == "bound"


def test_fragment_state_does_not_leak(prog):
    """A first fragment, then unfragmented datagrams whose header section
    does not end: those are headers_truncated, not fragmented."""
    from cases import FRAG_LATE_CRED, frags

    for src in (OTHER, OTHER6):
        first = frags(FRAG_LATE_CRED, 256, src=src)[0]
        whole = frame(msg(pa(), end=""), src=src)
        for _ in range(2):
            assert prog.test_run(first).reason == "fragmented"
            assert prog.test_run(whole).reason == "headers_truncated"


def test_verdict_key_does_not_leak(prog):
    """(user, realm) of a verdict come from this frame's lookup only."""
    v = prog.test_run(f_inv(pa(), src=OTHER))
    assert (v.reason, v.user, v.realm) == ("not_bound", U, R)
    for fr in (f_inv(pa(), pa(), pa(), pa(), pa(), src=OTHER), f_inv(pa(), end="", src=OTHER),
               f_inv(src=OTHER), frame(msg(), src=OTHER6, ext_headers=[60] * 7)):
        v = prog.test_run(fr)
        assert (v.user, v.realm) == (None, None), v


# -- events, read raw from the ring buffer --------------------------------------------
# The same checks without Program.open_events()' decoding, so that the kernel
# side is tested on its own. They run on the small build's load, whose ring
# buffer nothing else reads. The layout is struct nfg_event
# (bpf/nfguard_structs.h).
class RawEvent(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("addr", ctypes.c_uint8 * 16),
        ("reason", ctypes.c_uint32),
        ("action", ctypes.c_uint32),
        ("would", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("user", ctypes.c_char * consts.USER_MAX),
        ("realm", ctypes.c_char * consts.REALM_MAX),
        ("stage", ctypes.c_uint8),
    ]


def _raw_decode(raw: bytes) -> dict:
    ev = RawEvent.from_buffer_copy(raw[: ctypes.sizeof(RawEvent)])
    a = bytes(ev.addr)
    src = (str(ipaddress.IPv4Address(a[12:])) if a[:12] == b"\0" * 10 + b"\xff\xff"
           else str(ipaddress.IPv6Address(a)))
    return {
        "src": src, "sport": ev.sport, "dport": ev.dport,
        "reason": consts.REASONS[ev.reason], "action": consts.ACT_NAMES[ev.action],
        "would": consts.ACT_NAMES[ev.would],
        "user": ev.user.decode() or None, "realm": ev.realm.decode() or None,
        **({"stage": ev.stage} if ev.stage != consts.JUDGE_XDP else {}),
    }


_raw_sinks: dict[int, list] = {}


@pytest.fixture
def raw_events(small_prog):
    p = small_prog
    sink = _raw_sinks.get(id(p))
    if sink is None:
        sink = _raw_sinks[id(p)] = []

        def cb(_ctx, data, size):
            sink.append(ctypes.string_at(data, size))

        p.bpf[b"events"].open_ring_buffer(cb)
    p.configure(mode="enforce", action="drop", events_per_sec=100000)
    p.bpf.ring_buffer_poll(0)
    sink.clear()
    return p, sink


def test_raw_event_not_bound_v4(raw_events):
    p, sink = raw_events
    p.add_binding(U, R, SRC)
    v = p.test_run(f_inv(pa(), src=OTHER))
    p.bpf.ring_buffer_poll(100)
    assert v.reason == "not_bound"
    assert [_raw_decode(r) for r in sink] == [{
        "src": OTHER, "sport": 5060, "dport": 5060, "reason": "not_bound", "action": "drop",
        "would": "drop", "user": U, "realm": R}]


def test_raw_event_not_bound_v6_lower_cased(raw_events):
    p, sink = raw_events
    p.set_ports([5080])
    p.test_run(frame(msg('Proxy-Authorization: Digest username="AlIcE", '
                         'realm="PBX.Example.COM"'), src=OTHER6, dport=5080, sport=40000))
    p.bpf.ring_buffer_poll(100)
    assert [_raw_decode(r) for r in sink] == [{
        "src": OTHER6, "sport": 40000, "dport": 5080, "reason": "not_bound", "action": "drop",
        "would": "drop", "user": "alice", "realm": "pbx.example.com"}]


def test_raw_event_expired_and_unparsable(raw_events):
    p, sink = raw_events
    p.add_binding(U, R, SRC, expires_in=-1)
    p.test_run(f_inv(pa()))
    p.test_run(f_inv("Proxy-Authorization: garbage", src=OTHER))
    p.bpf.ring_buffer_poll(100)
    got = [(e["src"], e["reason"], e["user"], e["realm"]) for e in map(_raw_decode, sink)]
    assert got == [(SRC, "expired", U, R), (OTHER, "credential_unparsable", None, None)]


def test_raw_event_monitor_and_reject(raw_events):
    p, sink = raw_events
    p.configure(mode="monitor", action="drop", events_per_sec=100000)
    p.test_run(f_inv(pa(), src=OTHER))
    p.configure(mode="enforce", action="reject", events_per_sec=100000)
    p.test_run(f_inv(pa(), src=OTHER))
    p.bpf.ring_buffer_poll(100)
    assert [(e["action"], e["would"]) for e in map(_raw_decode, sink)] == [
        ("pass", "drop"), ("mark", "mark")]


def test_raw_event_before_udp_has_no_ports(raw_events):
    """A verdict decided before the UDP header (ext_header_limit) has no
    ports; nothing of the previous packet may leak into its event."""
    p, sink = raw_events
    p.set_ports([5060, 5080])
    p.test_run(frame(msg(pa()), src=OTHER, sport=40000, dport=5080))
    v = p.test_run(frame(msg(), src=OTHER6, ext_headers=[60] * 7))
    p.bpf.ring_buffer_poll(100)
    assert v.reason == "ext_header_limit"
    got = [_raw_decode(r) for r in sink]
    assert got[-1] == {"src": OTHER6, "sport": 0, "dport": 0, "reason": "ext_header_limit",
                       "action": "drop", "would": "drop", "user": None, "realm": None}


def test_raw_no_event_for_passing_frames_or_when_disabled(raw_events):
    p, sink = raw_events
    p.add_binding(U, R, SRC)
    p.test_run(f_inv(pa()))
    p.test_run(f_inv(src=OTHER))
    p.configure(mode="enforce", action="drop", events_per_sec=0)
    assert p.test_run(f_inv(pa(), src=OTHER)).action == "drop"
    p.bpf.ring_buffer_poll(50)
    assert sink == []
