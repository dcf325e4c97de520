"""Bans: the failure counter and its decisions (nfguard/daemon/bans.py, pure
logic), and the daemon carrying them out on a RecordingBackend, fed by the
fake Event Socket (no root). tests/test_daemon.py runs the same on the
kernel and nft in a namespace."""

from __future__ import annotations

import json
import logging
import math

import pytest
from test_daemon_logic import World, run, until

from nfguard.daemon.backend import RecordingBackend
from nfguard.daemon.bans import (
    BanEntry,
    Banned,
    BanPolicy,
    Bans,
    Spared,
    ban_key,
    format_duration,
    holders,
    parse_duration,
)
from nfguard.daemon.registry import Binding
from nfguard.errors import NfguardError
from nfguard.lab.fakeesl import Row

ATTACKER, PHONE = "203.0.113.9", "198.51.100.7"
DAY = 86400.0


def failure_frame(ip: str, user: str = "1001", realm: str = "pbx.example.com",
                  method: str = "REGISTER") -> bytes:
    """A sofia::register_failure JSON frame with the fields FreeSWITCH
    1.10.12 sends (esl_json_register_failure.bin)."""
    body = {"Event-Name": "CUSTOM", "Event-Subclass": "sofia::register_failure",
            "profile-name": "internal", "to-user": user, "to-host": realm,
            "network-ip": ip, "network-port": "5066", "user-agent": "friendly-scanner",
            "registration-type": method}
    data = json.dumps(body, separators=(",", ":")).encode()
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(data) + data


def nobody(key: str) -> list[str]:
    return []


def fail(bans: Bans, ip: str, times, bound_at=nobody, cred="1001@pbx"):
    """Failures from ip at each time; the decisions."""
    return [bans.failure(ip, cred, t, bound_at) for t in times]


# -- durations and keys --------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [
    (600, 600.0), (0.5, 0.5), ("600", 600.0), ("10m", 600.0), ("1h30m", 5400.0),
    ("7d", 604800.0), ("2w", 1209600.0), (" 45s ", 45.0), ("1.5h", 5400.0)])
def test_durations_are_seconds_or_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10x", "m10", "10 m", "-5", True, None, [], float("nan"),
                                 float("inf"), -1])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_durations_print_short():
    assert [format_duration(s) for s in (600, 5400, 604800, 45, 0, 90061, math.inf)] == \
        ["10m", "1h30m", "7d", "45s", "0s", "1d1h1m1s", "forever"]


def test_keys_are_an_ipv4_address_or_an_ipv6_prefix():
    assert ban_key("203.0.113.9", 64) == "203.0.113.9"
    assert ban_key("::ffff:203.0.113.9", 64) == "203.0.113.9"  # the kernel's IPv4 form
    assert ban_key("2001:DB8:1:2:aaaa::5", 64) == "2001:db8:1:2::/64"
    assert ban_key("[2001:db8:1:2::5]", 48) == "2001:db8:1::/48"
    assert ban_key("2001:db8::5", 128) == "2001:db8::5"  # a whole address, bare
    assert ban_key("2001:db8:1:2::/64", 64) == "2001:db8:1:2::/64"  # a key is its own key
    assert ban_key("203.0.113.9/32", 64) == "203.0.113.9"
    with pytest.raises(ValueError, match="give an address"):
        ban_key("2001:db8::/48", 64)
    with pytest.raises(ValueError, match="give an address"):
        ban_key("203.0.113.0/24", 64)
    with pytest.raises(ValueError, match="not an IP address"):
        ban_key("pbx.example.com", 64)


def test_ban_durations_grow_and_stop_at_the_cap():
    p = BanPolicy(ban_time=600, increment=2, max_ban_time=3000)
    assert [p.duration(n) for n in (1, 2, 3, 4, 5000)] == [600, 1200, 2400, 3000, 3000]
    assert BanPolicy(ban_time=600, increment=1).duration(9) == 600


