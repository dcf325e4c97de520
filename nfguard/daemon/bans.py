"""Bans: authentication failures counted per address, fail2ban-like.

Pure logic, no I/O: the daemon feeds it FreeSWITCH's failed
authentications (fsevents.AuthFailure, from `sofia::register_failure`,
fired for failed REGISTER and INVITE authentication) and carries out what
it decides (backend.ban / unban: the kernel's pinned `bans` map and the
nft sets).

- A key is what a ban covers: an IPv4 address, or the IPv6 address's
  /ipv6_prefix network (one host usually holds a whole /64), written as
  the kernel's Program.ban_key writes it ("2001:db8:1:2::/64").
- A key with `failures` failures within `window` seconds is banned at that
  failure, for ban_time * increment**(n-1) (the n-th ban of the key),
  at most max_ban_time.
- Never banned: an address in a trusted network, and a key where a
  registration is bound (a NAT shared with a working phone; for an IPv6
  key any bound address in its prefix). The decision says why it spared.
- The offense count lives in the kernel's ban entry, so it survives a
  restart (load()); an expired entry stays, remembering it, until
  max_ban_time after it expired (tick() says when to forget it).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

DAY = 86400.0
# keys whose failures are counted at once: a spray of addresses (IPv6 has
# plenty) must not grow the daemon without bound; the oldest go first
TRACKED_MAX = 100_000
PRUNE_INTERVAL = 10.0  # seconds between sweeps of stale failure counts


@dataclass(frozen=True)
class BanPolicy:
    """The config's `bans:` section."""

    enabled: bool = True
    failures: int = 5
    window: float = 600.0
    ban_time: float = 600.0
    increment: float = 2.0
    max_ban_time: float = 7 * DAY
    ipv6_prefix: int = 64

    def duration(self, offense: int) -> float:
        """How long the offense-th ban of a key lasts."""
        try:
            seconds = self.ban_time * self.increment ** max(0, offense - 1)
        except OverflowError:  # a float power past 1e308: long past the cap
            return self.max_ban_time
        return min(seconds, self.max_ban_time)


