"""The state of the Lua guard in FreeSWITCH, written into FreeSWITCH's hash
store (mod_hash, realm `nfguard`) over each Event Socket.

XDP judges SIP over UDP only; calls over TCP, TLS and WebSocket are judged
inside FreeSWITCH by freeswitch/nfguard_guard.lua, which reads what this
module writes, in this format (tests/test_guard_lua.py holds the two sides
equal on the key encoding):

- `meta`: `v=1;mode=<enforce|monitor>;transports=<list|all>;at=<unix s>`,
  written last by a full sync: its presence means nfguard's state is here
  (absent, the guard falls back to FreeSWITCH's registration table);
- `trusted`: the trusted networks, canonical CIDRs, comma-separated, `-`
  for none;
- `b:<enc(user)>@<enc(realm)>`: `<ip>=<expiry>` for each address the
  credentials are bound at, sorted by ip, comma-separated (expiry: whole
  unix seconds, rounded up); absent = bound nowhere.

mod_hash splits `insert/<realm>/<key>/<value>` at '/' (4 fields at most):
keys never hold '/', values may. What it answers (measured on the 1.10.12
bundle): insert `+OK`; delete `+OK`, or `-ERR Not found` for a key it does
not hold; select of an absent key `-ERR no reply`; `hash_dump db nfguard`
lines `D/<realm>_<key>/<value>`, the realm matched as a substring (so only
lines starting `D/nfguard_` are ours). Without the module: `-ERR hash
Command not found!`.

GuardMirror keeps what FreeSWITCH should hold (the registry's bindings by
credentials, the trusted networks, the effective mode, the transports) and
one writer task per connected endpoint:

- a full sync on every (re)connect once the daemon has done its first full
  sync (before it, the registry is incomplete: what an earlier run wrote
  stays, as the pinned maps do): dump the realm, write what is missing or
  different, then delete what is stale, then `meta`. Inserts before
  deletes: while a sync runs, the guard sees a phone that registered
  meanwhile rather than misses it (a stale binding lasts a moment longer);
- then each applied registry Diff: the credentials it touched are marked
  dirty per endpoint and written coalesced (a key written once however
  many diffs touched it meanwhile), pipelined (EslConnection.api_many,
  CHUNK commands a write);
- a change of mode (the first full sync's monitor -> enforce, a reload),
  transports or trusted networks rewrites `trusted` then `meta`.

`freeswitch_guard.enabled: false`: nothing is written, and on each connect
(and when a reload turns it off) the realm is emptied, `meta` first: stale
bindings with `meta` present would make the guard refuse phones that moved,
while without `meta` it falls back to FreeSWITCH's own registrations.

Failures never touch the registration following: a write FreeSWITCH
refuses is logged (one line a batch) and counted, and a full sync is tried
again RETRY_AFTER seconds later (and on every reconnect); a missing mod_hash
is one ERROR line per endpoint (until it works again), `no_mod_hash` in
status, and tried again every RETRY_AFTER seconds without another line.
A lost connection ends the writer; the endpoint's reconnect starts another.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from nfguard.daemon.config import GUARD_DEFAULT_TRANSPORTS, GUARD_TRANSPORTS
from nfguard.daemon.esl import EslError, wait_set

log = logging.getLogger("nfguard")

REALM = "nfguard"
# The transports the guard knows and those monitor mode counts by default:
# the config's, one definition.
TRANSPORTS = GUARD_TRANSPORTS
DEFAULT_TRANSPORTS = GUARD_DEFAULT_TRANSPORTS
CHUNK = 256  # hash commands written at once (one api_many)
WINDOW = 8  # such chunks in flight at once
BATCH = 8192  # dirty credentials taken at once by an incremental write
RETRY_AFTER = 30.0  # seconds before a failed write (or a missing mod_hash) is tried again
API_TIMEOUT = 60.0
FOREVER = 253402300799  # 9999-12-31: the expiry written for a binding without one

_PLAIN = re.compile(r"[0-9a-z._~-]*\Z")
_SAFE = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz._~-")
_BYTE = [chr(c) if c in _SAFE else f"%{c:02X}" for c in range(256)]
_DUMP_PREFIX = f"D/{REALM}_"


# -- the contract's formats -------------------------------------------------------
def enc(text: str) -> str:
    """A user or realm as it goes into a key: its UTF-8 bytes, ASCII A-Z
    lower-cased only (as the kernel compares them: registry.kernel_case),
    then every byte not in [0-9a-z._~-] as %XX (upper-case hex)."""
    low = text.lower() if text.isascii() else None
    if low is not None and _PLAIN.match(low):
        return low  # nearly every name
    data = text.encode("utf-8", "surrogatepass").lower()  # bytes.lower(): ASCII only
    return "".join([_BYTE[c] for c in data])


def cred_key(user: str, realm: str) -> str:
    """The hash key of user@realm's bindings: `b:<enc(user)>@<enc(realm)>`
    ('@' in either is encoded, so the separator is unambiguous)."""
    return f"b:{enc(user)}@{enc(realm)}"


def _seconds(expires: float) -> int:
    return math.ceil(expires) if math.isfinite(expires) else FOREVER


def format_value(addresses: Mapping[str, float]) -> str:
    """`ip=expiry,...` sorted by ip (the text as ipaddress prints it, which
    is how the registry holds it), expiry rounded up to whole seconds."""
    return ",".join([f"{ip}={_seconds(addresses[ip])}" for ip in sorted(addresses)])


def format_trusted(networks: Iterable[str]) -> str:
    """The trusted networks as canonical CIDRs (the config's are), `-` for none."""
    import ipaddress

    nets = [str(ipaddress.ip_network(n, strict=False)) for n in networks]
    return ",".join(nets) if nets else "-"


def format_transports(transports: Iterable[str] | str) -> str:
    if transports == "all":
        return "all"
    return ",".join(t for t in TRANSPORTS if t in set(transports))


def format_meta(mode: str, transports: Iterable[str] | str, at: float) -> str:
    return f"v=1;mode={mode};transports={format_transports(transports)};at={int(at)}"


def parse_dump(text: str) -> dict[str, str]:
    """`hash_dump db nfguard`: our realm's keys and values (mod_hash lists
    every realm whose name holds 'nfguard': only `D/nfguard_...` lines)."""
    have: dict[str, str] = {}
    for line in text.split("\n"):
        if line.startswith(_DUMP_PREFIX):
            key, sep, value = line[len(_DUMP_PREFIX):].partition("/")
            if sep and key:
                have[key] = value
    return have


def insert_cmd(key: str, value: str) -> str:
    return f"hash insert/{REALM}/{key}/{value}"


def delete_cmd(key: str) -> str:
    return f"hash delete/{REALM}/{key}"


def missing_module(reply: str) -> bool:
    """mod_hash is not loaded: `-ERR hash Command not found!` (or hash_dump's)."""
    return reply.startswith("-ERR") and "command not found" in reply.lower()


def _refused(cmd: str, reply: str) -> bool:
    """A reply that says the write did not happen (a delete of a key that is
    not there is not a failure)."""
    if reply.startswith("+OK"):
        return False
    return not (cmd.startswith("hash delete/") and reply.startswith("-ERR Not found"))


# -- the writer of one endpoint ---------------------------------------------------
@dataclass
class GuardEndpoint:
    """What the mirror knows of one endpoint's hash store."""
    name: str
    conn: object | None = None
    task: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: set = field(default_factory=set)  # credentials (user, realm) to write
    full: bool = False  # a full sync (or, disabled, a clear) is wanted
    settings_dirty: bool = False  # trusted and meta to write again
    # down | connected (waiting for the daemon's first full sync) | syncing |
    # synced | error | no_mod_hash | cleared (disabled)
    state: str = "down"
    keys: int = 0  # keys held as of the last full sync, with later writes
    synced_at: float | None = None
    sync_s: float | None = None
    writes: int = 0
    errors: int = 0
    last_error: str = ""
    retry_at: float | None = None  # monotonic: a full sync then
    missing_logged: bool = False

    def status(self) -> dict:
        return {"name": self.name, "state": self.state, "keys": self.keys,
                "pending": len(self.dirty), "synced_at": self.synced_at,
                "sync_s": self.sync_s, "writes": self.writes, "errors": self.errors,
                "last_error": self.last_error}


class GuardMirror:
    """The hash content the guard reads, kept in every endpoint's FreeSWITCH
    (see the module docstring). `view()` is the registry's bindings
    ({Binding: expiry}), `mode()` the effective mode (the backend's)."""

    def __init__(self, view: Callable[[], Mapping], mode: Callable[[], str], *,
                 enabled: bool = True, transports: tuple[str, ...] | str = DEFAULT_TRANSPORTS,
                 trusted: Iterable[str] = (), clock: Callable[[], float] = time.time,
                 chunk: int = CHUNK, window: int = WINDOW, retry_after: float = RETRY_AFTER):
        self._view = view
        self._mode = mode
        self.enabled = enabled
        self.transports = transports
        self.trusted = format_trusted(trusted)
        self.clock = clock
        self.chunk = chunk
        self.window = window
        self.retry_after = retry_after
        self.started = False  # the daemon's first full sync is done
        self.endpoints: dict[str, GuardEndpoint] = {}
        # (user, realm) -> (ip, expiry), or {ip: expiry} when bound at several
        # addresses (one tuple, not a dict, for nearly every credential)
        self._creds: dict[tuple[str, str], tuple | dict] = {}
        self._settings = self._current_settings()

    # -- what FreeSWITCH should hold --------------------------------------------
    def _current_settings(self) -> tuple:
        return (self._mode(), format_transports(self.transports), self.trusted)

    def _rebuild(self) -> None:
        """The credentials index from the registry (its bindings are
        lower-cased as the kernel compares them)."""
        creds: dict[tuple[str, str], tuple | dict] = {}
        for b, exp in self._view().items():
            cred = (b.user, b.realm)
            have = creds.get(cred)
            if have is None:
                creds[cred] = (b.ip, exp)
            elif type(have) is tuple:
                creds[cred] = {have[0]: have[1], b.ip: exp}
            else:
                have[b.ip] = exp
        self._creds = creds

    def _set(self, b, exp: float | None) -> None:
        cred = (b.user, b.realm)
        have = self._creds.get(cred)
        if exp is None:  # removed
            if have is None:
                return
            if type(have) is tuple:
                if have[0] == b.ip:
                    del self._creds[cred]
                return
            have.pop(b.ip, None)
            if len(have) == 1:
                self._creds[cred] = next(iter(have.items()))
            elif not have:
                del self._creds[cred]
        elif have is None or (type(have) is tuple and have[0] == b.ip):
            self._creds[cred] = (b.ip, exp)
        elif type(have) is tuple:
            self._creds[cred] = {have[0]: have[1], b.ip: exp}
        else:
            have[b.ip] = exp

    def value(self, cred: tuple[str, str]) -> str | None:
        """The `b:` key's value of user@realm; None: bound nowhere."""
        have = self._creds.get(cred)
        if have is None:
            return None
        if type(have) is tuple:
            return f"{have[0]}={_seconds(have[1])}"
        return format_value(have)

    def wanted(self) -> dict[str, str]:
        """Every key but `meta`, and its value."""
        out = {cred_key(*cred): self.value(cred) for cred in self._creds}
        out["trusted"] = self.trusted
        return out

    def meta(self) -> str:
        return format_meta(self._mode(), self.transports, self.clock())

    # -- the daemon's side ------------------------------------------------------
    def start(self) -> None:
        """The daemon's first full sync is done: the registry is whole, every
        connected endpoint gets a full sync."""
        self.started = True
        self._settings = self._current_settings()
        if self.enabled:
            self._rebuild()
        for ep in self.endpoints.values():
            if ep.conn is not None:
                self._want_full(ep)

    def apply(self, diff) -> None:
        """One applied registry Diff: the credentials it touched are written
        (coalesced) to every endpoint."""
        if not (self.started and self.enabled) or not (diff.added or diff.removed):
            return
        touched = set()
        for b in diff.removed:
            self._set(b, None)
            touched.add((b.user, b.realm))
        for b, exp in diff.added.items():
            self._set(b, exp)
            touched.add((b.user, b.realm))
        for ep in self.endpoints.values():
            if ep.conn is not None and not ep.full:
                ep.dirty |= touched
                ep.wake.set()

    def update(self, *, enabled: bool | None = None,
               transports: tuple[str, ...] | str | None = None,
               trusted: Iterable[str] | None = None) -> None:
        """A reload (new settings), or a mode change (no arguments: the
        mode is read again): what changed is written to every endpoint."""
        was_enabled = self.enabled
        if enabled is not None:
            self.enabled = enabled
        if transports is not None:
            self.transports = transports
        if trusted is not None:
            self.trusted = format_trusted(trusted)
        settings = self._current_settings()
        changed, self._settings = settings != self._settings, settings
        if not self.started:
            return
        if self.enabled != was_enabled:
            if self.enabled:
                self._rebuild()
            else:
                self._creds = {}
            log.info("freeswitch_guard %s: %s every FreeSWITCH's hash store",
                     "enabled" if self.enabled else "disabled",
                     "writing the guard's state to" if self.enabled else "emptying")
            for ep in self.endpoints.values():
                if ep.conn is not None:
                    self._want_full(ep)
        elif changed and self.enabled:
            for ep in self.endpoints.values():
                if ep.conn is not None:
                    ep.settings_dirty = True
                    ep.wake.set()

    def connected(self, name: str, conn) -> None:
        """EndpointRunner.on_connected: the session is up and in sync."""
        ep = self.endpoints.get(name)
        if ep is None:
            ep = self.endpoints[name] = GuardEndpoint(name)
        self._stop_writer(ep)
        ep.conn = conn
        ep.state = "connected"
        ep.missing_logged = False
        ep.dirty.clear()
        ep.task = asyncio.get_running_loop().create_task(self._writer(ep),
                                                         name=f"guard {name}")
        if self.started:
            self._want_full(ep)

    def disconnected(self, name: str) -> None:
        """EndpointRunner.on_disconnected: the session ended; the next
        connect syncs in full."""
        ep = self.endpoints.get(name)
        if ep is None:
            return
        self._stop_writer(ep)
        ep.conn = None
        ep.state = "down"
        ep.dirty.clear()
        ep.full = ep.settings_dirty = False
        ep.retry_at = None

    def forget(self, name: str) -> None:
        """The endpoint left the config."""
        ep = self.endpoints.pop(name, None)
        if ep is not None:
            self._stop_writer(ep)

    def close(self) -> None:
        for ep in self.endpoints.values():
            self._stop_writer(ep)

    def _stop_writer(self, ep: GuardEndpoint) -> None:
        if ep.task is not None:
            ep.task.cancel()
            ep.task = None

    def _want_full(self, ep: GuardEndpoint) -> None:
        ep.full = True
        ep.dirty.clear()
        ep.settings_dirty = False
        ep.wake.set()

    def status(self) -> dict:
        return {"enabled": self.enabled, "started": self.started,
                "transports": self.transports if self.transports == "all"
                else list(self.transports),
                "mode": self._settings[0], "credentials": len(self._creds),
                "endpoints": [ep.status() for ep in self.endpoints.values()]}

    # -- writing ----------------------------------------------------------------
    async def _writer(self, ep: GuardEndpoint) -> None:
        conn = ep.conn
        while True:
            try:
                if ep.retry_at is not None and time.monotonic() >= ep.retry_at:
                    ep.retry_at = None
                    self._want_full(ep)
                if ep.full:
                    ep.full = False
                    ep.dirty.clear()
                    ep.settings_dirty = False
                    if self.enabled:
                        await self._full_sync(ep, conn)
                    else:
                        await self._clear(ep, conn)
                    continue
                if self.enabled and ep.state in ("synced", "error") and (
                        ep.dirty or ep.settings_dirty):
                    await self._incremental(ep, conn)
                    continue
                ep.wake.clear()
                if ep.retry_at is None:
                    await ep.wake.wait()
                else:
                    await wait_set(ep.wake, max(0.0, ep.retry_at - time.monotonic()))
            except EslError as e:
                # the connection is gone: the runner reconnects, and the
                # next connect syncs in full
                ep.last_error = str(e)
                ep.state = "down"
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not end the writes for good
                log.exception("freeswitch_guard %s: writing the guard's state failed",
                              ep.name)
                ep.errors += 1
                ep.last_error = f"unexpected error: {e!r}"
                ep.state = "error"
                ep.retry_at = time.monotonic() + self.retry_after

    async def _dump(self, ep: GuardEndpoint, conn) -> dict[str, str] | None:
        """The realm's keys, or None (logged, retried) when it cannot be read."""
        reply = await conn.api(f"hash_dump db {REALM}", timeout=API_TIMEOUT)
        if missing_module(reply):
            self._no_module(ep, reply)
            return None
        if reply.strip() == "-ERR no reply":  # ESL's answer to empty output: an empty realm
            return {}
        if reply.startswith("-ERR") or reply.startswith("-USAGE"):
            self._failed(ep, f"hash_dump db {REALM}: {reply.strip()[:200]}", 1)
            return None
        return parse_dump(reply)

    async def _full_sync(self, ep: GuardEndpoint, conn) -> None:
        ep.state = "syncing"
        started = time.monotonic()
        have = await self._dump(ep, conn)
        if have is None:
            return
        self._rebuild()  # the registry itself, whatever the diffs said
        want = self.wanted()
        inserts = [insert_cmd(k, v) for k, v in want.items() if have.get(k) != v]
        deletes = [delete_cmd(k) for k in have if k not in want and k != "meta"]
        ok = await self._send(ep, conn, inserts + deletes)
        if ok:
            ok = await self._send(ep, conn, [insert_cmd("meta", self.meta())])
        ep.keys = len(want) + (1 if ok else int("meta" in have))
        ep.sync_s = round(time.monotonic() - started, 3)
        if not ok:
            ep.state = "error"
            return
        ep.state = "synced"
        ep.synced_at = self.clock()
        ep.retry_at = None
        if ep.missing_logged:
            ep.missing_logged = False
            log.info("freeswitch_guard %s: mod_hash answers now", ep.name)
        log.info("freeswitch_guard %s: the guard's state is in FreeSWITCH: %d keys (%d "
                 "written, %d stale deleted) in %.2f s, mode %s", ep.name, ep.keys,
                 len(inserts) + 1, len(deletes), ep.sync_s, self._settings[0])

    async def _clear(self, ep: GuardEndpoint, conn) -> None:
        """Disabled: empty the realm, meta first (the guard then falls back
        to FreeSWITCH's registrations)."""
        reply = await conn.api(f"hash_dump db {REALM}", timeout=API_TIMEOUT)
        if reply.startswith("-ERR"):
            ep.state = "cleared"  # nothing to clear (no mod_hash, or nothing there)
            return
        have = parse_dump(reply)
        cmds = ([delete_cmd("meta")] if "meta" in have else []) + [
            delete_cmd(k) for k in have if k != "meta"]
        if await self._send(ep, conn, cmds):
            ep.state, ep.keys = "cleared", 0
            if cmds:
                log.info("freeswitch_guard %s: disabled: the %d key(s) nfguard had written "
                         "are deleted", ep.name, len(cmds))
        else:
            ep.state = "error"

    async def _incremental(self, ep: GuardEndpoint, conn) -> None:
        if len(ep.dirty) <= BATCH:
            creds, ep.dirty = ep.dirty, set()
        else:
            creds = {ep.dirty.pop() for _ in range(BATCH)}
        settings, ep.settings_dirty = ep.settings_dirty, False
        cmds = []
        for cred in creds:
            value = self.value(cred)
            key = cred_key(*cred)
            cmds.append(delete_cmd(key) if value is None else insert_cmd(key, value))
        if settings:
            cmds.append(insert_cmd("trusted", self.trusted))
        ok = await self._send(ep, conn, cmds)
        if settings and ok:
            ok = await self._send(ep, conn, [insert_cmd("meta", self.meta())])
            if ok:
                log.info("freeswitch_guard %s: mode %s, transports %s, trusted %s written",
                         ep.name, self._settings[0], self._settings[1], self.trusted)
        elif settings:
            ep.settings_dirty = True  # tried again after the retry's full sync anyway

    async def _send(self, ep: GuardEndpoint, conn, cmds: list[str]) -> bool:
        """Write cmds, pipelined: `window` chunks of `chunk` commands in
        flight. False (logged once, counted, a full sync scheduled) when
        FreeSWITCH refused any."""
        if not cmds:
            return True
        chunks = [cmds[i:i + self.chunk] for i in range(0, len(cmds), self.chunk)]
        failed: list[tuple[str, str]] = []
        for i in range(0, len(chunks), self.window):
            group = chunks[i:i + self.window]
            replies = await asyncio.gather(*(conn.api_many(c, timeout=API_TIMEOUT)
                                             for c in group))
            for chunk, answers in zip(group, replies, strict=True):
                for cmd, reply in zip(chunk, answers, strict=True):
                    if _refused(cmd, reply):
                        failed.append((cmd, reply.strip()))
        ep.writes += len(cmds) - len(failed)
        if not failed:
            return True
        cmd, reply = failed[0]
        if missing_module(reply):
            self._no_module(ep, reply)
        else:
            self._failed(ep, f"{cmd[:120]}: {reply[:200]}", len(failed))
        return False

    def _failed(self, ep: GuardEndpoint, what: str, count: int) -> None:
        ep.errors += count
        ep.last_error = what
        ep.state = "error"
        ep.retry_at = time.monotonic() + self.retry_after
        log.error("freeswitch_guard %s: FreeSWITCH refused %d write(s) of the guard's state "
                  "(first: %s); a full sync in %.0f s", ep.name, count, what, self.retry_after)

    def _no_module(self, ep: GuardEndpoint, reply: str) -> None:
        ep.errors += 1
        ep.last_error = f"mod_hash is not loaded ({reply.strip()[:80]})"
        ep.state = "no_mod_hash"
        ep.dirty.clear()
        ep.retry_at = time.monotonic() + self.retry_after
        if not ep.missing_logged:
            ep.missing_logged = True
            log.error("freeswitch_guard %s: mod_hash is not loaded in FreeSWITCH (%s): the "
                      "Lua guard's state cannot be written there, and it falls back to "
                      "FreeSWITCH's registrations. Load it (`load mod_hash`, and "
                      "<load module=\"mod_hash\"/> in modules.conf.xml); tried again every "
                      "%.0f s. Following registrations goes on.", ep.name, reply.strip()[:80],
                      self.retry_after)
