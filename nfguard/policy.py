"""The one check of policy values: what is guarded and how.

Guarded ports and methods, trusted networks, mode, action, fragments,
reject mark and the event rate are checked here and nowhere else, so that
the config file (daemon.config), `nfguard replay` and the kernel program
(Program.configure, set_ports, add_trusted) refuse exactly the same values
with exactly the same words. Each caller only says where the value came
from: the config names file and key, replay its option.

Each function returns the value in its one canonical form (a network as
10.0.0.0/8, a tuple for a list) or raises PolicyError. A base module: it
imports only nfguard.consts, nfguard.errors and the standard library.
"""

from __future__ import annotations

import difflib
import ipaddress

from nfguard import consts
from nfguard.errors import NfguardError

MODES = ("monitor", "enforce")
ACTIONS = ("drop", "reject")
FRAGMENTS = ("verdict", "pass")
EVENTS_PER_SEC_MAX = 1_000_000

# IPv4 sources are looked up as IPv6 ::ffff:a.b.c.d (bpf/nfguard_structs.h);
# ::/0 therefore covers IPv4 too, as tests/cases.py says
_V4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


class PolicyError(NfguardError, ValueError):
    """A policy value that cannot be used. `key` names the setting (ports,
    methods...), `index` the item of a list when one item is wrong, and
    `problem` is the message every caller shows. A ValueError too: the
    program's callers have always caught that."""

    def __init__(self, key: str, problem: str, index: int | None = None):
        self.key, self.problem, self.index = key, problem, index
        super().__init__(f"{self.where}: {problem}")

    @property
    def where(self) -> str:
        return self.key if self.index is None else f"{self.key}[{self.index}]"


