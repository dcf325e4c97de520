"""`nfguard detach`: take nfguard's XDP and TC programs off an interface.

Only nfguard's own programs are removed: another tool's XDP program or TC
filters stay where they are. The pinned maps stay too (a later `nfguard
attach` picks them up again).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interface", "-i", required=True, metavar="IF",
                        help="interface to take nfguard off")
    parser.add_argument("--netns", metavar="NAME",
                        help="network namespace (under /var/run/netns) of the interface")


def run(args: argparse.Namespace) -> int:
    from nfguard.kernel import attach  # pyroute2: imported only when this command runs

    res = attach.detach(args.interface, netns=args.netns)
    where = args.interface + (f" (network namespace {args.netns})" if args.netns else "")
    parts = [p for p, done in (("XDP", res.xdp), ("TC ingress", res.tc)) if done]
    if parts:
        print(f"nfguard: detached {' and '.join(parts)} from {where}")
    else:
        print(f"nfguard: nothing of nfguard's was attached to {where}")
    if res.foreign_xdp:
        print(f"nfguard: warning: the XDP program on {where} is not nfguard's "
              f"({res.foreign_xdp}): left in place", file=sys.stderr)
    return 0
