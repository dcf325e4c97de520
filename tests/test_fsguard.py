"""The daemon's side of the FreeSWITCH guard (nfguard/daemon/fsguard.py):
the contract's key and value formats, GuardMirror against the fake Event
Socket's mod_hash (nfguard.lab.fakeesl), the nfguard::guard event parsed and
turned into ALERT lines, counters, metrics, status and recent events. No
FreeSWITCH: tests/test_freeswitch_guard.py runs the Lua guard in the real one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import pytest
from test_daemon_logic import World as DaemonWorld

from nfguard.cli.events import line as event_line
from nfguard.cli.status import guard_line
from nfguard.daemon import fsguard
from nfguard.daemon.backend import RecordingBackend
from nfguard.daemon.esl import EslConnection, Frame
from nfguard.daemon.fsevents import GuardVerdict, parse_event
from nfguard.daemon.fsguard import (
    GuardMirror,
    cred_key,
    enc,
    format_meta,
    format_trusted,
    format_value,
    parse_dump,
)
from nfguard.daemon.metrics import render
from nfguard.daemon.registry import Binding, Diff
from nfguard.kernel.program import Event
from nfguard.lab.fakeesl import FakeEsl, Row, register_frame

from conftest import until

USER, REALM = "1001", "pbx.example.com"
PHONE, OTHER, ATTACKER = "192.0.2.10", "192.0.2.20", "203.0.113.5"
KEY = f"b:{USER}@{REALM}"


def run(coro):
    return asyncio.run(coro)


# -- the contract's formats -------------------------------------------------------
@pytest.mark.parametrize("user, realm, key", [
    ("1001", "pbx.test", "b:1001@pbx.test"),
    ("Bob@X", "PBX.test", "b:bob%40x@pbx.test"),  # the contract's example
    ("a/b", "r", "b:a%2Fb@r"),  # mod_hash splits at '/'
    ("100%", "r", "b:100%25@r"),  # '%' itself, so the encoding is reversible
    ("j.doe_1~x-y", "r", "b:j.doe_1~x-y@r"),  # unreserved: kept
    ("a b:c+d", "r", "b:a%20b%3Ac%2Bd@r"),
    ("Jürgen", "Ärzte.example", "b:j%C3%BCrgen@%C3%84rzte.example"),  # UTF-8, non-ASCII kept
    ("ÜBER", "r", "b:%C3%9Cber@r"),  # only ASCII A-Z lower-cased, as the kernel does
    ("", "", "b:@"),
])
def test_cred_key_encoding(user, realm, key):
    assert cred_key(user, realm) == key


def test_enc_is_what_the_kernel_compares():
    from nfguard.daemon.registry import kernel_case

    for text in ("MiXeD", "Ünï", "x@Y/Z%"):
        assert enc(text) == enc(kernel_case(text))
    assert enc("1001") is not None and enc("ab") == "ab"


def test_values_trusted_and_meta():
    assert format_value({"192.0.2.9": 100.0, "192.0.2.10": 99.2, "2001:db8::1": 5.5}) == \
        "192.0.2.10=100,192.0.2.9=100,2001:db8::1=6"  # sorted as text, expiries rounded up
    assert format_value({"192.0.2.9": float("inf")}) == f"192.0.2.9={fsguard.FOREVER}"
    assert format_trusted(()) == "-"
    assert format_trusted(("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")) == \
        "10.0.0.0/8,2001:db8::/32,192.0.2.7/32"
    assert format_meta("enforce", ("wss", "tcp", "tls", "ws"), 1700000000.9) == \
        "v=1;mode=enforce;transports=tcp,tls,ws,wss;at=1700000000"
    assert format_meta("monitor", "all", 5) == "v=1;mode=monitor;transports=all;at=5"


def test_parse_dump_keeps_only_our_realm():
    text = ("D/xnfguard_other2/1\nD/nfguard_b:bob%40x@pbx.test/192.0.2.1=1700000000\n"
            "D/other_k/v\nD/nfguard_trusted/10.0.0.0/8,192.168.0.0/16\nD/nfguardx_other/1\n")
    assert parse_dump(text) == {"b:bob%40x@pbx.test": "192.0.2.1=1700000000",
                                "trusted": "10.0.0.0/8,192.168.0.0/16"}
    assert parse_dump("") == {}


# -- GuardMirror against the fake Event Socket --------------------------------------
class Mirror:
    """A GuardMirror over a dict of bindings, writing to one FakeEsl."""

    def __init__(self, bindings=None, mode="monitor", esl: FakeEsl | None = None, **kw):
        self.bindings: dict[Binding, float] = dict(bindings or {})
        self.mode = mode
        self.esl = esl or FakeEsl()
        self.mirror = GuardMirror(lambda: self.bindings, lambda: self.mode, **kw)
        self.conn: EslConnection | None = None

    async def start_esl(self):
        await self.esl.start()
        return self

    async def connect(self):
        self.conn = await EslConnection.open("127.0.0.1", self.esl.port, "ClueCon",
                                             on_event=lambda f: None)
        self.mirror.connected("fs1", self.conn)

    async def disconnect(self):
        await self.esl.drop()
        await self.conn.closed.wait()
        self.mirror.disconnected("fs1")

    def ep(self):
        return self.mirror.endpoints["fs1"]

    def held(self) -> dict[str, str]:
        return self.esl.hashes.get("nfguard", {})

    async def synced(self, count: int = 1):
        await until(lambda: self.ep().state == "synced"
                    and self.esl.hash_log.count("insert meta") >= count, "a full sync")

    async def idle(self):
        await until(lambda: not self.ep().dirty and not self.ep().settings_dirty, "the writes")
        await asyncio.sleep(0.05)  # the last batch's replies

    def apply(self, added=(), removed=()):
        diff = Diff(added=dict(added), removed=set(removed))
        for b in diff.removed:
            self.bindings.pop(b, None)
        self.bindings.update(diff.added)
        self.mirror.apply(diff)

    async def close(self):
        self.mirror.close()
        if self.conn is not None:
            await self.conn.close()
        await self.esl.stop()


def B(ip, user=USER, realm=REALM):
    return Binding(user, realm, ip)


def test_nothing_is_written_before_the_daemons_first_full_sync_then_everything():
    async def go():
        m = await Mirror({B(PHONE): 1000.2, B(OTHER): 2000.0, B("192.0.2.1", "bob@x"): 50.0},
                         mode="enforce", trusted=("10.0.0.0/8",)).start_esl()
        m.esl.hashes["nfguard"] = {"meta": "v=1;mode=monitor;transports=all;at=1",
                                   "b:gone@pbx.example.com": "192.0.2.99=5",
                                   KEY: "192.0.2.10=7"}
        m.esl.hashes["xnfguard"] = {"keep": "1"}  # hash_dump lists it: not ours
        m.esl.hashes["other"] = {"b:gone@pbx.example.com": "x"}
        try:
            await m.connect()
            await asyncio.sleep(0.1)
            assert m.ep().state == "connected" and m.esl.hash_log == []
            assert not [c for c in m.esl.commands if c.startswith("api hash")]
            m.mirror.start()
            await m.synced()
            held = m.held()
            meta = held.pop("meta")
            assert held == {KEY: "192.0.2.10=1001,192.0.2.20=2000",
                            "b:bob%40x@pbx.example.com": "192.0.2.1=50",
                            "trusted": "10.0.0.0/8"}
            assert meta.startswith("v=1;mode=enforce;transports=tcp,tls,ws,wss;at=")
            assert abs(int(meta.rsplit("=", 1)[1]) - time.time()) < 5
            assert m.esl.hash_log[-1] == "insert meta"  # last
            assert "delete b:gone@pbx.example.com" in m.esl.hash_log
            # inserts first, then the stale deletes, then meta
            assert m.esl.hash_log.index(f"insert {KEY}") < \
                m.esl.hash_log.index("delete b:gone@pbx.example.com")
            assert m.esl.hashes["xnfguard"] == {"keep": "1"}
            assert m.esl.hashes["other"] == {"b:gone@pbx.example.com": "x"}
            st = m.mirror.status()["endpoints"][0]
            assert st["state"] == "synced" and st["keys"] == 4 and st["errors"] == 0
        finally:
            await m.close()
    run(go())


def test_a_full_sync_rewrites_only_what_differs():
    async def go():
        m = await Mirror({B(PHONE): 1000.0}).start_esl()
        m.esl.hashes["nfguard"] = {KEY: "192.0.2.10=1000", "trusted": "-"}
        try:
            m.mirror.start()
            await m.connect()
            await m.synced()
            assert m.esl.hash_log == ["insert meta"]
        finally:
            await m.close()
    run(go())


def test_diffs_are_written_coalesced_per_credential():
    async def go():
        m = await Mirror({B(PHONE): 1000.0}).start_esl()
        try:
            m.mirror.start()
            await m.connect()
            await m.synced()
            m.esl.hash_log.clear()
            # three diffs touching one credential before the writer runs: one write
            m.apply(added={B(OTHER): 3000.0})
            m.apply(added={B(OTHER): 3100.0})
            m.apply(removed={B(PHONE)})
            m.apply(added={B("192.0.2.1", "1002"): 70.0})
            await m.idle()
            assert sorted(m.esl.hash_log) == sorted([f"insert {KEY}",
                                                     "insert b:1002@pbx.example.com"])
            assert m.held()[KEY] == "192.0.2.20=3100"
            m.esl.hash_log.clear()
            m.apply(removed={B(OTHER)})
            await m.idle()
            assert m.esl.hash_log == [f"delete {KEY}"] and KEY not in m.held()
            # a credential bound nowhere, deleted again: "-ERR Not found" is no error
            m.apply(added={B(PHONE): 5.0})
            m.apply(removed={B(PHONE)})
            await m.idle()
            assert m.ep().errors == 0 and m.ep().state == "synced"
        finally:
            await m.close()
    run(go())


def test_reconnect_and_a_freeswitch_restart_are_synced_in_full():
    async def go():
        m = await Mirror({B(PHONE): 1000.0}).start_esl()
        try:
            m.mirror.start()
            await m.connect()
            await m.synced()
            await m.disconnect()
            assert m.ep().state == "down"
            # meanwhile: a change nfguard could not write, and a stale key
            m.apply(added={B(OTHER): 2000.0})
            m.esl.hashes["nfguard"]["b:stale@x"] = "192.0.2.3=1"
            await m.connect()
            await m.synced(2)
            assert m.held()[KEY] == "192.0.2.10=1000,192.0.2.20=2000"
            assert "b:stale@x" not in m.held()
            # FreeSWITCH restarted: its hash store is empty
            await m.disconnect()
            m.esl.hashes.clear()
            await m.connect()
            await m.synced(3)
            assert set(m.held()) == {KEY, "trusted", "meta"}
        finally:
            await m.close()
    run(go())


def test_mode_transports_and_trusted_changes_rewrite_trusted_then_meta():
    async def go():
        m = await Mirror({B(PHONE): 1000.0}, mode="monitor").start_esl()
        try:
            m.mirror.start()
            await m.connect()
            await m.synced()
            assert ";mode=monitor;" in m.held()["meta"]
            m.esl.hash_log.clear()
            m.mirror.update()  # nothing changed: nothing written
            await asyncio.sleep(0.1)
            assert m.esl.hash_log == []
            m.mode = "enforce"
            m.mirror.update()
            await until(lambda: ";mode=enforce;" in m.held()["meta"], "meta rewritten")
            assert m.esl.hash_log == ["insert trusted", "insert meta"]
            m.mirror.update(transports="all", trusted=("2001:db8::/32", "10.1.0.0/16"))
            await until(lambda: ";transports=all;" in m.held()["meta"], "meta rewritten")
            assert m.held()["trusted"] == "2001:db8::/32,10.1.0.0/16"
            assert m.esl.hash_log[-2:] == ["insert trusted", "insert meta"]
            assert m.held()[KEY] == "192.0.2.10=1000"  # bindings untouched
        finally:
            await m.close()
    run(go())


def test_disabled_writes_nothing_and_empties_what_was_written(caplog):
    async def go():
        m = await Mirror({B(PHONE): 1000.0}, enabled=False).start_esl()
        m.esl.hashes["nfguard"] = {KEY: "192.0.2.10=7", "trusted": "-", "meta": "v=1"}
        m.esl.hashes["other"] = {"k": "v"}
        try:
            m.mirror.start()
            await m.connect()
            await until(lambda: m.ep().state == "cleared", "the clear")
            assert m.esl.hash_log[0] == "delete meta"  # the guard falls back at once
            assert m.held() == {} and m.esl.hashes["other"] == {"k": "v"}
            m.apply(added={B(OTHER): 5.0})
            await asyncio.sleep(0.1)
            assert m.held() == {}
            # enabled again by a reload: the whole state
            m.mirror.update(enabled=True)
            await m.synced()
            assert m.held()[KEY] == "192.0.2.10=1000,192.0.2.20=5"
            m.mirror.update(enabled=False)
            await until(lambda: m.held() == {}, "emptied again")
        finally:
            await m.close()
    run(go())


def test_a_missing_mod_hash_is_one_error_line_and_a_status(caplog):
    async def go():
        m = await Mirror({B(PHONE): 1000.0}, esl=FakeEsl(mod_hash=False),
                         retry_after=0.1).start_esl()
        try:
            m.mirror.start()
            await m.connect()
            await until(lambda: m.ep().state == "no_mod_hash", "no_mod_hash")
            await m.esl.wait_commands("api hash_dump", 3)  # tried again, quietly
            m.apply(added={B(OTHER): 5.0})
            await asyncio.sleep(0.1)
            assert not [c for c in m.esl.commands if c.startswith("api hash insert")]
            st = m.mirror.status()["endpoints"][0]
            assert "mod_hash is not loaded" in st["last_error"]
            assert "Command not found" in st["last_error"]
            assert "mod_hash NOT loaded" in guard_line({**m.mirror.status(), "verdicts": {}})
            m.esl.mod_hash = True  # `load mod_hash`
            await m.synced()
            assert m.held()[KEY] == "192.0.2.10=1000,192.0.2.20=5"
        finally:
            await m.close()
    with caplog.at_level(logging.INFO, logger="nfguard"):
        run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "fs1: mod_hash is not loaded" in errors[0]
    assert any("mod_hash answers now" in r.getMessage() for r in caplog.records)


def test_a_refused_write_is_logged_counted_and_put_right_by_the_next_full_sync(caplog):
    async def go():
        esl = FakeEsl()
        esl.api["hash insert/nfguard/trusted/-"] = "-ERR out of memory\n"
        m = await Mirror({B(PHONE): 1000.0}, esl=esl, retry_after=0.2).start_esl()
        try:
            m.mirror.start()
            await m.connect()
            await until(lambda: m.ep().state == "error", "the error")
            assert "meta" not in m.held()  # a state with holes is not announced
            assert m.ep().errors == 1 and "out of memory" in m.ep().last_error
            assert not m.conn.closed.is_set()  # the session goes on
            del esl.api["hash insert/nfguard/trusted/-"]
            await m.synced()
            assert set(m.held()) == {KEY, "trusted", "meta"}
        finally:
            await m.close()
    with caplog.at_level(logging.ERROR, logger="nfguard"):
        run(go())
    assert any("refused 1 write(s)" in r.getMessage() for r in caplog.records)


def test_full_sync_of_100000_bindings_against_the_fake_server(capsys):
    """Not a timing assertion: the figure for the report (pytest -s)."""
    n = int(os.environ.get("NFGUARD_GUARD_SYNC_N", "100000"))
    bindings = {Binding(f"u{i}", "pbx.example.com",
                        f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"): 1.8e9 + i
                for i in range(n)}

    async def go():
        m = await Mirror(bindings, mode="enforce").start_esl()
        try:
            m.mirror.start()
            t0 = time.monotonic()
            await m.connect()
            await m.synced()
            first = time.monotonic() - t0
            assert len(m.held()) == n + 2
            await m.disconnect()
            t0 = time.monotonic()
            await m.connect()
            await m.synced(2)
            again = time.monotonic() - t0
            return first, again
        finally:
            await m.close()
    first, again = run(go())
    with capsys.disabled():
        print(f"\nguard full sync, {n} bindings, fake ESL: {first:.2f} s into an empty store, "
              f"{again:.2f} s when nothing changed")


# -- the Event Socket's side ----------------------------------------------------------
def test_api_many_pipelines_and_fails_whole_when_the_connection_goes():
    async def go():
        esl = FakeEsl()
        await esl.start()
        conn = await EslConnection.open("127.0.0.1", esl.port, "ClueCon",
                                        on_event=lambda f: None)
        try:
            cmds = [f"hash insert/r/k{i}/v{i}" for i in range(500)] + ["hash select/r/k7"]
            replies = await conn.api_many(cmds)
            assert replies == ["+OK\n"] * 500 + ["v7"]
            assert await conn.api_many([]) == []
            esl.api_delay = 0.5
            task = asyncio.ensure_future(conn.api_many(["hash select/r/k1"] * 3))
            await asyncio.sleep(0.1)
            await esl.drop()
            with pytest.raises(fsguard.EslError, match="connection lost"):
                await task
        finally:
            await conn.close()
            await esl.stop()
    run(go())


def test_endpoint_hooks_run_after_the_first_resync_and_at_the_end(caplog):
    from nfguard.daemon.esl import Backoff, Endpoint
    from nfguard.daemon.fsevents import follow
    from nfguard.daemon.registry import Registry

    calls = []

    async def go():
        esl = FakeEsl(table=[Row(USER, REALM, PHONE, 5060, "c1")])
        await esl.start()
        registry = Registry()

        def connected(conn):
            calls.append(("connected", len(registry), runner.state))
            raise RuntimeError("a hook's bug")  # logged, the session goes on

        runner = follow(Endpoint("fs1", port=esl.port, password="ClueCon"), registry,
                        on_connected=connected,
                        on_disconnected=lambda: calls.append(("disconnected",)),
                        backoff=Backoff(initial=0.01, cap=0.01))
        task = asyncio.ensure_future(runner.run())
        try:
            await until(lambda: calls, "on_connected")
            await esl.push(register_frame(USER, REALM, OTHER, call_id="c2"))
            await until(lambda: len(registry) == 2, "the event applied")
            await esl.drop()
            await until(lambda: len(calls) >= 3, "disconnected, connected again")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await esl.stop()
    with caplog.at_level(logging.ERROR, logger="nfguard"):
        run(go())
    # the second resync replaced the registry with the table (the event's binding went)
    assert calls[:3] == [("connected", 1, "up"), ("disconnected",), ("connected", 1, "up")]
    assert any("a connection hook failed" in r.getMessage() for r in caplog.records)


# -- the nfguard::guard event --------------------------------------------------------
def guard_frame(**over) -> Frame:
    body = {"Event-Name": "CUSTOM", "Event-Subclass": "nfguard::guard",
            "Event-Date-Timestamp": "1795787093862138",
            "nfguard-verdict": "not_bound", "nfguard-action": "refused",
            "nfguard-user": "1001", "nfguard-realm": "pbx.example.com",
            "nfguard-source-ip": ATTACKER, "nfguard-source-port": "5061",
            "nfguard-transport": "tls", "nfguard-state": "nfguard",
            "nfguard-call-id": "c-1", "nfguard-profile": "internal"}
    body.update(over)
    body = {k: v for k, v in body.items() if v is not None}
    return Frame({"Content-Type": "text/event-json"}, json.dumps(body).encode())


def guard_bytes(**over) -> bytes:
    f = guard_frame(**over)
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(f.body) + f.body


def test_the_guard_event_is_parsed():
    v = parse_event(guard_frame(), "fs1", 0.0)
    assert v == GuardVerdict(user="1001", realm="pbx.example.com", ip=ATTACKER, port=5061,
                             transport="tls", reason="not_bound", action="refused",
                             state="nfguard", call_id="c-1", profile="internal",
                             fired=1795787093.862138)
    v = parse_event(guard_frame(**{"nfguard-source-ip": "[2001:DB8::0:1]",
                                   "nfguard-transport": "WSS", "nfguard-action": "monitor",
                                   "nfguard-source-port": None,
                                   "nfguard-state": "registrations"}), "fs1", 0.0)
    assert (v.ip, v.transport, v.action, v.port, v.state) == \
        ("2001:db8::1", "wss", "monitor", 0, "registrations")
    assert parse_event(guard_frame(**{"nfguard-transport": "carrier-pigeon"}),
                       "fs1", 0.0).transport == "unknown"
    v = parse_event(guard_frame(**{"nfguard-verdict": "malformed",
                                   "nfguard-source-ip": "not\nan ip"}), "fs1", 0.0)
    assert v.reason == "malformed" and v.ip == "not?an ip"


@pytest.mark.parametrize("over, words", [
    ({"nfguard-verdict": None}, "without nfguard-verdict"),
    ({"nfguard-verdict": "bound"}, "unknown verdict"),
    ({"nfguard-action": "drop"}, "unknown action"),
    ({"nfguard-user": ""}, "without nfguard-user"),
    ({"nfguard-state": "guess"}, "unknown state"),
    ({"nfguard-source-ip": "999.1.1.1"}, "bad network-ip"),
    ({"nfguard-source-port": "70000"}, "bad network-port"),
])
def test_malformed_guard_events_are_refused(over, words):
    with pytest.raises(ValueError, match=words):
        parse_event(guard_frame(**over), "fs1", 0.0)


# -- in the daemon -------------------------------------------------------------------
class World(DaemonWorld):
    """test_daemon_logic's running daemon (recording backend, fake
    FreeSWITCH serving the phone's registration), with the fake's hash
    store and the guard's status at hand."""

    def __init__(self, tmp_path, esl: FakeEsl | None = None, **over):
        super().__init__(tmp_path, RecordingBackend(), table=[Row(USER, REALM, PHONE, 5060, "c1")],
                         fake=esl, **over)

    def held(self) -> dict[str, str]:
        return self.esl.hashes.get("nfguard", {})

    def guard(self) -> dict:
        return self.daemon.status()["guard"]["endpoints"][0]


