"""The loader: map accessors, validation, pinning and reuse across loads."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from nfguard import consts
from nfguard import packets as P
from nfguard.kernel.program import Program, addr_bytes, addr_str, cred_hash

from conftest import ROOT, need_kernel

INVITE = P.sip_request(user="1001", realm="pbx.example.com")


def test_addresses_round_trip():
    for ip in ["192.0.2.1", "2001:db8::1", "::1", "0.0.0.0"]:
        assert addr_str(addr_bytes(ip)) == ip
    assert addr_bytes("192.0.2.1") == b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1])


def test_cred_hash_depends_on_seed_and_every_byte():
    base = cred_hash(1, b"alice", b"pbx")
    assert base != cred_hash(2, b"alice", b"pbx")
    assert base != cred_hash(1, b"alicf", b"pbx")
    assert base != cred_hash(1, b"alice", b"pbx.")


def test_bindings_add_list_remove(prog):
    prog.add_binding("Alice", "PBX.Example.com", "192.0.2.10", expires_in=60)
    prog.add_binding("alice", "pbx.example.com", "2001:db8::10")
    got = sorted((b.user, b.realm, b.ip) for b in prog.bindings())
    assert got == [("alice", "pbx.example.com", "192.0.2.10"),
                   ("alice", "pbx.example.com", "2001:db8::10")]
    assert prog.remove_binding("ALICE", "pbx.example.com", "192.0.2.10")
    assert not prog.remove_binding("alice", "pbx.example.com", "192.0.2.10")
    assert [b.ip for b in prog.bindings()] == ["2001:db8::10"]


@pytest.mark.parametrize("user,realm,msg", [
    ("", "pbx", "empty"),
    ("a" * 65, "pbx", "longer than 64"),
    ("alice", "r" * 129, "longer than 128"),
])
def test_bindings_refuse_what_the_kernel_cannot_store(prog, user, realm, msg):
    with pytest.raises(ValueError, match=msg):
        prog.add_binding(user, realm, "192.0.2.10")
    assert prog.bindings() == []


def test_bindings_at_the_limits_are_enforced(prog):
    user, realm = "u" * 64, "r" * 128
    prog.add_binding(user, realm, "192.0.2.10")
    frame = P.udp_frame(P.sip_request(user=user, realm=realm))
    assert prog.test_run(frame).reason == "bound"
    assert prog.test_run(P.udp_frame(P.sip_request(user=user, realm=realm),
                                     src="192.0.2.11")).reason == "not_bound"


def test_bad_address_is_rejected(prog):
    with pytest.raises(ValueError):
        prog.add_binding("alice", "pbx", "not-an-ip")


def test_configure_validates(prog):
    for kwargs in [dict(mode="block"), dict(action="refuse"), dict(fragments="maybe"),
                   dict(methods=["REGISTER"]), dict(methods=[]), dict(methods=["invite"]),
                   dict(reject_mark=0), dict(ipv6_prefix=0), dict(ipv6_prefix=129),
                   dict(rate_limits={"flood": (1, 1)}), dict(rate_limits={"invite": (-1, 1)}),
                   dict(rate_limits={"invite": (1, 0)}), dict(rate_limits={"invite": 5})]:
        with pytest.raises(ValueError):
            prog.configure(**kwargs)
    prog.configure(mode="monitor", action="reject", methods=["INVITE", "MESSAGE"],
                   fragments="pass", reject_mark=7, events_per_sec=5, ipv6_prefix=56,
                   rate_limits={"invite": (2.5, 10), "other": {"rate": 0, "burst": 1}})
    assert prog.config() == {"mode": "monitor", "action": "reject",
                             "methods": ["INVITE", "MESSAGE"], "fragments": "pass",
                             "reject_mark": 7, "events_per_sec": 5, "ipv6_prefix": 56,
                             "rate_limits": {"invite": (2.5, 10), "register": (5.0, 40),
                                             "other": (0.0, 1)}}


def test_bans(prog):
    from nfguard.kernel.program import NO_EXPIRY, Ban, boottime_ns

    assert prog.ban_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert prog.set_ban("198.51.100.7", NO_EXPIRY) == "198.51.100.7"
    soon = boottime_ns() + 10**9
    assert prog.set_ban("2001:db8:1:2:3:4:5:6", soon, offenses=3, manual=True) \
        == "2001:db8:1:2::/64"
    assert sorted(prog.iter_bans()) == [
        Ban("198.51.100.7", NO_EXPIRY, 1, False), Ban("2001:db8:1:2::/64", soon, 3, True)]
    frame = P.udp_frame(INVITE, src="2001:db8:1:2::99", dst="2001:db8::1")
    assert prog.test_run(frame).reason == "banned"
    assert prog.lift_ban("2001:db8:1:2::/64")  # by key
    assert not prog.lift_ban("2001:db8:1:2::5")  # gone already
    assert prog.test_run(frame).reason == "not_bound"
    assert prog.lift_ban("198.51.100.7")
    assert list(prog.iter_bans()) == []
    for bad in ("not-an-ip", "198.51.100.0/24x", ""):
        with pytest.raises(ValueError):
            prog.set_ban(bad, NO_EXPIRY)


def test_the_ban_filter_keeps_a_bit_while_any_ban_needs_it(prog):
    """Two banned sources whose keys share the filter's bit: lifting one
    leaves the other banned; lifting both clears the bit."""
    from nfguard.kernel.program import NO_EXPIRY, addr_bytes, ban_slot

    seen: dict[int, str] = {}
    for i in range(1 << 16):
        ip = f"10.{i >> 8}.{i & 255}.1"
        slot = ban_slot(addr_bytes(ip))
        if slot in seen:
            a, b = seen[slot], ip
            break
        seen[slot] = ip
    else:
        raise AssertionError("no two addresses share a slot")
    prog.set_ban(a, NO_EXPIRY)
    prog.set_ban(b, NO_EXPIRY)
    frame_b = P.udp_frame(INVITE, src=b)
    assert prog.test_run(frame_b).reason == "banned"
    assert prog.lift_ban(a)
    assert prog.test_run(frame_b).reason == "banned"
    assert prog.test_run(P.udp_frame(INVITE, src=a)).reason == "not_bound"
    word = prog._ban_filter[ctypes.c_uint32(ban_slot(addr_bytes(b)) // 64)].value
    assert word >> (ban_slot(addr_bytes(b)) % 64) & 1
    assert prog.lift_ban(b)
    assert prog._ban_filter[ctypes.c_uint32(ban_slot(addr_bytes(b)) // 64)].value == 0
    assert prog.test_run(frame_b).reason == "not_bound"


def test_ban_expires_in_the_kernel(prog):
    import time

    from nfguard.kernel.program import boottime_ns

    frame = P.udp_frame(INVITE, src="198.51.100.7")
    prog.set_ban("198.51.100.7", boottime_ns() + 300_000_000)
    assert prog.test_run(frame).reason == "banned"
    time.sleep(0.4)
    assert prog.test_run(frame).reason == "not_bound"
    assert len(list(prog.iter_bans())) == 1  # the entry stays: the controller counts offenses


def test_bound_addresses(prog):
    from nfguard.kernel.program import NO_EXPIRY, boottime_ns

    prog.configure(mode="enforce", rate_limits={"invite": (0.001, 1)})
    no_auth = P.udp_frame(P.sip_request(auth=""), src="192.0.2.50")
    assert prog.test_run(no_auth).reason == "no_credentials"
    assert prog.test_run(no_auth).reason == "rate_limited"
    prog.update_bound([("192.0.2.50", NO_EXPIRY), ("2001:db8::7", NO_EXPIRY)])
    assert prog.test_run(no_auth).reason == "no_credentials"
    assert sorted(prog.iter_bound()) == [("192.0.2.50", NO_EXPIRY), ("2001:db8::7", NO_EXPIRY)]
    # prune keeps only what it is given; an expired entry limits again
    assert prog.update_bound([("192.0.2.50", boottime_ns() - 10**9)], prune=True) == 1
    assert [ip for ip, _ in prog.iter_bound()] == ["192.0.2.50"]
    assert prog.test_run(no_auth).reason == "rate_limited"
    prog.update_bound(remove=["192.0.2.50"])
    assert list(prog.iter_bound()) == []


def test_ports(prog):
    prog.set_ports([5060, 5080, 65535, 1])
    assert prog.ports() == [1, 5060, 5080, 65535]
    prog.set_ports([5080])
    assert prog.ports() == [5080]
    assert prog.test_run(P.udp_frame(INVITE, dport=5060)).reason == "port_not_guarded"
    assert prog.test_run(P.udp_frame(INVITE, dport=5080)).reason == "not_bound"
    for bad in ([0], [65536], ["5060"], [], [True]):
        with pytest.raises(ValueError):
            prog.set_ports(bad)
    assert prog.ports() == [5080]


def test_trusted_networks(prog):
    prog.add_trusted("198.51.100.0/24")
    prog.add_trusted("2001:db8:1::/48")
    assert prog.trusted() == ["198.51.100.0/24", "2001:db8:1::/48"]
    assert prog.test_run(P.udp_frame(INVITE, src="198.51.100.7")).reason == "trusted"
    assert prog.test_run(P.udp_frame(INVITE, src="198.51.101.7")).reason == "not_bound"
    assert prog.test_run(P.udp_frame(INVITE, src="2001:db8:1::5",
                                     dst="2001:db8::1")).reason == "trusted"
    prog.remove_trusted("198.51.100.0/24")
    assert prog.trusted() == ["2001:db8:1::/48"]


def test_counters_count_each_reason(prog):
    prog.test_run(P.udp_frame(INVITE, src="198.51.100.7"))
    prog.test_run(P.udp_frame(INVITE, src="198.51.100.7"))
    prog.test_run(P.udp_frame(b"x", dport=53))
    c = prog.counters()
    assert c["not_bound"] == 2 and c["port_not_guarded"] == 1
    assert sum(c.values()) == 3
    assert set(c) == set(consts.REASONS)


def test_events_report_verdicts(prog):
    got = []
    prog.open_events(got.append)
    prog.poll_events(0)  # drain what earlier tests left in the ring
    got.clear()
    prog.test_run(P.udp_frame(INVITE, src="198.51.100.7", sport=40000))
    prog.test_run(P.udp_frame(P.sip_request(auth=""), src="198.51.100.7"))  # passes: no event
    prog.poll_events(100)
    assert len(got) == 1
    ev = got[0]
    assert (ev.src, ev.sport, ev.dport, ev.reason, ev.action, ev.user, ev.realm) == (
        "198.51.100.7", 40000, 5060, "not_bound", "drop", "1001", "pbx.example.com")


def test_pinned_maps_survive_a_reload(pin_dir):
    first = Program(pin_dir=pin_dir)
    first.configure(mode="enforce", action="reject")
    first.set_ports([5080])
    first.add_binding("1001", "pbx.example.com", "192.0.2.10")
    first.add_trusted("10.0.0.0/8")
    seed = first._seed
    first.close()
    names = set(os.listdir(pin_dir))
    assert {"bindings", "trusted", "ports", "config", "counters"} <= names
    assert any(n.startswith("stages_") for n in names)

    second = Program(pin_dir=pin_dir)
    try:
        assert second._seed == seed
        assert second.config()["mode"] == "enforce"
        assert second.config()["action"] == "reject"
        assert second.ports() == [5080]
        assert second.trusted() == ["10.0.0.0/8"]
        assert [(b.user, b.ip) for b in second.bindings()] == [("1001", "192.0.2.10")]
        assert second.test_run(P.udp_frame(INVITE, dport=5080)).reason == "bound"
        assert second.test_run(P.udp_frame(INVITE, dport=5080, src="192.0.2.99")).action == "mark"
        assert len(second.unpin_stale_stages()) == 1
        assert [n for n in os.listdir(pin_dir) if n.startswith("stages_")] == [
            os.path.basename(second.stages_pin)]
    finally:
        second.close()


def test_missing_headers_give_one_clear_line(tmp_path):
    env = dict(os.environ, NFGUARD_MODULES_DIR=str(tmp_path))
    code = ("from nfguard.kernel.program import Program\n"
            "from nfguard.errors import NfguardError\n"
            "try:\n    Program()\nexcept NfguardError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert "linux-headers-" in out.stdout and "not found" in out.stdout


def test_attached_build_skips_counting_other_traffic():
    """count_all=False (what gets attached) passes traffic to other ports
    without counting it, and classifies guarded traffic the same."""
    need_kernel()
    from nfguard.errors import NfguardError

    p = Program(count_all=False)
    try:
        p.configure(mode="enforce")
        p.set_ports([5060])
        p.add_binding("1001", "pbx.example.com", "192.0.2.10")
        assert p.test_run(P.udp_frame(INVITE)).reason == "bound"
        assert p.test_run(P.udp_frame(INVITE, src="192.0.2.99")).reason == "not_bound"
        before = p.counters()
        with pytest.raises(NfguardError, match="count_all"):
            p.test_run(P.udp_frame(INVITE, dport=5080))
        assert p.counters() == before
    finally:
        p.close()


def test_stages_pins_in_use_stay(pin_dir):
    """A stages pin whose program is still loaded (e.g. attached to another
    interface) must survive a later load's clean-up: removing it would empty
    the prog array under that program."""
    first = Program(pin_dir=pin_dir)
    second = Program(pin_dir=pin_dir)
    try:
        assert second.unpin_stale_stages() == []
        assert os.path.exists(first.stages_pin)
        first.add_binding("1001", "pbx.example.com", "192.0.2.10")
        assert first.test_run(P.udp_frame(INVITE)).reason == "bound"
        first.close()
        first = None
        assert second.unpin_stale_stages() != []
        assert [n for n in os.listdir(pin_dir) if n.startswith("stages_")] == [
            os.path.basename(second.stages_pin)]
    finally:
        if first is not None:
            first.close()
        second.close()


def test_update_bindings_batches_and_prune(prog, monkeypatch):
    """Generators read a batch at a time (here 3): every binding lands,
    every removal happens, and prune leaves exactly the added ones."""
    from nfguard.kernel import program

    monkeypatch.setattr(program, "BATCH", 3)
    realm = "pbx.example.com"
    never = (1 << 64) - 1
    prog.update_bindings(add=((str(1000 + i), realm, f"192.0.2.{i}", never)
                              for i in range(10)))
    assert sorted(b.ip for b in prog.bindings()) == sorted(f"192.0.2.{i}" for i in range(10))
    # removals over two batches, one of them never bound
    prog.update_bindings(remove=((str(1000 + i), realm, f"192.0.2.{i}") for i in (0, 1, 2, 3)),
                         add=[("2000", realm, "192.0.2.99", never)])
    assert len(prog.bindings()) == 7
    prog.update_bindings(remove=[("1004", realm, "192.0.2.4"), ("1234", realm, "192.0.2.4")])
    assert sorted(b.user for b in prog.bindings()) == [str(1000 + i) for i in range(5, 10)] + [
        "2000"]

    # prune: 5..7 kept (a new expiry), 20..23 new, the others go
    keep = [(str(1000 + i), realm, f"192.0.2.{i}", 123) for i in (5, 6, 7)]
    new = [(str(1000 + i), realm, f"192.0.2.{i}", never) for i in (20, 21, 22, 23)]
    assert prog.update_bindings(add=iter(keep + new), prune=True) == 3  # 8, 9, 2000
    got = {(b.user, b.ip): b.expires_ns for b in prog.bindings()}
    assert got == {(u, ip): exp for u, _, ip, exp in keep + new}
    frame = P.udp_frame(P.sip_request(user="1022", realm=realm), src="192.0.2.22")
    prog.configure(mode="enforce")
    assert prog.test_run(frame).reason == "bound"
    assert prog.update_bindings(prune=True) == 7  # nothing added: the map is emptied
    assert prog.bindings() == []


def test_a_load_gives_the_compilers_memory_back():
    """After the load, the compiler's (LLVM, clang) pages are no longer
    resident in this process, and a second load still compiles (they come
    back from the page cache). In a process of its own: measured with
    nothing else loaded."""
    need_kernel()
    code = (
        "import json\n"
        "from nfguard.kernel.program import Program\n"
        "def compiler_kb():\n"
        "    kb, on = 0, False\n"
        "    for line in open('/proc/self/smaps'):\n"
        "        parts = line.split()\n"
        "        if '-' in parts[0] and len(parts) >= 5 and ':' in parts[3]:\n"
        "            on = len(parts) > 5 and ('libLLVM' in parts[5] or 'libclang' in parts[5])\n"
        "        elif on and parts[0] == 'Rss:':\n"
        "            kb += int(parts[1])\n"
        "    return kb\n"
        "p = Program()\n"
        "after = compiler_kb()\n"
        "q = Program()\n"
        "q.add_binding('1001', 'pbx.example.com', '192.0.2.10')\n"
        "print(json.dumps({'after_load_kb': after, 'second_load': len(q.bindings()),\n"
        "                  'after_second_kb': compiler_kb()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # ~90 MB of them before (bcc 0.26, LLVM 14); what stays is data they wrote
    # at start-up (relocations), which is not the files' and cannot be dropped
    assert result["after_load_kb"] < 20 * 1024, result
    assert result["second_load"] == 1
    assert result["after_second_kb"] < 20 * 1024, result


def test_the_reject_handoff_is_what_the_kernel_allows(program):
    """The probe agrees with a real load: where the kernel refuses
    bpf_xdp_adjust_meta (some 6.18 builds), a program that calls it does not
    load, and the default load hands reject verdicts over through the map."""
    from nfguard.errors import CompileError
    from nfguard.kernel.libbpf import xdp_adjust_meta_allowed

    allowed = xdp_adjust_meta_allowed()
    assert program.reject_handoff == ("metadata" if allowed else "map")
    if allowed:
        Program(reject_handoff="metadata").close()
    else:
        with pytest.raises(CompileError, match="refuses bpf_xdp_adjust_meta"):
            Program(reject_handoff="metadata")
    with pytest.raises(ValueError):
        Program(reject_handoff="meta")


MARK = 0x4E46BEEF


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_the_handoff_map_marks_what_xdp_marked(map_program, family):
    """XDP's reject verdict through the map, in the kernel: TC marks each
    datagram XDP marked, once per datagram (a retransmission twice), not
    other datagrams of the flow, and finds a VLAN-tagged one whether or not
    the stack has taken the tag off by then."""
    from nfguard.kernel.libbpf import skb_test_run_mark

    from conftest import default_state

    prog = default_state(map_program)
    src, dst = ("192.0.2.10", "192.0.2.1") if family == "ipv4" else ("2001:db8::10",
                                                                     "2001:db8::1")
    prog.configure(mode="enforce", action="reject", reject_mark=MARK)
    attacker = P.udp_frame(INVITE, src=src, dst=dst, sport=40000)
    tagged = P.udp_frame(INVITE, src=src, dst=dst, sport=40000, vlans=(7,))
    other = P.udp_frame(P.sip_request("REGISTER"), src=src, dst=dst, sport=40000)

    def tc_mark(frame):
        return skb_test_run_mark(prog.tc_fn.fd, frame)[1]

    assert tc_mark(attacker) == 0  # nothing handed over yet
    for _ in range(2):
        assert prog.test_run(attacker).action == "mark"
    assert prog.test_run(other).action == "pass"
    assert [tc_mark(attacker), tc_mark(other), tc_mark(attacker), tc_mark(attacker)] == [
        MARK, 0, MARK, 0]
    assert prog.test_run(tagged).action == "mark"
    assert tc_mark(attacker) == MARK  # the tag taken off before TC
    assert prog.test_run(tagged).action == "mark"
    assert tc_mark(tagged) == MARK
    assert tc_mark(tagged) == 0

    if family == "ipv6":
        # no UDP header found (a chain longer than XDP follows): keyed by
        # the source alone on both sides, still marked
        deep = P.udp_frame(INVITE, src=src, dst=dst, ext_headers=[60] * 7)
        assert prog.test_run(deep).reason == "ext_header_limit"
        assert prog.test_run(deep).action == "mark"
        assert [tc_mark(deep), tc_mark(deep), tc_mark(deep)] == [MARK, MARK, 0]

    # bound: XDP passes it and hands nothing over
    prog.add_binding("1001", "pbx.example.com", src)
    assert prog.test_run(attacker).action == "pass"
    assert tc_mark(attacker) == 0
    # monitor and drop hand nothing over either
    prog.clear_bindings()
    for mode, action in (("monitor", "reject"), ("enforce", "drop")):
        prog.configure(mode=mode, action=action, reject_mark=MARK)
        prog.test_run(attacker)
        prog.configure(mode="enforce", action="reject", reject_mark=MARK)
        assert tc_mark(attacker) == 0, (mode, action)
