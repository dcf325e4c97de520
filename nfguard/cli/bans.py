"""`nfguard bans [--json]`, `nfguard ban ADDRESS [--for DURATION]` and
`nfguard unban ADDRESS`.

With the daemon running they go through its control socket, so that it
logs the ALERT line and mirrors the change in the nft sets itself. While it
is down they act on the pinned `bans` map (the truth, which the XDP
program reads) and on the nft ban sets directly; the next daemon start
reads the map back.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time

from nfguard.cli import common
from nfguard.daemon import control
from nfguard.daemon.bans import (
    ban_key,
    format_duration,
    key_contains,
    parse_duration,
    trusted_network,
)
from nfguard.daemon.config import load_config
from nfguard.errors import NfguardError

USAGE_ERROR = 2


def _usage(message: str) -> int:
    print(f"nfguard: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _not_an_address(text: str, network_ok: bool) -> str | None:
    """Why text cannot name a ban (checked before anything is asked), or
    None. Whether a network is one ban's key depends on the config's
    ipv6_prefix: ban_key() tells, later."""
    try:
        if network_ok and "/" in text:
            ipaddress.ip_network(text, strict=False)
        else:
            ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return f"{text!r} is not an IPv4 or IPv6 address"
    return None


def _row(key: str, expires_ns: int, offenses: int, manual: bool, reason: str,
         now: float, boot: int) -> dict:
    from nfguard.daemon.backend import epoch_of

    expires = epoch_of(expires_ns, now, boot)
    inf = expires == float("inf")
    return {"key": key, "expires": None if inf else expires,
            "remaining_s": None if inf else round(max(0.0, expires - now), 1),
            "offenses": offenses, "manual": manual, "reason": reason}


def _offline_nft(cfg):
    from nfguard.daemon.nftstate import NftState

    return NftState(cfg.reject_mark)


def _nft_note(what: str, e: Exception) -> None:
    print(f"nfguard: note: the nft ban sets were not updated ({e}); {what}", file=sys.stderr)


# -- nfguard bans ----------------------------------------------------------------
class List:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        common.add_arguments(parser)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        try:
            rows = control.request(common.socket_path(args.config), "bans")["bans"]
            source = "daemon"
        except control.DaemonUnavailable:
            rows = List.offline(args.config)
            source = "bans map (daemon down)"
        if args.json:
            print(json.dumps({"source": source, "bans": rows}))
            return 0
        for r in rows:
            left = "forever" if r["remaining_s"] is None else \
                f"{format_duration(r['remaining_s'])} left"
            kind = "manual" if r["manual"] else "auto"
            print(f"{r['key']}  {left}  offense {r['offenses']}  {kind}"
                  + (f"  {r['reason']}" if r["reason"] else ""))
        print(f"{len(rows)} active bans ({source})")
        return 0

    @staticmethod
    def offline(config_path: str) -> list[dict]:
        from nfguard.kernel.program import boottime_ns

        cfg = load_config(config_path)
        prog = common.pinned_program(cfg)
        try:
            try:
                comments = _offline_nft(cfg).bans()
            except NfguardError:
                comments = {}
            now, boot = time.time(), boottime_ns()
            return [_row(b.key, b.expires_ns, b.offenses, b.manual,
                         comments.get(b.key, {}).get("comment", ""), now, boot)
                    for b in sorted(prog.iter_bans()) if b.expires_ns > boot]
        finally:
            prog.close()


# -- nfguard ban -------------------------------------------------------------------
class Ban:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        common.add_config_argument(parser)
        parser.add_argument("address", metavar="ADDRESS",
                            help="an IPv4 or IPv6 address (IPv6: its whole /ipv6_prefix "
                            "is banned)")
        parser.add_argument("--for", dest="duration", metavar="DURATION",
                            help="how long: seconds, or 30s, 10m, 1h, 7d (default: the "
                            "config's bans.ban_time)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        seconds = None
        if args.duration is not None:
            try:
                seconds = parse_duration(args.duration)
            except ValueError as e:
                return _usage(f"--for {e}")
            if seconds <= 0:
                return _usage("--for must be more than 0 seconds")
        why = _not_an_address(args.address, network_ok=False)
        if why:
            return _usage(why)
        try:
            out = control.request(common.socket_path(args.config), "ban",
                                  address=args.address, seconds=seconds)
            source = "daemon"
        except control.DaemonUnavailable:
            out = Ban.offline(args.config, args.address, seconds)
            source = "bans map (daemon down)"
        if out["warning"]:
            print(f"nfguard: warning: {out['warning']}", file=sys.stderr)
        print(f"banned {out['key']} for {format_duration(out['seconds'])} ({source})")
        return 0

    @staticmethod
    def offline(config_path: str, address: str, seconds: float | None) -> dict:
        from nfguard.daemon.backend import boot_ns_of
        from nfguard.kernel.program import boottime_ns

        cfg = load_config(config_path)
        key = ban_key(address, cfg.bans.ipv6_prefix)
        net = trusted_network(key, [ipaddress.ip_network(c) for c in cfg.trusted])
        if net is not None:
            raise NfguardError(f"{key} overlaps the trusted network {net}: nfguard never bans "
                               "it (remove it from trusted first)")
        if seconds is None:
            seconds = cfg.bans.ban_time
        prog = common.pinned_program(cfg)
        try:
            now, boot = time.time(), boottime_ns()
            old = next((b for b in prog.iter_bans() if b.key == key), None)
            # the daemon names the user@realm; the map knows only the addresses
            bound = sorted(ip for ip, expires_ns in prog.iter_bound()
                           if expires_ns > boot and key_contains(key, ip, cfg.bans.ipv6_prefix))
            prog.set_ban(key, boot_ns_of(now + seconds, now, boot),
                         old.offenses if old else 0, manual=True)
        finally:
            prog.close()
        try:
            _offline_nft(cfg).set_ban(key, max(1, round(seconds)), "manual")
        except NfguardError as e:
            _nft_note("the daemon mirrors the ban when it starts", e)
        warning = (f"{key} holds a binding (at {', '.join(bound[:5])}): that phone is cut "
                   "off too" if bound else "")
        return {"key": key, "seconds": seconds, "warning": warning}


# -- nfguard unban ---------------------------------------------------------------
class Unban:
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        common.add_config_argument(parser)
        parser.add_argument("address", metavar="ADDRESS",
                            help="an address, or a key as `nfguard bans` lists it")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        why = _not_an_address(args.address, network_ok=True)
        if why:
            return _usage(why)
        try:
            out = control.request(common.socket_path(args.config), "unban",
                                  address=args.address)
            source = "daemon"
        except control.DaemonUnavailable:
            out = Unban.offline(args.config, args.address)
            source = "bans map (daemon down)"
        if out["lifted"]:
            print(f"lifted the ban of {out['key']} ({source})")
        else:
            print(f"{out['key']} was not banned ({source})")
        return 0

    @staticmethod
    def offline(config_path: str, address: str) -> dict:
        cfg = load_config(config_path)
        key = ban_key(address, cfg.bans.ipv6_prefix)
        prog = common.pinned_program(cfg)
        try:
            lifted = prog.lift_ban(key)
        finally:
            prog.close()
        try:
            _offline_nft(cfg).remove_ban(key)
        except NfguardError as e:
            _nft_note("its element times out with the ban", e)
        return {"key": key, "lifted": lifted}