def test_the_daemon_writes_the_state_after_its_first_sync_and_follows_it(tmp_path):
    async def go():
        async with World(tmp_path, trusted=["10.0.0.0/8"]) as w:
            await until(lambda: "meta" in w.held(), "the guard's state")
            assert w.daemon.synced
            assert ";mode=enforce;" in w.held()["meta"]  # written after the switch
            assert w.held()["trusted"] == "10.0.0.0/8"
            exp = w.daemon.registry.view()[B(PHONE)]
            assert w.held()[KEY] == f"{PHONE}={int(-(-exp // 1))}"
            await w.esl.push(register_frame("Alice", "PBX.Example.com", OTHER, call_id="c2"))
            await until(lambda: "b:alice@pbx.example.com" in w.held(), "the new binding")
            st = w.guard()
            assert st["state"] == "synced" and st["keys"] >= 3
            # FreeSWITCH restarts (its hash store with it, not its registrations):
            # all written again
            await w.esl.stop()
            w.esl.table.append(Row("Alice", "PBX.Example.com", OTHER, 5060, "c2"))
            w.esl.hashes.clear()
            await w.esl.start(w.esl.port)
            await until(lambda: "meta" in w.held(), "the state after the restart", 10)
            assert "b:alice@pbx.example.com" in w.held() and KEY in w.held()
    run(go())


