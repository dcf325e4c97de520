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
from nfguard.kernel import attach
from nfguard.daemon import control
from nfguard.daemon.config import Config, ConfigError, Interface, load_config
from nfguard.errors import AttachError, NfguardError
from nfguard.daemon.esl import Backoff, EndpointRunner
from nfguard.daemon.fsevents import follow
from nfguard.daemon.nftstate import Element, NftState, element_comment
from nfguard.daemon.registry import Binding, Diff, Registry, binding_of
from nfguard.daemon.sdnotify import Notifier

log = logging.getLogger("nfguard")

TICK = 0.25  # seconds: expiry, kernel events, watchdog
CREDENTIAL_VERDICTS = ("not_bound", "expired")


def boot_ns_of(expires: float, now: float, boot_now_ns: int) -> int:
    """An epoch expiry as the CLOCK_BOOTTIME ns the kernel compares."""
    return boot_now_ns + int((expires - now) * 1e9)


class Daemon:
    def __init__(self, cfg: Config, config_path: str | None = None):
        self.cfg = cfg
        self.config_path = config_path
        self.registry = Registry(grace=cfg.expiry_grace, degraded_grace=cfg.degraded_grace)
        self.prog = None
        self.nft: NftState | None = None
        self.runners: dict[str, tuple[EndpointRunner, asyncio.Task]] = {}
        self.attached: dict[tuple[str, str | None], str] = {}  # (ifname, netns) -> XDP mode
        self.synced = False
        self.first_sync_at: float | None = None
        self.started = time.time()
        self._pending = Diff()
        self._by_ip: dict[str, dict[Binding, float]] = {}
        self._alerted: dict[tuple[str, str, str], float] = {}
        self.recent_events: collections.deque = collections.deque(maxlen=100)
        self._subscribers: set[asyncio.Queue] = set()
        self.stats = collections.Counter()
        self.notifier = Notifier()
        self._checker = None

    # -- start-up: check everything, then change things --------------------
    def start_kernel(self) -> None:
        from nfguard.cli.attach import check_privileges
        from nfguard.kernel.program import Program

        check_privileges("nfguard run")
        for itf in self.cfg.interfaces:
            attach.check_interface(itf.name, netns=itf.netns)
        fresh = not os.path.exists(os.path.join(self.cfg.pin_dir, "config"))
        self.prog = Program(pin_dir=self.cfg.pin_dir)
        self._configure_kernel(fresh=fresh)
        if not fresh:
            self._hold_pinned_bindings()
        self.nft = NftState(self.cfg.reject_mark)
        self.nft.install(self.cfg.trusted)
        self._attach(self.cfg.interfaces)
        self.prog.unpin_stale_stages()
        log.info("nfguard %s: program loaded (%s maps in %s), mode %s until the first "
                 "full sync", __version__, "new" if fresh else "existing", self.cfg.pin_dir,
                 self.prog.config()["mode"])

    def _hold_pinned_bindings(self) -> None:
        """A restart: until the first full sync replaces them, the live
        bindings of the pinned map are kept for the degraded grace, as for a
        disconnected node (FreeSWITCH may be down too, and the phones'
        refreshes cannot reach the map meanwhile)."""
        boot = _boottime_ns()
        floor = boot + int((self.cfg.degraded_grace + self.cfg.expiry_grace) * 1e9)
        held = [(b.user, b.realm, b.ip, floor) for b in self.prog.bindings()
                if boot < b.expires_ns < floor]
        if held:
            self.prog.update_bindings(add=held)
            log.info("restart: %d pinned bindings held for %.0f s until the first full sync",
                     len(held), self.cfg.degraded_grace + self.cfg.expiry_grace)

    def _configure_kernel(self, fresh: bool = False) -> None:
        cfg, prog = self.cfg, self.prog
        if self.synced or cfg.mode == "monitor":
            mode = cfg.mode
        elif fresh:
            mode = "monitor"  # never cut phones off before the first sync
        else:
            mode = prog.config()["mode"]  # a restart keeps enforcing
        prog.configure(mode=mode, action=cfg.action, methods=cfg.methods,
                       fragments=cfg.fragments, reject_mark=cfg.reject_mark,
                       events_per_sec=cfg.events_per_sec)
        prog.set_ports(cfg.ports)
        have, want = set(prog.trusted()), set(cfg.trusted)
        for cidr in want - have:
            prog.add_trusted(cidr)
        for cidr in have - want:
            prog.remove_trusted(cidr)

    def _attach(self, interfaces) -> None:
        """Attach to every interface; if one fails, take nfguard off the
        ones this call put it on (not those it merely replaced)."""
        done: list[Interface] = []
        try:
            for itf in interfaces:
                before = attach.xdp_status(itf.name, netns=itf.netns)
                mode = attach.attach(itf.name, self.prog.xdp_fn.fd, self.prog.tc_fn.fd,
                                     mode=itf.xdp_mode, netns=itf.netns)
                self.attached[(itf.name, itf.netns)] = mode
                if before.prog_name != attach.XDP_PROG_NAME:
                    done.append(itf)
                log.info("attached to %s: XDP %s, TC ingress", _where(itf), mode)
        except BaseException:
            for itf in done:
                try:
                    attach.detach(itf.name, netns=itf.netns)
                except AttachError as e:
                    log.error("taking nfguard off %s again failed: %s", _where(itf), e)
                self.attached.pop((itf.name, itf.netns), None)
            raise

    def _detach(self, itf: Interface) -> None:
        try:
            attach.detach(itf.name, netns=itf.netns)
            log.info("detached from %s", _where(itf))
        except AttachError as e:
            log.error("detaching from %s failed: %s", _where(itf), e)
        self.attached.pop((itf.name, itf.netns), None)

    # -- following FreeSWITCH ----------------------------------------------
    def _start_runner(self, endpoint) -> None:
        runner = follow(endpoint, self.registry, on_change=self._on_change,
                        backoff=Backoff(), resync_interval=self.cfg.resync_interval)
        task = asyncio.get_running_loop().create_task(runner.run(), name=f"esl {endpoint.name}")
        self.runners[endpoint.name] = (runner, task)

    async def _stop_runner(self, name: str) -> None:
        runner, task = self.runners.pop(name)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    def _on_change(self, diff: Diff) -> None:
        self._pending.then(diff)
        self._wake.set()

    async def _flusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            diff, self._pending = self._pending, Diff()
            if diff:
                self._apply(diff)
            if not self.synced and self.runners and all(
                    r.last_sync is not None for r, _ in self.runners.values()):
                self._first_sync()

    def _element(self, ip: str) -> Element | None:
        held = self._by_ip.get(ip)
        if not held:
            return None
        return Element(max(held.values()),
                       element_comment(f"{b.user}@{b.realm}" for b in held))

    def _apply(self, diff: Diff) -> None:
        now, boot = time.time(), _boottime_ns()
        for reg, why in diff.rejected:
            log.warning("registration of %s@%s at %s not stored: %s", reg.user, reg.realm,
                        reg.ip, why)
        touched = set()
        for b, exp in diff.added.items():
            self._by_ip.setdefault(b.ip, {})[b] = exp
            touched.add(b.ip)
        for b in diff.removed:
            held = self._by_ip.get(b.ip)
            if held is not None:
                held.pop(b, None)
                if not held:
                    del self._by_ip[b.ip]
            touched.add(b.ip)
        try:
            self.prog.update_bindings(
                add=[(b.user, b.realm, b.ip, boot_ns_of(exp, now, boot))
                     for b, exp in diff.added.items()],
                remove=[(b.user, b.realm, b.ip) for b in diff.removed])
        except Exception as e:  # noqa: BLE001 - logged, counted, fixed by the next sync
            self.stats["bpf_errors"] += 1
            log.error("updating the bindings map failed: %s", e)
        changed = {}
        gone = []
        for ip in touched:
            el = self._element(ip)
            if el is None:
                gone.append(ip)
            else:
                changed[ip] = el
        try:
            self.nft.apply(changed, gone, now)
        except NfguardError as e:
            self.stats["nft_errors"] += 1
            log.error("updating the nft sets failed: %s", e)
        self.stats["diffs"] += 1
        self.stats["bindings_added"] += len(diff.added)
        self.stats["bindings_removed"] += len(diff.removed)

    def _first_sync(self) -> None:
        """Every endpoint has synced once: make the kernel and nft hold
        exactly the registry (stale bindings of an earlier run go), then
        enforce as configured."""
        now, boot = time.time(), _boottime_ns()
        want = self.registry.bindings()
        stale = [(b.user, b.realm, b.ip) for b in self.prog.bindings()
                 if Binding(b.user, b.realm, b.ip) not in want]
        self.prog.update_bindings(
            add=[(b.user, b.realm, b.ip, boot_ns_of(exp, now, boot)) for b, exp in want.items()],
            remove=stale)
        counts = self.nft.sync({ip: self._element(ip) for ip in self._by_ip}, now)
        self.synced = True
        self.first_sync_at = now
        self._configure_kernel()
        log.info("first full sync: %d bindings (%d stale removed from the map, nft %s); "
                 "mode %s", len(want), len(stale), counts, self.cfg.mode)
        self.notifier.status(self._status_line())

    # -- kernel verdict events -----------------------------------------------
    def _on_kernel_event(self, ev) -> None:
        now = time.time()
        item = {"time": now, **asdict(ev)}
        self.recent_events.append(item)
        for q in list(self._subscribers):
            if q.qsize() < 1000:
                q.put_nowait(item)
        if ev.user and ev.reason in CREDENTIAL_VERDICTS:
            key = (ev.user, ev.realm or "", ev.src)
            last = self._alerted.get(key)
            if last is None or now - last >= self.cfg.alert_interval:
                self._alerted[key] = now
                log.warning(
                    "ALERT: the credentials of %s@%s were used from %s, where they are not "
                    "registered (%s; %s): the password is likely compromised, rotate it",
                    ev.user, ev.realm, ev.src, ev.reason,
                    "dropped" if ev.action == "drop" else
                    "rejected" if ev.action == "mark" else f"monitor, would {ev.would}")

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
            try:
                self.prog.poll_events(0)
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
        mode = self.prog.config()["mode"] if self.prog else "?"
        sync = "in sync" if self.synced else "waiting for the first full sync"
        return (f"{mode}, {len(self.registry.bindings())} bindings, ESL {up}/"
                f"{len(self.runners)} up, {sync}")

    # -- reload --------------------------------------------------------------
    async def reload(self) -> dict:
        path = self.config_path
        try:
            new = load_config(path)
            for itf in new.interfaces:
                attach.check_interface(itf.name, netns=itf.netns)
        except (ConfigError, AttachError) as e:
            log.error("reload refused, the running config stays: %s", e)
            raise
        old, self.cfg = self.cfg, new
        self.registry.grace = new.expiry_grace
        self.registry.degraded_grace = new.degraded_grace
        self._configure_kernel()
        self.nft.reject_mark = new.reject_mark
        self.nft.install(new.trusted)
        keys = {(i.name, i.netns) for i in new.interfaces}
        for itf in old.interfaces:
            if (itf.name, itf.netns) not in keys:
                self._detach(itf)
        self._attach([i for i in new.interfaces if (i.name, i.netns) not in self.attached])
        wanted = {e.name: e for e in new.esl}
        for name in list(self.runners):
            runner = self.runners[name][0]
            if wanted.get(name) != runner.endpoint or new.resync_interval != old.resync_interval:
                await self._stop_runner(name)
                if name not in wanted:
                    self._on_change(self.registry.resync(name, [], time.time()))
        for name, endpoint in wanted.items():
            if name not in self.runners:
                self._start_runner(endpoint)
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
            from nfguard.daemon.check import check_with
            verdict = check_with(self._get_checker(), req.get("user", ""), req.get("realm", ""),
                                 req.get("ip", ""), self.prog)
            return {"ok": True, **verdict}
        if cmd == "reload":
            return {"ok": True, **await self.reload()}
        if cmd == "events":
            await self._stream_events(writer)
            return None
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _get_checker(self):
        if self._checker is None:
            from nfguard.kernel.program import Program
            self._checker = Program()
        return self._checker

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
        from nfguard.daemon.status import kernel_status
        now = time.time()
        registry = self.registry.bindings()
        elements = {ip: self._element(ip) for ip in self._by_ip}
        in_map = self.prog.bindings()
        st = kernel_status(self.prog, self.nft, self.cfg, elements=elements, bpf=in_map)
        bpf = {(b.user, b.realm, b.ip) for b in in_map}
        reg = {tuple(b) for b in registry}
        st["bindings"]["registry"] = len(registry)
        st["drift"]["bpf_missing"] = sorted(f"{u}@{r} {ip}" for u, r, ip in reg - bpf)[:50]
        st["drift"]["bpf_extra"] = sorted(f"{u}@{r} {ip}" for u, r, ip in bpf - reg)[:50]
        st.update({
            "daemon": "up", "pid": os.getpid(), "version": __version__,
            "config": self.config_path, "uptime_s": round(now - self.started, 1),
            "synced": self.synced, "first_sync_at": self.first_sync_at,
            "esl": [{"name": r.endpoint.name, "host": r.endpoint.host, "port": r.endpoint.port,
                     "state": r.state, "last_sync": r.last_sync, "last_error": r.last_error,
                     "connects": r.connects, "events_applied": r.events_applied,
                     "events_skipped": r.events_skipped,
                     "degraded_since": self.registry.down_since.get(r.endpoint.name)}
                    for r, _ in self.runners.values()],
            "rejected_registrations": [
                {"user": reg.user, "realm": reg.realm, "ip": reg.ip, "why": why}
                for reg, why in self.registry.rejected.values()][:50],
            "recent_events": list(self.recent_events)[-20:],
            "stats": dict(self.stats),
        })
        return st

    # -- the whole run ---------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: loop.create_task(self._reload_logged()))
        server = await control.serve(self.cfg.socket, self._handle)
        metrics = None
        if self.cfg.metrics_listen:
            from nfguard.daemon.metrics import serve_metrics
            metrics = await serve_metrics(self.cfg.metrics_listen, self)
        self.prog.open_events(self._on_kernel_event)
        for endpoint in self.cfg.esl:
            self._start_runner(endpoint)
        tasks = [loop.create_task(self._flusher()), loop.create_task(self._ticker())]
        self.notifier.ready(self._status_line())
        log.info("running: control socket %s, %d ESL endpoint(s)", self.cfg.socket,
                 len(self.runners))
        await stop.wait()
        self.notifier.stopping()
        log.info("stopping")
        for name in list(self.runners):
            await self._stop_runner(name)
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
                self._detach(itf)
            log.info("on_stop: detach: enforcement removed")
        else:
            log.info("enforcement stays in place (on_stop: keep)")
        return 0

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except NfguardError:
            pass  # logged by reload()


def _where(itf: Interface) -> str:
    return itf.name + (f" (netns {itf.netns})" if itf.netns else "")


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
