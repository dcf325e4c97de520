"""`nfguard attach`: load the classifier and attach it to an interface.

Loads the programs against the pinned maps (so bindings, trusted networks
and config survive), puts the TC ingress program and the XDP classifier on
the interface, and exits: the kernel keeps both attached. Running it again
replaces nfguard's programs atomically (e.g. after an upgrade).
"""

from __future__ import annotations

import argparse
import os

from nfguard.defaults import PIN_DIR
from nfguard.errors import AttachError
from nfguard.kernel.host import BPFFS, check_privileges, fstype_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interface", "-i", required=True, metavar="IF",
                        help="interface the SIP traffic arrives on")
    parser.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto",
                        help="native (driver) or generic (skb) XDP; auto: native "
                        "when the driver supports it, else generic (default: auto)")
    parser.add_argument("--replace", action="store_true",
                        help="replace another tool's XDP program or TC filter "
                        "(nfguard's own are always replaced, atomically)")
    parser.add_argument("--pin-dir", default=PIN_DIR, metavar="DIR",
                        help=f"bpffs directory of the pinned maps (default: {PIN_DIR})")
    parser.add_argument("--netns", metavar="NAME",
                        help="network namespace (under /var/run/netns) of the interface")


def _check_pin_dir(pin_dir: str) -> None:
    real = os.path.realpath(pin_dir)
    if real.startswith(BPFFS + "/"):
        return  # Program() mounts bpffs there when needed
    if fstype_of(real) != "bpf":
        raise AttachError(
            f"--pin-dir {pin_dir} is not on a BPF file system: use a directory under {BPFFS}"
        )


def run(args: argparse.Namespace) -> int:
    from nfguard.kernel import attach  # pyroute2: imported only when this command runs

    # Wrong input fails here, before the ~2 s compile.
    attach.check_interface(args.interface, netns=args.netns)
    check_privileges()
    _check_pin_dir(args.pin_dir)
    from nfguard.kernel.program import Program

    prog = Program(pin_dir=args.pin_dir)
    refused: list[str] = []
    try:
        mode = attach.attach(
            args.interface,
            prog.xdp_fn.fd,
            prog.tc_fn.fd,
            mode=args.xdp_mode,
            replace=args.replace,
            netns=args.netns,
            native_refused=refused,
        )
        cfg = prog.config()
        prog.unpin_stale_stages()  # earlier loads this one replaced everywhere
    finally:
        prog.close()  # the attachments keep the programs loaded
    where = args.interface + (f" (network namespace {args.netns})" if args.netns else "")
    print(
        f"nfguard: attached to {where}: XDP in {mode} mode, TC on clsact ingress; "
        f"mode {cfg['mode']}, action {cfg['action']}"
    )
    if refused:
        print(f"nfguard: warning: the kernel refused native XDP on {where} ({refused[0]}); "
              "in generic mode a GSO super-packet reaches XDP as one frame")
    return 0