# -- the counter ---------------------------------------------------------------
def test_the_threshold_failure_bans():
    bans = Bans(BanPolicy(failures=5, window=600, ban_time=600))
    out = fail(bans, ATTACKER, [0, 1, 2, 3])
    assert out == [None] * 4 and not bans.entries
    d = bans.failure(ATTACKER, "1001@pbx (REGISTER)", 4, nobody)
    assert isinstance(d, Banned)
    assert (d.entry.key, d.entry.expires, d.entry.offenses, d.entry.manual) == \
        (ATTACKER, 604, 1, False)
    assert d.failures == 5 and d.duration == 600
    assert d.entry.reason == "5 failures in 10m, last 1001@pbx (REGISTER)"
    assert bans.entries == {ATTACKER: d.entry}
    # banned: more failures (monitor mode lets them through) change nothing
    assert fail(bans, ATTACKER, range(5, 20)) == [None] * 15
    assert bans.entries[ATTACKER].offenses == 1


def test_the_window_slides():
    bans = Bans(BanPolicy(failures=5, window=600))
    # the one at 0 is out of the window at 600, the one at 100 at 700
    assert fail(bans, ATTACKER, [0, 100, 200, 300, 600, 700]) == [None] * 6
    assert isinstance(bans.failure(ATTACKER, "x", 701, nobody), Banned)  # 200..701: five


def test_addresses_are_counted_apart_and_ipv6_by_prefix():
    bans = Bans(BanPolicy(failures=3, ipv6_prefix=64))
    assert fail(bans, "192.0.2.1", [0, 1]) == [None, None]
    assert fail(bans, "192.0.2.2", [2, 3]) == [None, None]
    # three addresses of one /64 are one key
    d = fail(bans, "2001:db8:1:2::1", [4]) + fail(bans, "2001:db8:1:2::2", [5]) \
        + fail(bans, "2001:db8:1:2:ffff::3", [6])
    assert d[:2] == [None, None] and d[2].entry.key == "2001:db8:1:2::/64"
    assert fail(bans, "2001:db8:1:3::1", [7, 8]) == [None, None]  # another /64


def test_trusted_addresses_are_spared_and_judged_again_later():
    bans = Bans(BanPolicy(failures=3), trusted=["10.0.0.0/8", "2001:db8:ff::/48"])
    out = fail(bans, "10.1.2.3", [0, 1, 2])
    assert out[:2] == [None, None]
    assert out[2] == Spared("10.1.2.3", "10.1.2.3", 3, "in the trusted network 10.0.0.0/8")
    assert not bans.entries
    # counted from zero again: one line per `failures` failures, not per failure
    out = fail(bans, "10.1.2.3", [3, 4, 5])
    assert out[:2] == [None, None] and isinstance(out[2], Spared)
    out = fail(bans, "2001:db8:ff:1::9", [6, 7, 8])
    assert "2001:db8:ff::/48" in out[2].why
    assert bans.counts["spared"] == 3


def test_an_address_holding_a_binding_is_spared():
    bindings = [Binding("1001", "pbx.example.com", PHONE)]
    out = fail(Bans(BanPolicy(failures=2)), PHONE, [0, 1],
               bound_at=lambda key: holders(key, bindings, 64))
    assert out[1] == Spared(PHONE, PHONE, 2, "bound to 1001@pbx.example.com: a NAT shared "
                            "with a working phone")


def test_an_ipv6_prefix_holding_a_binding_anywhere_is_spared():
    bindings = [Binding("1001", "pbx", "2001:db8:1:2::99"), Binding("1002", "pbx", "192.0.2.1"),
                Binding("1003", "pbx", "2001:db8:1:2::98")]
    bans = Bans(BanPolicy(failures=2, ipv6_prefix=64))

    def bound_at(key):
        return holders(key, bindings, 64)

    out = fail(bans, "2001:db8:1:2::5", [0, 1], bound_at)
    assert isinstance(out[1], Spared)
    assert out[1].why == ("bound to 1001@pbx, 1003@pbx within 2001:db8:1:2::/64: a NAT shared "
                          "with a working phone")
    # the next /64 holds none
    out = fail(bans, "2001:db8:1:3::5", [2, 3], bound_at)
    assert isinstance(out[1], Banned) and out[1].entry.key == "2001:db8:1:3::/64"


