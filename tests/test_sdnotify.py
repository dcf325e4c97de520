"""sd_notify: the datagrams systemd would read."""

import os
import socket

from nfguard.daemon.sdnotify import Notifier


def listener(tmp_path, abstract=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"nfguard-test-{os.getpid()}"
        s.bind("\0" + name)
        return s, "@" + name
    path = str(tmp_path / "notify")
    s.bind(path)
    return s, path


def test_ready_status_watchdog_stopping(tmp_path):
    s, path = listener(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.watchdog_interval is None
    assert n.ready("monitor, 0 bindings")
    assert s.recv(4096) == b"READY=1\nSTATUS=monitor, 0 bindings"
    assert n.status("x") and s.recv(4096) == b"STATUS=x"
    assert n.watchdog() and s.recv(4096) == b"WATCHDOG=1"
    assert n.stopping() and s.recv(4096) == b"STOPPING=1"


def test_abstract_socket(tmp_path):
    s, name = listener(tmp_path, abstract=True)
    assert Notifier({"NOTIFY_SOCKET": name}).status("hi")
    assert s.recv(100) == b"STATUS=hi"


def test_watchdog_interval_is_half_of_watchdog_usec():
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "20000000"})
    assert n.watchdog_interval == 10.0
    other_pid = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "20000000",
                          "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None  # meant for another process


def test_without_systemd_nothing_is_sent_and_nothing_fails():
    n = Notifier({})
    assert not n.enabled and not n.ready("x")
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/socket"}).ready("x")
