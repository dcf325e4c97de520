"""FreeSWITCH Event Socket (ESL) client, asyncio.

Why our own: the PyPI clients were evaluated. `genesis` drags in a web
stack and does not reconnect, `greenswitch` needs gevent, and `python-ESL`
and `switchio` no longer build or import on Debian 12's Python. What
nfguard needs is small: framing, `auth`, one `event json` subscription,
`api` commands, and reconnection with backoff. That is this module.

Wire format (mod_event_socket.c, and the captures in
tests/fixtures/freeswitch-real/): a frame is a block of `Name: value` lines
ending with an empty line, then `Content-Length` bytes of body when that
header is present. Lines end with LF; a CR before it is ignored, as
FreeSWITCH's own read_packet() does. Content types: `auth/request` (sent
first on every connection), `command/reply` (`Reply-Text: +OK ...` or
`-ERR ...`), `api/response` (the body is the command's output),
`text/event-json` and `text/event-plain` (events, which may arrive between
a command and its reply), `text/disconnect-notice` (the server is closing).

Replies come in the order the commands were sent, so each command waits on
a FIFO of futures that the one reader task completes. Events go to a
callback in arrival order; nothing here interprets them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from nfguard.errors import NfguardError

log = logging.getLogger("nfguard.esl")

# Event Socket bodies are bounded only by memory: `sofia xmlstatus` of
# 100,000 registrations is about 70 MB. Beyond this a length is not trusted.
MAX_BODY = 512 << 20
BODY_PIECE = 1 << 16  # a streamed body (api_into) is fed this many bytes at a time
MAX_HEADER_LINE = 64 << 10

# What nfguard follows (JSON keeps values raw: the plain format's URL
# encoding mangles NAT contacts): registrations, failed authentications
# for the bans, and the verdicts of the Lua guard in FreeSWITCH (fsguard.py).
SUBSCRIBE = ("event json CUSTOM sofia::register sofia::unregister sofia::expire "
             "sofia::register_failure nfguard::guard")

EVENT_TYPES = ("text/event-json", "text/event-plain")

# A FreeSWITCH host that vanishes without closing the connection (power
# lost, a network cut) sends no FIN: the connection would look up, and its
# events missed, until the next periodic resync. The kernel probes an idle
# connection from KEEPALIVE_IDLE seconds on, every KEEPALIVE_INTERVAL, and
# gives up USER_TIMEOUT_MS after the last thing the peer acknowledged (the
# user timeout overrides KEEPALIVE_COUNT, and also bounds data sent and
# never acknowledged): a silent peer is found dead in ~30 s.
KEEPALIVE_IDLE = 15
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 30_000


def keep_alive(sock: socket.socket) -> None:
    """TCP keepalive and user timeout on an Event Socket connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


async def reap(task: asyncio.Task) -> None:
    """Cancel task and wait until it has ended, dropping what it raised.
    Never `try: await task except CancelledError: pass`: a cancellation of
    the caller arriving during that await would be swallowed with the
    task's own, and the caller would go on (a runner reconnecting after
    SIGTERM, its daemon never stopping)."""
    task.cancel()
    await asyncio.wait([task])  # the caller's own cancellation propagates
    if not task.cancelled():
        task.exception()  # retrieved, so never "exception was never retrieved"


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """event.wait() for at most timeout seconds; whether it is set. Not
    asyncio.wait_for: before Python 3.12 it loses a cancellation that
    arrives as the awaited thing completes (the runner, cancelled as its
    connection closed, took it for a lost connection and reconnected)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([waiter], timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


def cancel_requested() -> bool:
    """This task has been asked to stop (Task.cancelling()), even where a
    library call took the CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class EslError(NfguardError):
    """The connection cannot go on: refused, closed, or out of step."""


class EslAuthError(EslError):
    """FreeSWITCH refused the password."""


class FramingError(EslError):
    """Bytes that cannot be a frame: where the next frame starts is lost,
    so the connection must be dropped (a resync follows the reconnect)."""


