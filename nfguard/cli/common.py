"""What several commands share: the --config and --json options, the
daemon's control socket, and the program on the pinned maps for when the
daemon is down."""

from __future__ import annotations

import argparse
import os

from nfguard.daemon import control
from nfguard.daemon.config import DEFAULT_PATH, ConfigError, load_config
from nfguard.errors import NfguardError


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