def test_mod_hash_missing_never_breaks_following_registrations(tmp_path, caplog):
    async def go():
        esl = FakeEsl(table=[Row(USER, REALM, PHONE, 5060, "c1")], mod_hash=False)
        async with World(tmp_path, esl=esl) as w:
            await until(lambda: w.daemon.synced, "the first full sync")
            await until(lambda: w.guard()["state"] == "no_mod_hash", "no_mod_hash")
            await w.esl.push(register_frame(USER, REALM, OTHER, call_id="c2"))
            await until(lambda: B(OTHER) in w.backend.sink.held, "the event's binding")
            st = w.daemon.status()
            assert st["esl"][0]["state"] == "up"
            assert "mod_hash NOT loaded" in guard_line(st["guard"])
    with caplog.at_level(logging.WARNING, logger="nfguard"):
        run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "mod_hash is not loaded" in errors[0]


def test_reload_turns_the_guard_off_and_the_state_is_emptied(tmp_path):
    async def go():
        async with World(tmp_path) as w:
            await until(lambda: "meta" in w.held(), "the guard's state")
            path = tmp_path / "nfguard.yaml"
            w.daemon.config_path = str(path)
            base = (f"interfaces: [nfg0]\nmode: monitor\nsocket: {w.cfg.socket}\n"
                    f"esl: [{{name: fs1, port: {w.esl.port}, password: ClueCon}}]\n")
            path.write_text(base + "freeswitch_guard: {transports: all}\n")
            await w.daemon.reload()
            await until(lambda: "mode=monitor;transports=all;" in w.held()["meta"],
                        "the new mode and transports")
            path.write_text(base + "freeswitch_guard: {enabled: false}\n")
            await w.daemon.reload()
            await until(lambda: w.held() == {}, "the state emptied")
            assert "disabled" in guard_line(w.daemon.status()["guard"])
    run(go())


