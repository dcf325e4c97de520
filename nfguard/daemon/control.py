"""The daemon's control socket: one JSON object a line over a Unix socket
under /run/nfguard/, readable by root only.

A request is `{"cmd": NAME, ...}`; the answer is one JSON object (`{"ok":
true, ...}` or `{"ok": false, "error": "..."}`), except for `events`,
which streams one object a line until the client hangs up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from nfguard import defaults
from nfguard.errors import NfguardError

log = logging.getLogger("nfguard.control")

DEFAULT_SOCKET = defaults.SOCKET
MAX_REQUEST = 64 << 10


class DaemonUnavailable(NfguardError):
    """No daemon answers on the socket."""


Handler = Callable[[dict, asyncio.StreamWriter], Awaitable[dict | None]]


async def serve(path: str, handler: Handler) -> asyncio.AbstractServer:
    """Listen on `path` (0600, in a 0700 directory); `handler(request,
    writer)` returns the answer, or None when it wrote a stream itself."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of an earlier run

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line) if line.strip() else None
                if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                    raise ValueError("a request is a JSON object with a string 'cmd'")
            except ValueError as e:
                answer = {"ok": False, "error": f"bad request: {e}"}
            else:
                try:
                    answer = await handler(request, writer)
                except NfguardError as e:
                    answer = {"ok": False, "error": str(e)}
                except Exception as e:  # the daemon must outlive a bad request
                    log.exception("control request %r failed", request.get("cmd"))
                    answer = {"ok": False, "error": f"internal error: {e!r}"}
            if answer is not None:
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_client, path, limit=MAX_REQUEST)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        s.close()
        raise DaemonUnavailable(f"no daemon socket at {path}") from None
    except PermissionError:
        s.close()
        raise DaemonUnavailable(f"{path}: permission denied (run as root)") from None
    except OSError as e:
        s.close()
        raise DaemonUnavailable(f"no daemon answers at {path}: {e.strerror}") from None
    return s


def request(path: str, cmd: str, timeout: float = 10.0, **args) -> dict:
    """Ask the daemon; the answer's fields. NfguardError when it says no."""
    with _connect(path, timeout) as s:
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                raise DaemonUnavailable(f"the daemon at {path} did not answer in "
                                        f"{timeout:g} s") from None
            if not chunk:
                raise DaemonUnavailable(f"the daemon at {path} closed the connection")
            data += chunk
    answer = json.loads(data)
    if not answer.get("ok"):
        raise NfguardError(answer.get("error", "the daemon refused"))
    return answer


def stream(path: str, cmd: str, **args):
    """Yield the objects the daemon streams (e.g. events) until it ends."""
    s = _connect(path, 10.0)
    s.settimeout(None)
    try:
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                obj = json.loads(line)
                if obj.get("ok") is False:
                    raise NfguardError(obj.get("error", "the daemon refused"))
                yield obj
    finally:
        s.close()
