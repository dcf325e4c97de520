"""The real FreeSWITCH under attack, without and with nfguard (issue 13):
INVITE floods without credentials, REGISTER brute force, SIPVicious's
svcrack, and a phone behind the brute-forcer's NAT.

One FreeSWITCH 1.10.12 for the module (nfguard.lab.freeswitch, vanilla:
sessions-per-second 30) in the lab's PBX namespace; the phone in the phone
namespace (10.200.1.2), the attackers in the attacker namespace
(10.200.2.2 floods and svcrack, 10.200.2.3 the bench's brute force).
The floods and the brute force are nfguard.lab.flood; the attack run is
nfguard.bench.attack's, shortened. Each test starts its own `nfguard run`
(enforcing, XDP on pbx1 and pbx2) where it wants nfguard.

Where the bundle is missing these tests skip (fail under
NFGUARD_REQUIRE_KERNEL=1), as tests/test_freeswitch.py does; svcrack
(Debian package sipvicious) must be installed where kernel tests are
required.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from nfguard.lab import flood
from nfguard.lab.sipclient import SipClient
from nfguard.lab.topology import ADDR

from conftest import cannot_run, wait_for

pytestmark = pytest.mark.netns

PHONE, ATTACKER = ADDR["ipv4"]["phone"], ADDR["ipv4"]["attacker"]
REALM = "pbx.test"
# A short ban so that its expiry is seen within the test.
BANS = {"failures": 5, "window": 60, "ban_time": 5}
ATTACK_CALLS = ATTACK_SECONDS = 12  # per scenario; 20 before the guard module joined CI (time)


@pytest.fixture
def fs(freeswitch):
    """The module's FreeSWITCH with an empty registration table."""
    freeswitch.flush()
    return freeswitch


def client(fs, ip: str, timeout: float = 4.0) -> SipClient:
    ns = fs.topo.name("phone" if ip.startswith("10.200.1.") else "attacker")
    return SipClient(ns, ip, (fs.sip_ip, fs.port("internal")), timeout=timeout)


def password(fs, user: str) -> str:
    return fs.users[REALM][user]


def bans(d) -> list[dict]:
    return json.loads(d.cli("bans", "--json").stdout)["bans"]


# -- (i) the attack run ------------------------------------------------------------
def test_phone_keeps_calling_under_floods_and_brute_force_only_with_nfguard(
        fs, record_property):
    from nfguard.bench.attack import SCENARIOS, bench_attack, print_attack

    result = bench_attack(ATTACK_CALLS, ATTACK_SECONDS, fs=fs)
    print_attack(result)  # the figures, in the test's output (-s) and its report
    record_property("attack", json.dumps(result))
    runs = result["scenarios"]
    assert list(runs) == list(SCENARIOS)
    for name, phases in runs.items():
        with_, without = phases["with"], phases["without"]
        assert with_["placed"] == without["placed"] == ATTACK_CALLS
        # The attacker sent at the rate asked (the figures measure that attack)
        rate = SCENARIOS[name][1]
        assert with_["attack"]["rate_achieved"] >= 0.9 * rate, (name, with_)
        assert without["attack"]["rate_achieved"] >= 0.9 * rate, (name, without)
        # Without nfguard the attacker's packets reached FreeSWITCH (all of
        # them in every run here; 1% spared for a veth's drop on a busy host)
        assert without["attacker_reached"] >= 0.99 * without["attacker_sent"], (name, without)
        # With nfguard the phone is answered, and most of the attack never
        # reaches FreeSWITCH (rate limited, or banned)
        assert with_["answered"] >= ATTACK_CALLS - 1, (name, with_)
        assert with_["attacker_reached"] < without["attacker_reached"] / 5, (name, phases)
    # The damage without nfguard, as measured here (2-core host). Vanilla
    # FreeSWITCH grants 30 new sessions a second (sessions-per-second);
    # every INVITE takes one, challenged or not. At 150/s the flood spends
    # them within the first 0.2 s of each second and the phone, calling at
    # random moments, gets 503 for most calls (2-5 of 20 answered in the
    # runs that set these bounds). At 1,000/s FreeSWITCH answers ~5% of the
    # INVITEs and silently drops the rest, the phone's too (1-2 of 20
    # answered; no socket buffer overflow: its SIP stack drops them). Its
    # CPU is not what fails (under half a core), so the assertions are on
    # answered calls, with margins far from what was measured.
    assert runs["invite_150"]["without"]["answered"] <= ATTACK_CALLS - 3, runs["invite_150"]
    assert runs["invite_1000"]["without"]["answered"] <= ATTACK_CALLS // 2, runs["invite_1000"]