def test_guard_verdicts_alert_count_and_show(tmp_path, caplog):
    async def go():
        async with World(tmp_path, alert_interval=60) as w:
            await until(lambda: w.daemon.synced, "the first full sync")
            await w.esl.push(guard_bytes(), guard_bytes(),  # the second: throttled
                             guard_bytes(**{"nfguard-transport": "wss",
                                            "nfguard-action": "monitor",
                                            "nfguard-verdict": "expired"}),
                             guard_bytes(**{"nfguard-verdict": "bogus"}),  # skipped
                             guard_bytes(**{"nfguard-verdict": "malformed",
                                            "nfguard-source-ip": "junk"}))
            await until(lambda: w.daemon.stats["guard_verdicts"] == 4, "the verdicts")
            w.daemon.backend.emit(Event(ts_ns=0, src=ATTACKER, sport=5060, dport=5060,
                                        reason="not_bound", action="drop", would="drop",
                                        user=USER, realm=REALM))
            await until(lambda: len(w.daemon.recent_events) == 5, "the kernel event")
            st = w.daemon.status()
            assert st["esl"][0]["events_skipped"] == 1
            g = st["guard"]
            assert g["verdicts"] == {"tls": 3, "wss": 1}
            assert {"reason": "not_bound", "transport": "tls", "action": "refused",
                    "count": 2} in g["verdicts_by"]
            text = render(w.daemon)
            assert ('nfguard_guard_verdicts_total{reason="not_bound",transport="tls",'
                    'action="refused"} 2') in text
            assert ('nfguard_guard_verdicts_total{reason="expired",transport="wss",'
                    'action="monitor"} 1') in text
            assert 'nfguard_guard_synced{endpoint="fs1"} 1' in text
            assert "verdicts tls 3, wss 1" in guard_line(g)
            events = st["recent_events"]
            fs = [e for e in events if e["stage"] == "freeswitch"]
            assert len(fs) == 4 and fs[0]["src"] == ATTACKER and fs[0]["transport"] == "tls"
            assert fs[0]["sport"] == 5061 and fs[0]["call_id"] == "c-1"
            (k,) = [e for e in events if e["stage"] == "xdp"]
            assert k["transport"] == "udp"
            assert "over tls" in event_line(fs[0]) and "FreeSWITCH guard" in event_line(fs[0])
            assert "over udp" in event_line(k)
    with caplog.at_level(logging.WARNING, logger="nfguard"):
        run(go())
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert alerts == [
        f"ALERT: the credentials of 1001@pbx.example.com were used from {ATTACKER} over tls, "
        "where they are not registered (not_bound; refused with 403 by FreeSWITCH): the "
        "password is likely compromised, rotate it",
        f"ALERT: the credentials of 1001@pbx.example.com were used from {ATTACKER} over wss, "
        "where they are not registered (expired; monitor, FreeSWITCH would refuse it with "
        "403): the password is likely compromised, rotate it",
        f"ALERT: the credentials of 1001@pbx.example.com were used from {ATTACKER} over udp, "
        "where they are not registered (not_bound; dropped): the password is likely "
        "compromised, rotate it"]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("skipped an event" in m and "unknown verdict" in m for m in warnings)
    assert any("could not read the source address 'junk'" in m for m in warnings)
