"""Compile, load and drive the XDP classifier (bpf/nfguard.c) with bcc.

One Program is one load of the C program: the XDP classifier, the TC
ingress program that turns the reject verdict into skb->mark (handed over
as XDP metadata, or through a map where the kernel refuses
bpf_xdp_adjust_meta), and their maps. With a pin directory the state maps
(bindings, trusted networks, ports, config, counters) are pinned there and
reused by the next load, so enforcement and its state survive a controller
restart; without one (tests, replay, bench) the maps are private to this
load.
"""

from __future__ import annotations

import ctypes
import ipaddress
import itertools
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from nfguard import consts, policy
from nfguard.errors import CompileError, NfguardError
from nfguard.kernel import pins
from nfguard.kernel.host import ensure_bpffs, require_bpf_runtime
from nfguard.kernel.libbpf import (
    map_ids_of_programs,
    obj_pin,
    pinned_map_id,
    prog_test_run,
    xdp_adjust_meta_allowed,
)
from nfguard.verdict import Verdict

NO_EXPIRY = (1 << 64) - 1
XDP_DROP, XDP_PASS = 1, 2
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
BATCH = 10_000  # bindings a batch syscall in update_bindings(): ~2.3 MB of ctypes arrays


_CGROUP_INET_INGRESS = 0  # enum bpf_attach_type
_BPF_F_ALLOW_MULTI = 2


def _untagged(frame: bytes) -> bytes:
    """The frame without its VLAN tags, as the stack hands it to IP: what
    a socket program sees of it."""
    while len(frame) >= 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        frame = frame[:12] + frame[16:]
    return frame


class _cgroup_fd:
    """An O_RDONLY fd of a cgroup v2 directory, closed on exit."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self) -> int:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise NfguardError(f"cgroup {self.path}: {e.strerror}") from None
        return self.fd

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


class _EventC(ctypes.Structure):
    """struct nfg_event (bpf/nfguard_structs.h)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("addr", ctypes.c_uint8 * 16),
        ("reason", ctypes.c_uint32),
        ("action", ctypes.c_uint32),
        ("would", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("user", ctypes.c_char * consts.USER_MAX),
        ("realm", ctypes.c_char * consts.REALM_MAX),
        ("stage", ctypes.c_uint8),
    ]


def bpf_source_dir() -> str:
    """Where the C sources are: $NFGUARD_BPF_DIR, the source tree, or the
    Debian package's /usr/share/nfguard/bpf."""
    candidates = [
        os.environ.get("NFGUARD_BPF_DIR"),
        os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "bpf"),
        "/usr/share/nfguard/bpf",
    ]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "nfguard.c")):
            return c
    raise NfguardError(
        "BPF sources (nfguard.c) not found: set NFGUARD_BPF_DIR or reinstall nfguard"
    )


