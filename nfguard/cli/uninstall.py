"""`nfguard uninstall`: take nfguard off the host: detach its XDP and TC
programs from the configured interfaces, delete `table inet nfguard`, and
remove the pinned maps (the package's removal runs it)."""

from __future__ import annotations

import argparse
import os
import shutil

from nfguard.daemon.config import DEFAULT_PATH, ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_PATH, metavar="FILE",
                        help=f"config file (default: {DEFAULT_PATH})")
    parser.add_argument("--keep-pins", action="store_true",
                        help="keep the pinned maps (bindings) for a later start")


def run(args: argparse.Namespace) -> int:
    from nfguard.kernel import attach
    from nfguard.cli.attach import check_privileges
    from nfguard.daemon.nftstate import NftState

    check_privileges("nfguard uninstall")
    try:
        cfg = load_config(args.config)
        interfaces, pin_dir, mark = cfg.interfaces, cfg.pin_dir, cfg.reject_mark
    except ConfigError as e:
        print(f"nfguard: warning: {e}; detaching from no interface by name")
        from nfguard import consts
        interfaces, pin_dir, mark = (), "/sys/fs/bpf/nfguard", consts.DEFAULT_REJECT_MARK
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
