"""`nfguard run`: FreeSWITCH registrations into the kernel and nftables.

Start-up checks everything first (config, privileges, interfaces) and only
then changes anything: load the program against the pinned maps, install
`table inet nfguard`, attach to every interface (taking off again what this
start attached if one fails). Then it follows every ESL endpoint and
applies each registry diff to the bindings map (batch syscalls) and the nft
sets (one atomic batch).

Enforcement and restarts: on a fresh start (no pinned maps) the program
runs in monitor mode until every endpoint has completed its first full
sync, so a new install never cuts phones off. On a restart the pinned maps
still hold the bindings and the kernel keeps its mode: the program stays
attached and enforcing throughout, and the first full sync reconciles the
maps (stale bindings removed) and switches to the configured mode.

Upgrades across a map layout (nfguard/kernel/pins.py): the older build's
pins are moved aside and its program stays attached, enforcing with its
own maps, while this build fills fresh maps from FreeSWITCH; at the first
full sync this build's program replaces it on every interface, so there is
no moment without enforcement.

Bans (bans.py): FreeSWITCH's failed authentications (sofia::register_failure)
are counted per address; one that crosses the threshold is banned in the
kernel's pinned `bans` map and mirrored in nft sets, with one ALERT line.
The map is the truth: a restart reads it back (offense counts included)
and makes the nft sets equal to its active bans.

Everything the daemon changes outside itself goes through a backend
(backend.py): the kernel, or an in-memory recording for tests.

The FreeSWITCH-side guard (fsguard.py): the bindings, trusted networks and
mode are mirrored into each FreeSWITCH's hash store, where the Lua guard
judges calls over TCP, TLS and WebSocket (XDP sees UDP only); its failing
verdicts (nfguard::guard events) give the same ALERT lines as the kernel's,
the transport named.

SIGHUP reloads the config (a bad one is refused and the running one kept);
SIGTERM stops following and leaves enforcement in place unless `on_stop:
detach`. Logs go to stderr (journald); systemd hears READY, STATUS and
WATCHDOG through sd_notify.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import time
from dataclasses import asdict

from nfguard import __version__
from nfguard.daemon import control
from nfguard.daemon.backend import KernelBackend, Loaded
from nfguard.daemon.bans import BanEntry, Banned, Bans, Spared, format_duration, holders
from nfguard.daemon.config import Config, ConfigError, load_config
from nfguard.daemon.esl import Backoff, EndpointRunner
from nfguard.daemon.fsevents import follow
from nfguard.daemon.fsguard import GuardMirror
from nfguard.daemon.registry import Binding, Diff, Registry, binding_of, kernel_case
from nfguard.daemon.sdnotify import Notifier
from nfguard.errors import AttachError, NfguardError

log = logging.getLogger("nfguard")

TICK = 0.25  # seconds: expiry, kernel events, watchdog
CREDENTIAL_VERDICTS = ("not_bound", "expired")


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None, backend=None):
        """backend: where decisions land (backend.py); the kernel by default."""
        self.cfg = cfg
        self.config_path = config_path
        self.backend = backend if backend is not None else KernelBackend()
        self.registry = Registry(grace=cfg.expiry_grace, degraded_grace=cfg.degraded_grace)
        self.runners: dict[str, tuple[EndpointRunner, asyncio.Task]] = {}
        self.synced = False
        self.first_sync_at: float | None = None
        self.first_sync_partial = False  # first_sync_timeout ran out
        self._started_mono = time.monotonic()  # run() sets it again
        self.started = time.time()
        self._pending = Diff()
        self._alerted: dict[tuple, float] = {}  # what an ALERT named -> when
        self.recent_events: collections.deque = collections.deque(maxlen=100)
        self._subscribers: set[asyncio.Queue] = set()
        self.stats = collections.Counter()
        self.notifier = Notifier()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.bans = Bans(cfg.bans, cfg.trusted)
        self.guard = GuardMirror(self.registry.view, self.backend.mode,
                                 enabled=cfg.guard_enabled, transports=cfg.guard_transports,
                                 trusted=cfg.trusted)
        # (reason, transport, action) -> the Lua guard's verdicts since start
        self.guard_verdicts: collections.Counter = collections.Counter()
        # what start_kernel() found; a backend set up by its caller (bench
        # sync) counts as fresh
        self._loaded = Loaded(fresh=True, mode="monitor")

    # -- start-up: check everything, then change things --------------------
    def start_kernel(self) -> None:
        backend = self.backend
        backend.check(self.cfg)
        self._loaded = loaded = backend.load(self.cfg)
        self._configure_kernel()
        if not loaded.fresh:
            self._hold_pinned_bindings()
        backend.install(self.cfg)
        if loaded.migrating:
            carried = backend.carry_bans(self.cfg.pin_dir)
            if carried:
                log.info("%d ban(s) carried over from the older build's retired maps", carried)
        self._load_bans()
        if loaded.migrating:
            log.info("nfguard %s: attaching once the first full sync has filled the new maps",
                     __version__)
        else:
            backend.attach(self.cfg.interfaces)
            backend.settle(self.cfg.pin_dir)
        log.info("nfguard %s: program loaded (%s maps in %s), mode %s until the first "
                 "full sync", __version__, "new" if loaded.fresh else "existing",
                 self.cfg.pin_dir, backend.mode())

    def _hold_pinned_bindings(self) -> None:
        """A restart: until the first full sync replaces them, the live
        bindings of the pinned map are kept for the degraded grace, as for a
        disconnected node (FreeSWITCH may be down too, and the phones'
        refreshes cannot reach the map meanwhile)."""
        now = time.time()
        hold = self.cfg.degraded_grace + self.cfg.expiry_grace
        held = {b: now + hold for b, exp in self.backend.pinned().items() if now < exp < now + hold}
        if held:
            self.apply(Diff(added=held))
            log.info("restart: %d pinned bindings held for %.0f s until the first full sync",
                     len(held), hold)

    def _load_bans(self) -> None:
        """The kernel's ban map is the truth (pinned: it outlives the
        daemon): read it back, offense counts and all, and make the nft
        ban sets hold exactly its active bans."""
        now = time.time()
        entries = self.backend.bans()
        self.bans.load(entries, now)
        self.backend.sync_bans(entries, now)
        self._lift_trusted_bans()
        active = self.bans.active(now)
        if active:
            log.info("%d active ban(s) kept from the pinned map: %s", len(active),
                     ", ".join(f"{e.key} ({format_duration(e.remaining(now))} left)"
                               for e in active[:10]) + (" ..." if len(active) > 10 else ""))

    def _configure_kernel(self) -> None:
        cfg, loaded = self.cfg, self._loaded
        if self.synced or cfg.mode == "monitor":
            mode = cfg.mode
        elif loaded.fresh:
            mode = "monitor"  # never cut phones off before the first sync
        else:
            mode = loaded.mode  # a restart keeps enforcing
        self.backend.configure(cfg, mode)

    # -- following FreeSWITCH ----------------------------------------------
    def follow(self, endpoint) -> None:
        name = endpoint.name
        runner = follow(endpoint, self.registry, on_change=self._on_change,
                        on_auth_failure=self._on_auth_failure,
                        on_guard_verdict=self._on_guard_verdict,
                        on_connected=lambda conn: self.guard.connected(name, conn),
                        on_disconnected=lambda: self.guard.disconnected(name),
                        backoff=Backoff(), resync_interval=self.cfg.resync_interval)
        task = asyncio.get_running_loop().create_task(runner.run(), name=f"esl {endpoint.name}")
        self.runners[endpoint.name] = (runner, task)

    async def unfollow(self, name: str) -> None:
        _, task = self.runners.pop(name)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        self.guard.forget(name)

    def _on_change(self, diff: Diff) -> None:
        self._pending.then(diff)
        self._wake.set()

    async def flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            diff, self._pending = self._pending, Diff()
            if diff:
                self.apply(diff)
            if not self.synced and self.runners:
                self._maybe_first_sync()

    def _maybe_first_sync(self) -> None:
        """Every endpoint has synced: the first full sync. Past
        first_sync_timeout, the endpoints that have synced are enough (the
        others join when they connect); none is never enough, since
        enforcing without bindings would refuse every phone."""
        waiting = sorted(name for name, (r, _) in self.runners.items() if r.last_sync is None)
        if not waiting:
            self._first_sync()
            return
        if (len(waiting) < len(self.runners)
                and time.monotonic() - self._started_mono >= self.cfg.first_sync_timeout):
            self.first_sync_partial = True
            log.warning("first_sync_timeout (%.0f s): enforcing with the endpoints that "
                        "synced; %s never did (their registrations are missing until they "
                        "connect)", self.cfg.first_sync_timeout, ", ".join(waiting))
            self._first_sync()

    def apply(self, diff: Diff) -> None:
        """One registry diff into every sink (the bindings map, the nft
        sets); a sink that fails is logged and counted, and the next full
        sync puts it right."""
        now = time.time()
        for reg, why in diff.rejected:
            log.warning("registration of %s@%s at %s not stored: %s", reg.user, reg.realm,
                        reg.ip, why)
        for sink in self.backend.sinks:
            try:
                sink.apply(diff, now)
            except Exception as e:  # noqa: BLE001 - logged, counted, fixed by the next sync
                self.stats[f"{sink.name}_errors"] += 1
                log.error("updating the %s bindings failed: %s", sink.name, e)
        try:
            self.guard.apply(diff)
        except Exception:  # logged; the next full sync puts it right
            self.stats["guard_errors"] += 1
            log.exception("updating the FreeSWITCH guard's state failed")
        self.stats["diffs"] += 1
        self.stats["bindings_added"] += len(diff.added)
        self.stats["bindings_removed"] += len(diff.removed)

    def _first_sync(self) -> None:
        """Every endpoint has synced once: make the kernel and nft hold
        exactly the registry (stale bindings of an earlier run go), then
        enforce as configured; after an upgrade across a map layout, only
        now does this build's program replace the older one."""
        now = time.time()
        want = self.registry.view()
        counts = {sink.name: sink.sync(want, now) for sink in self.backend.sinks}
        self.synced = True
        self.first_sync_at = now
        self._configure_kernel()
        self.guard.start()  # every connected FreeSWITCH gets the state, mode and all
        if self._loaded.migrating:
            self.backend.attach(self.cfg.interfaces)
            self.backend.settle(self.cfg.pin_dir)
            self._loaded.migrating = False
        log.info("first full sync: %d bindings (%s); mode %s", len(want),
                 ", ".join(f"{name} {c}" for name, c in counts.items()), self.cfg.mode)
        self.notifier.status(self._status_line())

    # -- bans ----------------------------------------------------------------
    def _on_auth_failure(self, fail) -> None:
        """One failed authentication (fsevents.AuthFailure). Before the
        first full sync it is only counted: the bindings that spare a NAT
        shared with a phone are not all known yet."""
        self.stats["auth_failures"] += 1
        if not self.cfg.bans.enabled:
            return
        now = time.time()
        decision = self.bans.failure(fail.ip, fail.cred, now, self._bound_at,
                                     may_ban=self.synced)
        if isinstance(decision, Spared):
            log.warning("not banning %s: %d authentication failures in %s (last: %s), but "
                        "it is %s", decision.ip, decision.failures,
                        format_duration(self.cfg.bans.window), fail.cred, decision.why)
        elif isinstance(decision, Banned):
            self._carry_out(decision.entry, now, (
                f"{decision.failures} authentication failures in "
                f"{format_duration(self.cfg.bans.window)} (last: {decision.last} from "
                f"{decision.ip})"))

    def _lift_trusted_bans(self) -> None:
        """Lift the bans that overlap a trusted network: the kernel looks
        bans up first, and a trusted source is never banned. Only a config
        that widened the trusted networks leaves such a ban (at start or
        on reload)."""
        from nfguard.daemon.bans import trusted_network

        for key in list(self.bans.entries):
            net = trusted_network(key, self.bans.trusted)
            if net is None:
                continue
            self.bans.unban(key)
            try:
                self.backend.unban(key)
            except Exception as e:  # noqa: BLE001 - logged; the next start tries again
                log.error("lifting the ban of %s failed: %s", key, e)
                continue
            log.warning("ban of %s lifted: it overlaps the trusted network %s", key, net)

    def _bound_at(self, key: str) -> list[str]:
        """user@realm of the bindings at the addresses a ban key covers."""
        return holders(key, self.registry.view(), self.cfg.bans.ipv6_prefix)

    def _carry_out(self, entry: BanEntry, now: float, why: str) -> None:
        """A ban decided: into the kernel and nft, then its one ALERT line.
        If the kernel refuses, the decision is undone (the map is the truth)."""
        try:
            self.backend.ban(entry, now)
        except Exception as e:  # noqa: BLE001 - logged; the next threshold tries again
            self.bans.entries.pop(entry.key, None)
            self.stats["ban_errors"] += 1
            log.error("banning %s failed: %s", entry.key, e)
            return
        self.stats["manual_bans" if entry.manual else "bans"] += 1
        monitor = " (monitor mode: counted, not dropped)" if self.backend.mode() == "monitor" \
            else ""
        log.warning("ALERT: banned %s for %s: %s [offense %d]%s", entry.key,
                    format_duration(entry.expires - now), why, entry.offenses, monitor)

    def _expire_bans(self, now: float) -> None:
        t = self.bans.tick(now)
        for e in t.lifted:
            log.info("ban of %s lifted: it expired [offense %d%s]", e.key, e.offenses,
                     ", manual" if e.manual else "")
        for e in t.forgotten:
            try:
                self.backend.forget_ban(e.key)
            except Exception as err:  # noqa: BLE001 - the next start forgets it
                log.error("removing the expired ban entry of %s failed: %s", e.key, err)

    def _ban_target(self, address) -> str:
        if not isinstance(address, str) or not address:
            raise NfguardError("give an IPv4 or IPv6 address")
        try:
            return self.bans.key(address)
        except ValueError as e:
            raise NfguardError(str(e)) from None

    def manual_ban(self, address, seconds=None) -> dict:
        """`nfguard ban`: refused in a trusted network; allowed, with a
        warning, where a phone is bound."""
        from nfguard.daemon.bans import trusted_network

        key = self._ban_target(address)
        net = trusted_network(key, self.bans.trusted)
        if net is not None:
            raise NfguardError(f"{key} overlaps the trusted network {net}: nfguard never bans "
                               "it (remove it from trusted first)")
        if seconds is None:
            seconds = self.cfg.bans.ban_time
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise NfguardError(f"a ban lasts more than 0 seconds, not {seconds!r}")
        bound = self._bound_at(key)
        warning = (f"{key} holds the binding of {', '.join(bound[:5])}: that phone is cut "
                   "off too" if bound else "")
        now = time.time()
        old = self.bans.entries.get(key)
        entry = self.bans.ban(key, float(seconds), now)
        try:
            self.backend.ban(entry, now)
        except Exception:
            if old is None:
                self.bans.entries.pop(key, None)
            else:
                self.bans.entries[key] = old
            raise
        self.stats["manual_bans"] += 1
        log.warning("ALERT: banned %s for %s by an operator (nfguard ban)%s [offense %d]",
                    key, format_duration(seconds), f"; {warning}" if warning else "",
                    entry.offenses)
        return {"key": key, "expires": entry.expires, "seconds": float(seconds),
                "warning": warning}

    def manual_unban(self, address) -> dict:
        key = self._ban_target(address)
        entry = self.bans.unban(key)
        had = self.backend.unban(key)
        lifted = had or entry is not None
        if lifted:
            log.warning("ban of %s lifted by an operator (nfguard unban)", key)
        return {"key": key, "lifted": lifted}

    def ban_rows(self) -> list[dict]:
        now = time.time()
        return [{"key": e.key, "expires": None if e.expires == float("inf") else e.expires,
                 "remaining_s": round(e.remaining(now), 1), "offenses": e.offenses,
                 "manual": e.manual, "reason": e.reason}
                for e in self.bans.active(now)]

    # -- verdict events: the kernel's (UDP) and the Lua guard's ------------------
    def _event(self, item: dict) -> None:
        self.recent_events.append(item)
        for q in list(self._subscribers):
            if q.qsize() < 1000:
                q.put_nowait(item)

    def _throttled(self, key: tuple, now: float) -> bool:
        """Whether a warning about key was logged less than alert_interval
        ago; if not, it is logged now (the caller logs it)."""
        last = self._alerted.get(key)
        if last is not None and now - last < self.cfg.alert_interval:
            return True
        self._alerted[key] = now
        return False

    def _alert(self, user: str, realm: str, src: str, transport: str, reason: str,
               outcome: str, now: float) -> None:
        """One ALERT line per (credentials, source, transport) per
        alert_interval: the credentials were used where they are not bound."""
        if self._throttled((kernel_case(user), kernel_case(realm), src, transport), now):
            return
        log.warning("ALERT: the credentials of %s@%s were used from %s over %s, where they "
                    "are not registered (%s; %s): the password is likely compromised, "
                    "rotate it", user, realm, src, transport, reason, outcome)

    def _on_kernel_event(self, ev) -> None:
        now = time.time()
        self._event({"time": now, **asdict(ev), "transport": "udp"})
        if ev.user and ev.reason in CREDENTIAL_VERDICTS:
            self._alert(ev.user, ev.realm or "", ev.src, "udp", ev.reason,
                        "dropped" if ev.action == "drop" else
                        "rejected" if ev.action == "mark" else f"monitor, would {ev.would}",
                        now)

    def _on_guard_verdict(self, v) -> None:
        """A failing verdict of the Lua guard in FreeSWITCH
        (fsevents.GuardVerdict): counted, an item of the recent events, and
        the kernel's ALERT line with the transport named."""
        now = time.time()
        self.stats["guard_verdicts"] += 1
        self.guard_verdicts[(v.reason, v.transport, v.action)] += 1
        self._event({"time": now, "stage": "freeswitch", "ts_ns": int(v.fired * 1e9),
                     "src": v.ip, "sport": v.port, "dport": None, "reason": v.reason,
                     "action": v.action, "would": "refused", "user": v.user,
                     "realm": v.realm, "transport": v.transport, "state": v.state,
                     "call_id": v.call_id, "profile": v.profile})
        fallback = "" if v.state == "nfguard" else ", judged by FreeSWITCH's registrations"
        outcome = ("refused with 403 by FreeSWITCH" if v.action == "refused" else
                   "monitor, FreeSWITCH would refuse it with 403") + fallback
        if v.reason in CREDENTIAL_VERDICTS:
            self._alert(v.user, v.realm, v.ip, v.transport, v.reason, outcome, now)
        else:  # malformed: FreeSWITCH's source address could not be read
            if not self._throttled(("malformed", v.profile, v.transport), now):
                log.warning("the FreeSWITCH guard could not read the source address %r of a "
                            "call with the credentials of %s@%s over %s (profile %s; %s)",
                            v.ip, v.user, v.realm, v.transport, v.profile or "?", outcome)

    async def _ticker(self) -> None:
        next_watchdog = 0.0
        next_status = 0.0
        while True:
            now = time.time()
            diff = self.registry.expire(now)
            if diff:
                self._on_change(diff)
            elif not self.synced:
                self._wake.set()  # an empty first resync gives no diff to wake on
            self._expire_bans(now)
            try:
                self.backend.poll_events()
            except Exception as e:  # noqa: BLE001
                log.error("reading kernel events failed: %s", e)
            mono = time.monotonic()
            if self.notifier.watchdog_interval and mono >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = mono + self.notifier.watchdog_interval
            if mono >= next_status:
                self.notifier.status(self._status_line())
                next_status = mono + 10
            for key, t in list(self._alerted.items()):
                if now - t > self.cfg.alert_interval:
                    del self._alerted[key]
            await asyncio.sleep(TICK)

    def _status_line(self) -> str:
        up = sum(r.state == "up" for r, _ in self.runners.values())
        mode = self.backend.mode()
        sync = "in sync" if self.synced else "waiting for the first full sync"
        return (f"{mode}, {len(self.registry)} bindings, ESL {up}/"
                f"{len(self.runners)} up, {sync}")

    # -- reload --------------------------------------------------------------
    async def reload(self) -> dict:
        path = self.config_path
        try:
            new = load_config(path)
            self.backend.check_interfaces(new.interfaces)
        except (ConfigError, AttachError) as e:
            log.error("reload refused, the running config stays: %s", e)
            raise
        old, self.cfg = self.cfg, new
        self.registry.grace = new.expiry_grace
        self.registry.degraded_grace = new.degraded_grace
        self.bans.policy = new.bans
        self.bans.set_trusted(new.trusted)
        self._lift_trusted_bans()
        self._configure_kernel()
        self.guard.update(enabled=new.guard_enabled, transports=new.guard_transports,
                          trusted=new.trusted)
        self.backend.install(new)
        if not self._loaded.migrating:
            keys = {(i.name, i.netns) for i in new.interfaces}
            for itf in old.interfaces:
                if (itf.name, itf.netns) not in keys:
                    self.backend.detach(itf)
            self.backend.attach([i for i in new.interfaces
                                 if (i.name, i.netns) not in self.backend.attached])
        wanted = {e.name: e for e in new.esl}
        for name in list(self.runners):
            runner = self.runners[name][0]
            if wanted.get(name) != runner.endpoint or new.resync_interval != old.resync_interval:
                await self.unfollow(name)
                if name not in wanted:
                    self._on_change(self.registry.resync(name, [], time.time()))
        for name, endpoint in wanted.items():
            if name not in self.runners:
                self.follow(endpoint)
        log.info("config reloaded from %s", path)
        return {"reloaded": path}

    # -- the control socket --------------------------------------------------
    async def _handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        cmd = req["cmd"]
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "bindings":
            return {"ok": True, "bindings": self.bindings()}
        if cmd == "check":
            verdict = self.backend.check_binding(req.get("user", ""), req.get("realm", ""),
                                                 req.get("ip", ""))
            return {"ok": True, **verdict}
        if cmd == "reload":
            return {"ok": True, **await self.reload()}
        if cmd == "bans":
            return {"ok": True, "bans": self.ban_rows()}
        if cmd == "ban":
            return {"ok": True, **self.manual_ban(req.get("address"), req.get("seconds"))}
        if cmd == "unban":
            return {"ok": True, **self.manual_unban(req.get("address"))}
        if cmd == "events":
            await self._stream_events(writer)
            return None
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def _stream_events(self, writer: asyncio.StreamWriter) -> None:
        import json
        q: asyncio.Queue = asyncio.Queue()
        self._subscribers.add(q)
        try:
            while True:
                item = await q.get()
                writer.write(json.dumps(item).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._subscribers.discard(q)

    def bindings(self) -> list[dict]:
        nodes: dict[Binding, list[str]] = {}
        for reg in self.registry.rows():
            nodes.setdefault(binding_of(reg), []).append(reg.node)
        return [{"user": b.user, "realm": b.realm, "ip": b.ip, "expires": exp,
                 "nodes": sorted(set(nodes.get(b, [])))}
                for b, exp in sorted(self.registry.bindings().items())]

    def status(self) -> dict:
        now = time.time()
        registry = self.registry.view()
        st = self.backend.status(self.cfg, registry, now)
        st["bindings"]["registry"] = len(registry)
        st["bans"] = {**st.get("bans", {}), **self.ban_summary(now)}
        st.update({
            "daemon": "up", "pid": os.getpid(), "version": __version__,
            "config": self.config_path, "uptime_s": round(now - self.started, 1),
            "synced": self.synced, "first_sync_at": self.first_sync_at,
            "first_sync_partial": self.first_sync_partial,
            "unsynced": sorted(name for name, (r, _) in self.runners.items()
                               if r.last_sync is None),
            "esl": [{"name": r.endpoint.name, "host": r.endpoint.host, "port": r.endpoint.port,
                     "state": r.state, "last_sync": r.last_sync, "last_error": r.last_error,
                     "connects": r.connects, "events_applied": r.events_applied,
                     "events_skipped": r.events_skipped,
                     "rereads": r.rereads, "reread_fallbacks": r.reread_fallbacks,
                     "degraded_since": self.registry.down_since.get(r.endpoint.name)}
                    for r, _ in self.runners.values()],
            "rejected_registrations": [
                {"user": reg.user, "realm": reg.realm, "ip": reg.ip, "why": why}
                for reg, why in self.registry.rejected.values()][:50],
            "recent_events": list(self.recent_events)[-20:],
            "stats": dict(self.stats),
        })
        # beside "drift" (nfguard's own copies): FreeSWITCH against its events
        st["freeswitch_drift"] = self._freeswitch_drift()
        st["guard"] = self.guard_status()
        return st

    def guard_status(self) -> dict:
        """The FreeSWITCH-side guard: its state per endpoint, its verdicts."""
        by_transport: collections.Counter = collections.Counter()
        for (_, transport, _), n in self.guard_verdicts.items():
            by_transport[transport] += n
        return {**self.guard.status(), "verdicts": dict(by_transport),
                "verdicts_by": [{"reason": r, "transport": t, "action": a, "count": n}
                                for (r, t, a), n in sorted(self.guard_verdicts.items())]}

    def ban_summary(self, now: float) -> dict:
        """The daemon's side of the bans: what it holds and has counted."""
        active = self.bans.active(now)
        c = self.bans.counts
        return {"active": len(active), "manual": sum(e.manual for e in active),
                "remembered": len(self.bans.entries) - len(active),
                "tracked": self.bans.tracked(), "enabled": self.cfg.bans.enabled,
                "auth_failures": self.stats["auth_failures"], "bans": self.stats["bans"],
                "manual_bans": self.stats["manual_bans"], "spared": c["spared"],
                "lifted": c["lifted"]}

    def _freeswitch_drift(self) -> dict:
        """What resyncs found that the event stream had missed, over every
        endpoint (each runner logs its own when it happens)."""
        runners = [r for r, _ in self.runners.values()]
        last = sorted(({**item, "node": r.endpoint.name} for r in runners
                       for item in r.drift["last"]), key=lambda i: -i["time"])
        return {key: sum(r.drift[key] for r in runners)
                for key in ("resyncs", "added", "removed")} | {
            "last_at": max((r.drift["last_at"] for r in runners if r.drift["last_at"]),
                           default=None),
            "last": last[:10]}

    # -- the whole run ---------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = self._stop
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: loop.create_task(self._reload_logged()))
        server = await control.serve(self.cfg.socket, self._handle)
        metrics = None
        if self.cfg.metrics_listen:
            from nfguard.daemon.metrics import serve_metrics
            metrics = await serve_metrics(self.cfg.metrics_listen, self)
        self.backend.open_events(self._on_kernel_event)
        self._started_mono = time.monotonic()
        for endpoint in self.cfg.esl:
            self.follow(endpoint)
        tasks = [loop.create_task(self.flush_forever()), loop.create_task(self._ticker())]
        self.notifier.ready(self._status_line())
        log.info("running: control socket %s, %d ESL endpoint(s)", self.cfg.socket,
                 len(self.runners))
        await stop.wait()
        self.notifier.stopping()
        log.info("stopping")
        for name in list(self.runners):
            await self.unfollow(name)
        self.guard.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        server.close()
        if metrics is not None:
            metrics.close()
        try:
            os.unlink(self.cfg.socket)
        except OSError:
            pass
        if self.cfg.on_stop == "detach":
            for itf in self.cfg.interfaces:
                self.backend.detach(itf)
            log.info("on_stop: detach: enforcement removed")
        else:
            log.info("enforcement stays in place (on_stop: keep)")
        return 0

    def stop(self) -> None:
        """Ask run() to return, as SIGTERM does."""
        self._stop.set()

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except NfguardError:
            pass  # logged by reload()
