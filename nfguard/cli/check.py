"""`nfguard check USER@REALM IP`: what the kernel would do with an INVITE
using USER@REALM's credentials from IP, and why."""

from __future__ import annotations

import argparse
import json

from nfguard.cli.common import add_arguments as _common_args
from nfguard.cli.common import socket_path
from nfguard.daemon import control
from nfguard.daemon.check import check_with, parse_credential


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("credential", metavar="USER@REALM")
    parser.add_argument("ip", metavar="IP")
    _common_args(parser)


def run(args: argparse.Namespace) -> int:
    user, realm = parse_credential(args.credential)
    try:
        res = control.request(socket_path(args.config), "check", user=user, realm=realm,
                              ip=args.ip, timeout=30)
    except control.DaemonUnavailable:
        from nfguard.cli.common import pinned_program
        from nfguard.daemon.config import load_config
        from nfguard.kernel.program import Program

        live = pinned_program(load_config(args.config))
        checker = Program()
        try:
            res = check_with(checker, user, realm, args.ip, live)
        finally:
            live.close()
            checker.close()
    if args.json:
        print(json.dumps(res))
    else:
        verdict = res["action"] if res["action"] == res["would"] else \
            f"{res['action']} (monitor mode; enforcing would {res['would']})"
        print(f"{res['user']}@{res['realm']} from {res['ip']}: {verdict}, reason {res['reason']}")
        print(f"  {res['explain']}")
    return 0
