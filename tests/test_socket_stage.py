"""The socket stage (cgroup_skb ingress, bpf/nfguard.c) in the kernel: the
datagram a socket receives, reassembled or one segment of a GSO
super-packet, judged with the XDP program's scanner, maps, reasons and
counters; what XDP judged whole left alone (BPF_PROG_TEST_RUN of both)."""

from __future__ import annotations

import pytest
from test_classifier_kernel import setup_case

from nfguard import consts
from nfguard import packets as P

from cases import CASES, SRC, Case
from conftest import default_state

pytestmark = pytest.mark.kernel

USER, REALM = "1001", "pbx.example.com"
PHONE, ATTACKER, PBX = SRC, "198.51.100.7", "192.0.2.1"
PHONE6 = "2001:db8::10"
LO = 1  # the ifindex the test runs receive on

INVITE = P.sip_request(user=USER, realm=REALM)
# 1.6 kB of headers: at MTU 1500 they do not end in the first fragment
BIG_INVITE = P.sip_request(user=USER, realm=REALM,
                           extra_headers=[f"X-Pad-{i}: {'p' * 70}" for i in range(20)])


@pytest.fixture
def sp(sock_program):
    p = default_state(sock_program)
    p.forget_in_flight()
    p.set_socket_interfaces([LO])
    p.add_binding(USER, REALM, PHONE)
    p.add_binding(USER, REALM, PHONE6)
    return p


def dgram(payload: bytes, src: str = PHONE, **kw) -> bytes:
    dst = "2001:db8::1" if ":" in src else PBX
    return P.udp_frame(payload, src=src, dst=dst, **kw)


def gso_segments(first: bytes, second: bytes, src: str) -> tuple[bytes, bytes]:
    """A UDP_SEGMENT super-packet as generic XDP sees it (one frame, one
    UDP header over both payloads) and its second segment as the socket
    receives it (an IP datagram of its own)."""
    return dgram(first + second, src=src, sport=40000), dgram(second, src=src, sport=40000)


@pytest.mark.parametrize("name,frame,mode,action,reason,verdict", [
    ("bound", dgram(INVITE), "enforce", "drop", "bound", "pass"),
    ("not bound", dgram(INVITE, src=ATTACKER), "enforce", "drop", "not_bound", "drop"),
    ("reassembled, bound", dgram(BIG_INVITE), "enforce", "drop", "bound", "pass"),
    ("reassembled, not bound", dgram(BIG_INVITE, src=ATTACKER), "enforce", "drop",
     "not_bound", "drop"),
    ("IPv6 behind a hop-by-hop header", dgram(INVITE, src=PHONE6, ext_headers=[0]),
     "enforce", "drop", "bound", "pass"),
    ("IPv6, not bound", dgram(INVITE, src="2001:db8:bad::66", ext_headers=[0, 60]),
     "enforce", "drop", "not_bound", "drop"),
    ("no credentials", dgram(P.sip_request(auth=""), src=ATTACKER), "enforce", "drop",
     "no_credentials", "pass"),
    ("a REGISTER", dgram(P.sip_request("REGISTER"), src=ATTACKER), "enforce", "drop",
     "method_not_guarded", "pass"),
    ("monitor passes", dgram(INVITE, src=ATTACKER), "monitor", "drop", "not_bound", "pass"),
    ("reject drops: no ICMP from a socket program", dgram(INVITE, src=ATTACKER), "enforce",
     "reject", "not_bound", "drop"),
])
def test_the_socket_stage_judges_what_a_socket_receives(sp, name, frame, mode, action, reason,
                                                        verdict):
    sp.configure(mode=mode, action=action)
    v = sp.socket_test_run(frame, ifindex=LO)
    assert v is not None, name
    assert (v.reason, v.action) == (reason, verdict), name
    assert sp.counters()[reason] == 1
    if reason in ("bound", "not_bound"):
        assert (v.user, v.realm) == (USER, REALM)


def test_other_interfaces_ports_and_protocols_are_left_alone(sp):
    assert sp.socket_test_run(dgram(INVITE, src=ATTACKER, dport=5080), ifindex=LO) is None
    tcp = P.ip_frame(ATTACKER, PBX, 6, bytes(20) + INVITE)
    assert sp.socket_test_run(tcp, ifindex=LO) is None
    assert sum(sp.counters().values()) == 0
    # received on an interface nfguard does not guard (the test runs can
    # only receive on interfaces that exist: loopback, left out here)
    sp.set_socket_interfaces([2, 3])
    assert sp.socket_interfaces() == {2, 3}
    assert sp.socket_test_run(dgram(INVITE, src=ATTACKER), ifindex=LO) is None
    assert sum(sp.counters().values()) == 0


def test_a_trusted_source_passes(sp):
    sp.add_trusted("198.51.100.0/24")
    v = sp.socket_test_run(dgram(INVITE, src=ATTACKER), ifindex=LO)
    assert (v.reason, v.action) == ("trusted", "pass")