# -- (ii) a ban and its expiry ---------------------------------------------------------
def test_brute_force_is_banned_at_the_threshold_and_unbanned_at_expiry(fs, nfguard_fs,
                                                                       record_property):
    d = nfguard_fs
    d.start(bans=BANS)
    t0 = time.monotonic()
    r = flood.register_bruteforce(fs.topo.name("attacker"), (ATTACKER, 0),
                                  (fs.sip_ip, fs.port("internal")), "1002", REALM,
                                  rate=50, seconds=2)
    # Every attempt got its 401 challenge until the ban; then nothing came
    # back. The ban lands within one failure of the threshold.
    answered = [o for o in r["outcomes"] if o != "challenge-lost"]
    record_property("failures_before_the_ban", r["failures"])
    assert r["sent"] >= 90, r
    assert BANS["failures"] <= r["failures"] <= BANS["failures"] + 1, r
    assert r["found"] == [] and len(answered) <= BANS["failures"] + 2, r
    assert r["outcomes"][-20:] == ["challenge-lost"] * 20, r
    rows = bans(d)
    assert [row["key"] for row in rows] == [ATTACKER], rows
    st = d.status()
    assert st["counters"].get("banned", 0) >= 1, st["counters"]

    # Still banned a moment later: a REGISTER with the right password is dropped
    attacker = client(fs, ATTACKER, timeout=1.0)
    assert attacker.register("1002", password(fs, "1002"), REALM) is None
    # At expiry (ban_time after the ban, the kernel checks it) it is answered again
    answered_at = wait_for(
        lambda: attacker.register("1002", password(fs, "1002"), REALM) == 200
        and time.monotonic(), BANS["ban_time"] + 10, "the ban's expiry")
    assert answered_at - t0 >= BANS["ban_time"] - 0.5
    record_property("answered_again_after_s", round(answered_at - t0, 1))
    assert bans(d) == []  # `nfguard bans` lists active bans only


# -- (iii) a NAT shared with a working phone ------------------------------------------------
def test_phone_behind_the_brute_forcers_nat_keeps_calling(fs, nfguard_fs):
    d = nfguard_fs
    d.start(bans=BANS)
    phone = client(fs, PHONE)
    assert phone.register("1001", password(fs, "1001"), REALM, expires=300,
                          src=(PHONE, 5062)) == 200
    wait_for(lambda: ("1001", REALM, PHONE) in d.bound(), 5, "the phone's binding")

    # The brute-forcer shares the phone's address (another port: the NAT)
    r = flood.register_bruteforce(fs.topo.name("phone"), (PHONE, 0),
                                  (fs.sip_ip, fs.port("internal")), "1002", REALM,
                                  rate=50, seconds=1)
    # X is bound: never rate limited, never banned; every attempt answered 403
    assert r["sent"] >= 45 and r["failures"] == r["sent"], r
    assert bans(d) == []
    wait_for(lambda: f"not banning {PHONE}" in d.log(), 5, "the log line saying why")
    assert phone.invite("1001", password(fs, "1001"), REALM) == 200


# -- (iv) svcrack ---------------------------------------------------------------------------------
SVCRACK_WORDS = 60
SVCRACK_AT = 19  # the password is the 20th word, past the ban threshold


def svcrack(fs, tmp_path) -> tuple[str, float]:
    """svcrack against 1002@pbx.test from the attacker with a 60-word list
    holding the password at SVCRACK_AT; its output and seconds."""
    words = [f"guess{i:02d}" for i in range(SVCRACK_WORDS)]
    words[SVCRACK_AT] = password(fs, "1002")
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words) + "\n")
    argv = fs.topo.nsenter("attacker") + [
        "svcrack", "-u", "1002", "-d", str(path), "--domain", REALM, "-b", ATTACKER,
        "-p", str(fs.port("internal")), "--maximumtime", "3", fs.sip_ip]
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, time.monotonic() - t0


def test_svcrack_finds_the_password_only_without_nfguard(fs, nfguard_fs, tmp_path,
                                                         record_property):
    if shutil.which("svcrack") is None:
        cannot_run("svcrack is not installed (apt-get install sipvicious)")
    out, took = svcrack(fs, tmp_path)
    assert password(fs, "1002") in out, out  # found, without nfguard
    record_property("svcrack_without_s", round(took, 2))
    # Its successful REGISTER bound 1002 at the attacker's address, which
    # nfguard would spare (a NAT shared with a phone): forget it first
    wait_for(lambda: any(r["ip"] == ATTACKER for r in fs.registrations()), 5,
             "svcrack's registration")
    fs.flush()

    d = nfguard_fs
    # a ban that outlasts svcrack's wait for answers, to be listed after it
    d.start(bans={**BANS, "ban_time": 120})
    out, took = svcrack(fs, tmp_path)
    record_property("svcrack_with_s", round(took, 2))
    assert password(fs, "1002") not in out, out
    assert [row["key"] for row in bans(d)] == [ATTACKER], d.log()[-3000:]
