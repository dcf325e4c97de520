"""nfguard against the real FreeSWITCH (nfguard.lab.freeswitch): one
FreeSWITCH 1.10.12 for the module in the lab's PBX namespace (vanilla: one
registration per user), phones and an attacker in their namespaces over
veth, and `nfguard run` per test as on a real host, XDP on pbx1 and pbx2,
enforcing. The peers are SIPp (the project's register scenario) and
nfguard.lab.sipclient, whose INVITE carries an SDP offer (FreeSWITCH
answers an INVITE without one with 480).

Where the bundle (../shared/freeswitch/) or its runtime libraries are
missing these tests skip with that reason; under NFGUARD_REQUIRE_KERNEL=1
they fail instead."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from nfguard.lab.sipclient import SipClient
from nfguard.lab.topology import ADDR
from nfguard.lab.world import scenario

from conftest import wait_for

pytestmark = pytest.mark.netns

PHONE, ATTACKER = ADDR["ipv4"]["phone"], ADDR["ipv4"]["attacker"]
REALM = "pbx.test"


@pytest.fixture
def fs(freeswitch):
    """The module's FreeSWITCH with an empty registration table."""
    freeswitch.flush()
    return freeswitch


def peer(fs, who: str, transport: str = "udp", timeout: float = 4.0) -> SipClient:
    ip = PHONE if who == "phone" else ATTACKER
    return SipClient(fs.topo.name(who), ip, (fs.sip_ip, fs.port("internal")), transport,
                     timeout)


def password(fs, user: str) -> str:
    return fs.users[REALM][user]


def sipp_register(fs, tmp_path, user: str = "1001") -> int:
    """The project's SIPp register scenario from the phone; its exit code."""
    argv = fs.topo.nsenter("phone") + [
        "sipp", f"{fs.sip_ip}:{fs.port('internal')}", "-sf", scenario("register"), "-m", "1",
        "-i", PHONE, "-p", "0", "-s", user, "-au", user, "-ap", password(fs, user),
        "-key", "realm", REALM, "-key", "expires", "300", "-timeout", "5s",
        "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(tmp_path / "sipp.err")]
    return subprocess.run(argv, capture_output=True, timeout=30, cwd=tmp_path).returncode


def test_phone_calls_and_an_attacker_with_its_password_is_dropped(fs, nfguard_fs, tmp_path):
    d = nfguard_fs
    st = d.start()
    assert st["kernel"]["mode"] == "enforce" and st["bindings"]["registry"] == 0

    assert sipp_register(fs, tmp_path) == 0
    d.until_mirrors(timeout=1.0)
    assert d.bound() == {("1001", REALM, PHONE)}
    rows = json.loads(d.cli("bindings", "--json").stdout)["bindings"]
    assert [(r["user"], r["realm"], r["ip"]) for r in rows] == [("1001", REALM, PHONE)]

    phone, attacker = peer(fs, "phone"), peer(fs, "attacker", timeout=3.0)
    assert phone.invite("1001", password(fs, "1001"), REALM) == 200

    # The attacker's first INVITE (no credentials) is challenged: the path
    # to FreeSWITCH works. The INVITE with the phone's password is dropped.
    assert attacker.invite("1001", password(fs, "1001"), REALM) is None
    assert attacker.last is not None and attacker.last.status == 407
    st = d.until(lambda s: s["counters"].get("not_bound", 0) >= 1, what="the not_bound count")
    assert st["counters"]["bound"] >= 1
    alert = f"ALERT: the credentials of 1001@{REALM} were used from {ATTACKER}"
    wait_for(lambda: alert in d.log(), 5, "the ALERT line")

    # ... and the phone still calls
    assert phone.invite("1001", password(fs, "1001"), REALM) == 200


def test_freeswitch_restart_keeps_its_registrations_and_nfguard_follows(
        fs, nfguard_fs, record_property):
    d = nfguard_fs
    phone = peer(fs, "phone")
    assert phone.register("1001", password(fs, "1001"), REALM, src=(PHONE, 5062)) == 200
    assert phone.register("1002", password(fs, "1002"), REALM, src=(PHONE, 5064)) == 200
    # FreeSWITCH writes its table a moment after the 200 OK (a first test
    # of the module meets an empty table here)
    deadline = time.monotonic() + 5
    while {r["user"] for r in fs.registrations()} != {"1001", "1002"}:
        assert time.monotonic() < deadline, fs.registrations()
        time.sleep(0.05)
    d.start()
    d.until_mirrors(timeout=1.0)
    before = fs.registrations()
    assert {r["user"] for r in before} == {"1001", "1002"}
    esl = d.status()["esl"][0]

    fs.restart()
    t0 = time.monotonic()
    after = fs.registrations()
    key = lambda r: (r["user"], r["realm"], r["ip"], r["port"], r["call_id"])  # noqa: E731
    assert [key(r) for r in after] == [key(r) for r in before]  # they survived

    # the daemon saw the connection go, reconnected and resynced, soon after
    # FreeSWITCH answered again (its reconnect backoff is capped at 1 s)
    d.until(lambda s: s["esl"][0]["connects"] > esl["connects"]
            and s["esl"][0]["state"] == "up", timeout=3, what="the reconnect")
    d.until_mirrors(timeout=1.0)
    record_property("restart_to_mirror_s", round(time.monotonic() - t0, 2))
    # FreeSWITCH sent no event for the rows that survived
    assert d.status()["esl"][0]["events_applied"] == esl["events_applied"]
    assert phone.invite("1002", password(fs, "1002"), REALM) == 200


def test_esl_outage_with_a_registration_change_converges(fs, nfguard_fs, record_property):
    d = nfguard_fs
    phone = peer(fs, "phone")
    assert phone.register("1001", password(fs, "1001"), REALM, call_id="c-1001",
                          src=(PHONE, 5062)) == 200
    d.start()
    d.until_mirrors(timeout=1.0)
    esl = d.status()["esl"][0]

    with fs.daemon_esl_outage():
        d.until(lambda s: s["esl"][0]["state"] == "down", timeout=10, what="ESL down")
        assert phone.register("1002", password(fs, "1002"), REALM, src=(PHONE, 5064)) == 200
        assert phone.unregister("1001", password(fs, "1001"), REALM, call_id="c-1001",
                                src=(PHONE, 5062)) == 200
        want = {("1002", REALM, PHONE)}
        assert fs.bound() == want
        assert d.bound() == {("1001", REALM, PHONE)}  # no event reached the daemon
    t0 = time.monotonic()
    # the reconnect waits out its backoff (at most a few seconds after an
    # outage this short), then resyncs
    d.until(lambda s: s["esl"][0]["connects"] > esl["connects"]
            and s["esl"][0]["state"] == "up", timeout=10, what="the reconnect")
    d.until_mirrors(timeout=1.0)
    record_property("outage_end_to_mirror_s", round(time.monotonic() - t0, 2))
    assert d.bound() == want
    assert phone.invite("1002", password(fs, "1002"), REALM) == 200
