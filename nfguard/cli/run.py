"""`nfguard run`: the daemon (see nfguard/daemon/core.py); systemd Type=notify."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from nfguard.cli.common import add_config_argument
from nfguard.daemon.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
        # journald adds time and unit; the level keeps warnings findable
        format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)  # a bad file: one line, nothing attached
    from nfguard.daemon.core import Daemon

    daemon = Daemon(cfg, args.config)
    daemon.start_kernel()
    return asyncio.run(daemon.run())
