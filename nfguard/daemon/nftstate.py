"""nfguard's nftables state: `table inet nfguard` and nothing else.

The table is the operator's view of the bindings (sets with a readable
comment and a timeout mirroring the expiry), the trusted networks, and the
reject path: the XDP/TC programs mark packets to reject, one rule here
rejects them and counts them in the named counter "rejected".

A change is one atomic batch: one `json_cmd` call of libnftables' JSON API
with a list of commands, which nft sends as one netlink transaction. A change
of more than CHUNK addresses (a first sync) is several such batches, each
atomic, because one batch of 100,000 elements cost ~200 MB in libnftables and
its JSON (~2 KB an element) against ~5 MB for 2,500. Every command for one
address (the add+delete+add of a replace) stays in one batch, so a wanted
element is never missing between two batches, and no batch flushes a set:
a batch that fails leaves the earlier ones applied and its own addresses as
they were, never a hole. Adds and replaces go before deletes.

nft 1.0.6 quirks this module relies on or works around (checked on this
machine, nft 1.0.6 with kernel 6.18):

- An element's JSON "timeout" must be a whole number of seconds (an int);
  a float (2.0) or a string ("1500ms") is silently ignored, and so is 0,
  and the element then never expires. Output "expires" is whole seconds too,
  rounded down (0 means less than a second left).
- `add element` of an element that already exists is not an error; it
  leaves the comment alone (and the timeout too, before kernel 6.10). To
  change either, the element is deleted and added again in the same batch.
- `delete element` of an element that does not exist (including one that has
  expired but is not yet garbage-collected) fails the whole batch with "No
  such file or directory". nft 1.0.6 has no `destroy`. So we track which
  elements we believe exist; for one whose timeout is about to run out we use
  the idioms add+delete (remove it whether or not it is there) and
  add+delete+add (replace it whether or not it is there).
- A comment of 256 bytes made libnftables abort() the whole process
  ("Memory allocation failure"; 129 bytes still worked): comments are cut to
  COMMENT_MAX bytes here, whatever the caller passes.
- Overlapping intervals in an interval set are an error ("conflicting
  intervals specified"): trusted networks are collapsed first.
- `add element` with an empty list is an error: we leave such commands out.
- Several `list` commands in one json_cmd fail; we read with one
  `list table`, which is also one snapshot.
- A listing of a hash set taken while the kernel resizes it (right after a
  large add) repeats some elements and leaves out as many: we list again
  until no element appears twice (see _consistent).
- A libnftables context's netlink socket belongs to the network namespace
  the context was created in: an NftState acts there, whichever namespace
  the calling thread is in later.
- Any `list` (even `list tables`) fetches every element of every set: about
  0.5 s at 100,000 elements; a list of the table about 0.7 s, 1.1 s with our
  parsing. Writes only send what they change (one element: 0.2 ms).

Size, measured here (nft 1.0.6, kernel 6.18): 100,000 elements with
timeout and comment added in one batch in 0.90-0.98 s, in ten of 10,000 in
0.83-0.91 s; deleted and re-added (an update of all) in 1.0-1.4 s; listed
by nft in 1.0-1.3 s (2 s and more when the first listing caught a resize
and was repeated), dumped from the kernel (_dump_set) in 0.8-1.0 s. One
batch stays one transaction at 100,000 (libnftables raises the socket's
send buffer to the batch's size): chunks are for memory, not for nft.
tests/test_nftstate.py prints the figures on every run.

Not thread-safe: one NftState, one thread (or a lock around it).
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import itertools
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from nfguard.errors import NfguardError

TABLE = "nfguard"  # family inet
FAMILY = "inet"
COMMENT_MAX = 128  # nft element comment limit in bytes

BINDINGS = {4: "bindings_v4", 6: "bindings_v6"}
TRUSTED = {4: "trusted_v4", 6: "trusted_v6"}
# Bans (the operator's view: XDP drops): IPv4 addresses; IPv6 prefixes, an
# interval set. Each element times out with the ban and names its reason.
BANNED = {4: "banned4", 6: "banned6"}
COUNTER = "rejected"
CHAIN = "input"
CHAIN_PRIORITY = -10  # "priority filter - 10": before the operator's own filter chains

TIMEOUT_SLACK = 5.0  # sync: timeouts this close are the same (nft reports whole seconds)
# An element whose timeout runs out within this many seconds of now may or may
# not exist when our batch reaches the kernel: it gets the idioms that work
# either way. Covers nft's whole-second rounding and a large batch's run time.
GRACE = 5.0
LIST_ATTEMPTS = 10  # listings of the table before giving up on an inconsistent one
# Addresses a batch (one transaction). 2,500: ~5 MB of libnftables and JSON a
# batch (10,000: ~20 MB; 100,000 in one: ~200 MB), for the same total time.
CHUNK = 2_500


class NftError(NfguardError):
    """nft refused a command; the message carries nft's own error text."""


