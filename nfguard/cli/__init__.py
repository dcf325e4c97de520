"""The `nfguard` command: one subcommand per module, errors as one line."""

from __future__ import annotations

import argparse
import importlib
import sys

from nfguard import __version__
from nfguard.errors import NfguardError

# subcommand -> module (or "module:Class") with add_arguments(parser) and
# run(args) -> int
SUBCOMMANDS = {
    "replay": ("nfguard.cli.replay", "run every packet of a pcap through the kernel program"),
    "bench": ("nfguard.bench.xdp", "measure the XDP program with BPF_PROG_TEST_RUN"),
    "attach": ("nfguard.cli.attach", "load the classifier and attach it to an interface"),
    "detach": ("nfguard.cli.detach", "detach nfguard's XDP and TC programs from an interface"),
    "run": ("nfguard.cli.run", "the daemon: follow FreeSWITCH, keep the kernel and nft in step"),
    "status": ("nfguard.cli.status", "daemon, ESL endpoints, kernel program, nft table, drift"),
    "bindings": ("nfguard.cli.bindings", "every user@realm and where it is bound"),
    "bans": ("nfguard.cli.bans:List", "the addresses banned now, for how long and why"),
    "ban": ("nfguard.cli.bans:Ban", "ban an address (IPv6: its prefix) from the guarded ports"),
    "unban": ("nfguard.cli.bans:Unban", "lift the ban of an address"),
    "check": ("nfguard.cli.check", "what the kernel would do with USER@REALM's INVITE from IP"),
    "events": ("nfguard.cli.events", "follow the kernel's verdict events"),
    "freeswitch-install": ("nfguard.cli.freeswitch_install", "run the guard for TLS, WS, WSS "
                           "and TCP calls first in every context of FreeSWITCH's dialplan"),
    "uninstall": ("nfguard.cli.uninstall", "detach, delete the nft table and the pinned maps"),
    "demo": ("nfguard.cli.demo", "the main job without FreeSWITCH, in network namespaces"),
    "selftest": ("nfguard.cli.selftest", "check this host: kernel, headers, compile, rules, "
                 "a namespace round trip"),
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other nfguard error."""

    def error(self, message):
        self.exit(2, f"nfguard: error: {message} (see '{self.prog} --help')\n")


def _command(spec: str):
    modname, _, attr = spec.partition(":")
    module = importlib.import_module(modname)
    return getattr(module, attr) if attr else module


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nfguard",
        description="Refuse SIP INVITEs whose credentials are used from an address "
        "where that user@realm is not registered.",
    )
    parser.add_argument("--version", action="version", version=f"nfguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (modname, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _command(modname).add_arguments(p)
        p.set_defaults(_module=modname)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return _command(args._module).run(args)
    except NfguardError as e:
        print(f"nfguard: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `nfguard bindings | head`: the reader left; no traceback, and
        # nonzero as Python's documentation advises (nothing more was shown)
        from nfguard.cli.common import stdout_to_devnull

        stdout_to_devnull()
        return 1


if __name__ == "__main__":
    sys.exit(main())