# -- durations -------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value) -> float:
    """Seconds from 600, 600.5, "600", "10m", "1h30m", "7d"; ValueError
    (with what is accepted) otherwise. Negative, NaN and infinite are refused."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration such as 600, '10m', '1h' or '7d', not {value}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"must be a duration such as 600, '10m', '1h' or '7d', "
                                 f"not {value!r}") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"must be a duration such as 600, '10m', '1h' or '7d', not {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"must be a duration of 0 seconds or more, not {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """"10m", "1h30m", "7d", "45s"; "forever" for infinity. Whole seconds."""
    if math.isinf(seconds):
        return "forever"
    left = max(0, round(seconds))
    if left == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, left = divmod(left, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


# -- keys ------------------------------------------------------------------
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(text.strip().strip("[]"))
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # the kernel looks IPv4 up as itself
    return addr


def ban_key(text: str, ipv6_prefix: int) -> str:
    """The key a ban of this address takes (Program.ban_key's form): IPv4
    the address, IPv6 its network of ipv6_prefix bits ("2001:db8::/64").
    A key itself is accepted too (an IPv4 /32, an IPv6 network of exactly
    ipv6_prefix bits). ValueError naming the problem otherwise."""
    text = text.strip()
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address") from None
        want = 32 if net.version == 4 else ipv6_prefix
        if net.prefixlen != want:
            raise ValueError(f"{text}: a ban covers one IPv4 address or one IPv6 /{ipv6_prefix} "
                             f"(ipv6_prefix): give an address")
        text = str(net.network_address)
    try:
        addr = _address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if addr.version == 4:
        return str(addr)
    if ipv6_prefix >= 128:
        return str(addr)  # the kernel writes a whole address bare
    net = ipaddress.IPv6Network((addr, ipv6_prefix), strict=False)
    return f"{net.network_address}/{ipv6_prefix}"


def key_contains(key: str, ip: str, ipv6_prefix: int) -> bool:
    """Does the ban key cover this address?"""
    try:
        return ban_key(ip, ipv6_prefix) == key
    except ValueError:
        return False


def trusted_network(key: str, networks: Iterable) -> str | None:
    """The first trusted network (ipaddress networks) a ban key (or an
    address) overlaps, or None. Overlaps, not holds: the kernel looks bans
    up before the trusted networks, so a ban of an IPv6 /64 would cut off a
    trusted /128 inside it."""
    try:
        text = key.strip()
        own = ipaddress.ip_network(text if "/" in text else _address(text), strict=False)
    except ValueError:
        return None
    for net in networks:
        if own.version == net.version and own.overlaps(net):
            return str(net)
    return None


def holders(key: str, bindings: Iterable, ipv6_prefix: int) -> list[str]:
    """user@realm of each binding (registry.Binding) at an address the key
    covers, sorted: only an IPv6 key can cover several addresses."""
    found = set()
    if ":" not in key:
        for b in bindings:
            if b.ip == key:
                found.add(f"{b.user}@{b.realm}")
        return sorted(found)
    # an IPv6 key: its network as bytes and a mask once, each address by
    # inet_pton (ban_key() for each of 2,000 bindings took 30 ms)
    net = ipaddress.ip_network(key if "/" in key else f"{key}/128", strict=False)
    want, mask = int(net.network_address), int(net.netmask)
    for b in bindings:
        if ":" not in b.ip:
            continue
        try:
            raw = socket.inet_pton(socket.AF_INET6, b.ip)
        except OSError:
            continue
        if int.from_bytes(raw, "big") & mask == want:
            found.add(f"{b.user}@{b.realm}")
    return sorted(found)


# -- state -----------------------------------------------------------------
@dataclass
class BanEntry:
    """One key's ban, as the kernel's map holds it (and the nft comment)."""

    key: str
    expires: float  # epoch seconds; math.inf: until lifted
    offenses: int
    manual: bool
    reason: str = ""  # the nft element's comment
    lifted: bool = False  # its expiry was reported (tick)

    def active(self, now: float) -> bool:
        return now < self.expires

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires - now)


@dataclass(frozen=True)
class Banned:
    """A key crossed the threshold and is banned now."""

    entry: BanEntry
    duration: float
    failures: int  # counted within the window
    ip: str
    last: str  # the last failure's user@realm (and method)


@dataclass(frozen=True)
class Spared:
    """A key crossed the threshold and is not banned: why."""

    key: str
    ip: str
    failures: int
    why: str


@dataclass
class Tick:
    lifted: list[BanEntry] = field(default_factory=list)  # expired just now
    forgotten: list[BanEntry] = field(default_factory=list)  # remove from the kernel


def auto_reason(failures: int, window: float, last: str) -> str:
    """The nft comment of an automatic ban."""
    return f"{failures} failures in {format_duration(window)}, last {last}"


class Bans:
    """The failure counts and the bans the daemon knows (mirroring the
    kernel's map)."""

    def __init__(self, policy: BanPolicy, trusted: Iterable[str] = ()):
        self.policy = policy
        self.trusted: list = []
        self.set_trusted(trusted)
        self.entries: dict[str, BanEntry] = {}
        self._fails: dict[str, deque[float]] = {}
        self._pruned = 0.0
        self.counts: Counter = Counter()  # failures, spared, lifted

    def set_trusted(self, cidrs: Iterable[str]) -> None:
        self.trusted = [ipaddress.ip_network(c) for c in cidrs]

    def key(self, ip: str) -> str:
        return ban_key(ip, self.policy.ipv6_prefix)

    def load(self, entries: Iterable[BanEntry], now: float) -> None:
        """The kernel's entries at start (the truth after a restart): those
        already expired are remembered for their offenses, not reported."""
        self.entries = {}
        for e in entries:
            e.lifted = not e.active(now)
            self.entries[e.key] = e

    def active(self, now: float) -> list[BanEntry]:
        return sorted((e for e in self.entries.values() if e.active(now)), key=lambda e: e.key)

    # -- failures --------------------------------------------------------
    def failure(self, ip: str, cred: str, now: float,
                bound_at: Callable[[str], list[str]], may_ban: bool = True
                ) -> Banned | Spared | None:
        """One failed authentication from ip (cred: "user@realm", what the
        log names). None: counted, nothing to do (below the threshold, the
        key already banned, or may_ban False: before the first full sync,
        when bindings are not all known; the next failure decides)."""
        self.counts["failures"] += 1
        try:
            key = self.key(ip)
        except ValueError:
            return None
        entry = self.entries.get(key)
        if entry is not None and entry.active(now):
            return None  # banned already (monitor mode lets it through)
        p = self.policy
        times = self._fails.pop(key, None) or deque()
        self._fails[key] = times  # re-inserted: the dict's order is the last failure's
        times.append(now)
        while times and times[0] <= now - p.window:
            times.popleft()
        if len(self._fails) > TRACKED_MAX:
            del self._fails[next(iter(self._fails))]
        if len(times) < p.failures or not may_ban:
            return None
        count = len(times)
        del self._fails[key]  # a spared key is judged again after `failures` more
        net = trusted_network(key, self.trusted)
        if net is not None:
            self.counts["spared"] += 1
            return Spared(key, ip, count, f"in the trusted network {net}")
        bound = bound_at(key)
        if bound:
            self.counts["spared"] += 1
            shown = ", ".join(bound[:3]) + (f" and {len(bound) - 3} more" if len(bound) > 3
                                            else "")
            where = "" if key == ip else f" within {key}"
            return Spared(key, ip, count, f"bound to {shown}{where}: a NAT shared with a "
                          "working phone")
        offense = (entry.offenses if entry is not None else 0) + 1
        duration = p.duration(offense)
        new = BanEntry(key, now + duration, offense, False, auto_reason(count, p.window, cred))
        self.entries[key] = new
        return Banned(new, duration, count, ip, cred)

    # -- operators ---------------------------------------------------------
    def ban(self, key: str, duration: float, now: float, reason: str = "manual") -> BanEntry:
        """An operator's ban: the key's offense count is kept, not raised."""
        old = self.entries.get(key)
        entry = BanEntry(key, now + duration, old.offenses if old else 0, True, reason)
        self.entries[key] = entry
        self._fails.pop(key, None)
        return entry

    def unban(self, key: str) -> BanEntry | None:
        """Lift and forget (the offense count too)."""
        self._fails.pop(key, None)
        return self.entries.pop(key, None)

    # -- time ----------------------------------------------------------------
    def tick(self, now: float) -> Tick:
        """Bans that expired since the last tick, and entries to forget
        (max_ban_time past their expiry); stale failure counts go."""
        t = Tick()
        for key, e in list(self.entries.items()):
            if e.active(now):
                continue
            if not e.lifted:
                e.lifted = True
                self.counts["lifted"] += 1
                t.lifted.append(e)
            if now >= e.expires + self.policy.max_ban_time:
                del self.entries[key]
                t.forgotten.append(e)
        if now - self._pruned >= PRUNE_INTERVAL:  # not every tick: up to TRACKED_MAX keys
            self._pruned = now
            cutoff = now - self.policy.window
            for key in [k for k, times in self._fails.items() if times[-1] <= cutoff]:
                del self._fails[key]
        return t

    def tracked(self) -> int:
        """Keys with failures counted."""
        return len(self._fails)