@dataclass(frozen=True)
class Element:
    """One address in the bindings sets."""

    expires: float  # absolute, seconds since the epoch (time.time() clock)
    comment: str  # e.g. "1001@pbx.example.com, 1002@pbx.example.com"


@dataclass
class _Diff:
    """Between the elements wanted and the sets: sorted lists of canonical
    addresses; `spelt`: {canonical: key} for the wanted keys spelt
    otherwise; `known`: what the sets held, as NftState._known."""

    spelt: dict[str, str]
    known: dict[str, float | None]
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    comment: list[str] = field(default_factory=list)
    timeout: list[str] = field(default_factory=list)


_UNSEEN = object()  # _Learner's mark: not (yet) in this dump


class _Learner:
    """Which elements exist and when they run out (NftState._known), learnt
    from a dump an element at a time into the dict it had: its address
    strings stay (the caller's, when its changes made them), instead of a
    second copy of 100,000 from the dump; deadlines are whole seconds,
    rounded down (lower bounds still), one float a second."""

    def __init__(self, known: dict[str, float | None] | None):
        self.known = {} if known is None else known
        for a in self.known:
            self.known[a] = _UNSEEN
        self._mono = time.monotonic()
        self._deadlines: dict[int, float] = {}

    def learn(self, addr: str, left: float | None) -> None:
        """One dumped element; _Inconsistent when the dump gave it before."""
        known = self.known
        if known.get(addr, _UNSEEN) is not _UNSEEN:
            raise _Inconsistent(addr)
        if left is None:
            known[addr] = None
            return
        sec = int(self._mono + left)
        dl = self._deadlines.get(sec)
        if dl is None:
            dl = self._deadlines[sec] = float(sec)
        known[addr] = dl

    def done(self) -> dict[str, float | None]:
        """The dump is over: what it did not give is gone."""
        for a in [a for a, v in self.known.items() if v is _UNSEEN]:
            del self.known[a]
        return self.known


def _truncate(text: str, limit: int = COMMENT_MAX) -> str:
    """text cut to at most `limit` UTF-8 bytes on a character boundary,
    ending in "…" when cut."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    ell = "…".encode()
    # errors="ignore" drops a multi-byte character the cut went through
    return raw[: limit - len(ell)].decode("utf-8", errors="ignore") + "…"


def element_comment(creds: Iterable[str]) -> str:
    """Sorted, ", "-joined "user@realm" strings, at most COMMENT_MAX bytes."""
    return _truncate(", ".join(sorted(creds)))


def _addr(text: str) -> tuple[str, int]:
    """(canonical address, IP version). Canonical is inet_ntop's form, which is
    what nft prints (Python's ipaddress differs for "::ffff:1.2.3.4"), and
    inet_pton/inet_ntop are fast enough for 100,000 addresses."""
    fam, version = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    try:
        return socket.inet_ntop(fam, socket.inet_pton(fam, text)), version
    except (OSError, TypeError):
        raise NftError(f"not an IP address: {text!r}") from None


def _networks(cidrs: Iterable[str]) -> dict[int, list]:
    """Trusted CIDRs by IP version, collapsed (nft refuses overlaps)."""
    nets: dict[int, list] = {4: [], 6: []}
    for c in cidrs:
        try:
            n = ipaddress.ip_network(c)
        except ValueError as e:
            # strict: "10.0.0.1/8" is likely a typo; trusting a /8 by accident is not ok
            raise NftError(f"bad trusted network {c!r}: {e}") from None
        nets[n.version].append(n)
    return {v: list(ipaddress.collapse_addresses(ns)) for v, ns in nets.items()}


def _elem_networks(text) -> list[str]:
    """An interval set element as nft lists it, as CIDR strings."""
    if isinstance(text, str):
        return [str(ipaddress.ip_network(text))]
    if "prefix" in text:
        p = text["prefix"]
        return [str(ipaddress.ip_network(f"{p['addr']}/{p['len']}"))]
    if "range" in text:  # adjacent prefixes nft shows as one range
        lo, hi = (ipaddress.ip_address(a) for a in text["range"])
        return [str(n) for n in ipaddress.summarize_address_range(lo, hi)]
    raise NftError(f"unexpected element in a trusted set: {text!r}")


def _consistent(listing: list[dict]) -> bool:
    """False when a set in the listing holds an element twice. The kernel dumps
    a hash set in chunks, each resuming after as many elements as were sent
    before; if the set is being resized meanwhile (as just after adding many
    elements) the order changes between chunks, and the dump repeats some
    elements and leaves as many others out. Seen here in about half of the
    reads right after adding 100,000 elements; `nft list` shows the same."""
    for o in listing:
        elems = o.get("set", {}).get("elem", [])
        keys = {e["elem"]["val"] if isinstance(e, dict) and "elem" in e
                else json.dumps(e, sort_keys=True) for e in elems}
        if len(keys) != len(elems):
            return False
    return True


# Reading the bindings sets straight from the kernel, with a netlink dump of
# their elements (linux/netfilter/nf_tables.h), for sync() and before a
# change: libnftables' listing of 100,000 elements cost ~160 MB at its peak
# (its cache of every element, the JSON tree, the text, Python's objects),
# this ~20 MB, and 0.8-1.0 s instead of 1.2-1.3 s. read() (status) still
# lists the table with nft.
NETLINK_NETFILTER = 12
NFT_MSG_GETSETELEM = (10 << 8) | 13  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO_INET = 1
ELEM_LIST_TABLE, ELEM_LIST_SET, ELEM_LIST_ELEMENTS = 1, 2, 3  # NFTA_SET_ELEM_LIST_*
ELEM_KEY, ELEM_TIMEOUT, ELEM_EXPIRATION, ELEM_USERDATA = 1, 4, 5, 6  # NFTA_SET_ELEM_*
UDATA_COMMENT = 0  # NFTNL_UDATA_SET_ELEM_COMMENT
RECV_SIZE = 1 << 16  # the kernel's dump messages are at most 32 KB
NL_TIMEOUT = 30.0  # seconds a dump may take before we give up on the kernel

Held = dict[str, tuple[str, float | None]]  # address -> (comment, seconds left or None)
T = TypeVar("T")


def _give_back_freed_memory() -> None:
    """malloc_trim(0): after batches of 10,000 elements libnftables has freed
    ~30 MB that glibc keeps in its heap, between live objects, unless asked
    to return it (measured at 100,000 elements). glibc only."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class _Inconsistent(Exception):
    """A dump that repeated an element or was interrupted by a change."""


class _Missing(Exception):
    """The table or one of its bindings sets does not exist."""



def _nlattr(typ: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), typ) + payload + b"\0" * (-len(payload) % 4)


