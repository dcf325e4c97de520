"""`nfguard uninstall`: take nfguard off the host: detach its XDP and TC
programs from the configured interfaces, delete `table inet nfguard`, and
remove the pinned maps (the package's removal runs it). A running daemon
is stopped first: left running, it would go on believing it is attached."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import time

from nfguard import defaults
from nfguard.cli.common import add_config_argument, socket_path
from nfguard.daemon import control
from nfguard.daemon.config import ConfigError, load_config
from nfguard.errors import NfguardError

STOP_WAIT = 15.0  # seconds for a running daemon to stop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--keep-pins", action="store_true",
                        help="keep the pinned maps (bindings) for a later start")


def run(args: argparse.Namespace) -> int:
    from nfguard.daemon.nftstate import NftState
    from nfguard.kernel import attach
    from nfguard.kernel.host import check_privileges

    check_privileges("nfguard uninstall")
    try:
        cfg = load_config(args.config)
        interfaces, pin_dir, mark = cfg.interfaces, cfg.pin_dir, cfg.reject_mark
    except ConfigError as e:
        print(f"nfguard: warning: {e}; detaching from no interface by name")
        from nfguard import consts
        interfaces, pin_dir, mark = (), defaults.PIN_DIR, consts.DEFAULT_REJECT_MARK
    stop_daemon(socket_path(args.config))
    for itf in interfaces:
        try:
            res = attach.detach(itf.name, netns=itf.netns)
            print(f"nfguard: {itf.name}: XDP {'removed' if res.xdp else 'not attached'}, "
                  f"TC {'removed' if res.tc else 'not attached'}")
        except Exception as e:  # noqa: BLE001 - go on with the rest
            print(f"nfguard: warning: {itf.name}: {e}")
    if NftState(mark).uninstall():
        print("nfguard: deleted table inet nfguard")
    if not args.keep_pins and os.path.isdir(pin_dir):
        shutil.rmtree(pin_dir)
        print(f"nfguard: removed {pin_dir}")
    return 0


def stop_daemon(sock: str) -> None:
    """Stop the daemon that answers on sock (SIGTERM, as systemd does) and
    wait for it to go; an error, before anything is removed, when it stays."""
    try:
        pid = control.request(sock, "status")["pid"]
    except control.DaemonUnavailable:
        return
    print(f"nfguard: stopping the running daemon (pid {pid})")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.1)
    raise NfguardError(f"the daemon (pid {pid}) did not stop within {STOP_WAIT:.0f} s; "
                       "nothing was removed: stop it (systemctl stop nfguard), then run "
                       "nfguard uninstall again")


def _running(pid: int) -> bool:
    """Still running: a zombie has exited (its parent has yet to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