@dataclass
class Frame:
    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def encode_command(text: str) -> bytes:
    """A command as FreeSWITCH reads it: its line(s), then an empty line."""
    if "\n\n" in text or text.endswith("\n"):
        raise ValueError("an ESL command cannot contain an empty line")
    return text.encode("utf-8") + b"\n\n"


async def read_frame(reader: asyncio.StreamReader, max_body: int = MAX_BODY) -> Frame:
    """The next frame. Raises EslError when the peer closed (also in the
    middle of a frame), FramingError for a Content-Length that cannot be
    trusted. A header line without ':' is logged and skipped."""
    headers = await read_headers(reader)
    length = body_length(headers, max_body)
    if length is None:
        return Frame(headers)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise EslError("the connection closed in the middle of a frame body") from None
    return Frame(headers, body)


async def read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """A frame's headers (read_frame), up to the empty line after them."""
    headers: dict[str, str] = {}
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if e.partial or headers:
                raise EslError("the connection closed in the middle of a frame") from None
            raise EslError("the connection closed") from None
        except asyncio.LimitOverrunError:
            raise FramingError(f"a header line longer than {reader._limit} bytes") from None
        line = line.rstrip(b"\r\n")
        if not line:
            if headers:
                break
            continue  # blank lines between frames
        name, sep, value = line.partition(b":")
        if not sep:
            log.warning("ESL: skipped a header line without ':': %r", line[:80])
            continue
        headers[name.decode("latin-1").strip()] = value.decode("utf-8", "replace").strip()
    return headers


def body_length(headers: dict[str, str], max_body: int = MAX_BODY) -> int | None:
    """The frame's Content-Length, None without one; FramingError when it
    cannot be trusted."""
    length = headers.get("Content-Length")
    if length is None:
        return None
    if not length.isdigit() or int(length) > max_body:
        raise FramingError(f"bad Content-Length {length[:40]!r}")
    return int(length)


async def read_body_into(reader: asyncio.StreamReader, length: int,
                         feed: Callable[[bytes], None]) -> Exception | None:
    """A frame body of `length` bytes into feed(), a piece at a time as it
    arrives. The whole body is read even when feed() raises (the next frame
    starts after it): the exception is returned, and feed() no longer called."""
    failed: Exception | None = None
    left = length
    while left:
        try:
            chunk = await reader.readexactly(min(left, BODY_PIECE))
        except asyncio.IncompleteReadError:
            raise EslError("the connection closed in the middle of a frame body") from None
        left -= len(chunk)
        if failed is None:
            try:
                feed(chunk)
            except Exception as e:  # noqa: BLE001 - the caller's, handed back
                failed = e
    return failed