def _attrs(buf, off: int, end: int):
    """(type, start, end) of each netlink attribute in buf[off:end]."""
    while off + 4 <= end:
        length, typ = struct.unpack_from("=HH", buf, off)
        if length < 4:
            return
        yield typ & 0x3FFF, off + 4, off + length  # without NLA_F_NESTED, NLA_F_NET_BYTEORDER
        off += (length + 3) & ~3


def _element(buf, off: int, end: int) -> tuple[str, str, float | None]:
    """(address, comment, seconds left or None) of one NFTA_LIST_ELEM, as
    _bindings() reads them from nft's JSON: no expiration but a timeout
    means it runs out this instant; neither, never."""
    addr, comment, timeout, expiration = "", "", 0, 0
    for typ, s, e in _attrs(buf, off, end):
        if typ == ELEM_KEY:
            for _, vs, ve in _attrs(buf, s, e):  # NFTA_DATA_VALUE
                raw = bytes(buf[vs:ve])
                addr = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
        elif typ == ELEM_TIMEOUT:
            (timeout,) = struct.unpack_from(">Q", buf, s)  # ms
        elif typ == ELEM_EXPIRATION:
            (expiration,) = struct.unpack_from(">Q", buf, s)  # ms left
        elif typ == ELEM_USERDATA:  # type, length, value ...
            i = s
            while i + 2 <= e:
                utyp, ulen = buf[i], buf[i + 1]
                if utyp == UDATA_COMMENT:
                    comment = bytes(buf[i + 2:i + 2 + ulen]).split(b"\0", 1)[0].decode(
                        "utf-8", "replace")
                i += 2 + ulen
    if expiration:
        return addr, comment, expiration / 1000
    return addr, comment, 0.0 if timeout else None


Dumped = Iterator[tuple[str, str, float | None]]  # (address, comment, seconds left or None)