# -- wording shared with the config's other checks ----------------------------
def show(value) -> str:
    """A value as the operator wrote it, short, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_of(choices) -> str:
    quoted = [f"'{c}'" for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def suggest(word, known) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, known, n=1)
    if not close:  # a shortened word: xdp for xdp_mode
        close = [k for k in known if word and k.startswith(word)]
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- single values -------------------------------------------------------------
def choice(key: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise PolicyError(key, f"must be {one_of(choices)}, not {show(value)}{hint}")
    return value


def mode(value) -> str:
    return choice("mode", value, MODES)


def action(value) -> str:
    return choice("action", value, ACTIONS)


def fragments(value) -> str:
    return choice("fragments", value, FRAGMENTS)


def _whole(value, lo: int, hi: int) -> bool:
    # bool is an int in Python; `port: yes` is not a port
    return not isinstance(value, bool) and isinstance(value, int) and lo <= value <= hi


def reject_mark(value) -> int:
    # 0 is "no mark": the nftables rule could not tell rejected packets apart
    if not _whole(value, 1, 0xFFFFFFFF):
        raise PolicyError("reject_mark", "must be a non-zero 32-bit number "
                          f"(1 to 0xffffffff), not {show(value)}")
    return value


def events_per_sec(value) -> int:
    if not _whole(value, 0, EVENTS_PER_SEC_MAX):
        raise PolicyError("events_per_sec", f"must be a whole number from 0 to "
                          f"{EVENTS_PER_SEC_MAX}, not {show(value)}")
    return value


# Rate limits of requests from sources neither trusted nor bound, per class:
# (requests a second, burst). A bound phone or a trusted trunk is never
# limited, so these only meet a phone before its first registration and
# peers nobody configured. Chosen so that none of those hits them:
# - register: a NAT of 20 phones booting at once sends 40 REGISTERs (each
#   answered by a challenge, then repeated with credentials); once one of
#   them is bound, the address is no longer limited at all;
# - invite: an unregistered caller retries at most a few times a second;
#   5/s is still 300 calls a minute, and at FreeSWITCH's ~13 ms of CPU per
#   challenge, at most 7 % of a core (a flood at 150/s takes all of it);
# - other: OPTIONS pings, BYE/ACK/CANCEL of calls with outside peers.
DEFAULT_RATE_LIMITS = {"invite": (5.0, 20), "register": (5.0, 40), "other": (20.0, 100)}
RATE_MAX = 1_000_000.0
BURST_MAX = 1_000_000


def ipv6_prefix(value) -> int:
    """Bits of an IPv6 source that key its bans and buckets: a host usually
    holds a whole /64, so a ban of one address is dodged by the next."""
    if not _whole(value, 1, 128):
        raise PolicyError("ipv6_prefix", f"must be a prefix length from 1 to 128, "
                          f"not {show(value)}")
    return value


def rate_limits(value) -> dict[str, tuple[float, int]]:
    """{class: (per_second, burst)} for every class, the defaults where a
    class is not given; per_second 0 leaves the class unlimited."""
    if not isinstance(value, dict):
        raise PolicyError("rate_limits", f"must be a mapping of {one_of(consts.RATE_CLASSES)} "
                          f"to (rate, burst), not {show(value)}")
    out = dict(DEFAULT_RATE_LIMITS)
    for cls, limit in value.items():
        if cls not in consts.RATE_CLASSES:
            hint = suggest(cls, consts.RATE_CLASSES) if isinstance(cls, str) else ""
            raise PolicyError("rate_limits", f"unknown class {show(cls)}: "
                              f"{one_of(consts.RATE_CLASSES)}{hint}")
        key = f"rate_limits.{cls}"
        if isinstance(limit, dict) and set(limit) == {"rate", "burst"}:
            limit = (limit["rate"], limit["burst"])
        if not isinstance(limit, (tuple, list)) or len(limit) != 2:
            raise PolicyError(key, f"must be {{rate: per second, burst: N}}, not {show(limit)}")
        rate, burst = limit
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or \
                not 0 <= rate <= RATE_MAX:
            raise PolicyError(key, f"rate must be requests a second from 0 (unlimited) to "
                              f"{RATE_MAX:.0f}, not {show(rate)}")
        if not _whole(burst, 1, BURST_MAX):
            raise PolicyError(key, f"burst must be a whole number from 1 to {BURST_MAX}, "
                              f"not {show(burst)}")
        out[cls] = (float(rate), burst)
    return out


def _items(key: str, value, example: str) -> list:
    """A list (or tuple, or other iterable) as a list; a string is not one."""
    if isinstance(value, (str, bytes, dict)):
        raise PolicyError(key, f"must be a list, e.g. {example}, not {show(value)}")
    try:
        return list(value)
    except TypeError:
        raise PolicyError(key, f"must be a list, e.g. {example}, not {show(value)}") from None


# -- lists ---------------------------------------------------------------------
def ports(value) -> tuple[int, ...]:
    """Guarded UDP destination ports: at least one, each once."""
    items = _items("ports", value, "[5060, 5080]")
    if not items:
        raise PolicyError("ports", "must not be empty (nothing would be guarded)")
    for i, port in enumerate(items):
        if not _whole(port, 1, 65535):
            raise PolicyError("ports", f"must be a whole number from 1 to 65535, "
                              f"not {show(port)}", i)
        if port in items[:i]:
            raise PolicyError("ports", f"{port} is listed twice", i)
    return tuple(items)


def methods(value) -> tuple[str, ...]:
    """Guarded SIP methods, upper case as on the wire: at least one, each
    once, never REGISTER."""
    items = _items("methods", value, "[INVITE]")
    if not items:
        raise PolicyError("methods", "must not be empty (nothing would be guarded)")
    for i, m in enumerate(items):
        if not isinstance(m, str) or not m:
            raise PolicyError("methods", "must be a SIP method name such as INVITE, "
                              f"not {show(m) if m != '' else 'empty'}", i)
        if m == "REGISTER":
            raise PolicyError("methods", "REGISTER cannot be guarded: it is how bindings are "
                              "made (a phone must be able to register from a new address)", i)
        if m not in consts.METHOD_BITS:
            # the program compares method names byte for byte, as SIP does
            if m.upper() in consts.METHOD_BITS or m.upper() == "REGISTER":
                hint = f" (method names are upper case: '{m.upper()}')"
            else:
                hint = suggest(m, consts.METHOD_BITS) or \
                    f" (known: {', '.join(consts.METHOD_BITS)})"
            raise PolicyError("methods", f"unknown SIP method {m!r}{hint}", i)
        if m in items[:i]:
            raise PolicyError("methods", f"{m} is listed twice", i)
    return tuple(items)


_NETWORK = "a network such as 10.0.0.0/8 or 2001:db8::/32"


def network(value, index: int | None = None) -> str:
    """One trusted network, as 10.0.0.0/8 or 2001:db8::/32 (an address alone
    is a /32 or /128). IPv4 written as IPv6 (::ffff:10.0.0.0/104) comes back
    as IPv4: nfguard looks IPv4 up as ::ffff:a.b.c.d, so both are one entry
    of the trusted map, which Program.trusted() lists in the IPv4 form."""
    if not isinstance(value, str) or not value:
        shown = "empty" if value == "" else show(value)
        raise PolicyError("trusted", f"must be {_NETWORK}, not {shown}", index)
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise PolicyError("trusted", f"{value!r} is not {_NETWORK}", index) from None
        # refused, not masked: 10.0.0.1/8 may as well be a slip for 10.0.0.1/32
        raise PolicyError("trusted", f"{value} has host bits set: did you mean "
                          f"{loose.with_prefixlen}?", index) from None
    if getattr(net.network_address, "scope_id", None):
        raise PolicyError("trusted", f"{value}: a zone (%...) cannot be part of a "
                          "trusted network", index)
    if net.version == 6 and net.subnet_of(_V4_MAPPED):
        net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net.with_prefixlen


def trusted(value) -> tuple[str, ...]:
    """Trusted networks (may be empty), canonical, each once."""
    items = _items("trusted", value, "[10.0.0.0/8, '2001:db8::/32']")
    out: list[str] = []
    for i, item in enumerate(items):
        net = network(item, i)
        if net in out:
            raise PolicyError("trusted", f"{net} is listed twice", i)
        out.append(net)
    return tuple(out)
