"""The socket stage over veth (nfguard.lab.topology): what FreeSWITCH's
socket would receive, judged after GSO segmentation and IP reassembly.

The PBX socket is made while the test process sits in a cgroup of its own,
where the socket stage is attached; nothing else on the host is in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

import pytest

from nfguard.kernel import attach as A
from nfguard.lab.topology import ADDR, run
from nfguard.packets import sip_request

from conftest import cannot_run, default_state
from test_netns import recv_until, sentinel

pytestmark = pytest.mark.netns

USER, REALM = "1001", "pbx.example.com"
UDP_SEGMENT = 103  # linux/udp.h
SEG = 744
INVITE = sip_request("INVITE", user=USER, realm=REALM)
BIG_INVITE = sip_request("INVITE", user=USER, realm=REALM,
                         extra_headers=[f"X-Pad-{i}: {'p' * 70}" for i in range(20)])


def cgroup2_root() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            _, path, fstype = line.split()[:3]
            if fstype == "cgroup2":
                return path
    return None


@contextlib.contextmanager
def own_cgroup():
    """A fresh cgroup v2 directory (removed after)."""
    root = cgroup2_root()
    if root is None:
        cannot_run("no cgroup v2 hierarchy is mounted")
    path = os.path.join(root, f"nfgtest-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


@contextlib.contextmanager
def member_of(path: str):
    """This process in cgroup path for the block: sockets made meanwhile
    belong to it for good."""
    with open("/proc/self/cgroup") as f:
        home = next(ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::"))
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        with open(os.path.join(cgroup2_root() + home, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


@pytest.fixture
def guarded(topo, sock_program):
    """The socket stage's load on pbx1 and pbx2 in generic XDP mode (as
    where native is refused), at ingress of a cgroup holding the PBX's
    5060 socket; the phone's credentials bound; fragments: pass."""
    p = default_state(sock_program)
    p.configure(mode="enforce", action="drop", fragments="pass")
    p.add_binding(USER, REALM, ADDR["ipv4"]["phone"])
    ifindexes = []
    for ifname in ("pbx1", "pbx2"):
        assert A.attach(ifname, p.xdp_fn.fd, p.tc_fn.fd, mode="generic",
                        netns=topo.pbx) == "generic"
        link = json.loads(run("ip", "-j", "link", "show", ifname, ns=topo.pbx))[0]
        ifindexes.append(link["ifindex"])
    p.set_socket_interfaces(ifindexes)
    with own_cgroup() as cg:
        with member_of(cg):
            pbx = topo.udp(topo.pbx)
        pbx.bind(("0.0.0.0", 5060))
        p.attach_cgroup(cg)
        try:
            yield p, pbx, cg
        finally:
            p.detach_cgroup(cg)
            pbx.close()


def arrived(topo, pbx, who: str, *datagrams: bytes, gso: int = 0) -> list[bytes]:
    """Send the datagrams from who to the PBX (one UDP_SEGMENT send when
    gso is set), then a REGISTER; what reached the PBX socket before it."""
    a = ADDR["ipv4"]
    s = topo.udp(topo.phone if who == "phone" else topo.attacker)
    dst = (a["pbx1"] if who == "phone" else a["pbx2"], 5060)
    if gso:
        s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, gso)
        s.sendto(b"".join(datagrams), dst)
        s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 0)
    else:
        for d in datagrams:
            s.sendto(d, dst)
    stop = sentinel(who)
    s.sendto(stop, dst)
    return [data for data, _ in recv_until(pbx, stop)][:-1]


@pytest.mark.parametrize("first", [b"X" * SEG, sip_request("INVITE", auth="").ljust(SEG, b" ")],
                         ids=["filler", "an INVITE without credentials"])
def test_gso_segments_are_judged_one_by_one(topo, guarded, first):
    """A sender's UDP_SEGMENT super-packet crosses veth whole and generic
    XDP judges only its first segment's bytes: without the socket stage the
    credentialed INVITE of the second segment reached the socket; with it,
    never from the attacker, always from the bound phone."""
    p, pbx, cg = guarded
    second = INVITE.ljust(SEG, b" ")
    p.detach_cgroup(cg)
    assert arrived(topo, pbx, "attacker", first, second, gso=SEG) == [first, second], \
        "the super-packet was not judged as one frame: the bypass is not reproduced"
    p.attach_cgroup(cg)
    assert arrived(topo, pbx, "attacker", first, second, gso=SEG) == [first]
    assert arrived(topo, pbx, "phone", first, second, gso=SEG) == [first, second]
    c = p.counters()
    assert c["not_bound"] == 1 and c["bound"] == 1, c


@pytest.mark.parametrize("mtu", [1500, 576])
def test_fragmented_invites_are_judged_whole(topo, guarded, mtu):
    """An INVITE whose headers do not end in the first fragment (1.6 kB of
    headers at MTU 1500; any INVITE at 576): the bound phone's is
    reassembled and reaches the socket, the attacker's never does."""
    p, pbx, _ = guarded
    invite = BIG_INVITE if mtu == 1500 else INVITE
    for ns, ifname in ((topo.phone, "eth0"), (topo.attacker, "eth0"), (topo.pbx, "pbx1"),
                       (topo.pbx, "pbx2")):
        run("ip", "link", "set", ifname, "mtu", str(mtu), ns=ns)
    assert len(invite) > mtu - 28
    assert arrived(topo, pbx, "phone", invite) == [invite]
    assert arrived(topo, pbx, "attacker", invite) == []
    c = p.counters()
    assert (c["fragment_passed"], c["bound"], c["not_bound"]) == (2, 1, 1), c