def test_repeat_offenders_are_banned_longer_up_to_the_cap():
    bans = Bans(BanPolicy(failures=2, window=60, ban_time=100, increment=3, max_ban_time=500))
    durations, t = [], 0.0
    for _ in range(4):
        d = fail(bans, ATTACKER, [t, t + 1])[1]
        durations.append((d.entry.offenses, d.duration))
        t = d.entry.expires + 1  # after the ban: the tick reports it lifted
        assert [e.key for e in bans.tick(t).lifted] == [ATTACKER]
    assert durations == [(1, 100), (2, 300), (3, 500), (4, 500)]


def test_expiry_is_reported_once_and_the_entry_forgotten_after_max_ban_time():
    bans = Bans(BanPolicy(failures=1, ban_time=100, max_ban_time=1000))
    d = bans.failure(ATTACKER, "x", 0, nobody)
    assert d.entry.expires == 100
    assert bans.tick(99).lifted == [] and bans.active(99) == [d.entry]
    t = bans.tick(100)
    assert t.lifted == [d.entry] and t.forgotten == [] and bans.active(100) == []
    assert bans.tick(500).lifted == []  # once
    assert ATTACKER in bans.entries  # remembered for its offense count
    t = bans.tick(1100)
    assert t.forgotten == [d.entry] and ATTACKER not in bans.entries
    # forgotten: the next ban is a first offense again
    assert bans.failure(ATTACKER, "x", 1200, nobody).entry.offenses == 1


def test_a_restart_keeps_offense_counts_from_the_kernel_entries():
    bans = Bans(BanPolicy(failures=1, ban_time=60, increment=2, max_ban_time=DAY))
    expired = BanEntry(ATTACKER, 500.0, 3, False, "old")
    active = BanEntry("192.0.2.50", 2000.0, 1, True, "manual")
    bans.load([expired, active], now=1000.0)
    assert bans.active(1000) == [active]
    assert bans.tick(1000).lifted == []  # expired before the start: not reported again
    d = bans.failure(ATTACKER, "x", 1000, nobody)
    assert (d.entry.offenses, d.duration) == (4, 480)  # 60 * 2**3



def test_manual_bans_keep_the_offense_count_and_unban_forgets_it():
    bans = Bans(BanPolicy(failures=1))
    bans.load([BanEntry(ATTACKER, 10.0, 2, False)], now=100.0)
    e = bans.ban(ATTACKER, 300, now=100.0)
    assert (e.expires, e.offenses, e.manual, e.reason) == (400.0, 2, True, "manual")
    assert bans.unban(ATTACKER) == e and bans.unban(ATTACKER) is None
    assert bans.failure(ATTACKER, "x", 500, nobody).entry.offenses == 1


def test_a_spray_of_addresses_is_bounded(monkeypatch):
    import nfguard.daemon.bans as B
    monkeypatch.setattr(B, "TRACKED_MAX", 100)
    bans = Bans(BanPolicy(failures=5, window=600))
    for i in range(1000):
        bans.failure(f"2001:db8:{i:x}::1", "x", float(i), nobody)
    assert bans.tracked() == 100
    bans.tick(5000.0)  # all stale
    assert bans.tracked() == 0


# -- the daemon on a recording backend ----------------------------------------
def failures(w: World, ip: str, n: int, **kw):
    return w.esl.push(*(failure_frame(ip, **kw) for _ in range(n)))


def alerts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]


