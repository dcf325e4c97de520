"""`nfguard events`: follow the verdict events as the daemon sees them (the
kernel's, over UDP, and the FreeSWITCH guard's; one line each, or JSON with
--json), until interrupted."""

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
            print(line(ev), flush=True)
    return 0


def line(ev: dict) -> str:
    """One event: the kernel's (XDP, UDP), or the Lua guard's in FreeSWITCH."""
    stamp = time.strftime("%H:%M:%S", time.localtime(ev["time"]))
    where = f" over {ev['transport']}" if ev.get("transport") else ""
    who = f"{ev['user'] or '-'}@{ev['realm'] or '-'}"
    if ev.get("stage") == "freeswitch":
        return (f"{stamp} {ev['src']}:{ev['sport']}{where} {who} {ev['reason']} -> "
                f"{ev['action']} (FreeSWITCH guard)")
    return (f"{stamp} {ev['src']}:{ev['sport']}{where} {who} {ev['reason']} -> "
            f"{ev['action']}" + (f" (would {ev['would']})" if ev["would"] != ev["action"]
                                 else ""))
