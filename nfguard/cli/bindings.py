"""`nfguard bindings [--json]`: every user@realm and where it is bound."""

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
    try:
        rows = control.request(socket_path(args.config), "bindings")["bindings"]
        source = "registry"
    except control.DaemonUnavailable:
        from nfguard.cli.common import pinned_program
        from nfguard.daemon.config import load_config
        from nfguard.kernel.program import boottime_ns

        prog = pinned_program(load_config(args.config))
        try:
            now, boot = time.time(), boottime_ns()
            rows = [{"user": b.user, "realm": b.realm, "ip": b.ip,
                     "expires": now + (b.expires_ns - boot) / 1e9, "nodes": []}
                    for b in sorted(prog.bindings(), key=lambda b: (b.user, b.realm, b.ip))]
        finally:
            prog.close()
        source = "bpf map (daemon down)"
    if args.json:
        print(json.dumps({"source": source, "bindings": rows}))
        return 0
    for r in rows:
        left = r["expires"] - time.time()
        print(f"{r['user']}@{r['realm']}  {r['ip']}  expires in {left:.0f} s"
              + (f"  ({', '.join(r['nodes'])})" if r["nodes"] else ""))
    print(f"{len(rows)} bindings ({source})")
    return 0
