"""`nfguard freeswitch-install`: put the FreeSWITCH-side guard (TLS, WS,
WSS and TCP calls) first in every context of a file-based dialplan, then
have FreeSWITCH reread its XML (nfguard/guard_install.py says how)."""

from __future__ import annotations

import argparse
import asyncio

from nfguard import guard_install
from nfguard.cli.common import add_config_argument, say
from nfguard.daemon.config import ConfigError, load_config

DEFAULT_CONF_DIR = "/etc/freeswitch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser)
    parser.add_argument("--conf-dir", default=DEFAULT_CONF_DIR, metavar="DIR",
                        help=f"FreeSWITCH's configuration directory (default: {DEFAULT_CONF_DIR})")
    parser.add_argument("--guard", metavar="PATH",
                        help="the guard script the dialplan runs (default: the one nfguard "
                             "ships, /usr/share/nfguard/freeswitch/nfguard_guard.lua)")
    parser.add_argument("--remove", action="store_true", help="take the guard out again")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, change "
                        "nothing")
    parser.add_argument("--no-reload", action="store_true",
                        help="do not ask FreeSWITCH to run reloadxml afterwards")


def run(args: argparse.Namespace) -> int:
    if args.remove:
        changes = guard_install.remove(args.conf_dir, dry_run=args.dry_run)
    else:
        changes = guard_install.install(args.conf_dir, args.guard, dry_run=args.dry_run)
    verb = "would change" if args.dry_run else "changed"
    for line in changes:
        say(f"nfguard: {verb}: {line}")
    if not changes:
        say(f"nfguard: nothing to change in {args.conf_dir}: the guard is "
              f"{'not installed' if args.remove else 'installed already'}")
    if changes and not args.dry_run and not args.no_reload:
        return _reload(args.config)
    return 0


def _reload(config_path: str) -> int:
    """reloadxml over every ESL endpoint of the nfguard config; a warning
    with the manual command when that is not possible."""
    from nfguard.daemon.esl import EslConnection, EslError

    manual = "run `fs_cli -x reloadxml` to make FreeSWITCH read the change"
    try:
        endpoints = load_config(config_path).esl
    except ConfigError as e:
        say(f"nfguard: warning: {e}; {manual}")
        return 0

    async def reload_all() -> int:
        failed = 0
        for ep in endpoints:
            try:
                conn = await EslConnection.open(ep.host, ep.port, ep.read_password(),
                                                on_event=lambda frame: None)
                try:
                    answer = (await conn.api("reloadxml", timeout=30)).strip()
                finally:
                    await conn.close()
            except (EslError, OSError) as e:
                say(f"nfguard: warning: ESL {ep.name}: {e}; {manual}")
                failed += 1
                continue
            say(f"nfguard: ESL {ep.name}: reloadxml: {answer}")
            if not answer.startswith("+OK"):
                failed += 1
        return 1 if failed else 0

    return asyncio.run(reload_all())
