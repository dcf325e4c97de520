"""systemd's sd_notify(3): READY, STATUS, WATCHDOG, STOPPING.

The protocol is one datagram of `KEY=value` lines to the AF_UNIX socket
named in $NOTIFY_SOCKET (a leading '@' is the abstract namespace). Debian
12's python3-systemd would do it too, but it is one more package on the
PBX host for a dozen lines; the `sdnotify` wheel is not packaged at all.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # ping at half the interval, as sd_watchdog_enabled(3) advises
        self.watchdog_interval = int(usec) / 2e6 if wanted else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, **fields: str) -> bool:
        """Send KEY=value fields (READY="1", STATUS="..."); False when not
        run by systemd or the socket is gone (never an error: notifying is
        a courtesy, not part of the job)."""
        if not self.address:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(msg, self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def stopping(self) -> bool:
        return self.notify(STOPPING="1")