def test_the_daemon_bans_at_the_threshold_with_one_alert(tmp_path, caplog):
    async def go():
        backend = RecordingBackend()
        async with World(tmp_path, backend, bans={"failures": 5, "ban_time": "10m"}) as w:
            await w.synced()
            with caplog.at_level(logging.INFO, logger="nfguard"):
                await failures(w, ATTACKER, 4)
                await until(lambda: w.daemon.stats["auth_failures"] == 4, "4 failures")
                assert backend.ban_map == {}
                await failures(w, ATTACKER, 3, user="1002", method="INVITE")
                await until(lambda: w.daemon.stats["auth_failures"] == 7, "7 failures")
            (entry,) = backend.ban_map.values()
            assert (entry.key, entry.offenses, entry.manual) == (ATTACKER, 1, False)
            assert entry.reason == "5 failures in 10m, last 1002@pbx.example.com (INVITE)"
            assert [c for c in backend.log if c[0] == "ban"] == [
                ("ban", ATTACKER, pytest.approx(600, abs=2), 1, False)]
            assert alerts(caplog) == [
                f"ALERT: banned {ATTACKER} for 10m: 5 authentication failures in 10m (last: "
                f"1002@pbx.example.com (INVITE) from {ATTACKER}) [offense 1]"]
            st = w.daemon.status()
            assert st["bans"]["active"] == 1 and st["bans"]["auth_failures"] == 7
            assert w.daemon.ban_rows()[0]["key"] == ATTACKER
            from nfguard.daemon.metrics import render
            text = render(w.daemon)
            assert "nfguard_bans_active 1" in text and "nfguard_auth_failures_total 7" in text
            assert 'nfguard_bans_total{kind="auto"} 1' in text
    run(go())


def test_the_daemon_spares_a_nat_shared_with_a_phone_and_says_why(tmp_path, caplog):
    async def go():
        backend = RecordingBackend()
        table = [Row("1001", "pbx.example.com", PHONE, 5060, "c1")]
        async with World(tmp_path, backend, table=table, bans={"failures": 3}) as w:
            await w.synced()
            with caplog.at_level(logging.WARNING, logger="nfguard"):
                await failures(w, PHONE, 3, user="1002")
                await until(lambda: w.daemon.stats["auth_failures"] == 3, "the failures")
            assert backend.ban_map == {} and not alerts(caplog)
            (line,) = [r.getMessage() for r in caplog.records if "not banning" in r.getMessage()]
            assert line == (f"not banning {PHONE}: 3 authentication failures in 10m (last: "
                            f"1002@pbx.example.com (REGISTER)), but it is bound to "
                            f"1001@pbx.example.com: a NAT shared with a working phone")
            # the registry never saw the failures
            assert set(w.daemon.registry.bindings()) == {Binding("1001", "pbx.example.com", PHONE)}
    run(go())


def test_failures_before_the_first_sync_only_count(tmp_path):
    async def go():
        backend = RecordingBackend()
        async with World(tmp_path, backend, bans={"failures": 2}) as w:
            w.daemon.synced = False  # as before the first sync
            w.daemon._on_auth_failure(_auth(ATTACKER))
            w.daemon._on_auth_failure(_auth(ATTACKER))
            assert backend.ban_map == {}
            w.daemon.synced = True
            w.daemon._on_auth_failure(_auth(ATTACKER))  # the next one decides
            assert list(backend.ban_map) == [ATTACKER]
    run(go())


def _auth(ip: str):
    from nfguard.daemon.fsevents import AuthFailure
    return AuthFailure(ip, "1001", "pbx", "internal", "REGISTER")


def test_disabled_bans_count_failures_and_ban_nothing(tmp_path):
    async def go():
        backend = RecordingBackend()
        async with World(tmp_path, backend, bans={"enabled": False, "failures": 1}) as w:
            await w.synced()
            await failures(w, ATTACKER, 3)
            await until(lambda: w.daemon.stats["auth_failures"] == 3, "the failures")
            assert backend.ban_map == {}
    run(go())


def test_a_ban_expires_with_a_line_and_a_restart_keeps_the_offenses(tmp_path, caplog):
    async def go():
        pinned = {}
        backend = RecordingBackend(pinned={}, bans=pinned)
        policy = {"failures": 1, "ban_time": 1, "increment": 3}
        async with World(tmp_path, backend, bans=policy) as w:
            await w.synced()
            with caplog.at_level(logging.INFO, logger="nfguard"):
                await failures(w, ATTACKER, 1)
                await until(lambda: ATTACKER in pinned, "the ban")
                await until(lambda: any("lifted" in r.getMessage() for r in caplog.records),
                            "the expiry", timeout=5)
            assert f"ban of {ATTACKER} lifted: it expired [offense 1]" in caplog.text
            assert pinned[ATTACKER].offenses == 1  # remembered in the map
        # a restart: the map is read back; the next ban is a second offense
        backend = RecordingBackend(pinned={}, bans=pinned)
        async with World(tmp_path, backend, bans=policy) as w:
            await w.synced()
            assert ("sync_bans", ()) in backend.log  # nothing active to mirror
            await failures(w, ATTACKER, 1)
            await until(lambda: pinned[ATTACKER].offenses == 2, "the second ban")
            assert [c[2] for c in backend.log if c[0] == "ban"] == [pytest.approx(3, abs=0.5)]
    run(go())


