"""Where the daemon's decisions land: the seam between its logic and the
kernel.

The daemon decides (which bindings, which mode, when to attach); a backend
carries it out. Bindings go to sinks, each with the same three verbs, like
the backends of crowdsec's firewall bouncer:

- `apply(diff, now)`: one registry diff;
- `sync(bindings, now)`: make the sink hold exactly these bindings;
- `drift(bindings, now)`: what differs between the sink and these bindings.

`KernelBackend` is the real one: the classifier's bindings map (`BpfSink`),
the nft sets (`NftSink`) and the kernel's map of bound addresses
(`BoundSink`, fed from the nft sink's per-address table), the bans (the
pinned `bans` map, mirrored in nft sets), the program's mode, the
interfaces and the kernel's verdict events. `RecordingBackend` keeps everything in memory and
records what it was asked to do, so the daemon's logic (first sync, restart
hold, alerts, reload, degraded grace, upgrades) is tested without root.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from nfguard.daemon.bans import BanEntry
from nfguard.daemon.nftstate import Element, NftState, element_comment
from nfguard.daemon.registry import Binding, Diff

log = logging.getLogger("nfguard")


def boot_ns_of(expires: float, now: float, boot_now_ns: int) -> int:
    """An epoch expiry as the CLOCK_BOOTTIME ns the kernel compares."""
    if math.isinf(expires):
        return (1 << 64) - 1
    return boot_now_ns + int((expires - now) * 1e9)


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def epoch_of(expires_ns: int, now: float, boot_now_ns: int) -> float:
    """A CLOCK_BOOTTIME ns expiry as epoch seconds (inf: NO_EXPIRY)."""
    if expires_ns >= (1 << 64) - 1:
        return math.inf
    return now + (expires_ns - boot_now_ns) / 1e9


def ban_timeout(entry: BanEntry, now: float) -> int | None:
    """The nft element's timeout of a ban: whole seconds, rounded up (the
    element never goes before the ban), None for a ban until lifted."""
    if math.isinf(entry.expires):
        return None
    return max(1, math.ceil(entry.expires - now))


class Sink(Protocol):
    name: str

    def apply(self, diff: Diff, now: float) -> None: ...

    def sync(self, bindings: dict[Binding, float], now: float) -> dict: ...

    def drift(self, bindings: dict[Binding, float], now: float) -> dict: ...


@dataclass
class Loaded:
    """What a backend found when it loaded: `fresh` state (nothing pinned:
    stay in monitor until the first full sync), the `mode` the state holds
    (a restart keeps it), and `migrating`: an older build's program stays
    attached until the first full sync has filled the new maps."""

    fresh: bool
    mode: str
    migrating: bool = False


# -- the kernel ---------------------------------------------------------------
class BpfSink:
    """The classifier's bindings map (expiry in CLOCK_BOOTTIME ns)."""

    name = "bpf"

    def __init__(self, prog):
        self.prog = prog

    def read(self) -> dict[Binding, float]:
        """The map's bindings with their expiry as epoch seconds."""
        now, boot = time.time(), boottime_ns()
        return {Binding(b.user, b.realm, b.ip): epoch_of(b.expires_ns, now, boot)
                for b in self.prog.bindings()}

    def apply(self, diff: Diff, now: float) -> None:
        boot = boottime_ns()
        # generators: update_bindings() takes them a batch at a time
        self.prog.update_bindings(
            add=((b.user, b.realm, b.ip, boot_ns_of(exp, now, boot))
                 for b, exp in diff.added.items()),
            remove=((b.user, b.realm, b.ip) for b in diff.removed))

    def sync(self, bindings: dict[Binding, float], now: float) -> dict:
        boot = boottime_ns()
        # prune: the map's other bindings go, found by key without reading
        # 100,000 bindings back
        removed = self.prog.update_bindings(
            add=((b.user, b.realm, b.ip, boot_ns_of(exp, now, boot))
                 for b, exp in bindings.items()),
            prune=True)
        return {"added": len(bindings), "removed": removed}

    def drift(self, bindings: Mapping[Binding, float], now: float) -> dict:
        return self.survey(bindings)[1]

    def survey(self, bindings: Mapping[Binding, float]) -> tuple[int, dict]:
        """How many bindings the map holds, and drift(): the map against
        `bindings`, read one binding at a time, once (100,000 read back as
        a list and two sets: ~60 MB). Every binding the map holds that is
        wanted is a distinct one of `bindings`, so when they are as many,
        none is missing; otherwise each is looked up."""
        extra, matched, held = [], 0, 0
        for b in self.prog.iter_bindings():
            held += 1
            if (b.user, b.realm, b.ip) in bindings:
                matched += 1
            else:
                extra.append(f"{b.user}@{b.realm} {b.ip}")
        missing = [] if matched == len(bindings) else [
            str(b) for b in bindings if not self.prog.holds(b.user, b.realm, b.ip)]
        return held, {"bpf_missing": sorted(missing)[:50], "bpf_extra": sorted(extra)[:50]}


