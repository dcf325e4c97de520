"""`nfguard events`: follow the kernel's verdict events as the daemon sees
them (one line each, or JSON with --json), until interrupted."""

from __future__ import annotations

import argparse
import json
import time

from nfguard.cli.common import add_arguments as _common_args
from nfguard.cli.common import socket_path
from nfguard.daemon import control


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common_args(parser)


def run(args: argparse.Namespace) -> int:
    for ev in control.stream(socket_path(args.config), "events"):
        if args.json:
            print(json.dumps(ev), flush=True)
        else:
            print(f"{time.strftime('%H:%M:%S', time.localtime(ev['time']))} {ev['src']}:"
                  f"{ev['sport']} {ev['user'] or '-'}@{ev['realm'] or '-'} {ev['reason']} -> "
                  f"{ev['action']}" + (f" (would {ev['would']})"
                                       if ev["would"] != ev["action"] else ""), flush=True)
    return 0