def test_what_xdp_judged_whole_is_not_judged_again(sp):
    """XDP notes each datagram it judged whole and passed; the socket stage
    takes the note and leaves the datagram alone, so that it is counted and
    reported once. A retransmission is two notes; a datagram XDP dropped
    leaves none."""
    bound, other = dgram(INVITE), dgram(P.sip_request("OPTIONS"), src=ATTACKER)
    for f in (bound, bound, other):
        assert sp.test_run(f).action == "pass"
    assert [sp.socket_test_run(f, ifindex=LO) for f in (bound, other, bound)] == [None] * 3
    assert sp.counters() == {**{r: 0 for r in consts.REASONS}, "bound": 2,
                             "method_not_guarded": 1}
    # no note left: judged now
    assert sp.socket_test_run(bound, ifindex=LO).reason == "bound"
    # monitor passes a verdict: judged (and noted) by XDP
    sp.configure(mode="monitor", action="drop")
    attack = dgram(INVITE, src=ATTACKER)
    assert sp.test_run(attack).reason == "not_bound"
    assert sp.socket_test_run(attack, ifindex=LO) is None


def test_a_first_fragment_xdp_passed_is_judged_whole_at_the_socket(sp):
    """fragments: pass lets XDP pass a first fragment whose headers go on in
    the next one; the socket stage judges the reassembled datagram: the
    bound phone's passes, the same from another source does not."""
    sp.configure(mode="enforce", action="drop", fragments="pass")
    for src, reason, action in ((PHONE, "bound", "pass"), (ATTACKER, "not_bound", "drop")):
        first = P.udp_fragments(BIG_INVITE, 1480, src=src, dst=PBX)[0]
        assert sp.test_run(first).reason == "fragment_passed"
        v = sp.socket_test_run(dgram(BIG_INVITE, src=src), ifindex=LO)
        assert (v.reason, v.action) == (reason, action)


@pytest.mark.parametrize("first", [b"X" * 744, P.sip_request(auth="").ljust(744, b" ")],
                         ids=["filler", "an INVITE without credentials"])
def test_each_gso_segment_is_judged(sp, first):
    """Generic XDP sees a GSO super-packet as one frame, and judges its
    first segment's bytes only; the socket stage judges each segment the
    socket receives."""
    second = INVITE.ljust(744, b" ")
    whole, seg2 = gso_segments(first, second, ATTACKER)
    assert sp.test_run(whole).action == "pass"
    v = sp.socket_test_run(seg2, ifindex=LO)
    assert (v.reason, v.action) == ("not_bound", "drop")
    whole, seg2 = gso_segments(first, second, PHONE)
    sp.test_run(whole)
    assert sp.socket_test_run(seg2, ifindex=LO).reason == "bound"


def test_events_name_the_socket_stage(sp):
    got = []
    sp.open_events(got.append)
    sp.poll_events(0)
    got.clear()
    sp.socket_test_run(dgram(INVITE, src=ATTACKER, sport=40000), ifindex=LO)
    sp.test_run(dgram(INVITE, src=ATTACKER, sport=40001))
    sp.poll_events(100)
    assert [(e.stage, e.sport, e.reason, e.action) for e in got] == [
        ("socket", 40000, "not_bound", "drop"), ("xdp", 40001, "not_bound", "drop")]


# Reasons only XDP gives: what the frame is (L2-L4, fragments), floods.
XDP_ONLY = {"not_ip", "not_udp", "port_not_guarded", "later_fragment", "fragment_passed",
            "fragmented", "ext_header_limit", "banned", "rate_limited", "tail_call_failed"}


def _is_piece(frame: bytes) -> bool:
    """An IP fragment (not an atomic one): a socket receives only the
    datagram reassembled from it."""
    frame = frame[:12] + frame[16:] if frame[12:14] in (b"\x81\x00", b"\x88\xa8") else frame
    frame = frame[:12] + frame[16:] if frame[12:14] in (b"\x81\x00", b"\x88\xa8") else frame
    if frame[12:14] == b"\x08\x00":
        return bool(int.from_bytes(frame[20:22], "big") & 0x3FFF)
    nxt, off = frame[20], 54  # IPv6: walk the extension headers
    while nxt in (0, 43, 60, 51, 44) and off + 4 <= len(frame):
        if nxt == 44:
            return bool(int.from_bytes(frame[off + 2:off + 4], "big") & 0xFFF9)
        nxt, off = frame[off], off + ((frame[off + 1] + 2) * 4 if nxt == 51
                                      else (frame[off + 1] + 1) * 8)
    return False


def _datagram_cases() -> list[Case]:
    return [c for c in CASES if c.reason not in XDP_ONLY and c.program == "default"
            and not c.bans and not c.before and not _is_piece(c.frame)]


@pytest.mark.parametrize("case", _datagram_cases(), ids=[c.name for c in _datagram_cases()])
def test_the_socket_stage_agrees_with_xdp(sp, case: Case):
    """Every row of the classifier table that is about a whole datagram
    gets the same reason at the socket as in XDP (the socket first, so no
    note of XDP's is in the way)."""
    sp.clear_bindings()
    setup_case(sp, case)
    sp.forget_in_flight()
    got = sp.socket_test_run(case.frame, ifindex=LO)
    want = sp.test_run(case.frame)
    assert got is not None and got.reason == want.reason, case.name