class NftSink:
    """The nft sets: one element per address, commented with every
    user@realm bound there, expiring with the last of them."""

    name = "nft"

    def __init__(self, nft: NftState):
        self.nft = nft
        # ip -> its bindings and their expiries, flat: (b1, exp1, b2, exp2, ...).
        # A tuple, not a dict: nearly every address has one binding, and a
        # dict each was 26 MB at 100,000 addresses, a tuple 9 MB.
        self._by_ip: dict[str, tuple] = {}

    def _held(self, ip: str) -> dict[Binding, float]:
        t = self._by_ip.get(ip, ())
        return dict(zip(t[::2], t[1::2], strict=True))

    def _put(self, ip: str, held: dict[Binding, float]) -> None:
        if held:
            self._by_ip[ip] = tuple(x for pair in held.items() for x in pair)
        else:
            self._by_ip.pop(ip, None)

    def element(self, ip: str) -> Element | None:
        t = self._by_ip.get(ip)
        if not t:
            return None
        return Element(max(t[1::2]), element_comment(f"{b.user}@{b.realm}" for b in t[::2]))

    def elements(self) -> Mapping[str, Element]:
        """Every address's element, each made when it is read."""
        return _Elements(self, self._by_ip)

    def _add(self, b: Binding, exp: float) -> None:
        if b.ip not in self._by_ip:  # a first sync: every address is new
            self._by_ip[b.ip] = (b, exp)
            return
        held = self._held(b.ip)
        held[b] = exp
        self._put(b.ip, held)

    def apply(self, diff: Diff, now: float) -> None:
        if not self._by_ip and not diff.removed:
            # the first (a daemon's first 100,000): every address is touched,
            # and _by_ip names them all, no second table of them
            for b, exp in diff.added.items():
                self._add(b, exp)
            self.nft.apply(_Elements(self, self._by_ip), (), now)
            return
        touched: dict[str, None] = {}  # insertion-ordered set
        for b, exp in diff.added.items():
            self._add(b, exp)
            touched[b.ip] = None
        for b in diff.removed:
            held = self._held(b.ip)
            held.pop(b, None)
            self._put(b.ip, held)
            touched[b.ip] = None
        gone = [ip for ip in touched if ip not in self._by_ip]
        for ip in gone:
            del touched[ip]
        self.nft.apply(_Elements(self, touched), gone, now)

    def sync(self, bindings: dict[Binding, float], now: float) -> dict:
        self._by_ip = {}
        for b, exp in bindings.items():
            self._add(b, exp)
        return self.nft.sync(self.elements(), now)

    def drift(self, bindings: dict[Binding, float], now: float) -> dict:
        return {"nft": self.nft.drift(self.elements(), now)}


class BoundSink:
    """The kernel's `bound` map: each address holding a binding, with the
    latest expiry there (the program never rate limits those). It is fed
    from the NftSink's per-address table, which the NftSink has updated
    first (its place before this one in `sinks`): no second table of
    100,000 addresses."""

    name = "bound"

    def __init__(self, prog, by_ip: NftSink):
        self.prog = prog
        self.nft_sink = by_ip

    def _latest(self, ip: str) -> float | None:
        t = self.nft_sink._by_ip.get(ip)
        return max(t[1::2]) if t else None

    def apply(self, diff: Diff, now: float) -> None:
        boot = boottime_ns()
        # an address once per binding changed there (no table of the touched
        # addresses: a first apply has 100,000); each write is its latest expiry
        changed = itertools.chain(diff.added, diff.removed)
        gone = {b.ip for b in diff.removed if self._latest(b.ip) is None}
        self.prog.update_bound(
            add=((b.ip, boot_ns_of(exp, now, boot)) for b in changed
                 if (exp := self._latest(b.ip)) is not None),
            remove=gone)

    def sync(self, bindings: dict[Binding, float], now: float) -> dict:
        boot = boottime_ns()
        by_ip = self.nft_sink._by_ip
        removed = self.prog.update_bound(
            add=((ip, boot_ns_of(max(t[1::2]), now, boot)) for ip, t in by_ip.items()),
            prune=True)
        return {"added": len(by_ip), "removed": removed}

    def drift(self, bindings: Mapping[Binding, float], now: float) -> dict:
        return self.survey()[1]

    def survey(self) -> tuple[int, dict]:
        """How many addresses the map holds, and what differs from the
        addresses the bindings are at, read once."""
        by_ip = self.nft_sink._by_ip
        extra, held, matched = [], 0, 0
        for ip, _ in self.prog.iter_bound():
            held += 1
            if ip in by_ip:
                matched += 1
            else:
                extra.append(ip)
        missing = [] if matched == len(by_ip) else sorted(set(by_ip) - {
            ip for ip, _ in self.prog.iter_bound()})
        return held, {"bound_missing": missing[:50], "bound_extra": sorted(extra)[:50]}


