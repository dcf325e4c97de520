"""What several commands share: the --config and --json options, the
daemon's control socket, and the program on the pinned maps for when the
daemon is down."""

from __future__ import annotations

import argparse
import os
import sys

from nfguard.daemon import control
from nfguard.daemon.config import DEFAULT_PATH, ConfigError, load_config
from nfguard.errors import NfguardError


def stdout_to_devnull() -> None:
    """After a BrokenPipeError on stdout: what is still buffered and
    anything printed later goes nowhere, instead of a second error when
    Python flushes stdout at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def say(line: str) -> None:
    """print() for a command whose work goes on after its reader has gone
    (`nfguard freeswitch-install | grep -q ...`): a closed pipe must not
    stop what follows, such as the reloadxml after the files changed."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        stdout_to_devnull()


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_PATH, metavar="FILE",
                        help=f"config file (default: {DEFAULT_PATH})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --json: the options of the commands that read state."""
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def socket_path(config_path: str) -> str:
    """The daemon's control socket as the config names it (the default
    when the file cannot be read: the daemon may still be there)."""
    try:
        return load_config(config_path).socket
    except ConfigError:
        return control.DEFAULT_SOCKET


def pinned_program(cfg):
    """The program loaded on the pinned maps, to read them while the daemon
    is down; an error when there are none (loading would create them), or
    when another build made them (reading them would misread them)."""
    from nfguard.kernel.program import Program

    if not os.path.exists(os.path.join(cfg.pin_dir, "config")):
        raise NfguardError(f"the daemon is not running and there are no pinned maps in "
                           f"{cfg.pin_dir}: nfguard has not run on this host yet")
    return Program(pin_dir=cfg.pin_dir)
