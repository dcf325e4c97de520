"""nfguard attached to real interfaces: veth pairs between network namespaces.

Topology: nfguard.lab.topology (the `topo` fixture of conftest.py: one set
of namespaces per test, unique names, always removed):

    phone ns  eth0 10.200.1.2 fd00:1::2 --- pbx1 10.200.1.1 fd00:1::1  pbx ns
    attacker  eth0 10.200.2.2 fd00:2::2 --- pbx2 10.200.2.1 fd00:2::1  (UDP 5060)

nfguard goes on the PBX side of both pairs. INVITEs are sent from sockets
inside the phone and attacker namespaces; traffic never leaves them.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from nfguard.errors import AttachError
from nfguard.kernel import attach as A
from nfguard.kernel.program import NO_EXPIRY
from nfguard.lab.topology import ADDR, run
from nfguard.packets import sip_request

from conftest import ROOT, TOPO_PREFIX, cannot_run, default_state

pytestmark = pytest.mark.netns

PREFIX = f"{TOPO_PREFIX}{os.getpid()}-"  # the namespaces of the topo fixture
USER, REALM = "1001", "pbx.example.com"
MARK = 0x4E46BEEF  # not the default reject mark: proves the configured one is used

def our_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(A.NETNS_RUN_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def host_xdp() -> dict[str, tuple]:
    """XDP state of every interface in this (the host's) namespace."""
    out = {}
    for name in os.listdir("/sys/class/net"):
        try:
            out[name] = tuple(A.xdp_status(name))
        except AttachError:
            pass  # went away meanwhile
    return out


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    """After the module: none of our namespaces, no change to the host's XDP
    attachments or nft tables."""
    if os.geteuid() != 0:
        yield
        return
    xdp_before = host_xdp()
    nft_before = run("nft", "list", "tables", check=False)
    yield
    assert our_namespaces() == []
    assert host_xdp() == xdp_before
    assert run("nft", "list", "tables", check=False) == nft_before


def recv_until(sock: socket.socket, stop: bytes, timeout: float = 3.0) -> list[tuple[bytes, str]]:
    """Datagrams (payload, source address) received up to and including the
    first whose payload is `stop`; fails when it does not come in time."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no datagram {stop[:30]!r}... within {timeout} s; got {got!r}")
        sock.settimeout(left)
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        got.append((data, addr[0]))
        if data == stop:
            return got


def sentinel(tag: str) -> bytes:
    """A REGISTER: never guarded, so it always reaches the PBX. Sent after
    an INVITE on the same path, its arrival means the INVITE would have
    arrived by then too."""
    return sip_request("REGISTER", user=USER, realm=REALM, extra_headers=[f"X-Tag: {tag}"])


def nft_counter(ns: str, name: str) -> int:
    out = json.loads(run("nft", "-j", "list", "counter", "inet", "nfgtest", name, ns=ns))
    return next(o["counter"]["packets"] for o in out["nftables"] if "counter" in o)


def tc_show(ns: str, *what: str) -> str:
    return run("tc", *what, ns=ns).strip()


# -- (a) enforce/drop ------------------------------------------------------
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("xdp_mode", ["native", "generic"])
def test_drop_mode_over_veth(topo, prog, xdp_mode, family):
    a = ADDR[family]
    prog.configure(mode="enforce", action="drop")
    prog.add_binding(USER, REALM, a["phone"])
    for ifname in ("pbx1", "pbx2"):
        assert A.attach_xdp(ifname, prog.xdp_fn.fd, mode=xdp_mode, netns=topo.pbx) == xdp_mode
        st = A.xdp_status(ifname, netns=topo.pbx)
        assert (st.mode, st.prog_name) == (xdp_mode, "nfguard_xdp")

    pbx = topo.udp(topo.pbx, family)
    pbx.bind((a["any"], 5060))
    invite = sip_request("INVITE", user=USER, realm=REALM)

    # bound: the phone's INVITE reaches the PBX socket
    phone = topo.udp(topo.phone, family)
    phone.sendto(invite, (a["pbx1"], 5060))
    assert recv_until(pbx, invite) == [(invite, a["phone"])]

    # the same INVITE from an address where 1001 is not registered: never
    attacker = topo.udp(topo.attacker, family)
    attacker.sendto(invite, (a["pbx2"], 5060))
    stop = sentinel("attacker")
    attacker.sendto(stop, (a["pbx2"], 5060))
    assert recv_until(pbx, stop) == [(stop, a["attacker"])]

    c = prog.counters()
    assert c["bound"] == 1
    assert c["not_bound"] == 1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_ban_drops_udp_and_tcp_over_veth(topo, prog, family):
    """A banned source loses its UDP datagrams and its TCP handshake to the
    guarded port; the phone does not; the ban lifted, TCP connects."""
    a = ADDR[family]
    fam = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    prog.configure(mode="enforce", action="drop")
    assert A.attach_xdp("pbx2", prog.xdp_fn.fd, mode="native", netns=topo.pbx) == "native"
    assert A.attach_xdp("pbx1", prog.xdp_fn.fd, mode="native", netns=topo.pbx) == "native"
    pbx = topo.udp(topo.pbx, family)
    pbx.bind((a["any"], 5060))
    with topo.in_netns(topo.pbx):
        listener = socket.socket(fam, socket.SOCK_STREAM)
    topo.socks.append(listener)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((a["any"], 5060))
    listener.listen()
    prog.set_ban(a["attacker"], NO_EXPIRY)

    def tcp_connects(ns: str, dst: str) -> bool:
        with topo.in_netns(ns):
            c = socket.socket(fam, socket.SOCK_STREAM)
        try:
            c.settimeout(1.5)
            c.connect((dst, 5060))
            return True
        except (TimeoutError, OSError):
            return False
        finally:
            c.close()

    invite = sip_request("INVITE", auth="")
    attacker = topo.udp(topo.attacker, family)
    attacker.sendto(invite, (a["pbx2"], 5060))
    phone = topo.udp(topo.phone, family)
    stop = sentinel("phone")
    phone.sendto(stop, (a["pbx1"], 5060))
    assert recv_until(pbx, stop) == [(stop, a["phone"])]  # the attacker's never came
    assert not tcp_connects(topo.attacker, a["pbx2"])
    assert tcp_connects(topo.phone, a["pbx1"])
    assert prog.counters()["banned"] >= 2  # the datagram and the SYN (and its retries)
    assert prog.lift_ban(a["attacker"])
    assert tcp_connects(topo.attacker, a["pbx2"])


# -- (b) enforce/reject: XDP metadata -> TC -> skb->mark -> nftables --------
NFT_RULES = f"""
table inet nfgtest {{
    counter rejected {{ }}
    chain input {{
        type filter hook input priority filter; policy accept;
        meta mark {MARK:#x} counter name "rejected" reject with icmpx type admin-prohibited
    }}
}}
"""


@pytest.fixture(params=["auto", "map"])
def reject_prog(request, prog):
    """The program the reject tests run: the session's (XDP metadata where
    the kernel allows bpf_xdp_adjust_meta, else the handoff map), then one
    that uses the handoff map in any case."""
    if request.param == "auto":
        return prog
    return default_state(request.getfixturevalue("map_program"))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("xdp_mode", ["native", "generic"])
def test_reject_mode_mark_reaches_netfilter(topo, reject_prog, xdp_mode, family):
    prog, a = reject_prog, ADDR[family]
    prog.configure(mode="enforce", action="reject", reject_mark=MARK)
    prog.add_binding(USER, REALM, a["phone"])
    for ifname in ("pbx1", "pbx2"):
        assert A.attach(ifname, prog.xdp_fn.fd, prog.tc_fn.fd, mode=xdp_mode,
                        netns=topo.pbx) == xdp_mode
        assert [(p, n) for p, _, n in A.tc_status(ifname, netns=topo.pbx)] == [
            (A.TC_PRIO, "nfguard_tc")
        ]
    run("nft", "-f", "-", ns=topo.pbx, input=NFT_RULES)
    assert nft_counter(topo.pbx, "rejected") == 0

    pbx = topo.udp(topo.pbx, family)
    pbx.bind((a["any"], 5060))
    invite = sip_request("INVITE", user=USER, realm=REALM)

    phone = topo.udp(topo.phone, family)
    phone.connect((a["pbx1"], 5060))
    phone.send(invite)
    assert recv_until(pbx, invite) == [(invite, a["phone"])]
    assert nft_counter(topo.pbx, "rejected") == 0

    attacker = topo.udp(topo.attacker, family)
    attacker.connect((a["pbx2"], 5060))
    # Twice the same bytes, as a retransmission: each is marked and
    # rejected (the handoff map counts datagrams, it does not just flag a
    # key), and the REGISTER of the same flow after them is not.
    for _ in range(2):
        attacker.send(invite)
        attacker.settimeout(3)
        with pytest.raises(OSError) as err:
            attacker.recv(65535)  # the ICMP admin-prohibited comes back as an error
        assert not isinstance(err.value, socket.timeout), "no ICMP rejection arrived"
        assert err.value.errno in (errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EACCES)
    stop = sentinel("attacker")
    attacker.send(stop)
    assert recv_until(pbx, stop) == [(stop, a["attacker"])]
    assert nft_counter(topo.pbx, "rejected") == 2

    c = prog.counters()
    assert (c["bound"], c["not_bound"]) == (1, 2)


# -- (c) other tools' programs, atomic replacement, clean detach -------------
def _bcc_xdp(request, name: str):
    """A trivial XDP_PASS program called `name`, loaded with bcc."""
    from bcc import BPF

    b = BPF(text=f"int {name}(struct xdp_md *ctx) {{ return XDP_PASS; }}".encode())
    request.addfinalizer(b.cleanup)
    return BPF, b.load_func(name.encode(), BPF.XDP)


def test_foreign_xdp_program_is_not_replaced(request, topo, prog):
    BPF, foreign = _bcc_xdp(request, "foreign_xdp")
    with topo.in_netns("pbx"):  # "another tool", attaching with bcc's own netlink code
        BPF.attach_xdp(b"pbx1", foreign, BPF.XDP_FLAGS_SKB_MODE)
    before = A.xdp_status("pbx1", netns=topo.pbx)
    assert (before.mode, before.prog_name) == ("generic", "foreign_xdp")

    with pytest.raises(AttachError, match=r"another XDP program.*foreign_xdp.*--replace"):
        A.attach_xdp("pbx1", prog.xdp_fn.fd, netns=topo.pbx)
    with pytest.raises(AttachError, match="foreign_xdp"):
        A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx)
    with pytest.raises(AttachError, match="not nfguard's"):
        A.detach_xdp("pbx1", netns=topo.pbx)
    assert A.detach("pbx1", netns=topo.pbx) == (
        False, False, f"foreign_xdp (id {before.prog_id}, generic mode)")
    # untouched, and nothing half-attached
    assert A.xdp_status("pbx1", netns=topo.pbx) == before
    assert A.tc_status("pbx1", netns=topo.pbx) == []
    assert "clsact" not in tc_show(topo.pbx, "qdisc", "show", "dev", "pbx1")

    # told to: replaced in one step, in the mode the old one used
    assert A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, replace=True,
                    netns=topo.pbx) == "generic"
    after = A.xdp_status("pbx1", netns=topo.pbx)
    assert (after.mode, after.prog_name) == ("generic", "nfguard_xdp")
    assert after.prog_id == A.prog_info(prog.xdp_fn.fd)[0]


def test_own_program_is_replaced_atomically(request, topo, prog, monkeypatch):
    _, older = _bcc_xdp(request, "nfguard_xdp")  # stands in for an older nfguard
    assert A.attach_xdp("pbx1", older.fd, mode="native", netns=topo.pbx) == "native"
    old = A.xdp_status("pbx1", netns=topo.pbx)
    assert old.prog_name == "nfguard_xdp"

    calls = []
    real_set = A._set_xdp

    def spy(ipr, index, fd, flags, expected_fd=None):
        calls.append((fd, flags, expected_fd is not None))
        return real_set(ipr, index, fd, flags, expected_fd)

    monkeypatch.setattr(A, "_set_xdp", spy)
    # no replace=True needed for nfguard's own program
    assert A.attach_xdp("pbx1", prog.xdp_fn.fd, netns=topo.pbx) == "native"
    new = A.xdp_status("pbx1", netns=topo.pbx)
    assert (new.mode, new.prog_name) == ("native", "nfguard_xdp")
    assert new.prog_id == A.prog_info(prog.xdp_fn.fd)[0] != old.prog_id
    # one request: REPLACE with the expected old fd, never a detach in between
    assert calls == [(prog.xdp_fn.fd, A.XDP_FLAGS_REPLACE | A.XDP_FLAGS_DRV_MODE, True)]
    monkeypatch.undo()

    # the kernel enforces "expected": a stale expectation changes nothing
    from pyroute2.netlink.exceptions import NetlinkError

    with A._rtnl(topo.pbx) as ipr:
        index = A._ifindex(ipr, "pbx1", topo.pbx)
        with pytest.raises(NetlinkError) as stale:
            A._set_xdp(ipr, index, older.fd, A.XDP_FLAGS_REPLACE | A.XDP_FLAGS_DRV_MODE,
                       older.fd)
        assert stale.value.code == errno.EEXIST
    assert A.xdp_status("pbx1", netns=topo.pbx) == new

    # an explicit mode switch works (not atomic: the kernel forbids both modes)
    assert A.attach_xdp("pbx1", prog.xdp_fn.fd, mode="generic", netns=topo.pbx) == "generic"
    assert A.xdp_status("pbx1", netns=topo.pbx) == ("generic", new.prog_id, "nfguard_xdp")


def test_detach_leaves_nothing(topo, prog):
    for ifname in ("pbx1", "pbx2"):
        A.attach(ifname, prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx)
    # an attach again replaces in place: still one filter, one program
    assert A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx) == "native"
    assert len(A.tc_status("pbx1", netns=topo.pbx)) == 1
    assert "nfguard_tc" in tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress")

    assert A.detach("pbx1", netns=topo.pbx) == (True, True, None)
    assert A.xdp_status("pbx1", netns=topo.pbx) == (None, 0, None)
    assert tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress") == ""
    assert "clsact" not in tc_show(topo.pbx, "qdisc", "show", "dev", "pbx1")
    assert A.detach("pbx1", netns=topo.pbx) == (False, False, None)  # idempotent
    # the other interface is untouched
    assert A.xdp_status("pbx2", netns=topo.pbx).prog_name == "nfguard_xdp"

    # separately, too
    assert A.detach_xdp("pbx2", netns=topo.pbx) is True
    assert A.detach_tc("pbx2", netns=topo.pbx) is True
    assert A.xdp_status("pbx2", netns=topo.pbx) == (None, 0, None)
    assert tc_show(topo.pbx, "filter", "show", "dev", "pbx2", "ingress") == ""


def test_detach_keeps_other_tc_filters(topo, prog):
    # another tool's filters on both clsact hooks (u32: always built in)
    run("tc", "qdisc", "add", "dev", "pbx1", "clsact", ns=topo.pbx)
    for hook, pref in (("egress", "100"), ("ingress", "200")):
        run("tc", "filter", "add", "dev", "pbx1", hook, "pref", pref, "u32",
           "match", "u32", "0", "0", "classid", "1:1", ns=topo.pbx)
    A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx)
    assert "nfguard_tc" in tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress")
    assert A.detach("pbx1", netns=topo.pbx) == (True, True, None)
    ingress = tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress")
    assert "nfguard_tc" not in ingress and "pref 200 u32" in ingress
    assert "pref 100 u32" in tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "egress")
    assert "clsact" in tc_show(topo.pbx, "qdisc", "show", "dev", "pbx1")


def test_foreign_tc_filter_at_our_pref(topo, prog):
    run("tc", "qdisc", "add", "dev", "pbx1", "clsact", ns=topo.pbx)
    run("tc", "filter", "add", "dev", "pbx1", "ingress", "pref", str(A.TC_PRIO), "u32",
       "match", "u32", "0", "0", "classid", "1:1", ns=topo.pbx)
    with pytest.raises(AttachError, match=f"TC ingress filter at pref {A.TC_PRIO}.*--replace"):
        A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx)
    assert A.xdp_status("pbx1", netns=topo.pbx) == (None, 0, None)
    assert "u32" in tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress")
    A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, replace=True, netns=topo.pbx)
    ingress = tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress")
    assert "nfguard_tc" in ingress and "u32" not in ingress
    assert A.detach("pbx1", netns=topo.pbx) == (True, True, None)
    assert "clsact" not in tc_show(topo.pbx, "qdisc", "show", "dev", "pbx1")


def test_failed_xdp_rolls_back_tc(topo, prog):
    # loopback has no native XDP: TC goes on first, and must come off again
    with pytest.raises(AttachError, match="does not support XDP in native mode"):
        A.attach("lo", prog.xdp_fn.fd, prog.tc_fn.fd, mode="native", netns=topo.pbx)
    assert A.xdp_status("lo", netns=topo.pbx) == (None, 0, None)
    assert A.tc_status("lo", netns=topo.pbx) == []
    assert "clsact" not in tc_show(topo.pbx, "qdisc", "show", "dev", "lo")
    # auto falls back to generic there, and says why native was refused
    refused = []
    assert A.attach("lo", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx,
                    native_refused=refused) == "generic"
    assert len(refused) == 1 and refused[0], refused
    assert A.detach("lo", netns=topo.pbx) == (True, True, None)
    # where native works nothing is refused
    assert A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx,
                    native_refused=refused) == "native"
    assert len(refused) == 1
    assert A.detach("pbx1", netns=topo.pbx) == (True, True, None)


def test_status_says_why_xdp_runs_generic():
    """`nfguard status`: generic mode with its reason and its cost (XDP
    sees a GSO super-packet as one frame); other modes as they are."""
    from nfguard.cli.status import xdp_mode_text

    def row(mode, configured="auto", refused=None, ours=True):
        return {"xdp": {"mode": mode}, "nfguard_xdp": ours, "configured_xdp_mode": configured,
                "native_refused": refused}

    assert xdp_mode_text(row("native")) == "native"
    assert xdp_mode_text(row(None, ours=False)) == "-"
    assert xdp_mode_text(row("generic", ours=False)) == "generic"  # another tool's
    text = xdp_mode_text(row("generic", refused="MTU too large for XDP"))
    assert text.startswith("generic (the kernel refused native mode: MTU too large for XDP;")
    assert "GSO super-packet" in text
    assert xdp_mode_text(row("generic", configured="generic")).startswith("generic (configured;")
    assert xdp_mode_text(row("generic")).startswith("generic (native mode refused or not tried;")


def test_failed_tc_attaches_nothing(topo, prog):
    run("tc", "qdisc", "add", "dev", "pbx1", "ingress", ns=topo.pbx)
    with pytest.raises(AttachError, match="'ingress' qdisc"):
        A.attach("pbx1", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx)
    assert A.xdp_status("pbx1", netns=topo.pbx) == (None, 0, None)
    assert A.tc_status("pbx1", netns=topo.pbx) == []


# -- (d) errors --------------------------------------------------------------
def test_unknown_interface(topo, prog):
    with pytest.raises(AttachError, match="no interface named nosuchif0"):
        A.attach_xdp("nosuchif0", prog.xdp_fn.fd, netns=topo.pbx)
    with pytest.raises(AttachError, match="no interface named nosuchif0"):
        A.attach("nosuchif0", prog.xdp_fn.fd, prog.tc_fn.fd)
    with pytest.raises(AttachError, match="no interface named nosuchif0"):
        A.xdp_status("nosuchif0")
    with pytest.raises(AttachError, match="not a valid interface name"):
        A.detach("x" * 16, netns=topo.pbx)
    with pytest.raises(AttachError, match="network namespace 'nfgt-no-such-ns' not found"):
        A.xdp_status("lo", netns="nfgt-no-such-ns")


def test_permission_denied_is_one_clear_error(topo):
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r})\n"
        "from nfguard.kernel import attach\n"
        "from nfguard.errors import AttachError\n"
        "try:\n"
        "    attach.attach_xdp('pbx1', 0, mode='generic')\n"
        "except AttachError as e:\n"
        "    print(e)\n"
    )
    out = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c", code, ns=topo.pbx)
    assert out.startswith("permission denied attaching XDP to pbx1: run nfguard as root")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfguard", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["attach", "detach"])
def test_cli_unknown_interface(command):
    r = _cli(command, "--interface", "nosuchif0")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nfguard: error: no interface named nosuchif0")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_attach_detach(request, topo):
    pin_dir = f"/sys/fs/bpf/{topo.tag}"

    def remove_pins():
        if os.path.isdir(pin_dir):
            for f in os.listdir(pin_dir):
                os.unlink(os.path.join(pin_dir, f))
            os.rmdir(pin_dir)

    request.addfinalizer(remove_pins)
    r = _cli("attach", "--interface", "pbx1", "--netns", topo.pbx, "--pin-dir", pin_dir)
    assert r.returncode == 0, r.stderr
    assert "XDP in native mode" in r.stdout
    st = A.xdp_status("pbx1", netns=topo.pbx)
    assert (st.mode, st.prog_name) == ("native", "nfguard_xdp")
    assert [n for _, _, n in A.tc_status("pbx1", netns=topo.pbx)] == ["nfguard_tc"]

    r = _cli("attach", "--interface", "lo", "--netns", topo.pbx, "--pin-dir", pin_dir,
             "--xdp-mode", "native")
    assert r.returncode != 0
    assert r.stderr.startswith("nfguard: error: lo (network namespace")
    assert "does not support XDP in native mode" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr

    r = _cli("detach", "--interface", "pbx1", "--netns", topo.pbx)
    assert r.returncode == 0, r.stderr
    assert "detached XDP and TC ingress" in r.stdout
    assert A.xdp_status("pbx1", netns=topo.pbx) == (None, 0, None)
    assert tc_show(topo.pbx, "filter", "show", "dev", "pbx1", "ingress") == ""


def test_cli_attach_refuses_before_compiling(topo, tmp_path):
    """Not root, or a pin dir off bpffs: one line, nothing attached."""
    r = subprocess.run(
        ["ip", "netns", "exec", topo.pbx, "setpriv", "--reuid=65534", "--regid=65534",
         "--clear-groups", sys.executable, "-m", "nfguard", "attach", "--interface", "pbx1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "nfguard: error: nfguard attach needs root (CAP_NET_ADMIN, and CAP_BPF or "
        "CAP_SYS_ADMIN): run it with sudo or from the systemd unit"
    )
    r = _cli("attach", "--interface", "pbx1", "--netns", topo.pbx,
             "--pin-dir", str(tmp_path / "pins"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"nfguard: error: --pin-dir {tmp_path / 'pins'} is not on a BPF file system: "
        "use a directory under /sys/fs/bpf"
    ]
    assert A.xdp_status("pbx1", netns=topo.pbx) == (None, 0, None)
    assert A.tc_status("pbx1", netns=topo.pbx) == []


_SILENT_PEER = """
import asyncio, subprocess
from nfguard.daemon import esl
from nfguard.daemon.esl import EslConnection
from nfguard.lab.fakeesl import FakeEsl

esl.KEEPALIVE_IDLE, esl.KEEPALIVE_INTERVAL, esl.USER_TIMEOUT_MS = 1, 1, 3000

async def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = FakeEsl()
    port = await server.start()
    conn = await EslConnection.open("127.0.0.1", port, "ClueCon", on_event=lambda f: None)
    # FreeSWITCH's host gone silent: nothing more from its port, no FIN, no RST
    subprocess.run(["nft", "add table inet t; add chain inet t c { type filter hook input "
                    f"priority 0; }}; add rule inet t c tcp sport {port} drop"], check=True)
    loop = asyncio.get_running_loop()
    t = loop.time()
    await asyncio.wait_for(conn.closed.wait(), 30)
    print(f"{loop.time() - t:.1f}", conn.close_reason)

asyncio.run(main())
"""


def test_an_event_socket_peer_gone_silent_is_found_dead():
    """A FreeSWITCH host that vanishes without closing the connection: TCP
    keepalive finds it gone (here within 3 s; 30 s by default), and the
    connection closes with the reason, so the runner reconnects and
    resyncs instead of trusting a dead stream until the next resync."""
    if os.geteuid() != 0:
        cannot_run("needs root: a network namespace and an nft rule")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", _SILENT_PEER], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    took, reason = out.stdout.split(" ", 1)
    assert 2.0 <= float(took) <= 10, out.stdout
    assert "the connection failed: Connection timed out" in reason, out.stdout