class _Elements(Mapping):
    """The elements of some addresses of an NftSink, each made when it is
    read: a first sync never holds 100,000 Elements (~24 MB) at once."""

    def __init__(self, sink: NftSink, ips):
        self._sink, self._ips = sink, ips  # ips: a dict or set, every one held

    def __getitem__(self, ip: str) -> Element:
        el = self._sink.element(ip) if ip in self._ips else None
        if el is None:
            raise KeyError(ip)
        return el

    def __contains__(self, ip) -> bool:
        return ip in self._ips

    def __iter__(self):
        return iter(self._ips)

    def __len__(self) -> int:
        return len(self._ips)


class KernelBackend:
    """The classifier on its pinned maps, the nft table and the interfaces."""

    def __init__(self, prog=None, nft: NftState | None = None):
        self.prog = prog  # tests and benches pass their own loads
        self.nft = nft
        self.sinks: list = []
        self.attached: dict[tuple[str, str | None], str] = {}  # (ifname, netns) -> XDP mode
        # (ifname, netns) -> why the kernel refused native XDP there, where
        # xdp_mode auto fell back to generic (shown by `nfguard status`)
        self.native_refused: dict[tuple[str, str | None], str] = {}
        self._checker = None
        if prog is not None and nft is not None:
            self.sinks = self._sinks()

    def _sinks(self) -> list:
        nft_sink = NftSink(self.nft)
        return [BpfSink(self.prog), nft_sink, BoundSink(self.prog, nft_sink)]

    # -- start-up: check everything, then change things ------------------------
    def check(self, cfg) -> None:
        """Privileges and interfaces, before anything changes."""
        from nfguard.kernel.host import check_privileges

        check_privileges("nfguard run")
        self.check_interfaces(cfg.interfaces)

    def check_interfaces(self, interfaces) -> None:
        from nfguard.kernel import attach

        for itf in interfaces:
            attach.check_interface(itf.name, netns=itf.netns)

    def load(self, cfg) -> Loaded:
        from nfguard.kernel.program import Program

        self.prog = Program(pin_dir=cfg.pin_dir, other_layout="retire")
        if self.prog.reject_handoff == "map":
            log.info("this kernel refuses bpf_xdp_adjust_meta: reject verdicts reach the "
                     "TC program through a map instead of XDP metadata")
        if self.prog.migrating:
            log.warning("the maps pinned in %s were made by another nfguard build: they "
                        "are kept in %s/retired/ and the program attached now keeps "
                        "enforcing with them until the first full sync has filled the new "
                        "maps", cfg.pin_dir, cfg.pin_dir)
        self.nft = NftState(cfg.reject_mark)
        self.sinks = self._sinks()
        return Loaded(fresh=self.prog.fresh, mode=self.prog.config()["mode"],
                      migrating=self.prog.migrating)

    def pinned(self) -> dict[Binding, float]:
        return self.sinks[0].read()

    def configure(self, cfg, mode: str) -> None:
        prog = self.prog
        prog.configure(mode=mode, action=cfg.action, methods=cfg.methods,
                       fragments=cfg.fragments, reject_mark=cfg.reject_mark,
                       events_per_sec=cfg.events_per_sec, ipv6_prefix=cfg.bans.ipv6_prefix,
                       rate_limits=cfg.rate_limits)
        prog.set_ports(cfg.ports)
        have, want = set(prog.trusted()), set(cfg.trusted)
        for cidr in want - have:
            prog.add_trusted(cidr)
        for cidr in have - want:
            prog.remove_trusted(cidr)

    def install(self, cfg) -> None:
        """The nft table, its reject rule and trusted sets (kept elements
        stay); at start and on reload."""
        self.nft.reject_mark = cfg.reject_mark
        self.nft.install(cfg.trusted)

    def mode(self) -> str:
        return self.prog.config()["mode"] if self.prog else "?"

    def attach(self, interfaces) -> None:
        """Attach to every interface; if one fails, take nfguard off the
        ones this call put it on (not those it merely replaced)."""
        from nfguard.errors import AttachError
        from nfguard.kernel import attach

        done = []
        try:
            for itf in interfaces:
                before = attach.xdp_status(itf.name, netns=itf.netns)
                refused: list[str] = []
                mode = attach.attach(itf.name, self.prog.xdp_fn.fd, self.prog.tc_fn.fd,
                                     mode=itf.xdp_mode, netns=itf.netns, native_refused=refused)
                key = (itf.name, itf.netns)
                self.attached[key] = mode
                if before.prog_name != attach.XDP_PROG_NAME:
                    done.append(itf)
                if refused:
                    self.native_refused[key] = refused[0]
                    log.warning("attached to %s: XDP generic, because the kernel refused native "
                                "mode (%s); TC ingress. In generic mode a GSO super-packet "
                                "is judged as one frame: see `nfguard status`",
                                where(itf), refused[0])
                else:
                    if mode == "native":
                        self.native_refused.pop(key, None)
                    log.info("attached to %s: XDP %s, TC ingress", where(itf), mode)
        except BaseException:
            for itf in done:
                try:
                    attach.detach(itf.name, netns=itf.netns)
                except AttachError as e:
                    log.error("taking nfguard off %s again failed: %s", where(itf), e)
                self.attached.pop((itf.name, itf.netns), None)
            raise

    def detach(self, itf) -> None:
        from nfguard.errors import AttachError
        from nfguard.kernel import attach

        try:
            attach.detach(itf.name, netns=itf.netns)
            log.info("detached from %s", where(itf))
        except AttachError as e:
            log.error("detaching from %s failed: %s", where(itf), e)
        self.attached.pop((itf.name, itf.netns), None)
        self.native_refused.pop((itf.name, itf.netns), None)

    def settle(self, pin_dir: str) -> None:
        """After the attach: drop what older loads and builds left pinned."""
        from nfguard.kernel import pins

        self.prog.unpin_stale_stages()
        if pins.retired(pin_dir):
            pins.remove_retired(pin_dir)
            log.info("the older build's maps are unpinned: this build enforces alone")

    # -- bans: the kernel's map is the truth, the nft sets mirror it ------------
    def bans(self) -> list[BanEntry]:
        """Every entry of the kernel's bans map (expired ones too, which
        remember a repeat offender), with the nft element's comment."""
        now, boot = time.time(), boottime_ns()
        comments = self.nft.bans() if self.nft is not None else {}
        return [BanEntry(b.key, epoch_of(b.expires_ns, now, boot), b.offenses, b.manual,
                         comments.get(b.key, {}).get("comment", ""))
                for b in self.prog.iter_bans()]

    def ban(self, entry: BanEntry, now: float) -> None:
        """Ban entry.key in the kernel until entry.expires, and mirror it."""
        from nfguard.kernel.program import NO_EXPIRY

        expires_ns = (NO_EXPIRY if math.isinf(entry.expires)
                      else boot_ns_of(entry.expires, now, boottime_ns()))
        self.prog.set_ban(entry.key, expires_ns, entry.offenses, entry.manual)
        self.nft.set_ban(entry.key, ban_timeout(entry, now), entry.reason)

    def unban(self, key: str) -> bool:
        """Lift a ban in the kernel and nft; False: the kernel had none."""
        had = self.prog.lift_ban(key)
        self.nft.remove_ban(key)
        return had

    def forget_ban(self, key: str) -> None:
        """Remove an expired entry from the kernel (its nft element has
        timed out with it)."""
        self.prog.lift_ban(key)

    def carry_bans(self, pin_dir: str) -> int:
        """An upgrade across a map layout retired the older build's maps
        (pins.retire): its bans are not in FreeSWITCH, so unlike bindings
        nothing would refill them. Copy every entry of its `bans` map whose
        layout is this build's (key: the address, 16 bytes; value: expiry,
        offenses, flags) that the new map does not have yet. Returns how
        many were copied; a retired map without bans (layout 1) gives 0."""
        from nfguard.consts import BAN_MANUAL
        from nfguard.kernel.program import key_text

        have = {b.key for b in self.prog.iter_bans()}
        prefix = self.prog.config()["ipv6_prefix"]
        copied = 0
        for raw, expires_ns, offenses, flags in retired_bans(pin_dir):
            key = key_text(raw, prefix)
            if key in have:
                continue
            self.prog.set_ban(key, expires_ns, offenses, bool(flags & BAN_MANUAL))
            have.add(key)
            copied += 1
        return copied

    def sync_bans(self, entries: list[BanEntry], now: float) -> dict:
        """Make the nft ban sets hold exactly the active entries."""
        return self.nft.sync_bans({e.key: (ban_timeout(e, now), e.reason)
                                   for e in entries if e.active(now)})

    # -- events, status, check -------------------------------------------------
    def open_events(self, callback: Callable) -> None:
        self.prog.open_events(callback)

    def poll_events(self) -> None:
        self.prog.poll_events(0)

    def counters(self) -> dict[str, int]:
        return self.prog.counters()

    def status(self, cfg, bindings: dict[Binding, float], now: float) -> dict:
        from nfguard.daemon.status import kernel_status

        held, drift = self.sinks[0].survey(bindings)  # the map read once for both
        st = kernel_status(self.prog, self.nft, cfg, elements=self.sinks[1].elements(),
                           bpf_count=held, native_refused=self.native_refused)
        st["drift"].update(drift)
        bound, bound_drift = self.sinks[2].survey()
        st["bindings"]["bound_addresses"] = bound
        st["drift"].update(bound_drift)
        return st

    def check_binding(self, user: str, realm: str, ip: str) -> dict:
        from nfguard.daemon.check import check_with
        from nfguard.kernel.program import Program

        if self._checker is None:
            self._checker = Program()
        return check_with(self._checker, user, realm, ip, self.prog)

    def close(self) -> None:
        for p in (self._checker, self.prog):
            if p is not None:
                p.close()