def test_a_restart_mirrors_the_active_bans_of_the_map(tmp_path):
    async def go():
        import time
        now = time.time()
        pinned = {ATTACKER: BanEntry(ATTACKER, now + 300, 2, False, ""),
                  "192.0.2.99": BanEntry("192.0.2.99", now - 10, 1, False, "")}
        backend = RecordingBackend(pinned={}, bans=pinned)
        async with World(tmp_path, backend) as w:
            await w.synced()
            assert ("sync_bans", (ATTACKER,)) in backend.log
            assert [r["key"] for r in w.daemon.ban_rows()] == [ATTACKER]
            assert w.daemon.bans.entries["192.0.2.99"].offenses == 1  # remembered
    run(go())


def test_operators_ban_and_unban_through_the_daemon(tmp_path, caplog):
    async def go():
        backend = RecordingBackend()
        table = [Row("1001", "pbx.example.com", PHONE, 5060, "c1")]
        async with World(tmp_path, backend, table=table, trusted=["10.0.0.0/8"]) as w:
            await w.synced()
            d = w.daemon
            with caplog.at_level(logging.WARNING, logger="nfguard"):
                out = await d._handle({"cmd": "ban", "address": ATTACKER, "seconds": 120}, None)
            assert out["ok"] and out["key"] == ATTACKER and out["warning"] == ""
            assert backend.ban_map[ATTACKER].manual
            assert backend.ban_map[ATTACKER].reason == "manual"
            assert alerts(caplog) == [f"ALERT: banned {ATTACKER} for 2m by an operator "
                                      "(nfguard ban) [offense 0]"]
            # the default duration is the config's ban_time
            out = await d._handle({"cmd": "ban", "address": "2001:db8:5::1"}, None)
            assert out["key"] == "2001:db8:5::/64" and out["seconds"] == 600
            # a bound address: allowed, with a warning
            out = await d._handle({"cmd": "ban", "address": PHONE}, None)
            assert "1001@pbx.example.com" in out["warning"]
            with pytest.raises(NfguardError, match=r"trusted network 10\.0\.0\.0/8"):
                await d._handle({"cmd": "ban", "address": "10.9.9.9"}, None)
            with pytest.raises(NfguardError, match="not an IP address"):
                await d._handle({"cmd": "ban", "address": "nonsense"}, None)
            rows = (await d._handle({"cmd": "bans"}, None))["bans"]
            assert [r["key"] for r in rows] == sorted([ATTACKER, "2001:db8:5::/64", PHONE])
            out = await d._handle({"cmd": "unban", "address": ATTACKER}, None)
            assert out == {"ok": True, "key": ATTACKER, "lifted": True}
            assert ATTACKER not in backend.ban_map
            out = await d._handle({"cmd": "unban", "address": ATTACKER}, None)
            assert out["lifted"] is False
            out = await d._handle({"cmd": "unban", "address": "2001:db8:5::/64"}, None)
            assert out["lifted"] is True
    run(go())


def test_an_expired_entry_is_removed_from_the_kernel_after_max_ban_time(tmp_path):
    async def go():
        import time
        pinned = {ATTACKER: BanEntry(ATTACKER, time.time() - 100, 1, False, "")}
        backend = RecordingBackend(pinned={}, bans=pinned)
        async with World(tmp_path, backend, bans={"max_ban_time": 50, "ban_time": 10}) as w:
            await w.synced()
            await until(lambda: ("forget_ban", ATTACKER) in backend.log, "the forgetting")
            assert pinned == {} and ATTACKER not in w.daemon.bans.entries
    run(go())



