"""The daemon's logic without root: the real Daemon, the fake Event Socket
on 127.0.0.1, and a RecordingBackend in place of the kernel and nftables
(nfguard/daemon/backend.py). tests/test_daemon.py runs the same daemon on
the kernel, in network namespaces."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from nfguard.daemon.backend import RecordingBackend
from nfguard.daemon.config import parse_config
from nfguard.daemon.core import Daemon
from nfguard.daemon.registry import Binding
from nfguard.errors import NfguardError
from nfguard.kernel.program import Event
from nfguard.lab.fakeesl import FakeEsl, Row, register_frame

from conftest import until

USER, REALM = "1001", "pbx.example.com"
PHONE, OTHER = "192.0.2.10", "192.0.2.20"
PHONE_B = Binding(USER, REALM, PHONE)


def config(tmp_path, port: int, **over):
    data = {"interfaces": ["nfg0"], "mode": "enforce", "action": "drop",
            "expiry_grace": 0, "socket": str(tmp_path / "nfguard.sock"),
            "esl": [{"name": "fs1", "port": port, "password": "ClueCon"}]}
    data.update(over)
    return parse_config(data, "test")


class World:
    """A running daemon on a recording backend, fed by a fake FreeSWITCH."""

    def __init__(self, tmp_path, backend: RecordingBackend, table=(), extra_esl=(),
                 fake: FakeEsl | None = None, **over):
        """extra_esl: more endpoints after the fake FreeSWITCH's fs1; fake:
        that fake FreeSWITCH, when not one serving `table`."""
        self.tmp_path, self.backend, self.table, self.over = tmp_path, backend, table, over
        self.extra_esl = list(extra_esl)
        self.esl = fake

    async def __aenter__(self):
        self.esl = self.esl or FakeEsl(table=list(self.table))
        port = await self.esl.start()
        if self.extra_esl:
            self.over["esl"] = [{"name": "fs1", "port": port, "password": "ClueCon"},
                                *self.extra_esl]
        self.cfg = config(self.tmp_path, port, **self.over)
        self.daemon = Daemon(self.cfg, backend=self.backend)
        self.daemon.start_kernel()
        self.task = asyncio.get_running_loop().create_task(self.daemon.run())
        return self

    async def synced(self):
        await until(lambda: self.daemon.synced, "the first full sync")

    async def __aexit__(self, *exc):
        self.daemon.stop()
        assert await asyncio.wait_for(self.task, 5) == 0
        await self.esl.stop()


def run(coro):
    return asyncio.run(coro)


def test_a_fresh_start_monitors_until_the_first_sync_then_enforces(tmp_path):
    async def go():
        backend = RecordingBackend()  # nothing pinned
        async with World(tmp_path, backend, table=[Row(USER, REALM, PHONE, 5060, "c1")]) as w:
            assert backend.log[:3] == [("load",), ("configure", "monitor"),
                                       ("install", ())]
            assert backend.attached == {("nfg0", None): "auto"}
            await w.synced()
            assert backend.kernel_mode == "enforce"
            assert set(backend.sink.held) == {PHONE_B}
            assert backend.sink.calls[-1][0] == "sync"
            await w.esl.push(register_frame(USER, REALM, OTHER, call_id="c2"))
            await until(lambda: Binding(USER, REALM, OTHER) in backend.sink.held,
                        "the event's binding")
            st = w.daemon.status()
            assert st["bindings"]["registry"] == 2
            assert st["drift"] == {"recording_missing": [], "recording_extra": []}
    run(go())


def test_a_restart_keeps_enforcing_and_holds_pinned_bindings_until_the_sync(tmp_path):
    now = time.time()
    soon, later, gone = (Binding(USER, REALM, "192.0.2.1"), Binding(USER, REALM, "192.0.2.2"),
                         Binding(USER, REALM, "192.0.2.3"))
    pinned = {soon: now + 20, later: now + 10_000, gone: now - 5}

    async def go():
        backend = RecordingBackend(pinned=pinned, mode="enforce")
        w = World(tmp_path, backend, table=[Row(USER, REALM, PHONE, 5060, "c1")],
                  degraded_grace=600)
        async with w:
            # enforcing from the first moment; the binding about to run out
            # is held for the degraded grace, the others are left alone
            assert ("configure", "monitor") not in backend.log
            assert backend.log[1] == ("configure", "enforce")
            (first,) = [c for c in backend.sink.calls if c[0] == "apply"]
            assert set(first[1]) == {soon} and 590 < first[1][soon] - now <= 601
            await w.synced()
            assert set(backend.sink.held) == {PHONE_B}  # stale pins gone at the sync
    run(go())


def test_the_restart_hold_applies_when_freeswitch_is_down(tmp_path):
    now = time.time()
    soon = Binding(USER, REALM, "192.0.2.1")

    async def go():
        backend = RecordingBackend(pinned={soon: now + 20}, mode="enforce")
        async with World(tmp_path, backend, degraded_grace=600) as w:
            await w.esl.stop()  # FreeSWITCH is down as well
            await asyncio.sleep(0.3)
            assert not w.daemon.synced
            assert backend.kernel_mode == "enforce"
            assert 590 < backend.sink.held[soon] - now <= 601
    run(go())


def test_an_upgrade_across_a_map_layout_attaches_only_after_the_first_sync(tmp_path):
    async def go():
        backend = RecordingBackend(pinned={}, mode="monitor", migrating=True)
        backend.fresh = True
        esl = FakeEsl(table=[Row(USER, REALM, PHONE, 5060, "c1")])
        esl.api_delay = 0.3  # the sync takes a moment: the old program stays meanwhile
        port = await esl.start()
        daemon = Daemon(config(tmp_path, port), backend=backend)
        daemon.start_kernel()
        assert backend.attached == {}  # the older build's program keeps enforcing
        task = asyncio.get_running_loop().create_task(daemon.run())
        await until(lambda: daemon.synced, "the first full sync")
        assert backend.attached == {("nfg0", None): "auto"}
        i_sync = next(i for i, c in enumerate(backend.sink.calls) if c[0] == "sync")
        assert set(backend.sink.calls[i_sync][1]) == {PHONE_B}
        # filled, then enforcing, then attached, then the old pins go
        order = [e for e in backend.log if e[0] in ("configure", "attach", "settle")]
        assert order[-3:] == [("configure", "enforce"), ("attach", "nfg0"), ("settle",)]
        daemon.stop()
        await task
        await esl.stop()
    run(go())


def test_one_alert_per_credential_and_address_per_interval(tmp_path, caplog):
    def event(src, reason="not_bound"):
        return Event(ts_ns=0, src=src, sport=5060, dport=5060, reason=reason,
                     action="drop", would="drop", user=USER, realm=REALM)

    async def go():
        backend = RecordingBackend()
        async with World(tmp_path, backend) as w:
            for _ in range(3):
                backend.emit(event("198.51.100.7"))
            backend.emit(event("198.51.100.8"))
            backend.emit(event("198.51.100.9", reason="no_credentials"))
            await until(lambda: len(w.daemon.recent_events) == 5, "the events")
    with caplog.at_level(logging.WARNING, logger="nfguard"):
        run(go())
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert len(alerts) == 2
    assert "1001@pbx.example.com were used from 198.51.100.7 over udp, where" in alerts[0]
    assert "rotate it" in alerts[0] and "dropped" in alerts[0]
    assert "198.51.100.8" in alerts[1]


def test_reload_moves_interfaces_and_a_bad_file_keeps_the_running_config(tmp_path):
    async def go():
        backend = RecordingBackend()
        async with World(tmp_path, backend) as w:
            path = tmp_path / "nfguard.yaml"
            w.daemon.config_path = str(path)
            path.write_text(f"interfaces: [nfg1]\nmode: monitor\nsocket: {w.cfg.socket}\n"
                            f"esl: [{{name: fs1, port: {w.esl.port}, password: ClueCon}}]\n")
            await w.daemon.reload()
            assert backend.attached == {("nfg1", None): "auto"}
            assert ("detach", "nfg0") in backend.log
            assert backend.kernel_mode == "monitor"
            backend.bad_interfaces.add("nfg2")
            path.write_text(path.read_text().replace("nfg1", "nfg2"))
            with pytest.raises(NfguardError, match="nfg2"):
                await w.daemon.reload()
            path.write_text(path.read_text().replace("nfg2", "nfg1").replace("monitor", "often"))
            with pytest.raises(NfguardError, match="mode"):
                await w.daemon.reload()
            assert w.daemon.cfg.interfaces[0].name == "nfg1"
            assert backend.attached == {("nfg1", None): "auto"}
    run(go())


def test_a_freeswitch_outage_keeps_bindings_for_the_degraded_grace(tmp_path):
    async def go():
        backend = RecordingBackend()
        w = World(tmp_path, backend, table=[Row(USER, REALM, PHONE, 5060, "c1",
                                                expires_in=1)], degraded_grace=1.5)
        async with w:
            await w.synced()
            assert PHONE_B in backend.sink.held
            await w.esl.stop()  # FreeSWITCH goes away; its 1 s registration lapses
            t0 = time.monotonic()
            await until(lambda: w.daemon.status()["esl"][0]["state"] == "down", "ESL down")
            await asyncio.sleep(1.2)
            assert PHONE_B in backend.sink.held  # kept: the node is degraded
            await until(lambda: PHONE_B not in backend.sink.held, "the grace to end", 5)
            assert time.monotonic() - t0 >= 1.2
    run(go())


def test_a_failing_sink_is_counted_and_the_next_sync_repairs_it(tmp_path):
    async def go():
        backend = RecordingBackend()
        async with World(tmp_path, backend) as w:
            await w.synced()
            backend.sink.fail = True
            await w.esl.push(register_frame(USER, REALM, PHONE, call_id="c1"))
            await until(lambda: w.daemon.stats["recording_errors"] == 1, "the error")
            assert PHONE_B not in backend.sink.held
            assert w.daemon.status()["drift"]["recording_missing"] == [str(PHONE_B)]
    run(go())


def _dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens: a node that never connects."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_first_sync_timeout_enforces_with_the_endpoints_that_synced(tmp_path):
    async def go():
        backend = RecordingBackend()
        dead = _dead_port()
        w = World(tmp_path, backend, table=[Row(USER, REALM, PHONE, 5060, "c1")],
                  extra_esl=[{"name": "fs2", "port": dead, "password": "ClueCon"}],
                  first_sync_timeout=0.6)
        async with w:
            t0 = time.monotonic()
            await until(lambda: "fs1" in w.daemon.runners
                        and w.daemon.runners["fs1"][0].last_sync is not None, "fs1's sync")
            assert not w.daemon.synced and backend.kernel_mode == "monitor"
            await w.synced()
            assert time.monotonic() - t0 >= 0.3
            assert backend.kernel_mode == "enforce"
            assert set(backend.sink.held) == {PHONE_B}
            st = w.daemon.status()
            assert st["first_sync_partial"] and st["unsynced"] == ["fs2"]
    run(go())


def test_no_endpoint_synced_stays_in_monitor_past_the_timeout(tmp_path):
    async def go():
        backend = RecordingBackend()
        dead = _dead_port()
        w = World(tmp_path, backend, first_sync_timeout=0.2,
                  esl=[{"name": "fs1", "port": dead, "password": "ClueCon"}])
        async with w:
            await asyncio.sleep(0.8)
            assert not w.daemon.synced and backend.kernel_mode == "monitor"
            assert w.daemon.status()["unsynced"] == ["fs1"]
    run(go())


def test_bpf_drift_reads_the_map_one_binding_at_a_time():
    """BpfSink.drift: the map's bindings not wanted are extra; wanted ones
    it lacks are missing, looked up one by one only when the map holds
    fewer of the wanted than there are."""
    from nfguard.daemon.backend import BpfSink
    from nfguard.kernel.program import Binding as MapBinding

    class Map:
        def __init__(self, held):
            self.held, self.lookups = held, 0

        def iter_bindings(self):
            for u, r, ip in self.held:
                yield MapBinding(u, r, ip, 0)

        def holds(self, u, r, ip):
            self.lookups += 1
            return (u, r, ip) in self.held

    a, b_, c = (Binding("1001", "r", "192.0.2.1"), Binding("1002", "r", "192.0.2.2"),
                Binding("1003", "r", "192.0.2.3"))
    prog = Map({tuple(a), tuple(b_)})
    assert BpfSink(prog).drift({a: 1.0, b_: 1.0}, 0) == {"bpf_missing": [], "bpf_extra": []}
    assert prog.lookups == 0  # as many held as wanted: nothing to look up
    prog = Map({tuple(a), tuple(c)})
    assert BpfSink(prog).drift({a: 1.0, b_: 1.0}, 0) == {
        "bpf_missing": ["1002@r 192.0.2.2"], "bpf_extra": ["1003@r 192.0.2.3"]}
    assert prog.lookups == 2
    assert BpfSink(Map({tuple(a), tuple(b_), tuple(c)})).survey({a: 1.0})[0] == 3


def test_the_bound_map_follows_the_nft_sinks_addresses_with_the_latest_expiry():
    """BoundSink: the kernel's bound map is fed from the NftSink's
    per-address table (updated first): one entry an address, the latest
    expiry of its bindings, gone with its last binding."""
    from nfguard.daemon.backend import BoundSink, NftSink, boottime_ns
    from nfguard.daemon.registry import Diff

    class Nft:
        def apply(self, changed, removed, now):
            pass

        def sync(self, elements, now):
            return {}

    class Map:
        def __init__(self):
            self.bound: dict[str, int] = {}

        def update_bound(self, add=(), remove=(), prune=False):
            add = dict(add)
            gone = [ip for ip in self.bound if ip not in add] if prune else list(remove)
            for ip in gone:
                self.bound.pop(ip, None)
            self.bound.update(add)
            return len(gone)

        def iter_bound(self):
            return iter(list(self.bound.items()))

    now = 1000.0
    nft_sink, prog = NftSink(Nft()), Map()
    sinks = [nft_sink, BoundSink(prog, nft_sink)]
    a1, a2 = Binding("1001", "r", "192.0.2.1"), Binding("1002", "r", "192.0.2.1")
    b = Binding("1003", "r", "2001:db8::3")

    def apply(diff):
        for s in sinks:
            s.apply(diff, now)

    boot = boottime_ns()
    apply(Diff(added={a1: now + 100, a2: now + 300, b: now + 50}))
    assert set(prog.bound) == {"192.0.2.1", "2001:db8::3"}
    # the latest of the address's two bindings, as boot-time ns (1 s of slack)
    assert abs(prog.bound["192.0.2.1"] - (boot + 300e9)) < 1e9
    apply(Diff(removed={a2}))  # the address keeps a1: its expiry moves back
    assert abs(prog.bound["192.0.2.1"] - (boot + 100e9)) < 1e9
    apply(Diff(removed={a1}))
    assert set(prog.bound) == {"2001:db8::3"}
    assert sinks[1].survey() == (1, {"bound_missing": [], "bound_extra": []})
    prog.bound["198.51.100.9"] = 1  # by hand
    del prog.bound["2001:db8::3"]
    assert sinks[1].drift({}, now) == {"bound_missing": ["2001:db8::3"],
                                       "bound_extra": ["198.51.100.9"]}
    # a sync makes it exactly the addresses again
    for s in sinks:
        s.sync({a1: now + 10, b: now + 20}, now)
    assert set(prog.bound) == {"192.0.2.1", "2001:db8::3"}