def retired_bans(pin_dir: str):
    """(key bytes, expires_ns, offenses, flags) of every entry of the
    `bans` maps pinned under pin_dir/retired/ (pins.retire) whose key and
    value sizes are this build's (struct nfg_ban: u64 expires_ns, u32
    offenses, u32 flags); others are skipped (their layout is not known
    here)."""
    import os
    import struct

    from nfguard.kernel import libbpf, pins

    want = pins.expected()[1]["bans"]
    root = os.path.join(pin_dir, pins.RETIRED)
    try:
        dirs = sorted(os.listdir(root))
    except FileNotFoundError:
        return
    for d in dirs:
        path = os.path.join(root, d, "bans")
        info = libbpf.pinned_map_info(path)
        if info is None or (info.key_size, info.value_size) != (want.key_size,
                                                                 want.value_size):
            continue
        for key, val in libbpf.pinned_map_items(path, want.key_size, want.value_size):
            yield (key, *struct.unpack("<QII", val))


def where(itf) -> str:
    return itf.name + (f" (netns {itf.netns})" if itf.netns else "")


# -- in memory ----------------------------------------------------------------
@dataclass
class RecordingSink:
    """Bindings in a dict, and every call recorded."""

    name: str = "recording"
    held: dict[Binding, float] = field(default_factory=dict)
    calls: list[tuple] = field(default_factory=list)
    fail: bool = False  # raise on the next apply/sync, like a failing kernel

    def _maybe_fail(self, what: str) -> None:
        if self.fail:
            self.fail = False
            raise RuntimeError(f"{self.name} {what} failed (test)")

    def apply(self, diff: Diff, now: float) -> None:
        self.calls.append(("apply", dict(diff.added), set(diff.removed)))
        self._maybe_fail("apply")
        for b in diff.removed:
            self.held.pop(b, None)
        self.held.update(diff.added)

    def sync(self, bindings: dict[Binding, float], now: float) -> dict:
        self.calls.append(("sync", dict(bindings)))
        self._maybe_fail("sync")
        removed = len(set(self.held) - set(bindings))
        self.held = dict(bindings)
        return {"added": len(bindings), "removed": removed}

    def drift(self, bindings: dict[Binding, float], now: float) -> dict:
        return {f"{self.name}_missing": sorted(str(b) for b in set(bindings) - set(self.held)),
                f"{self.name}_extra": sorted(str(b) for b in set(self.held) - set(bindings))}


