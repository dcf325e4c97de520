"""nfguard's bindings equal the real FreeSWITCH's registration table in
every registration mode, after every step a phone or an operator can take.

One FreeSWITCH 1.10.12 for the module (nfguard.lab.freeswitch) with one SIP
profile per `multiple-registrations` value: off (vanilla: one row per
user), `contact`, `true` (contact mode in 1.10.12) and `call-id`; one
`nfguard run` following it, enforcing.
The phones are nfguard.lab.sipclient at three addresses of the phone
namespace, so that each contact is its own binding. After each step the
test reads both tables until FreeSWITCH has settled (its deferred SQL runs
up to ~0.3 s after the answer) and asserts that nfguard's bindings equal
FreeSWITCH's from at most 1 s after the step on.

The profiles expire rows without the 60 s late margin and sweep every
second (`sip-expires-late-margin` 0, `registration-thread-frequency` 1), so
that an expiry takes seconds. Where the bundle is missing these tests skip
(fail under NFGUARD_REQUIRE_KERNEL=1), as tests/test_freeswitch.py does.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from nfguard.lab.sipclient import SipClient

pytestmark = pytest.mark.netns

PROFILES = {"off": {"port": 5070, "multiple_registrations": None},
            "contact": {"port": 5071, "multiple_registrations": "contact"},
            "true": {"port": 5073, "multiple_registrations": "true"},  # 1.10.12: contact
            "callid": {"port": 5072, "multiple_registrations": "call-id"}}
REALM, TENANT_B = "pbx.test", "tenant-b.test"
# three phones in the phone namespace: 10.200.1.2 is the topology's own
A, B, C = ("10.200.1.2", 5062), ("10.200.1.3", 5063), ("10.200.1.4", 5064)
MIRROR_WITHIN = 1.0  # seconds after a step
SETTLED = 0.5  # FreeSWITCH's table unchanged this long: its step is done


@pytest.fixture(scope="module")
def fs(fs_topo):
    from nfguard.lab.freeswitch import FreeSwitch

    for ip, _ in (B, C):
        fs_topo.add_address("phone", "eth0", f"{ip}/24")
    fs = FreeSwitch(fs_topo, profiles=PROFILES)
    try:
        for name in PROFILES:
            path = os.path.join(fs.conf, "sip_profiles", f"{name}.xml")
            text = open(path).read()
            text, n = re.subn(r"<settings>", "<settings>\n"
                              '    <param name="sip-expires-late-margin" value="0"/>\n'
                              '    <param name="registration-thread-frequency" value="1"/>',
                              text, count=1)
            assert n == 1, path
            open(path, "w").write(text)
        fs.start()
    except BaseException:
        fs.close()
        raise
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def daemon(fs):
    from nfguard.lab.freeswitch import Nfguard

    d = Nfguard(fs)
    try:
        d.start()
        yield d
    finally:
        d.close()


@pytest.fixture
def clean(fs, daemon):
    """Every profile empty, and nfguard with it."""
    fs.flush()
    # flush_inbound_reg's own delete (`expires > 0`, every row) is deferred:
    # a REGISTER before it runs is deleted too, with no event
    time.sleep(SETTLED)
    daemon.until_mirrors(timeout=MIRROR_WITHIN + 1)
    return fs, daemon


def phone(fs, profile: str, ip: str) -> SipClient:
    return SipClient(fs.topo.name("phone"), ip, (fs.sip_ip, fs.port(profile)))


def mirrors(fs, d, t0: float, what: str) -> float:
    """Poll both tables until FreeSWITCH has settled (unchanged for SETTLED
    seconds, and MIRROR_WITHIN seconds gone since the step at t0); assert
    that nfguard's bindings equal FreeSWITCH's from at most MIRROR_WITHIN
    after t0 on. Returns that lag (seconds: when nfguard last differed)."""
    fs_last, fs_changed, differed, diff = None, t0, None, None
    while True:
        now = time.monotonic()
        want, have = fs.bound(), d.bound()
        if want != fs_last:
            fs_last, fs_changed = want, now
        if want != have:
            differed, diff = now, (sorted(want - have), sorted(have - want))
        if now - t0 >= MIRROR_WITHIN and now - fs_changed >= SETTLED:
            break
        assert now - t0 < 10, f"{what}: FreeSWITCH's table did not settle"
        time.sleep(0.02)
    lag = 0.0 if differed is None else differed - t0
    assert differed is None or lag < MIRROR_WITHIN, (
        f"{what}: nfguard differed from FreeSWITCH {lag:.2f} s after the step "
        f"(missing {diff[0]}, extra {diff[1]})")
    assert want == have, f"{what}: missing {diff[0]}, extra {diff[1]}"
    return lag


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_step_in_every_mode_mirrors_freeswitch(clean, profile, record_property):
    fs, d = clean
    pw = fs.users[REALM]
    a, b, c = (phone(fs, profile, ip) for ip, _ in (A, B, C))
    rereads = d.status()["esl"][0]["rereads"]

    def reg(ua, user, src, call_id, realm=REALM, **kw):
        password = fs.users[realm][user]
        return lambda: ua.register(user, password, realm, call_id=call_id, src=src, **kw)

    steps = [
        ("1001 registers at A", reg(a, "1001", A, "a1")),
        ("1001 refreshes at A", reg(a, "1001", A, "a1")),
        ("1002 registers at C", reg(c, "1002", C, "c1")),
        ("1001 again from B, another Call-ID", reg(b, "1001", B, "b1")),
        ("1001 again from C with A's Call-ID", reg(c, "1001", C, "a1")),
        ("1001 unregisters B's contact", lambda: b.unregister(
            "1001", pw["1001"], REALM, call_id="b1", src=B)),
        ("1001 unregisters another contact", lambda: a.unregister(
            "1001", pw["1001"], REALM, call_id="x1", src=(A[0], 5099))),
        ("1001 registers at A again, Call-ID a2", reg(a, "1001", A, "a2")),
        ("1001 registers at B too", reg(b, "1001", B, "b2")),
        ("wildcard unregister (Contact: *) from B", lambda: b.unregister_all(
            "1001", pw["1001"], REALM, call_id="w1", src=B)),
        ("1001 of tenant B registers at A", reg(a, "1001", A, "tb1", realm=TENANT_B)),
        ("1003 registers at B for 3 s", reg(b, "1003", B, "e1", expires=3)),
    ]
    lags = {}
    for what, step in steps:
        assert step() == 200, what
        lags[what] = mirrors(fs, d, time.monotonic(), what)

    # the expiry: FreeSWITCH's sweep deletes 1003 (sofia::expire)
    deadline = time.monotonic() + 10
    while ("1003", REALM.lower(), B[0]) in fs.bound():
        assert time.monotonic() < deadline, "FreeSWITCH did not expire 1003"
        time.sleep(0.05)
    lags["expiry"] = mirrors(fs, d, time.monotonic(), "expiry")

    assert fs.registrations(profile), "flush_inbound_reg needs rows to flush"
    fs.api(f"sofia profile {profile} flush_inbound_reg")
    lags["flush_inbound_reg"] = mirrors(fs, d, time.monotonic(), "flush_inbound_reg")
    assert fs.bound() == set()

    st = d.status()
    record_property("max_lag_s", round(max(lags.values()), 3))
    record_property("lags", {k: round(v, 3) for k, v in lags.items()})
    record_property("rereads", st["esl"][0]["rereads"] - rereads)
    assert st["esl"][0]["reread_fallbacks"] == 0
    # the events said what they could: a refresh is never read again
    assert lags["1001 refreshes at A"] < 0.1
    assert st["freeswitch_drift"]["added"] == st["freeswitch_drift"]["removed"] == 0


def test_freeswitch_restart_and_esl_outage(clean, record_property):
    """Registrations survive a FreeSWITCH restart with no events; changes
    made while the daemon's Event Socket is cut arrive with the reconnect's
    resync, and count as drift: the events missed them."""
    fs, d = clean
    for profile in PROFILES:
        ua = phone(fs, profile, A[0])
        assert ua.register("1001", fs.users[REALM]["1001"], REALM, call_id=f"r-{profile}",
                           src=A) == 200
    mirrors(fs, d, time.monotonic(), "registered in each profile")
    esl = d.status()["esl"][0]

    fs.restart()
    d.until(lambda s: s["esl"][0]["connects"] > esl["connects"]
            and s["esl"][0]["state"] == "up", timeout=30, what="the reconnect")
    lag = mirrors(fs, d, time.monotonic(), "after the restart")
    record_property("restart_lag_s", round(lag, 3))
    st = d.status()
    assert st["esl"][0]["events_applied"] == esl["events_applied"]  # no event came
    assert st["freeswitch_drift"]["added"] == st["freeswitch_drift"]["removed"] == 0

    # The outage (see FreeSwitch.daemon_esl_outage)
    esl = st["esl"][0]
    with fs.daemon_esl_outage():
        d.until(lambda s: s["esl"][0]["state"] == "down", timeout=10, what="ESL down")
        # off: a new address replaces the row; call-id: 1002 comes
        ua = phone(fs, "off", B[0])
        assert ua.register("1001", fs.users[REALM]["1001"], REALM, call_id="o2", src=B) == 200
        ua = phone(fs, "callid", C[0])
        assert ua.register("1002", fs.users[REALM]["1002"], REALM, call_id="n1", src=C) == 200
    d.until(lambda s: s["esl"][0]["connects"] > esl["connects"]
            and s["esl"][0]["state"] == "up", timeout=15, what="the reconnect")
    lag = mirrors(fs, d, time.monotonic(), "after the outage")
    record_property("outage_lag_s", round(lag, 3))

    # what the resync found is drift, with its bindings, in status and the log
    want = {("added", f"1001@{REALM} {B[0]}"), ("added", f"1002@{REALM} {C[0]}")}
    st = d.until(lambda s: s["freeswitch_drift"]["added"] >= 2, timeout=5, what="drift")
    drift = st["freeswitch_drift"]
    assert (drift["added"], drift["removed"]) == (2, 0)  # 1001 stays bound at A (contact)
    assert {(i["change"], i["binding"]) for i in drift["last"]} == want
    assert "that the events missed: +1001@pbx.test 10.200.1.3" in d.log()
    text = d.cli("status").stdout
    assert "drift FS    2 added, 0 removed in 1 resync(s)" in text