def test_an_upgrade_carries_the_retired_maps_bans_before_reading_them(tmp_path):
    async def go():
        backend = RecordingBackend(pinned={}, migrating=True)
        async with World(tmp_path, backend) as w:
            await w.synced()
            calls = [c[0] for c in backend.log]
            # carried first, then read back and mirrored in nft
            assert calls.index("carry_bans") < calls.index("sync_bans")
        backend = RecordingBackend(pinned={})
        async with World(tmp_path, backend) as w:
            await w.synced()
            assert ("carry_bans",) not in backend.log  # no retired maps: nothing to carry
    run(go())


@pytest.mark.parametrize("prefix", [64, 48, 128])
def test_the_daemons_keys_are_the_kernels(prog, prefix):
    """bans.ban_key (what the daemon counts, logs and mirrors in nft) and
    Program.ban_key (what the kernel's map is keyed by) agree."""
    prog.configure(mode="enforce", ipv6_prefix=prefix)
    # (an IPv4-mapped address is made IPv4 by the daemon before the kernel sees it)
    for ip in ("203.0.113.9", "2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8::1",
               "fd00:2::2", "::1"):
        assert ban_key(ip, prefix) == prog.ban_key(ip), ip
    from nfguard.kernel.program import NO_EXPIRY
    key = prog.set_ban("2001:db8:1:2::77", NO_EXPIRY)
    assert key == ban_key("2001:db8:1:2::77", prefix)
    assert [b.key for b in prog.iter_bans()] == [key]
    assert prog.lift_ban(key)  # the daemon lifts by its key
    prog.configure(mode="enforce")


def test_an_ipv6_key_overlapping_a_trusted_host_is_spared():
    """The kernel looks bans up before the trusted networks: a ban of the
    /64 would cut off a trusted /128 inside it."""
    bans = Bans(BanPolicy(failures=2), trusted=["2001:db8:7::5/128"])
    out = fail(bans, "2001:db8:7::66", [0, 1])
    assert out[1] == Spared("2001:db8:7::/64", "2001:db8:7::66", 2,
                            "in the trusted network 2001:db8:7::5/128")
    assert not bans.entries


def test_bans_overlapping_widened_trusted_networks_are_lifted(tmp_path, caplog):
    """At start and on reload: a trusted source is never banned, and the
    kernel would obey a ban there before the trusted networks."""
    async def go():
        import time
        now = time.time()
        pinned = {ATTACKER: BanEntry(ATTACKER, now + 300, 1, False, ""),
                  "192.0.2.99": BanEntry("192.0.2.99", now + 300, 1, False, ""),
                  "2001:db8:7::/64": BanEntry("2001:db8:7::/64", now + 300, 1, False, "")}
        backend = RecordingBackend(pinned={}, bans=pinned)
        async with World(tmp_path, backend, trusted=["192.0.2.0/24"]) as w:
            await w.synced()
            assert ("unban", "192.0.2.99") in backend.log  # at start
            assert sorted(backend.ban_map) == ["2001:db8:7::/64", ATTACKER]
            path = tmp_path / "nfguard.yaml"
            w.daemon.config_path = str(path)
            path.write_text(f"interfaces: [nfg0]\nmode: enforce\nsocket: {w.cfg.socket}\n"
                            f"trusted: [192.0.2.0/24, 203.0.113.0/28, 2001:db8:7::5/128]\n"
                            f"esl: [{{name: fs1, port: {w.esl.port}, password: ClueCon}}]\n")
            with caplog.at_level(logging.WARNING, logger="nfguard"):
                await w.daemon.reload()
            assert backend.ban_map == {}
            assert w.daemon.bans.active(time.time()) == []
            lines = [r.getMessage() for r in caplog.records if "overlaps" in r.getMessage()]
            assert sorted(lines) == [  # the first at start, the others on reload
                "ban of 192.0.2.99 lifted: it overlaps the trusted network 192.0.2.0/24",
                "ban of 2001:db8:7::/64 lifted: it overlaps the trusted network "
                "2001:db8:7::5/128",
                f"ban of {ATTACKER} lifted: it overlaps the trusted network 203.0.113.0/28"]
    run(go())