class RecordingBackend:
    """The daemon's kernel side in memory: a pinned state that survives a
    "restart" (pass the same `pinned` dict to the next backend), a mode, the
    attached interfaces, verdict events injected with emit()."""

    def __init__(self, pinned: dict[Binding, float] | None = None, mode: str = "monitor",
                 migrating: bool = False, bans: dict[str, BanEntry] | None = None):
        """bans: the pinned bans map (key -> entry); pass the same dict to the
        next backend for a restart."""
        self.ban_map = {} if bans is None else bans
        self.sink = RecordingSink(held=dict(pinned or {}))
        self.sinks = [self.sink]
        self.fresh = pinned is None
        self.kernel_mode = mode
        self.migrating = migrating
        self.attached: dict[tuple[str, str | None], str] = {}
        self.log: list[tuple] = []
        self.bad_interfaces: set[str] = set()
        self._callback = None
        self._queued: list = []

    def check(self, cfg) -> None:
        self.check_interfaces(cfg.interfaces)

    def check_interfaces(self, interfaces) -> None:
        from nfguard.errors import AttachError

        for itf in interfaces:
            if itf.name in self.bad_interfaces:
                raise AttachError(f"interface {itf.name} not found")

    def load(self, cfg) -> Loaded:
        self.log.append(("load",))
        return Loaded(fresh=self.fresh, mode=self.kernel_mode, migrating=self.migrating)

    def pinned(self) -> dict[Binding, float]:
        return dict(self.sink.held)

    def configure(self, cfg, mode: str) -> None:
        self.kernel_mode = mode
        self.log.append(("configure", mode))

    def mode(self) -> str:
        return self.kernel_mode

    def install(self, cfg) -> None:
        self.log.append(("install", tuple(cfg.trusted)))

    def attach(self, interfaces) -> None:
        for itf in interfaces:
            self.attached[(itf.name, itf.netns)] = itf.xdp_mode
            self.log.append(("attach", itf.name))

    def detach(self, itf) -> None:
        self.attached.pop((itf.name, itf.netns), None)
        self.log.append(("detach", itf.name))

    def settle(self, pin_dir: str) -> None:
        self.log.append(("settle",))
        self.migrating = False

    def bans(self) -> list[BanEntry]:
        return [BanEntry(e.key, e.expires, e.offenses, e.manual, e.reason)
                for e in self.ban_map.values()]

    def ban(self, entry: BanEntry, now: float) -> None:
        self.ban_map[entry.key] = BanEntry(entry.key, entry.expires, entry.offenses,
                                           entry.manual, entry.reason)
        self.log.append(("ban", entry.key, entry.expires - now, entry.offenses, entry.manual))

    def unban(self, key: str) -> bool:
        self.log.append(("unban", key))
        return self.ban_map.pop(key, None) is not None

    def forget_ban(self, key: str) -> None:
        self.log.append(("forget_ban", key))
        self.ban_map.pop(key, None)

    def carry_bans(self, pin_dir: str) -> int:
        self.log.append(("carry_bans",))
        return 0

    def sync_bans(self, entries: list[BanEntry], now: float) -> dict:
        active = sorted(e.key for e in entries if e.active(now))
        self.log.append(("sync_bans", tuple(active)))
        return {"set": len(active), "removed": 0}

    def open_events(self, callback: Callable) -> None:
        self._callback = callback

    def emit(self, event) -> None:
        """A verdict event, delivered at the next poll."""
        self._queued.append(event)

    def counters(self) -> dict[str, int]:
        return {}

    def poll_events(self) -> None:
        queued, self._queued = self._queued, []
        for ev in queued:
            self._callback(ev)

    def status(self, cfg, bindings: dict[Binding, float], now: float) -> dict:
        return {"kernel": {"mode": self.kernel_mode}, "interfaces": [],
                "counters": {}, "bindings": {"recording": len(self.sink.held)},
                "drift": self.sink.drift(bindings, now)}

    def check_binding(self, user: str, realm: str, ip: str) -> dict:
        bound = any(b.user == user.lower() and b.realm == realm.lower() and b.ip == ip
                    for b in self.sink.held)
        return {"user": user, "realm": realm, "ip": ip, "mode": self.kernel_mode,
                "reason": "bound" if bound else "not_bound"}

    def close(self) -> None:
        self.log.append(("close",))