def _dump_set(sock: socket.socket, name: str, seq: int) -> Dumped:
    """Each element of one set of our table as the kernel dumps it, one at
    a time: 100,000 are never one dict of comments (~25 MB). _Missing when
    the table or set does not exist; _Inconsistent, after the last one,
    when the dump was interrupted by a change. An element dumped twice (a
    resize meanwhile, see _consistent) is for the reader to notice."""
    req = (struct.pack("=BBH", NFPROTO_INET, 0, 0)
           + _nlattr(ELEM_LIST_TABLE, TABLE.encode() + b"\0")
           + _nlattr(ELEM_LIST_SET, name.encode() + b"\0"))
    sock.send(struct.pack("=IHHII", 16 + len(req), NFT_MSG_GETSETELEM,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req)
    inconsistent = False
    while True:
        buf = memoryview(sock.recv(RECV_SIZE))
        off = 0
        while off + 16 <= len(buf):
            length, typ, flags, mseq, _ = struct.unpack_from("=IHHII", buf, off)
            end = off + length
            if length < 16 or mseq != seq:
                off = end if length >= 16 else len(buf)
                continue
            if typ == NLMSG_DONE:
                if inconsistent:
                    raise _Inconsistent(name)
                return
            if typ == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", buf, off + 16)
                if err == -errno.ENOENT:
                    raise _Missing(name)
                raise NftError(f"nft: reading set {name}: {os.strerror(-err)}")
            inconsistent |= bool(flags & NLM_F_DUMP_INTR)
            for atyp, s, e in _attrs(buf, off + 20, end):  # after the nfgenmsg
                if atyp == ELEM_LIST_ELEMENTS:
                    for _, es, ee in _attrs(buf, s, e):  # NFTA_LIST_ELEM
                        yield _element(buf, es, ee)
            off = (end + 3) & ~3


class NftState:
    """`table inet nfguard`, through one libnftables context."""

    def __init__(self, reject_mark: int, nft=None):
        # mark 0 would match every unmarked packet: the rule would reject everything
        if not isinstance(reject_mark, int) or not 0 < reject_mark < 2**32:
            raise NftError(f"reject mark must be a 32-bit value other than 0, not {reject_mark!r}")
        self.reject_mark = reject_mark
        if nft is None:
            try:
                import nftables
            except ImportError:
                raise NftError(
                    "python3-nftables is missing: apt install python3-nftables, "
                    "and run nfguard with /usr/bin/python3"
                ) from None
            nft = nftables.Nftables()
        nft.set_json_output(True)
        self.nft = nft
        # Created here, like the context: its namespace is the one it reads.
        self._nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._nl.bind((0, 0))
        self._nl.settimeout(NL_TIMEOUT)
        self._seq = int(time.time())
        # address -> monotonic time its element runs out (a lower bound), None: never.
        # None for the whole dict: unknown, read the sets before the next change.
        self._known: dict[str, float | None] | None = None

    # -- plumbing ----------------------------------------------------------
    def _run(self, cmds: list[dict]) -> dict:
        """One json_cmd call: one transaction. NftError with nft's text on failure."""
        rc, out, err = self.nft.json_cmd({"nftables": cmds})
        if rc != 0:
            # "internal:0:0-0: " is the position in JSON input: meaningless to the operator
            lines = [ln.replace("internal:0:0-0: ", "") for ln in err.splitlines() if ln.strip()]
            raise NftError("nft: " + ("; ".join(lines) or f"failed with code {rc}"))
        return out or {}

    @staticmethod
    def _obj(**kw) -> dict:
        return {"family": FAMILY, "table": TABLE, **kw}

    def _list_table(self) -> list[dict] | None:
        """Everything in our table as nft lists it, or None when it is missing."""
        for attempt in range(LIST_ATTEMPTS):
            try:
                out = self._run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
            except NftError:
                if not self.exists():
                    return None
                raise
            listing = out.get("nftables", [])
            if _consistent(listing):
                return listing
            time.sleep(0.05 * (attempt + 1))  # let the kernel finish resizing the set
        raise NftError(f"nft listed table {FAMILY} {TABLE} inconsistently "
                       f"{LIST_ATTEMPTS} times in a row (an element twice); try again")

    # -- table -------------------------------------------------------------
    def exists(self) -> bool:
        # Not cheap: nft 1.0.6 fetches every set element even for `list tables`
        # (0.5 s at 100,000 elements), so the other methods avoid calling it.
        out = self._run([{"list": {"tables": {"family": FAMILY}}}])
        return any(
            o.get("table", {}).get("family") == FAMILY and o["table"].get("name") == TABLE
            for o in out.get("nftables", [])
        )

    def _rule(self) -> dict:
        return {"rule": self._obj(chain=CHAIN, expr=[
            {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": self.reject_mark}},
            {"counter": COUNTER},
            {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
        ])}

    def _trusted_cmds(self, cidrs: Iterable[str]) -> list[dict]:
        cmds = []
        for version, nets in _networks(cidrs).items():
            name = TRUSTED[version]
            cmds.append({"flush": {"set": self._obj(name=name)}})
            elems = [{"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}
                     for n in nets]
            if elems:  # an empty element list is an error
                cmds.append({"add": {"element": self._obj(name=name, elem=elems)}})
        return cmds

    def install(self, trusted: Iterable[str]) -> None:
        """Create the table, or reconcile it after a restart: `add` of a table,
        set, counter or chain that exists is a no-op, so binding elements and
        the counter survive; the chain's rule and the trusted sets are
        replaced. One batch."""
        cmds: list[dict] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        for v, name in BINDINGS.items():
            cmds.append({"add": {"set": self._obj(
                name=name, type=f"ipv{v}_addr", flags=["timeout"])}})
        for v, name in TRUSTED.items():
            cmds.append({"add": {"set": self._obj(
                name=name, type=f"ipv{v}_addr", flags=["interval"])}})
        cmds.append({"add": {"set": self._obj(name=BANNED[4], type="ipv4_addr",
                                               flags=["timeout"])}})
        cmds.append({"add": {"set": self._obj(name=BANNED[6], type="ipv6_addr",
                                               flags=["interval", "timeout"])}})
        cmds.append({"add": {"counter": self._obj(name=COUNTER)}})
        cmds.append({"add": {"chain": self._obj(
            name=CHAIN, type="filter", hook="input", prio=CHAIN_PRIORITY, policy="accept")}})
        # Always flush + re-add: replaces a rule with an old mark (and any hand
        # edit) with no moment where the chain is empty, since the batch is atomic.
        cmds.append({"flush": {"chain": self._obj(name=CHAIN)}})
        cmds.append({"add": self._rule()})
        cmds += self._trusted_cmds(trusted)
        try:
            self._run(cmds)
        except NftError as e:
            # `add` of a set or base chain that exists with another type, flags,
            # hook or priority fails: EEXIST resp. EOPNOTSUPP
            if "File exists" in str(e) or "Operation not supported" in str(e):
                raise NftError(
                    f"{e} (table {FAMILY} {TABLE} has a set or chain defined otherwise, "
                    f"changed by hand?: `nft delete table {FAMILY} {TABLE}` and start again)"
                ) from None
            raise
        self._known = None  # the kept elements: read them before the first change

    def set_trusted(self, cidrs: Iterable[str]) -> None:
        """Replace both trusted sets, in one batch."""
        self._run(self._trusted_cmds(cidrs))

    def uninstall(self) -> bool:
        """Delete table inet nfguard if it exists; True if it did."""
        self._known = {}
        if not self.exists():
            return False
        self._run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        return True

    # -- reading -------------------------------------------------------------
    def _bindings(self, listing: list[dict] | None) -> dict[str, dict]:
        """{addr: {"comment", "expires_in"}} from a table listing."""
        out: dict[str, dict] = {}
        for o in listing or []:
            s = o.get("set")
            if not s or s.get("name") not in BINDINGS.values():
                continue
            for e in s.get("elem", []):
                if isinstance(e, dict) and "elem" in e:
                    e = e["elem"]
                    val, comment = e["val"], e.get("comment", "")
                    if "expires" in e:
                        expires_in = float(e["expires"])
                    else:  # a timeout but no "expires": it runs out this instant
                        expires_in = 0.0 if e.get("timeout") else None
                else:  # added by hand without timeout or comment: just the address
                    val, comment, expires_in = e, "", None
                # nft prints addresses in canonical form already (see _addr)
                out[val] = {"comment": comment, "expires_in": expires_in}
        return out

    def _dumped(self) -> Dumped:
        """Every element of both bindings sets, from the kernel (_dump_set)."""
        for name in BINDINGS.values():
            self._seq += 1
            yield from _dump_set(self._nl, name, self._seq)

    def _read(self, reader: Callable[[Dumped], T]) -> T | None:
        """reader(every element of both bindings sets), read again from the
        start while the kernel's dump is inconsistent; None when a set is
        missing. The reader raises _Inconsistent on an element seen twice."""
        for attempt in range(LIST_ATTEMPTS):
            try:
                return reader(self._dumped())
            except _Missing:
                return None
            except _Inconsistent:
                time.sleep(0.05 * (attempt + 1))  # let the kernel finish resizing the set
            except OSError as e:  # a timeout, or a stale message of a dump we gave up on
                raise NftError(f"nft: reading the bindings sets: {e}") from None
        raise NftError(f"the kernel listed a set of table {FAMILY} {TABLE} inconsistently "
                       f"{LIST_ATTEMPTS} times in a row (an element twice); try again")

    def _held(self) -> Held | None:
        """{address: (comment, seconds left or None)} of both bindings sets;
        None when one is missing."""
        def collect(dumped: Dumped) -> Held:
            held: Held = {}
            for addr, comment, left in dumped:
                if addr in held:
                    raise _Inconsistent(addr)
                held[addr] = (comment, left)
            return held
        return self._read(collect)

    def _read_bindings(self) -> None:
        """Learn which elements exist (_known) from the sets, without their
        comments."""
        def learn(dumped: Dumped) -> dict[str, float | None]:
            learner = _Learner(self._known)
            for addr, _, left in dumped:
                learner.learn(addr, left)
            return learner.done()
        known = self._learning(learn)
        if known is None:
            raise NftError(f"table {FAMILY} {TABLE} is missing: install it first")
        self._known = known

    def _learning(self, reader: Callable[[Dumped], T]) -> T | None:
        """_read(reader) for a reader that learns into _known (_Learner):
        unless it finishes, _known is unknown (None) afterwards."""
        try:
            result = self._read(reader)
        except BaseException:
            self._known = None
            raise
        if result is None:
            self._known = None
        return result

    def read(self) -> dict:
        """{"bindings": {addr: {"comment", "expires_in"}}, "trusted": [cidr],
        "rejected": {"packets", "bytes"}, "mark": int}; when the table is
        missing: empty dicts/list and mark None."""
        listing = self._list_table()
        result = self._summarize(listing)
        result["bindings"] = self._bindings(listing)
        return result

    def summary(self) -> dict:
        """read() without the bindings: the trusted networks, the counter
        and the mark, listed object by object. The whole table's listing of
        100,000 bindings costs ~250 MB at its peak (its JSON and Python's
        objects of it); this ~35 MB (libnftables' cache)."""
        listing: list[dict] = []
        objects = [("chain", CHAIN), ("counter", COUNTER), *(("set", n) for n in TRUSTED.values())]
        for kind, name in objects:
            try:
                out = self._run([{"list": {kind: self._obj(name=name)}}])
            except NftError:
                return self._summarize(None)  # the table is missing (or not ours)
            listing += out.get("nftables", [])
        return self._summarize(listing)

    def held_count(self) -> int | None:
        """How many elements the bindings sets held when last read (a
        drift() or sync()), None when not known."""
        return None if self._known is None else len(self._known)

    def _summarize(self, listing: list[dict] | None) -> dict:
        result: dict = {"trusted": [], "rejected": {}, "mark": None}
        for o in listing or []:
            if "set" in o and o["set"]["name"] in TRUSTED.values():
                for e in o["set"].get("elem", []):
                    result["trusted"] += _elem_networks(e)
            elif "counter" in o and o["counter"]["name"] == COUNTER:
                c = o["counter"]
                result["rejected"] = {"packets": c["packets"], "bytes": c["bytes"]}
            elif "rule" in o and o["rule"]["chain"] == CHAIN:
                for x in o["rule"]["expr"]:
                    m = x.get("match", {})
                    if m.get("left") == {"meta": {"key": "mark"}}:
                        result["mark"] = m["right"]
        return result

    # -- changing bindings ---------------------------------------------------
    def _state(self, addr: str, mono: float) -> str:
        """"yes", "no" or "maybe": does addr's element exist, as far as we know."""
        assert self._known is not None
        if addr not in self._known:
            return "no"
        until = self._known[addr]
        if until is None or until - mono > GRACE:
            return "yes"
        return "no" if until - mono < -GRACE else "maybe"

    def _commit(self, ops: Iterable[tuple[str, tuple[int, str] | None]]) -> None:
        """ops: (address, (timeout s, comment)) to add or replace, (address,
        None) to delete; canonical addresses (_addr), each once, adds and
        replaces first. Applied CHUNK addresses a batch, each batch atomic;
        a batch nft refuses is tried once more after reading the sets (likely
        an element we believed in was gone: deleted by hand, or expired). If
        it fails again, NftError: the batches before it stay applied."""
        it = iter(ops)
        done = 0
        while chunk := list(itertools.islice(it, CHUNK)):
            try:
                self._commit_chunk(chunk)
            except NftError:
                try:
                    self._read_bindings()
                    self._commit_chunk(chunk)
                except NftError as e:
                    if done:
                        raise NftError(f"{e} (the {done} addresses before it are applied; "
                                       "the next sync does the rest)") from None
                    raise
            done += len(chunk)
        if done > CHUNK:
            _give_back_freed_memory()

    def _commit_chunk(self, chunk: list[tuple[str, tuple[int, str] | None]]) -> None:
        """One batch: every address in chunk with (timeout, comment) exists
        afterwards with exactly these; every address with None does not."""
        if self._known is None:
            self._read_bindings()
        mono = time.monotonic()  # per batch: a later one may run seconds later
        # per set: a first add (only for "maybe" elements), the deletes, the adds
        pre: dict[str, list] = {n: [] for n in BINDINGS.values()}
        dels: dict[str, list] = {n: [] for n in BINDINGS.values()}
        adds: dict[str, list] = {n: [] for n in BINDINGS.values()}
        for a, up in chunk:
            name = BINDINGS[6 if ":" in a else 4]
            state = self._state(a, mono)
            if up is None:
                if state == "maybe":  # add first: then the delete cannot fail
                    pre[name].append({"elem": {"val": a, "timeout": 1}})
                if state != "no":
                    dels[name].append(a)
                continue
            elem = {"elem": {"val": a, "timeout": up[0], "comment": _truncate(up[1])}}
            if state == "maybe":
                pre[name].append(elem)
            if state != "no":
                dels[name].append(a)
            adds[name].append(elem)
        cmds = []
        for name in BINDINGS.values():
            if pre[name]:
                cmds.append({"add": {"element": self._obj(name=name, elem=pre[name])}})
            if dels[name]:
                cmds.append({"delete": {"element": self._obj(name=name, elem=dels[name])}})
        for name in BINDINGS.values():
            if adds[name]:
                cmds.append({"add": {"element": self._obj(name=name, elem=adds[name])}})
        if not cmds:
            return
        try:
            self._run(cmds)
        except NftError:
            self._known = None  # the failed batch changed nothing, but our belief was wrong
            raise
        deadlines: dict[int, float] = {}  # one float per timeout, not per address
        for a, up in chunk:
            if up is None:
                self._known.pop(a, None)
            else:  # a lower bound: the batch ran after
                dl = deadlines.get(up[0])
                if dl is None:
                    dl = deadlines[up[0]] = mono + up[0]
                self._known[a] = dl

    @staticmethod
    def _timeout(expires: float, now: float) -> int:
        # whole seconds (nft ignores anything else), rounded up so the element
        # never runs out before the binding, and at least 1 (0 means "never")
        return max(1, math.ceil(expires - now))

    def apply(self, changed: Mapping[str, Element], removed: Iterable[str], now: float) -> None:
        """Each address in `changed` gets its element with timeout expires -
        now (at least 1 s) and its comment; each address in `removed` loses
        its element. A changed address whose expiry is past is removed
        instead; an address in both is changed. One batch up to CHUNK
        addresses (see _commit)."""
        gone = {_addr(r)[0] for r in removed}
        for a in changed:  # a bad address fails the change before nft is touched
            _addr(a)

        def ops() -> Iterator[tuple[str, tuple[int, str] | None]]:
            # a generator: no second copy of a table of 100,000
            expired = []
            odd = set()  # canonical forms of addresses spelt otherwise: each address once
            for raw, e in changed.items():
                a = _addr(raw)[0]
                if a == raw:
                    a = raw  # the caller's string, which _known keeps: no second copy
                else:
                    if a in changed or a in odd:
                        continue
                    odd.add(a)
                gone.discard(a)
                if e.expires > now:
                    yield a, (self._timeout(e.expires, now), e.comment)
                else:
                    expired.append(a)
            yield from ((a, None) for a in expired + sorted(gone))

        self._commit(ops())

    def _diff(self, elements: Mapping[str, Element], now: float, dumped: Dumped,
              known: dict[str, float | None] | None = None) -> _Diff:
        """Between `elements` and the sets' elements as `dumped` gives them,
        read once as they come: no copy of either (see _Diff). `known`: the
        dict to learn the sets into (see _Learner)."""
        # the keys of `elements` spelt otherwise than nft does, the rare case:
        # canonical -> the key that counts (canonically spelt, or the first)
        spelt: dict[str, str] = {}
        canonical: dict[str, str] = {}
        for raw in elements:
            a = _addr(raw)[0]
            if a != raw:
                canonical[raw] = a
                if a not in elements and a not in spelt:
                    spelt[a] = raw
        learner = _Learner(known)
        d = _Diff(spelt=spelt, known=learner.known)
        for a, comment, left in dumped:
            learner.learn(a, left)
            e = elements.get(spelt.get(a, a))
            if e is None or e.expires <= now:
                d.extra.append(a)
                continue
            if comment != _truncate(e.comment):
                d.comment.append(a)
            if left is None or abs(left - (e.expires - now)) > TIMEOUT_SLACK:
                d.timeout.append(a)
        learner.done()
        for raw in elements:
            a = canonical.get(raw, raw)
            if a in d.known or spelt.get(a, a) != raw:
                continue  # in the sets, or another spelling of it counts
            if elements[raw].expires > now:
                d.missing.append(a)
        for names in (d.missing, d.extra, d.comment, d.timeout):
            names.sort()
        return d

    def sync(self, elements: Mapping[str, Element], now: float) -> dict:
        """Make the bindings sets exactly `elements` (all the daemon's bindings),
        in batches of CHUNK addresses (see _commit). {"added", "removed",
        "updated"} counts. The sets are read as they are dumped, compared
        one element at a time."""
        d = self._learning(lambda dumped: self._diff(elements, now, dumped, self._known))
        if d is None:
            raise NftError(f"table {FAMILY} {TABLE} is missing: install it first")
        self._known = d.known
        updated = sorted(set(d.comment) | set(d.timeout))

        def upsert(a: str) -> tuple[str, tuple[int, str]]:
            e = elements[d.spelt.get(a, a)]
            return a, (self._timeout(e.expires, now), e.comment)

        self._commit(itertools.chain(map(upsert, d.missing + updated),
                                     ((a, None) for a in d.extra)))
        _give_back_freed_memory()  # the kernel's dump of every element, parsed
        return {"added": len(d.missing), "removed": len(d.extra), "updated": len(updated)}

    def drift(self, elements: Mapping[str, Element], now: float,
              have: dict[str, dict] | None = None) -> dict:
        """What differs between `elements` and the sets: {"missing", "extra",
        "comment"} lists of addresses. Timeouts are not drift. `have`: the
        bindings of a read() the caller just made (each listing costs ~0.5 s
        at 100,000 elements)."""
        if have is None:
            d = self._learning(lambda dumped: self._diff(elements, now, dumped, self._known))
            if d is None:  # no table: everything is missing
                d = self._diff(elements, now, iter(()))
        else:
            d = self._diff(elements, now, ((a, b["comment"], b["expires_in"])
                                           for a, b in have.items()))
        self._known = d.known
        return {"missing": d.missing, "extra": d.extra, "comment": d.comment}

    # -- bans ----------------------------------------------------------------
    # A few elements at most (a ban each): every change is one batch of the
    # idioms that work whether or not the element exists (add, delete, add
    # again: replace; add, delete: remove), checked with interval+timeout
    # sets on nft 1.0.6, so nothing is tracked.
    @staticmethod
    def _ban_val(key: str) -> tuple[str, object]:
        """(set name, element value) of a ban key: "203.0.113.9",
        "2001:db8:1:2::/64", or a bare IPv6 address (a /128 ban)."""
        addr, _, bits = key.partition("/")
        canon, version = _addr(addr)
        if version == 4 or not bits:
            return BANNED[version], canon
        if not bits.isdigit() or not 0 < int(bits) <= 128:
            raise NftError(f"not a ban key: {key!r}")
        return BANNED[6], {"prefix": {"addr": canon, "len": int(bits)}}

    def _ban_cmds(self, key: str, up: tuple[int | None, str] | None) -> list[dict]:
        """Commands that leave `key` with (timeout s or None: none, comment),
        or without an element when up is None."""
        name, val = self._ban_val(key)
        cmds = [{"add": {"element": self._obj(name=name, elem=[
                    {"elem": {"val": val, "timeout": 1}}])}},
                {"delete": {"element": self._obj(name=name, elem=[val])}}]
        if up is not None:
            elem: dict = {"val": val, "comment": _truncate(up[1])}
            if up[0] is not None:
                elem["timeout"] = max(1, up[0])  # 0 would mean never
            cmds.append({"add": {"element": self._obj(name=name, elem=[{"elem": elem}])}})
        return cmds

    def set_ban(self, key: str, timeout: int | None, comment: str) -> None:
        """The key's element, with this timeout (whole seconds; None: none)
        and comment, replacing any. One batch."""
        self._run(self._ban_cmds(key, (timeout, comment)))

    def remove_ban(self, key: str) -> None:
        """No element for key afterwards (there may have been none). One batch."""
        self._run(self._ban_cmds(key, None))

    def sync_bans(self, want: Mapping[str, tuple[int | None, str]]) -> dict:
        """Make the ban sets hold exactly `want` (key: (timeout, comment)),
        in one batch; {"set", "removed"} counts."""
        extra = [k for k in self.bans() if k not in want]
        cmds = []
        for key in extra:
            cmds += self._ban_cmds(key, None)
        for key, up in want.items():
            cmds += self._ban_cmds(key, up)
        if cmds:
            self._run(cmds)
        return {"set": len(want), "removed": len(extra)}

    def bans(self) -> dict[str, dict]:
        """{key: {"comment", "expires_in"}} of both ban sets (expires_in
        None: no timeout); {} when the sets are missing."""
        out: dict[str, dict] = {}
        for name in BANNED.values():
            try:
                listing = self._run([{"list": {"set": self._obj(name=name)}}])
            except NftError:
                continue  # no table, or a table of an older build without ban sets
            for o in listing.get("nftables", []):
                for e in o.get("set", {}).get("elem", []):
                    e = e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e}
                    val = e["val"]
                    if isinstance(val, dict):
                        val = _elem_networks(val)[0]
                        if val.endswith("/128"):
                            val = val[:-4]  # as the kernel writes a whole address
                    if "expires" in e:
                        left = float(e["expires"])
                    else:
                        left = 0.0 if e.get("timeout") else None
                    out[val] = {"comment": e.get("comment", ""), "expires_in": left}
        return out
