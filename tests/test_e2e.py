"""End to end: real SIPp peers, the stand-in PBX and fake Event Socket, and
the real `nfguard run`, in network namespaces over veth (nfguard.lab).

The story: a phone registers and calls; an attacker with the same
credentials calls from its own address; the phone moves and re-registers;
the phone unregisters. Then a flood of INVITEs with credentials."""

from __future__ import annotations

import os
import socket
import time

import pytest

from nfguard.lab.pbx import REALM
from nfguard.lab.world import ADDR, USER, Lab
from nfguard.packets import sip_request

from conftest import need_kernel

pytestmark = pytest.mark.netns


@pytest.fixture
def lab():
    need_kernel()
    with Lab(prefix="nfge") as lab:
        yield lab


def authorized_from(lab: Lab, ip: str) -> int:
    """INVITEs with valid credentials that reached the PBX socket from ip."""
    return len(lab.pbx.invites(authorized=True, src=ip))


def wait_bound(lab: Lab, ip: str, present: bool = True) -> float:
    """Seconds from the stand-in's 200 OK (its register or unregister
    event) until the daemon's kernel map says ip is (or is no longer) bound."""
    from nfguard.daemon import control
    t0 = time.time()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = control.request(lab.sock_path, "bindings")["bindings"]
        if any(r["ip"] == ip for r in rows) == present:
            return time.time() - t0
        time.sleep(0.005)
    raise AssertionError(f"{ip} {'never bound' if present else 'still bound'}")


def test_phone_attacker_move_unregister_in_drop_mode(lab, record_property):
    lab.write_config(mode="enforce", action="drop")
    lab.start_daemon()
    phone, moved, attacker = ADDR["phone"], ADDR["phone_moved"], ADDR["attacker"]

    # the phone registers, then calls: its INVITE with credentials arrives
    assert lab.sipp("phone", "register") == 0
    wait_bound(lab, phone)
    assert lab.sipp("phone", "invite") == 0
    assert authorized_from(lab, phone) == 1

    # the attacker has the password and calls from its own address: the
    # INVITE with credentials never reaches the PBX; the call fails
    assert lab.sipp("attacker", "invite") != 0
    assert authorized_from(lab, attacker) == 0
    assert lab.pbx.invites(authorized=False, src=attacker)  # the 407 round went through
    st = lab.status()
    assert st["counters"]["not_bound"] >= 1 and st["counters"]["bound"] >= 1

    # the phone moves to a new address and registers again; how long from
    # the PBX's 200 OK until the kernel map holds the new address
    assert lab.sipp("phone", "register", ip=moved) == 0
    wait_bound(lab, moved)
    lag = time.time() - lab.registered_at[(USER, moved)]
    record_property("register_to_binding_s", round(lag, 4))
    assert lag < 1.0
    assert lab.sipp("phone", "invite", ip=moved) == 0
    assert authorized_from(lab, moved) == 1
    # ... and its calls no longer work from the old address
    wait_bound(lab, phone, present=False)
    assert lab.sipp("phone", "invite", ip=phone) != 0
    assert authorized_from(lab, phone) == 1  # still only the first call

    # unregister closes the door
    assert lab.sipp("phone", "register", ip=moved, expires="0") == 0
    wait_bound(lab, moved, present=False)
    assert lab.sipp("phone", "invite", ip=moved) != 0
    assert authorized_from(lab, moved) == 1
    assert "ALERT: the credentials of 1001@pbx.example.com were used from 10.200.2.2" in \
        open(lab.log_path).read()


def test_reject_mode_the_attacker_gets_icmp(lab):
    lab.write_config(mode="enforce", action="reject")
    lab.start_daemon()
    assert lab.sipp("phone", "register") == 0
    wait_bound(lab, ADDR["phone"])
    assert lab.sipp("attacker", "invite") != 0
    s = lab.udp("attacker")
    with s:
        s.connect((ADDR["pbx2"], 5060))
        s.send(sip_request("INVITE", user=USER, realm=REALM))
        s.settimeout(3)
        with pytest.raises(OSError) as err:
            s.recv(100)
    assert not isinstance(err.value, socket.timeout), "no ICMP rejection arrived"
    assert authorized_from(lab, ADDR["attacker"]) == 0
    st = lab.until(lambda s: (s["nft"]["rejected"] or {}).get("packets", 0) >= 2, 5,
                   "the nft reject counter")
    assert st["counters"]["not_bound"] >= 2


def test_monitor_mode_only_counts(lab):
    lab.write_config(mode="monitor")
    lab.start_daemon()
    assert lab.sipp("phone", "register") == 0
    wait_bound(lab, ADDR["phone"])
    assert lab.sipp("attacker", "invite") == 0  # the call goes through
    assert authorized_from(lab, ADDR["attacker"]) == 1
    st = lab.until(lambda s: any(e["src"] == ADDR["attacker"] for e in s["recent_events"]),
                   5, "the verdict event")
    assert st["kernel"]["mode"] == "monitor" and st["counters"]["not_bound"] >= 1
    ev = [e for e in st["recent_events"] if e["src"] == ADDR["attacker"]]
    assert ev and ev[0]["action"] == "pass" and ev[0]["would"] == "drop"


def _cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def test_flood_of_invites_with_credentials_reaches_nothing(lab, record_property, capsys):
    lab.write_config(mode="enforce", action="drop")
    lab.start_daemon()
    assert lab.sipp("phone", "register") == 0
    wait_bound(lab, ADDR["phone"])
    before = lab.status()["counters"].get("not_bound", 0)
    frame = sip_request("INVITE", user=USER, realm=REALM)
    s = lab.udp("attacker")
    sent = 0
    busy0, total0 = _cpu_busy()
    t0 = time.monotonic()
    with s:
        s.setblocking(False)
        dst = (ADDR["pbx2"], 5060)
        while time.monotonic() - t0 < 3.0:
            for _ in range(1000):
                try:
                    s.sendto(frame, dst)
                    sent += 1
                except BlockingIOError:
                    pass
    elapsed = time.monotonic() - t0
    busy1, total1 = _cpu_busy()
    time.sleep(0.3)
    dropped = lab.status()["counters"].get("not_bound", 0) - before
    assert sent > 10_000
    assert dropped == sent  # every one of them counted and dropped
    assert authorized_from(lab, ADDR["attacker"]) == 0
    assert not lab.pbx.invites(src=ADDR["attacker"])  # not one reached the PBX socket
    cpu = 100 * (busy1 - busy0) / max(1, total1 - total0) * os.cpu_count()
    record_property("flood_pps", round(sent / elapsed))
    record_property("flood_cpu_percent_of_one_core", round(cpu))
    with capsys.disabled():
        print(f"\nflood: {sent} INVITEs with credentials in {elapsed:.1f} s "
              f"({sent / elapsed:,.0f}/s from one Python sender), all dropped by XDP; "
              f"CPU {cpu:.0f}% of one core (sender and XDP together)")