class EslConnection:
    """One authenticated Event Socket connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[Frame], None]):
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        # one a command sent, oldest first: its future, and where an
        # api_into() wants the body fed (None: in the frame)
        self._pending: deque[tuple[asyncio.Future, Callable[[bytes], None] | None]] = deque()
        self._send_lock = asyncio.Lock()
        self._reader_task: asyncio.Task | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""

    @classmethod
    async def open(cls, host: str, port: int, password: str, *,
                   on_event: Callable[[Frame], None], timeout: float = 5.0) -> EslConnection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_HEADER_LINE), timeout)
        except (TimeoutError, OSError) as e:
            raise EslError(f"cannot connect to {host}:{port}: {e or 'timed out'}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            keep_alive(sock)
        conn = cls(reader, writer, on_event)
        try:
            await asyncio.wait_for(conn._authenticate(password), timeout)
        except TimeoutError:
            conn._abort("timed out")
            raise EslError(f"{host}:{port}: no answer to auth within {timeout:g} s") from None
        except BaseException:
            conn._abort("auth failed")
            raise
        conn._reader_task = asyncio.get_running_loop().create_task(conn._read_loop())
        return conn

    async def _authenticate(self, password: str) -> None:
        first = await read_frame(self._reader)
        if first.content_type != "auth/request":
            raise EslError(f"expected auth/request, got {first.content_type or 'no Content-Type'}")
        self._writer.write(encode_command(f"auth {password}"))
        await self._writer.drain()
        while True:
            reply = await read_frame(self._reader)
            if reply.content_type == "command/reply":
                break
            if reply.content_type == "text/disconnect-notice":
                raise EslAuthError("FreeSWITCH refused the password")
        text = reply.headers.get("Reply-Text", "")
        if not text.startswith("+OK"):
            raise EslAuthError(f"FreeSWITCH refused the password ({text or 'no Reply-Text'})")

    async def _read_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                headers = await read_headers(self._reader)
                ctype = headers.get("Content-Type", "")
                length = body_length(headers)
                feed = self._pending[0][1] if self._pending else None
                if ctype == "api/response" and feed is not None and length is not None:
                    fut, _ = self._pending.popleft()
                    failed = await read_body_into(self._reader, length, feed)
                    if not fut.done():
                        if failed is None:
                            fut.set_result(Frame(headers))
                        else:
                            fut.set_exception(failed)
                    continue
                frame = await self._body(headers, length)
                if ctype in ("command/reply", "api/response"):
                    if not self._pending:
                        log.warning("ESL: a %s that no command waits for", ctype)
                        continue
                    fut, _ = self._pending.popleft()
                    if not fut.done():
                        fut.set_result(frame)
                elif ctype in EVENT_TYPES:
                    self._on_event(frame)
                elif ctype == "text/disconnect-notice":
                    reason = "FreeSWITCH said goodbye"
                    break
                # log/data and anything else: not ours
        except EslError as e:
            reason = str(e)
        except OSError as e:  # ETIMEDOUT: keepalive found the peer gone
            reason = f"the connection failed: {e.strerror or e}"
        except asyncio.CancelledError:
            reason = "closed by nfguard"
            raise
        finally:
            self._abort(reason)

    async def _body(self, headers: dict[str, str], length: int | None) -> Frame:
        if length is None:
            return Frame(headers)
        try:
            return Frame(headers, await self._reader.readexactly(length))
        except asyncio.IncompleteReadError:
            raise EslError("the connection closed in the middle of a frame body") from None

    def _abort(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        while self._pending:
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(EslError(f"connection lost: {self.close_reason}"))
        self._writer.close()
        self.closed.set()

    async def _request(self, text: str, timeout: float,
                       feed: Callable[[bytes], None] | None = None) -> Frame:
        if self.closed.is_set():
            raise EslError(f"connection lost: {self.close_reason}")
        fut = asyncio.get_running_loop().create_future()
        async with self._send_lock:
            self._pending.append((fut, feed))
            try:
                self._writer.write(encode_command(text))
                await self._writer.drain()
            except (OSError, RuntimeError) as e:
                self._abort(f"write failed: {e}")
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            # A reply may still come; the stream would then be out of step.
            self._abort(f"no reply to {text.split()[0]!r} within {timeout:g} s")
            raise EslError(f"no reply to {text.split()[0]!r} within {timeout:g} s") from None

    async def command(self, text: str, timeout: float = 10.0) -> str:
        """Send a command; its Reply-Text. Raises EslError on -ERR."""
        reply = await self._request(text, timeout)
        reply_text = reply.headers.get("Reply-Text", "")
        if not reply_text.startswith("+OK"):
            raise EslError(f"{text.split()[0]} refused: {reply_text or 'no Reply-Text'}")
        return reply_text

    async def api(self, cmd: str, timeout: float = 60.0) -> str:
        """Run `api CMD`; the body of its api/response."""
        reply = await self._request(f"api {cmd}", timeout)
        return reply.body.decode("utf-8", "replace")

    async def api_many(self, cmds: list[str], timeout: float = 60.0) -> list[str]:
        """Run several `api` commands pipelined: all written at once, the
        replies (bodies, in order) awaited together; `timeout` is for the
        whole batch. EslError when the connection is lost meanwhile."""
        if self.closed.is_set():
            raise EslError(f"connection lost: {self.close_reason}")
        if not cmds:
            return []
        data = b"".join(encode_command(f"api {cmd}") for cmd in cmds)
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in cmds]
        async with self._send_lock:
            self._pending.extend((fut, None) for fut in futs)
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (OSError, RuntimeError) as e:
                self._abort(f"write failed: {e}")
        try:
            frames = await asyncio.wait_for(asyncio.shield(asyncio.gather(*futs)), timeout)
        except TimeoutError:
            what = cmds[0].split()[0] if cmds[0].split() else "api"
            self._abort(f"no reply to {len(cmds)} {what!r} commands within {timeout:g} s")
            raise EslError(f"no reply to {len(cmds)} {what!r} commands within "
                           f"{timeout:g} s") from None
        return [f.body.decode("utf-8", "replace") for f in frames]

    async def api_into(self, cmd: str, feed: Callable[[bytes], None],
                       timeout: float = 60.0) -> None:
        """Run `api CMD`, its body fed to feed() a piece at a time as it
        arrives, never held whole; what feed() raises is raised here."""
        await self._request(f"api {cmd}", timeout, feed)

    async def close(self) -> None:
        if self._reader_task is not None:
            await reap(self._reader_task)
        self._abort("closed by nfguard")


# -- one endpoint, kept connected -----------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """An ESL endpoint from the config. `name` identifies the node in the
    registry (bindings are merged over nodes)."""
    name: str
    host: str = "127.0.0.1"
    port: int = 8021
    password: str | None = None
    password_file: str | None = None

    def read_password(self) -> str:
        if self.password_file:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as e:
                raise EslError(f"ESL endpoint {self.name}: cannot read password file "
                               f"{self.password_file}: {e.strerror}") from None
        if self.password is None:
            raise EslError(f"ESL endpoint {self.name}: no password or password_file")
        return self.password


class Sink(Protocol):
    """Where an endpoint delivers what it learns (the registry)."""

    def resync(self, node: str, snapshot, now: float): ...

    def apply(self, node: str, event, now: float): ...

    def replace(self, node: str, owner, rows, now: float): ...

    def node_down(self, node: str, now: float): ...


# Re-reading one owner's rows (fsevents.read_owner). Soon: where FreeSWITCH
# changed its table before it sent the event (every unregister, and a
# REGISTER whose deferred delete cannot touch another row); 50 ms gathers a
# burst of events for one owner into one read. Late: where its deferred
# delete may matter, this long after FreeSWITCH made the event (its
# Event-Date-Timestamp: it sometimes sends one 0.5 s late), so that its SQL
# queue (it waits up to about 0.2 s, measured up to 0.3 s) has run.
REREAD_SOON = 0.05
REREAD_DELAY = 0.4
REREAD_BATCH = 64  # owners asked for at once (pipelined on the connection)
REREAD_BACKLOG = 5000  # beyond this many waiting owners, one full resync instead
# Drift: a binding a resync had to add or remove counts only when no event
# or re-read named its credentials within this many seconds either side
# (events race the snapshot: FreeSWITCH may send an event after the answer
# of the api command that already shows its row).
DRIFT_WINDOW = 2.0
DRIFT_LAST = 20  # bindings kept for status


REREAD_FALLBACK_INTERVAL = 5.0  # seconds between such full resyncs, at least


def _lower(text: str) -> str:
    """ASCII letters lower-cased only, as registry.kernel_case and the
    kernel do (no import: registry imports this module's Frame)."""
    return text.lower() if text.isascii() else text.encode("utf-8").lower().decode("utf-8")


def _cred(user: str, realm: str) -> tuple[str, str]:
    return (_lower(user), _lower(realm))


def _event_creds(event) -> list[tuple[str, str]]:
    """The credentials an event may concern: its user and realm, and its
    owner (FreeSWITCH's sip_user and sip_host)."""
    reg = getattr(event, "reg", event)
    creds = [_cred(reg.user, reg.realm)]
    owner = getattr(reg, "owner", None)
    if owner:
        creds.append(_cred(owner[1], owner[2]))
    return creds


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in
    [0, min(cap, initial * 2**n)], so that a cluster of controllers does
    not reconnect in step after a FreeSWITCH restart. The cap is short: the
    mirror must follow FreeSWITCH within about a second of its Event Socket
    answering again, and a refused connect costs next to nothing."""
    initial: float = 0.5
    cap: float = 1.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class EndpointRunner:
    """Keeps one endpoint connected: connect, auth, subscribe, resync,
    follow events; on any failure mark the node down and reconnect with
    backoff. Events that arrive while a resync is under way (the
    subscription comes first) are held and applied after it, in order, so
    none is lost; applying one the snapshot already holds changes nothing.

    `snapshot(conn)` reads the full registration table (see
    fsevents.read_snapshot); `parse(frame)` turns an event frame into a
    registry event or None; `reread(conn, owner)` reads one owner's rows
    (fsevents.read_owner), or None when it cannot. All are parameters so
    that this module stays about the socket only.

    Re-reads: where the sink says an event could not tell everything it
    changed (Diff.reread, Diff.reread_late), the owners named are read
    again REREAD_SOON after the event, or `reread_delay` after FreeSWITCH
    made it, coalesced per owner, up to REREAD_BATCH at once, never during
    a resync. An owner that cannot be read, or a backlog beyond
    REREAD_BACKLOG, makes it one full resync instead.

    Drift: from the second resync on, the bindings a resync added or
    removed that no event or re-read named around it are counted in
    `drift` and logged: the event stream missed them.

    Hooks: `on_connected(conn)` is called once a session's first resync is
    done (the connection is up and in sync), `on_disconnected()` when that
    session ends; other users of the connection (fsguard.GuardMirror) write
    through it meanwhile. What they raise is logged, never the session's end."""

    def __init__(self, endpoint: Endpoint, sink: Sink, *, snapshot, parse, reread=None,
                 on_change: Callable[[object], None] | None = None,
                 backoff: Backoff | None = None, resync_interval: float | None = None,
                 timeout: float = 5.0, clock: Callable[[], float] = time.time,
                 reread_delay: float = REREAD_DELAY,
                 on_connected: Callable[[EslConnection], None] | None = None,
                 on_disconnected: Callable[[], None] | None = None):
        self.endpoint = endpoint
        self.sink = sink
        self._snapshot = snapshot
        self._parse = parse
        self._reread = reread
        self.reread_delay = reread_delay
        self._on_change = on_change or (lambda diff: None)
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self.backoff = backoff or Backoff()
        self.resync_interval = resync_interval
        self.timeout = timeout
        self.clock = clock
        self.state = "connecting"
        self.last_error = ""
        self.last_sync: float | None = None
        self.connects = 0
        self.events_applied = 0
        self.events_skipped = 0
        self._held: list[Frame] | None = []  # None: apply at once
        # owner -> when to read it (monotonic): soon, and late as (first asked, due)
        self._pending: dict[tuple, float] = {}
        self._late: dict[tuple, tuple[float, float]] = {}
        self._pending_wake = asyncio.Event()
        self._api_lock = asyncio.Lock()  # a resync and a re-read batch never overlap
        self._full_resync_wanted = False
        self.rereads = 0  # owners read again
        self.reread_fallbacks = 0  # full resyncs instead of re-reads
        self._last_fallback = -REREAD_FALLBACK_INTERVAL
        self._recent: dict[tuple[str, str], float] = {}  # credentials -> last named
        self._recent_limit = 4096
        self.drift = {"resyncs": 0, "added": 0, "removed": 0, "last_at": None, "last": []}

    def _deliver(self, diff) -> None:
        if diff:  # an empty diff changes nothing downstream
            self._on_change(diff)

    async def run(self) -> None:
        """Forever (until cancelled)."""
        while True:
            try:
                await self._session()
            except EslAuthError as e:
                self._down(str(e), level=logging.ERROR)
            except (EslError, OSError) as e:
                self._down(str(e))
            except ValueError as e:  # a snapshot that cannot be read
                self._down(f"resync failed: {e}")
            except Exception as e:  # a bug must not end the following
                log.exception("ESL %s: unexpected error", self.endpoint.name)
                self._down(f"unexpected error: {e!r}")
            if cancel_requested():  # a stop that something on the way swallowed
                raise asyncio.CancelledError
            delay = self.backoff.next()
            log.info("ESL %s: reconnecting in %.1f s", self.endpoint.name, delay)
            await asyncio.sleep(delay)

    def _down(self, why: str, level: int = logging.WARNING) -> None:
        was = self.state
        self.state = "down"
        self.last_error = why
        self._pending.clear()  # the resync after the reconnect reads everything
        self._late.clear()
        if was != "down":
            log.log(level, "ESL %s: %s", self.endpoint.name, why)
        self._deliver(self.sink.node_down(self.endpoint.name, self.clock()))

    def _on_frame(self, frame: Frame) -> None:
        if self._held is not None:
            self._held.append(frame)
        else:
            self._apply(frame)

    async def _session(self) -> None:
        ep = self.endpoint
        self.state = "connecting"
        self._held = []
        conn = await EslConnection.open(ep.host, ep.port, ep.read_password(),
                                        on_event=self._on_frame, timeout=self.timeout)
        rereads = None
        hooked = False
        try:
            self.connects += 1
            await conn.command(SUBSCRIBE, timeout=self.timeout)
            await self._resync(conn)
            self.state = "up"
            self.backoff.reset()
            log.info("ESL %s: connected to %s:%d and in sync", ep.name, ep.host, ep.port)
            if self._on_connected is not None:
                hooked = True
                self._hook(self._on_connected, conn)
            if self._reread is not None:
                rereads = asyncio.get_running_loop().create_task(self._reread_loop(conn))
            while True:
                if not await wait_set(conn.closed, self.resync_interval):
                    await self._resync(conn)
                    continue
                raise EslError(f"connection lost: {conn.close_reason}")
        finally:
            if rereads is not None:
                await reap(rereads)
            await conn.close()
            if hooked and self._on_disconnected is not None:
                self._hook(self._on_disconnected)

    def _hook(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a hook's bug must not end (or hide) the following
            log.exception("ESL %s: a connection hook failed", self.endpoint.name)

    async def _resync(self, conn: EslConnection) -> None:
        async with self._api_lock:
            self.state = "syncing"
            if self._held is None:
                self._held = []
            first = self.last_sync is None
            started = time.monotonic()
            snapshot = await self._snapshot(conn)
            diff = self.sink.resync(self.endpoint.name, snapshot, self.clock())
            self._deliver(diff)
            self.last_sync = self.clock()
            held, self._held = self._held, None
            for frame in held:
                self._apply(frame)
            self.state = "up"
        if not first and (getattr(diff, "appeared", None) or getattr(diff, "removed", None)):
            self._suspect_drift(diff, started)

    # -- drift ------------------------------------------------------------------
    def _suspect_drift(self, diff, started: float) -> None:
        """A resync added or removed bindings: those no event or re-read
        named from DRIFT_WINDOW before it are drift unless one names them
        in the DRIFT_WINDOW after it (see the class docstring)."""
        since = started - DRIFT_WINDOW
        recent = self._recent
        pending = {_cred(o[1], o[2]) for o in (*self._pending, *self._late)}

        def missed(bs):
            return {b for b in bs if recent.get((b.user, b.realm), -1.0) < since
                    and (b.user, b.realm) not in pending}
        added, removed = missed(diff.appeared), missed(diff.removed)
        if added or removed:
            asyncio.get_running_loop().call_later(
                DRIFT_WINDOW, self._confirm_drift, added, removed, time.monotonic())

    def _confirm_drift(self, added: set, removed: set, ended: float) -> None:
        recent = self._recent

        def quiet(bs):
            return sorted(str(b) for b in bs if recent.get((b.user, b.realm), -1.0) < ended)
        added, removed = quiet(added), quiet(removed)
        if not (added or removed):
            return
        d = self.drift
        d["resyncs"] += 1
        d["added"] += len(added)
        d["removed"] += len(removed)
        d["last_at"] = self.clock()
        now = d["last_at"]
        d["last"] = ([{"binding": b, "change": "added", "time": now} for b in added]
                     + [{"binding": b, "change": "removed", "time": now} for b in removed]
                     + d["last"])[:DRIFT_LAST]
        log.warning("ESL %s: drift: the resync had to add %d and remove %d binding(s) that "
                    "the events missed: %s", self.endpoint.name, len(added), len(removed),
                    ", ".join([f"+{b}" for b in added[:20]] + [f"-{b}" for b in removed[:20]])
                    + (" ..." if len(added) > 20 or len(removed) > 20 else ""))

    def _forget_recent(self, now: float) -> None:
        """Keep the credentials named in the last two windows only (never
        during a resync, which looks back one window from its start)."""
        old = now - 2 * DRIFT_WINDOW
        self._recent = {c: t for c, t in self._recent.items() if t >= old}
        self._recent_limit = 2 * len(self._recent) + 4096  # amortised: O(1) per event

    # -- re-reading one owner -----------------------------------------------------
    def _ask(self, soon, late, fired: float) -> None:
        now = time.monotonic()
        for owner in soon:
            self._pending.setdefault(owner, now + REREAD_SOON)
        if late:
            # how long ago FreeSWITCH made the event (0 when unknown; the
            # clocks are one host's, but trust no more than the delay)
            age = min(max(self.clock() - fired, 0.0), self.reread_delay) if fired else 0.0
            due = now + max(REREAD_SOON, self.reread_delay - age)
            for owner in late:
                first, have = self._late.get(owner, (now, due))
                # after its last event's SQL, but no later than twice the delay
                self._late[owner] = (first, min(max(have, due), first + 2 * self.reread_delay))
        self._pending_wake.set()

    def _due(self, now: float) -> list[tuple]:
        """The owners to read now (at most REREAD_BATCH), taken off the
        schedules; a late read answers a soon one too."""
        due = dict.fromkeys(o for o, t in self._pending.items() if t <= now)
        due.update(dict.fromkeys(o for o, (_, t) in self._late.items() if t <= now))
        owners = list(due)[:REREAD_BATCH]
        for owner in owners:
            self._pending.pop(owner, None)
            if owner in self._late and self._late[owner][1] <= now:
                del self._late[owner]
        return owners

    async def _reread_loop(self, conn: EslConnection) -> None:
        while True:
            waiting = len(self._pending) + len(self._late)
            if self._full_resync_wanted or waiting > REREAD_BACKLOG:
                wait = self._last_fallback + REREAD_FALLBACK_INTERVAL - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._full_resync_wanted = False
                self._pending.clear()
                self._late.clear()
                self.reread_fallbacks += 1
                self._last_fallback = time.monotonic()
                log.info("ESL %s: a full resync in place of re-reading single users",
                         self.endpoint.name)
                await self._resync(conn)
                continue
            if not waiting:
                self._pending_wake.clear()
                await self._pending_wake.wait()
                continue
            now = time.monotonic()
            due = self._due(now)
            if not due:
                nxt = min([*self._pending.values(), *(t for _, t in self._late.values())])
                await asyncio.sleep(nxt - now)
                continue
            async with self._api_lock:
                # events that come meanwhile are applied after the answers,
                # as after a resync: an answer may be older than such an event
                self._held = []
                try:
                    answers = await asyncio.gather(*(self._reread(conn, o) for o in due))
                    for owner, rows in zip(due, answers, strict=True):
                        self.rereads += 1
                        if rows is None:
                            log.info("ESL %s: cannot read the rows of %s@%s (profile %r) "
                                     "alone", self.endpoint.name, owner[1], owner[2], owner[0])
                            self._full_resync_wanted = True
                            continue
                        self._recent[_cred(owner[1], owner[2])] = time.monotonic()
                        self._deliver(self.sink.replace(self.endpoint.name, owner, rows,
                                                        self.clock()))
                finally:
                    held, self._held = self._held, None
                    for frame in held:
                        self._apply(frame)

    def _apply(self, frame: Frame) -> None:
        try:
            event = self._parse(frame)
        except ValueError as e:
            self.events_skipped += 1
            log.warning("ESL %s: skipped an event: %s", self.endpoint.name, e)
            return
        if event is None:
            return
        self.events_applied += 1
        now = time.monotonic()
        recent = self._recent
        for cred in _event_creds(event):
            recent[cred] = now
        if len(recent) > self._recent_limit and self._held is None:
            self._forget_recent(now)
        diff = self.sink.apply(self.endpoint.name, event, self.clock())
        if self._reread is not None and (getattr(diff, "reread", None)
                                         or getattr(diff, "reread_late", None)):
            self._ask(diff.reread, diff.reread_late, getattr(event, "fired", 0.0))
        self._deliver(diff)