def addr_bytes(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """16-byte map form of an address: IPv6, or IPv4 mapped into ::ffff:0:0/96."""
    if isinstance(ip, str):
        # inet_pton first: a tenth of ipaddress's time, and a first sync
        # converts 100,000 addresses twice (bindings and bound addresses)
        try:
            return _V4_MAPPED + socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            pass
        try:
            return socket.inet_pton(socket.AF_INET6, ip)
        except OSError:
            pass  # ipaddress raises the ValueError, with its words
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return _V4_MAPPED + a.packed
    return a.packed


def addr_str(raw: bytes) -> str:
    raw = bytes(raw)
    if raw[:12] == _V4_MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def key_text(raw: bytes, ipv6_prefix: int) -> str:
    """A ban key as text: an IPv4 address, or the IPv6 prefix
    (2001:db8:1:2::/64; bare when the prefix is a whole address)."""
    raw = bytes(raw)
    if raw[:12] == _V4_MAPPED:
        return addr_str(raw)
    text = str(ipaddress.IPv6Address(raw))
    return text if ipv6_prefix >= 128 else f"{text}/{ipv6_prefix}"


def ban_slot(key: bytes) -> int:
    """The bit of the bans' filter a ban key sets; the twin of the slot in
    ban_of() in bpf/nfguard.c."""
    w0, w1 = struct.unpack("<QQ", key)
    return (((w0 ^ w1) * 0x9E3779B97F4A7C15) & _MASK64) >> (64 - consts.BAN_FILTER_LOG2)


def prefix_mask(bits: int) -> bytes:
    return (((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)).to_bytes(16, "big")


def _address(text: str) -> str:
    """The one address an operator named; ValueError otherwise."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _bound_key(bound_map, ip: str):
    key = bound_map.Key()
    key.addr[:] = list(addr_bytes(ip))
    return key


def _rate_limit(interval_ns: int, slack_ns: int) -> tuple[float, int]:
    if not interval_ns:
        return (0.0, 1)
    return (round(1e9 / interval_ns, 6), slack_ns // interval_ns + 1)


def boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _cstr(raw) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


_MASK64 = (1 << 64) - 1


def cred_hash(seed: int, user: bytes, realm: bytes) -> int:
    """The credential hash of the bindings map key; the twin of copy_lower()
    in bpf/nfguard_cred.h: the 8-byte words holding bytes of the (lower-cased)
    user, its length, then the same for the realm."""
    h = seed

    def step(w: int) -> None:
        nonlocal h
        h = ((h ^ w) * 0x9E3779B97F4A7C15) & _MASK64
        h ^= h >> 29

    for value in (user, realm):
        padded = value.ljust(-(-len(value) // 8) * 8, b"\0")
        for (w,) in struct.iter_unpack("<Q", padded):
            step(w)
        step(len(value))
    return h


def _holds(val, user: bytes, realm: bytes) -> bool:
    """Does a bindings map value hold exactly these credentials?"""
    return (val.user_len == len(user) and val.realm_len == len(realm)
            and bytes(val.cred.user)[: len(user)] == user
            and bytes(val.cred.realm)[: len(realm)] == realm)


def check_credential(user: str, realm: str) -> tuple[bytes, bytes]:
    """Lower-cased byte forms of a binding's credentials; ValueError when a
    value is empty or over the limits the kernel program can store."""
    u = user.encode("utf-8").lower()
    r = realm.encode("utf-8").lower()
    if not u or not r:
        raise ValueError("username and realm must not be empty")
    if len(u) > consts.USER_MAX:
        raise ValueError(f"username {user!r} is longer than {consts.USER_MAX} bytes")
    if len(r) > consts.REALM_MAX:
        raise ValueError(f"realm {realm!r} is longer than {consts.REALM_MAX} bytes")
    return u, r


# The libraries of the compiler bcc runs in-process (Debian: libLLVM-14.so.1,
# libclang-cpp.so.14).
_COMPILER_LIBS = ("libLLVM", "libclang-cpp")
_MADV_DONTNEED = 4


def release_compiler_memory() -> dict:
    """After a compile, give back what LLVM and clang held for it (measured
    with bcc 0.26 on Debian 12: RSS 157 MB after the load, 50 MB after
    this). Nothing after the load runs compiler code: bcc's map and ring
    buffer calls are libbpf's, in libbcc.

    - malloc_trim(0): glibc keeps the ~35 MB the compile freed in its
      arenas; this returns it to the kernel.
    - the compiler libraries' code and read-only data (~75 MB of clean
      pages of files, touched by the load and the compile) are unmapped
      from this process with MADV_DONTNEED. They stay in the page cache for
      the kernel to reclaim, and a later compile (`nfguard check`) faults
      them back in. Only mappings with no private (copy-on-write) page are
      touched: there, dropping a page loses nothing the file does not hold.

    Returns {"trimmed": bool, "unmapped_kb": int}; a libc without
    malloc_trim, or no /proc, only means less is released."""
    libc = ctypes.CDLL(None, use_errno=True)
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    trimmed = bool(trim and trim(0))
    regions, cur = [], None
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                parts = line.split()
                if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping
                    cur = None
                    path = parts[5] if len(parts) > 5 else ""
                    if parts[1] in ("r-xp", "r--p") and any(
                            os.path.basename(path).startswith(n) for n in _COMPILER_LIBS):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        cur = [lo, hi, 0]
                elif cur is not None and parts[0] == "Rss:":
                    cur[2] = int(parts[1])
                elif cur is not None and parts[0] == "Anonymous:" and parts[1] == "0":
                    regions.append(cur)
    except OSError:
        return {"trimmed": trimmed, "unmapped_kb": 0}
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    unmapped = 0
    for lo, hi, rss_kb in regions:
        if madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            unmapped += rss_kb
    return {"trimmed": trimmed, "unmapped_kb": unmapped}


class Ban(NamedTuple):
    """One entry of the bans map."""

    key: str  # an IPv4 address, or an IPv6 prefix (2001:db8:1:2::/64)
    expires_ns: int  # CLOCK_BOOTTIME; NO_EXPIRY: until lifted
    offenses: int
    manual: bool


@dataclass(frozen=True)
class Binding:
    user: str
    realm: str
    ip: str
    expires_ns: int


@dataclass(frozen=True)
class Event:
    ts_ns: int
    src: str
    sport: int
    dport: int
    reason: str
    action: str
    would: str
    user: str | None
    realm: str | None
    stage: str = "xdp"  # the program that judged it: xdp or socket


class Program:
    """One load of the nfguard BPF programs and their maps."""

    def __init__(self, pin_dir: str | None = None, cflags: Iterable[str] = (),
                 count_all: bool | None = None, other_layout: str = "refuse",
                 reject_handoff: str = "auto", socket_stage: bool = False):
        """pin_dir: pin the state maps there (the daemon); None: private maps.
        count_all: also count traffic that is not UDP to a guarded port
        (not_ip, not_udp, port_not_guarded), which the attached program
        skips to keep the path of all other traffic short; test_run() needs
        it to name those reasons. Default: on without a pin_dir.
        other_layout: what to do with pins of a build with another map
        layout: "refuse" (PinLayoutError, naming the fix) or "retire" (move
        them aside and start on fresh maps: the daemon; see pins.py).
        reject_handoff: how a reject verdict reaches the TC program:
        "metadata" (bpf_xdp_adjust_meta), "map" (the handoff map, for
        kernels that refuse that helper), or "auto": metadata where the
        kernel allows it.
        socket_stage: also load the socket stage (cgroup_skb ingress,
        bpf/nfguard.c), which judges datagrams as a socket receives them:
        reassembled, or one segment of a GSO super-packet.

        After the load, `fresh` says whether the state maps are new, and
        `migrating` whether retired pins wait for the daemon's first sync."""
        require_bpf_runtime("nfguard")
        try:
            from bcc import BPF  # imported here: a clear error beats an ImportError
        except ImportError as e:
            raise NfguardError(
                f"bcc is not importable ({e}): install python3-bpfcc and run nfguard "
                "with the system python3 (/usr/bin/python3)"
            ) from e

        self._BPF = BPF
        self.pin_dir = pin_dir
        flags = ["-I" + bpf_source_dir(), "-Wno-unused-value"] + list(cflags)
        self.count_all = pin_dir is None if count_all is None else count_all
        if self.count_all:
            flags.append("-DNFG_COUNT_ALL")
        if reject_handoff not in ("auto", "metadata", "map"):
            raise ValueError(f"reject_handoff: {reject_handoff!r}")
        if reject_handoff == "auto":
            reject_handoff = "metadata" if xdp_adjust_meta_allowed() else "map"
        self.reject_handoff = reject_handoff
        if reject_handoff == "map":
            flags.append("-DNFG_NO_XDP_META")
        self.socket_stage = socket_stage
        if socket_stage:
            flags.append("-DNFG_SOCKET_STAGE")
        self.layout_version, _ = pins.expected(flags)
        self.fresh, self.migrating = True, False
        if pin_dir:
            ensure_bpffs(pin_dir)
            diffs = pins.differences(pin_dir, flags)
            if diffs:
                if other_layout != "retire":
                    raise pins.refuse(pin_dir, diffs)
                pins.retire(pin_dir)
            self.fresh = bool(diffs) or diffs is None
            self.migrating = pins.retired(pin_dir)
            flags.append(f'-DNFG_PIN_DIR="{pin_dir}"')
        src = os.path.join(bpf_source_dir(), "nfguard.c")
        try:
            self.bpf = BPF(src_file=src.encode(), cflags=flags)
        except Exception as e:  # bcc raises bare Exception
            raise CompileError(
                f"compiling {src} failed: {e}. Check that the kernel headers match "
                "the running kernel (linux-headers-$(uname -r))"
            ) from e
        try:
            self.xdp_fn = self.bpf.load_func(b"nfguard_xdp", BPF.XDP)
            self.scan_fn = self.bpf.load_func(b"nfguard_scan", BPF.XDP)
            self.params_fn = self.bpf.load_func(b"nfguard_params", BPF.XDP)
            self.tc_fn = self.bpf.load_func(b"nfguard_tc", BPF.SCHED_CLS)
            self.sock_fn = self.sock_scan_fn = self.sock_params_fn = None
            if socket_stage:
                self.sock_fn = self.bpf.load_func(b"nfguard_sock", BPF.CGROUP_SKB)
                self.sock_scan_fn = self.bpf.load_func(b"nfguard_sock_scan", BPF.CGROUP_SKB)
                self.sock_params_fn = self.bpf.load_func(b"nfguard_sock_params",
                                                         BPF.CGROUP_SKB)
        except Exception as e:
            hint = ""
            if reject_handoff == "metadata" and not xdp_adjust_meta_allowed():
                hint = " (this kernel refuses bpf_xdp_adjust_meta: use the handoff map)"
            raise CompileError(f"the kernel refused the nfguard program: {e}{hint}") from e
        release_compiler_memory()
        # The later stages are reached by tail calls through this array.
        self._stages = self.bpf[b"stages"]
        self._stages[ctypes.c_int(consts.STAGE_SCAN)] = ctypes.c_int(self.scan_fn.fd)
        self._stages[ctypes.c_int(consts.STAGE_PARAMS)] = ctypes.c_int(self.params_fn.fd)
        if socket_stage:
            sock_stages = self.bpf[b"sock_stages"]
            sock_stages[ctypes.c_int(consts.STAGE_SCAN)] = ctypes.c_int(self.sock_scan_fn.fd)
            sock_stages[ctypes.c_int(consts.STAGE_PARAMS)] = ctypes.c_int(
                self.sock_params_fn.fd)
            self._sock_ifaces = self.bpf[b"sock_ifaces"]
            self._sock_scratch = self.bpf[b"sock_scratch"]
        self.stages_pin = None
        if pin_dir:
            # A prog array loses its entries when its last user reference
            # goes; pinned, it keeps serving the attached program after this
            # process exits. One pin per load: an older program still
            # attached keeps its own stages until unpin_stale_stages().
            self.stages_pin = os.path.join(pin_dir, f"stages_{time.time_ns()}")
            obj_pin(self._stages.map_fd, self.stages_pin)
        self._bindings = self.bpf[b"bindings"]
        self._trusted = self.bpf[b"trusted"]
        self._ports = self.bpf[b"ports"]
        self._config = self.bpf[b"config"]
        self._counters = self.bpf[b"counters"]
        self._bans = self.bpf[b"bans"]
        self._ban_filter = self.bpf[b"ban_filter"]
        self._bound = self.bpf[b"bound"]
        self._scratch = self.bpf[b"scratch"]
        self._ring_open = False
        cfg = self._config[ctypes.c_uint32(0)]
        if cfg.methods == 0:
            # Never configured (fresh maps): safe defaults, monitor mode
            # until the controller says otherwise, and a fresh secret seed
            # for the credential hash.
            cfg.cred_seed = secrets.randbits(64)
            cfg.layout = self.layout_version
            self._config[ctypes.c_uint32(0)] = cfg
            self.configure()
            if not self.ports():
                self.set_ports([5060])
        self._seed = self._config[ctypes.c_uint32(0)].cred_seed
        if pin_dir:
            # pinned bans and filter are kept together, but a writer that
            # died between the two would leave a ban its filter hides
            self._rebuild_ban_filter()

    # -- configuration -------------------------------------------------
    def configure(
        self,
        mode: str = "monitor",
        action: str = "drop",
        methods: Iterable[str] = ("INVITE",),
        fragments: str = "verdict",
        reject_mark: int = consts.DEFAULT_REJECT_MARK,
        events_per_sec: int = 100,
        ipv6_prefix: int = 64,
        rate_limits: Mapping[str, tuple[float, int]] | None = None,
    ) -> None:
        """rate_limits: {class: (requests a second, burst)} for "invite",
        "register" and "other" (policy.DEFAULT_RATE_LIMITS for a class not
        given; 0 a second: unlimited). None: no rate limits at all, for
        tests, replay and benches (the daemon passes the config's, whose
        default is policy.DEFAULT_RATE_LIMITS). ipv6_prefix: the bits of an
        IPv6 source that key its bans and buckets."""
        # the checks of the config file and replay (PolicyError, a ValueError)
        modes = {"monitor": consts.MODE_MONITOR, "enforce": consts.MODE_ENFORCE}
        actions = {"drop": consts.ACTION_DROP, "reject": consts.ACTION_REJECT}
        frags = {"verdict": consts.FRAG_VERDICT, "pass": consts.FRAG_PASS}
        mode = policy.mode(mode)
        action = policy.action(action)
        fragments = policy.fragments(fragments)
        mask = consts.methods_mask(policy.methods(methods))
        reject_mark = policy.reject_mark(reject_mark)
        events_per_sec = policy.events_per_sec(events_per_sec)
        ipv6_prefix = policy.ipv6_prefix(ipv6_prefix)
        limits = (dict.fromkeys(consts.RATE_CLASSES, (0.0, 1)) if rate_limits is None
                  else policy.rate_limits(rate_limits))
        cfg = self._config[ctypes.c_uint32(0)]  # keeps cred_seed
        cfg.mode = modes[mode]
        cfg.action = actions[action]
        cfg.methods = mask
        cfg.fragments = frags[fragments]
        cfg.reject_mark = reject_mark
        cfg.events_per_sec = events_per_sec
        cfg.ipv6_prefix = ipv6_prefix
        mask = prefix_mask(ipv6_prefix)
        cfg.v6_mask[0], cfg.v6_mask[1] = struct.unpack("<QQ", mask)
        for cls, index in consts.RATE_CLASSES.items():
            rate, burst = limits[cls]
            interval = round(1e9 / rate) if rate else 0
            cfg.rate_interval_ns[index] = interval
            cfg.rate_slack_ns[index] = (burst - 1) * interval
        self._config[ctypes.c_uint32(0)] = cfg

    def config(self) -> dict:
        c = self._config[ctypes.c_uint32(0)]
        return {
            "mode": "enforce" if c.mode == consts.MODE_ENFORCE else "monitor",
            "action": "reject" if c.action == consts.ACTION_REJECT else "drop",
            "methods": [m for m, b in consts.METHOD_BITS.items() if c.methods >> b & 1],
            "fragments": "pass" if c.fragments == consts.FRAG_PASS else "verdict",
            "reject_mark": c.reject_mark,
            "events_per_sec": c.events_per_sec,
            "ipv6_prefix": c.ipv6_prefix,
            "rate_limits": {cls: _rate_limit(c.rate_interval_ns[i], c.rate_slack_ns[i])
                            for cls, i in consts.RATE_CLASSES.items()},
        }

    def set_ports(self, ports: Iterable[int]) -> None:
        """Guard exactly these UDP destination ports (a bitmap in the map)."""
        words = [0] * consts.PORT_WORDS
        for p in policy.ports(ports):  # PolicyError (a ValueError) before any write
            words[p // 64] |= 1 << (p % 64)
        for i, w in enumerate(words):
            if w or self._ports[ctypes.c_uint32(i)].value:
                self._ports[ctypes.c_uint32(i)] = ctypes.c_uint64(w)

    def ports(self) -> list[int]:
        out = []
        for i in range(consts.PORT_WORDS):
            w = self._ports[ctypes.c_uint32(i)].value
            out.extend(i * 64 + b for b in range(64) if w >> b & 1)
        return out

    # -- trusted networks ----------------------------------------------
    def _lpm_key(self, cidr: str):
        # the config's and replay's check: PolicyError (a ValueError) for
        # 10.0.0.1/8 rather than a silently masked 10.0.0.0/8
        net = ipaddress.ip_network(policy.network(cidr))
        key = self._trusted.Key()
        key.prefixlen = net.prefixlen + (96 if net.version == 4 else 0)
        key.addr[:] = list(addr_bytes(net.network_address))
        return key

    def add_trusted(self, cidr: str) -> None:
        self._trusted[self._lpm_key(cidr)] = self._trusted.Leaf(1)

    def remove_trusted(self, cidr: str) -> None:
        try:
            del self._trusted[self._lpm_key(cidr)]
        except KeyError:
            pass

    def trusted(self) -> list[str]:
        out = []
        for k in self._trusted:
            raw = bytes(k.addr)
            if raw[:12] == _V4_MAPPED and k.prefixlen >= 96:
                out.append(f"{addr_str(raw)}/{k.prefixlen - 96}")
            else:
                out.append(f"{ipaddress.IPv6Address(raw)}/{k.prefixlen}")
        return sorted(out)

    # -- bindings ------------------------------------------------------
    def _binding_key(self, user: str, realm: str, ip: str):
        u, r = check_credential(user, realm)
        key = self._bindings.Key()
        key.cred_hash = cred_hash(self._seed, u, r)
        key.addr[:] = list(addr_bytes(ip))
        return key, u, r

    def add_binding(
        self,
        user: str,
        realm: str,
        ip: str,
        expires_in: float | None = None,
        expires_ns: int | None = None,
    ) -> None:
        """Bind user@realm to ip until expires_ns (CLOCK_BOOTTIME), or for
        expires_in seconds from now, or without expiry."""
        key, u, r = self._binding_key(user, realm, ip)
        if expires_ns is None:
            expires_ns = (
                NO_EXPIRY if expires_in is None else boottime_ns() + int(expires_in * 1e9)
            )
        existing = self._bindings.get(key)
        if existing is not None and not _holds(existing, u, r):
            raise ValueError(
                f"{user}@{realm} at {ip}: another credential holds the same hash slot"
            )
        val = self._bindings.Leaf()
        val.expires_ns = max(0, min(expires_ns, NO_EXPIRY))
        val.user_len = len(u)
        val.realm_len = len(r)
        val.cred.user = u
        val.cred.realm = r
        self._bindings[key] = val

    def remove_binding(self, user: str, realm: str, ip: str) -> bool:
        key, u, r = self._binding_key(user, realm, ip)
        existing = self._bindings.get(key)
        if existing is None or not _holds(existing, u, r):
            return False
        del self._bindings[key]
        return True

    def update_bindings(self, add: Iterable[tuple[str, str, str, int]] = (),
                        remove: Iterable[tuple[str, str, str]] = (),
                        prune: bool = False) -> int:
        """Many bindings at once with the map's batch operations (one
        syscall each way per BATCH bindings instead of one per binding): add
        or replace (user, realm, ip, expires_ns), remove (user, realm, ip).
        Unlike add_binding() this does not look for another credential in
        the same hash slot: two credentials at one address colliding in a
        seeded 64-bit hash is not a case to pay a lookup per binding for.

        prune: afterwards the map holds only the bindings of `add`; every
        other one is removed (a full sync). Returns how many it removed.

        add and remove may be generators: they are read BATCH at a time, so
        100,000 bindings never sit in memory as one list or one ctypes array
        (~35 MB), and prune compares map keys (24 bytes each) instead of
        reading every binding back (bindings() of 100,000: ~80 MB). The map
        has no transactions: an error (ValueError for a credential too long,
        or the kernel's) leaves earlier batches applied."""
        written: set[bytes] = set()
        it = iter(add)
        while chunk := list(itertools.islice(it, BATCH)):
            keys = (self._bindings.Key * len(chunk))()
            vals = (self._bindings.Leaf * len(chunk))()
            for i, (user, realm, ip, expires_ns) in enumerate(chunk):
                u, r = check_credential(user, realm)
                keys[i].cred_hash = cred_hash(self._seed, u, r)
                ctypes.memmove(keys[i].addr, addr_bytes(ip), 16)
                vals[i].expires_ns = max(0, min(expires_ns, NO_EXPIRY))
                vals[i].user_len = len(u)
                vals[i].realm_len = len(r)
                vals[i].cred.user = u
                vals[i].cred.realm = r
            self._bindings.items_update_batch(keys, vals)
            if prune:
                written.update(bytes(k) for k in keys)
        it = iter(remove)
        while gone := list(itertools.islice(it, BATCH)):
            keys = (self._bindings.Key * len(gone))()
            for i, (user, realm, ip) in enumerate(gone):
                u, r = check_credential(user, realm)
                keys[i].cred_hash = cred_hash(self._seed, u, r)
                ctypes.memmove(keys[i].addr, addr_bytes(ip), 16)
            try:
                self._bindings.items_delete_batch(keys)
            except Exception:  # noqa: BLE001 - bcc raises bare Exception; one key gone stops it
                for user, realm, ip in gone:
                    self.remove_binding(user, realm, ip)
        if not prune:
            return 0
        # the keys first, the deletes after: deleting while walking a hash
        # map makes the walk start over
        stale = [bytes(k) for k in self._bindings if bytes(k) not in written]
        del written
        for i in range(0, len(stale), BATCH):
            part = stale[i:i + BATCH]
            keys = (self._bindings.Key * len(part)).from_buffer_copy(b"".join(part))
            try:
                self._bindings.items_delete_batch(keys)
            except Exception:  # noqa: BLE001 - gone meanwhile (another writer): one at a time
                for k in keys:
                    self._bindings.pop(k, None)
        return len(stale)

    def bindings(self) -> list[Binding]:
        return list(self.iter_bindings())

    def iter_bindings(self) -> Iterator[Binding]:
        """The map's bindings one at a time (100,000 as a list: ~40 MB; bcc's
        items() is a list of every key and value too)."""
        for k, v in self._bindings.iteritems():
            yield Binding(bytes(v.cred.user)[: v.user_len].decode("utf-8", "replace"),
                          bytes(v.cred.realm)[: v.realm_len].decode("utf-8", "replace"),
                          addr_str(k.addr), v.expires_ns)

    def binding_count(self) -> int:
        """How many bindings the map holds (its keys walked, no values read)."""
        return sum(1 for _ in self._bindings)

    def holds(self, user: str, realm: str, ip: str) -> bool:
        """Whether the map binds user@realm to ip (one lookup)."""
        try:
            key, u, r = self._binding_key(user, realm, ip)
        except ValueError:
            return False  # cannot be in the map
        existing = self._bindings.get(key)
        return existing is not None and _holds(existing, u, r)

    def clear_bindings(self) -> None:
        self._bindings.clear()

    # -- bans and bound addresses ------------------------------------------
    def ban_key(self, ip: str) -> str:
        """The key a ban of ip takes: an IPv4 address, or the IPv6 prefix
        of the configured length holding ip ("2001:db8:1:2::/64")."""
        return key_text(self._source_key(ip), self._ipv6_prefix())

    def _ipv6_prefix(self) -> int:
        return self._config[ctypes.c_uint32(0)].ipv6_prefix

    def _source_key(self, ip: str) -> bytes:
        a = ipaddress.ip_address(_address(ip))
        raw = addr_bytes(a)
        if a.version == 4:  # an IPv6 packet from ::ffff:a.b.c.d is masked
            return raw
        mask = prefix_mask(self._ipv6_prefix())
        return bytes(byte & m for byte, m in zip(raw, mask, strict=True))

    def _ban_map_key(self, ip_or_key: str):
        """The map key of an address, or of a key as ban_key() writes it."""
        text = ip_or_key.strip()
        if "/" in text:
            try:
                text = str(ipaddress.ip_network(text).network_address)
            except ValueError:
                raise ValueError(f"{ip_or_key!r} is not an address or a ban key") from None
        key = self._bans.Key()
        key.addr[:] = list(self._source_key(text))
        return key

    def set_ban(self, ip: str, expires_ns: int, offenses: int = 1,
                manual: bool = False) -> str:
        """Ban ip's key until expires_ns (CLOCK_BOOTTIME; NO_EXPIRY: until
        lifted). Returns the key."""
        key = self._bans.Key()
        key.addr[:] = list(self._source_key(ip))
        val = self._bans.Leaf()
        val.expires_ns = max(0, min(expires_ns, NO_EXPIRY))
        val.offenses = max(0, min(offenses, 0xFFFFFFFF))
        val.flags = consts.BAN_MANUAL if manual else 0
        self._bans[key] = val
        slot = ban_slot(bytes(key.addr))  # after the entry: no bit without it
        word = ctypes.c_uint32(slot // 64)
        self._ban_filter[word] = ctypes.c_uint64(self._ban_filter[word].value
                                                 | 1 << (slot % 64))
        return key_text(bytes(key.addr), self._ipv6_prefix())

    def lift_ban(self, ip_or_key: str) -> bool:
        """Remove the ban of an address or key; False: there was none."""
        key = self._ban_map_key(ip_or_key)
        if self._bans.pop(key, None) is None:
            return False
        self._rebuild_ban_filter(ban_slot(bytes(key.addr)) // 64)
        return True

    def _rebuild_ban_filter(self, only_word: int | None = None) -> None:
        """The filter's words (or one) from the bans map: a bit stays set
        while any ban key hashes to it."""
        words: dict[int, int] = {}
        for k, _ in self._bans.items_lookup_batch():
            slot = ban_slot(bytes(k.addr))
            words[slot // 64] = words.get(slot // 64, 0) | 1 << (slot % 64)
        todo = range(consts.BAN_FILTER_WORDS) if only_word is None else (only_word,)
        for i in todo:
            want = words.get(i, 0)
            if want or self._ban_filter[ctypes.c_uint32(i)].value:
                self._ban_filter[ctypes.c_uint32(i)] = ctypes.c_uint64(want)

    def iter_bans(self) -> Iterator[Ban]:
        """Every ban entry, those past their expiry too (the program
        ignores them; the controller keeps them to count repeat offenses)."""
        prefix = self._ipv6_prefix()
        for k, v in self._bans.iteritems():
            yield Ban(key_text(bytes(k.addr), prefix), v.expires_ns, v.offenses,
                      bool(v.flags & consts.BAN_MANUAL))

    def update_bound(self, add: Iterable[tuple[str, int]] = (), remove: Iterable[str] = (),
                     prune: bool = False) -> int:
        """The addresses holding a binding, with the latest expiry there
        (CLOCK_BOOTTIME ns): the program never rate limits them. prune: the
        map holds only `add` afterwards; returns how many that removed."""
        written: set[bytes] = set()
        it = iter(add)
        while chunk := list(itertools.islice(it, BATCH)):
            raw = b"".join(addr_bytes(ip) for ip, _ in chunk)
            keys = (self._bound.Key * len(chunk)).from_buffer_copy(raw)
            vals = (self._bound.Leaf * len(chunk))(
                *(max(0, min(expires_ns, NO_EXPIRY)) for _, expires_ns in chunk))
            self._bound.items_update_batch(keys, vals)
            if prune:
                written.update(bytes(k) for k in keys)
        gone = [addr_bytes(ip) for ip in remove]
        if prune:
            gone += [bytes(k) for k, _ in self._bound.items_lookup_batch()
                     if bytes(k) not in written]
        for raw in gone:
            key = self._bound.Key()
            key.addr[:] = list(raw)
            self._bound.pop(key, None)
        return len(gone) if prune else 0

    def clear_floods(self) -> None:
        """No bans, no bound addresses, every bucket empty (tests, check)."""
        for m in (self._bans, self._bound, self.bpf[b"buckets"]):
            m.clear()
        self._rebuild_ban_filter()

    def iter_bound(self) -> Iterator[tuple[str, int]]:
        """Every bound address and its expiry: one batch syscall (a lookup a
        key took 0.9 s at 100,000)."""
        for k, v in self._bound.items_lookup_batch():
            yield addr_str(k.addr), v

    def mirror(self, live: Program, user: str, realm: str, ip: str) -> None:
        """Make this (private) load judge as `live` does for user@realm at
        ip: live's config (its hash seed included, so binding keys match),
        ports and trusted networks, and live's binding of user@realm at ip
        if it has one; counters zero. `nfguard check` runs its INVITE here,
        so the live program's counters and events never move."""
        zero = ctypes.c_uint32(0)
        self._config[zero] = live._config[zero]
        self._seed = live._seed
        self.set_ports(live.ports() or [5060])
        for cidr in self.trusted():
            self.remove_trusted(cidr)
        for cidr in live.trusted():
            self.add_trusted(cidr)
        self.clear_bindings()
        key, _, _ = live._binding_key(user, realm, ip)
        val = live._bindings.get(key)
        if val is not None:
            self._bindings[key] = val
        self.clear_floods()
        bkey = live._ban_map_key(ip)
        for src, dst in ((live._bans, self._bans), (live._bound, self._bound)):
            k = bkey if src is live._bans else _bound_key(src, ip)
            held = src.get(k)
            if held is not None:
                dst[k] = held
        self._rebuild_ban_filter()
        self.reset_counters()

    # -- counters and events ---------------------------------------------
    def counters(self) -> dict[str, int]:
        out = {}
        for i, name in enumerate(consts.REASONS):
            out[name] = sum(self._counters.getvalue(self._counters.Key(i)))
        return out

    def reset_counters(self) -> None:
        for i in range(len(consts.REASONS)):
            self._counters[self._counters.Key(i)] = self._counters.Leaf(
                *([0] * self._counters.total_cpu)
            )

    def open_events(self, callback: Callable[[Event], None]) -> None:
        """Deliver verdict events to callback from poll_events(); calling
        it again replaces the callback."""
        self._event_cb = callback
        if self._ring_open:
            return

        def on_event(_ctx, data, _size):
            self._event_cb(self._decode_event(data))

        self.bpf[b"events"].open_ring_buffer(on_event)
        self._ring_open = True

    def poll_events(self, timeout_ms: int = 0) -> None:
        if not self._ring_open:
            raise NfguardError("open_events() first")
        self.bpf.ring_buffer_poll(timeout_ms)

    def _decode_event(self, data) -> Event:
        ev = ctypes.cast(data, ctypes.POINTER(_EventC)).contents
        user = _cstr(ev.user) or None
        realm = _cstr(ev.realm) or None
        return Event(
            ts_ns=ev.ts_ns,
            src=addr_str(ev.addr),
            sport=ev.sport,
            dport=ev.dport,
            reason=consts.REASONS[ev.reason],
            action=consts.ACT_NAMES[ev.action],
            would=consts.ACT_NAMES[ev.would],
            user=user,
            realm=realm,
            stage=consts.JUDGE_NAMES.get(ev.stage, str(ev.stage)),
        )

    # -- BPF_PROG_TEST_RUN -----------------------------------------------
    def _counter_slots(self) -> list[list[int]]:
        """Per reason, the per-CPU counts."""
        return [list(self._counters.getvalue(self._counters.Key(i)))
                for i in range(len(consts.REASONS))]

    def _counted_run(self, run: Callable[[], int]) -> tuple[int, int | None, int | None]:
        """run() a test run: (its return value, the reason and CPU of the one
        counter it moved), or None for both where it moved none. Real traffic
        moving a counter of a pinned program at the same moment makes a run
        ambiguous: it is repeated."""
        for _ in range(5):
            before = self._counter_slots()
            retval = run()
            after = self._counter_slots()
            moved = [(r, cpu, a - b)
                     for r, (row_a, row_b) in enumerate(zip(after, before, strict=True))
                     for cpu, (a, b) in enumerate(zip(row_a, row_b, strict=True)) if a != b]
            if not moved:
                return retval, None, None
            if len(moved) == 1 and moved[0][2] == 1:
                return retval, moved[0][0], moved[0][1]
        raise NfguardError("could not tell which reason the test run counted")

    def _verdict(self, reason_id: int, cpu: int, retval: int, dropped: bool,
                 scratch) -> Verdict:
        """The verdict of a test run that counted reason_id on cpu; user and
        realm from that CPU's slot of scratch."""
        reason = consts.REASONS[reason_id]
        cfg = self.config()
        if consts.is_verdict(reason):
            # a flood is dropped, never rejected
            would = "mark" if cfg["action"] == "reject" and not consts.is_flood(reason) \
                else "drop"
        else:
            would = "pass"
        if dropped:
            action = "drop"
        elif would != "pass" and cfg["mode"] == "enforce":
            action = "mark"  # passed with the reject mark handed to TC
        else:
            action = "pass"
        user = realm = None
        if reason in ("bound", "not_bound", "expired"):
            slot = scratch.getvalue(scratch.Key(0))[cpu]
            user, realm = _cstr(slot.key.user), _cstr(slot.key.realm)
        return Verdict(action=action, reason=reason, would=would, user=user,
                       realm=realm, retval=retval)

    def test_run(self, frame: bytes) -> Verdict:
        """Run one frame through the loaded XDP program in the kernel.

        The reason is the one counter the run moved (non-SIP traffic passes
        without touching anything else); user and realm come from the
        per-CPU scratch of the CPU that ran it."""
        retval, reason_id, cpu = self._counted_run(
            lambda: prog_test_run(self.xdp_fn.fd, frame)[0])
        if reason_id is None:
            if retval == XDP_PASS and not self.count_all:
                raise NfguardError("test_run() needs a program loaded with count_all=True")
            raise NfguardError("could not tell which reason the test run counted")
        return self._verdict(reason_id, cpu, retval, dropped=retval == XDP_DROP,
                             scratch=self._scratch)

    def _need_socket_stage(self) -> None:
        if not self.socket_stage:
            raise NfguardError("this load has no socket stage (Program(socket_stage=True))")

    def set_socket_interfaces(self, ifindexes: Iterable[int]) -> None:
        """The interfaces, by ifindex, whose datagrams the socket stage
        judges (those nfguard guards with XDP)."""
        self._need_socket_stage()
        want = set(ifindexes)
        if len(want) > consts.SOCK_IFACES_MAX:
            raise NfguardError(f"at most {consts.SOCK_IFACES_MAX} interfaces")
        for k in list(self._sock_ifaces.keys()):
            if k.value not in want:
                del self._sock_ifaces[k]
        for i in want:
            self._sock_ifaces[ctypes.c_uint32(i)] = ctypes.c_uint8(1)

    def forget_in_flight(self) -> None:
        """Empty the maps of datagrams on their way from XDP to a later
        program (the reject handoff, the socket stage's notes): for tests,
        whose test runs leave entries that no packet ever takes."""
        for name in (b"handoff", b"seen"):
            try:
                table = self.bpf[name]
            except KeyError:
                continue  # not in this build
            table.clear()

    def socket_interfaces(self) -> set[int]:
        self._need_socket_stage()
        return {k.value for k in self._sock_ifaces}

    def attach_cgroup(self, path: str) -> None:
        """Attach the socket stage at ingress of the cgroup (v2) at path,
        beside other programs there (BPF_F_ALLOW_MULTI)."""
        self._need_socket_stage()
        with _cgroup_fd(path) as fd:
            try:
                self._BPF.attach_func(self.sock_fn, fd, _CGROUP_INET_INGRESS, _BPF_F_ALLOW_MULTI)
            except Exception as e:  # bcc raises bare Exception
                raise NfguardError(f"attaching the socket stage to cgroup {path}: {e}") from e

    def detach_cgroup(self, path: str) -> None:
        self._need_socket_stage()
        with _cgroup_fd(path) as fd:
            try:
                self._BPF.detach_func(self.sock_fn, fd, _CGROUP_INET_INGRESS)
            except Exception as e:
                raise NfguardError(f"detaching the socket stage from cgroup {path}: {e}") from e

    def socket_test_run(self, frame: bytes, ifindex: int = 1) -> Verdict | None:
        """Run one Ethernet frame through the socket stage, as a socket
        that received it on ifindex would (the IP datagram whole, VLAN tags
        taken off). None where the stage left it alone (no counter moved:
        not on a judged interface, not UDP to a guarded port, or judged by
        XDP already); else the verdict, as test_run() gives it."""
        from nfguard.kernel.libbpf import skb_test_run

        self._need_socket_stage()
        frame = _untagged(frame)
        retval, reason_id, cpu = self._counted_run(
            lambda: skb_test_run(self.sock_fn.fd, frame, ifindex=ifindex)[0])
        if reason_id is None:
            if retval != 1:
                raise NfguardError("the socket stage dropped a datagram it did not count")
            return None
        return self._verdict(reason_id, cpu, retval, dropped=retval == 0,
                             scratch=self._sock_scratch)

    def socket_time_run(self, frame: bytes, repeat: int, ifindex: int = 1) -> int:
        """Average ns per run of the socket stage on frame over repeat runs."""
        from nfguard.kernel.libbpf import skb_test_run

        self._need_socket_stage()
        return skb_test_run(self.sock_fn.fd, _untagged(frame), ifindex=ifindex,
                            repeat=repeat)[2]

    def time_run(self, frame: bytes, repeat: int) -> int:
        """Average ns per run of the XDP program on frame over repeat runs."""
        _, duration, _ = prog_test_run(self.xdp_fn.fd, frame, repeat=repeat)
        return duration

    def unpin_stale_stages(self) -> list[str]:
        """Remove the stages pins of earlier loads whose programs are gone
        (replaced on every interface, so no loaded nfguard_xdp uses their
        prog array any more); returns the removed paths. A pin still in use
        stays: removing it would empty the array under an attached program."""
        if not self.pin_dir:
            return []
        in_use = map_ids_of_programs("nfguard_xdp")
        removed = []
        for name in sorted(os.listdir(self.pin_dir)):
            path = os.path.join(self.pin_dir, name)
            if not name.startswith("stages_") or path == self.stages_pin:
                continue
            if pinned_map_id(path) not in in_use:
                os.unlink(path)
                removed.append(path)
        return removed

    def close(self) -> None:
        """Release this load. Attached programs and pinned maps stay."""
        self.bpf.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
