"""Where each user@realm is registered: FreeSWITCH's registrations, merged
over ESL endpoints (nodes), as the bindings the kernel and nftables hold.

Pure logic, no I/O. Every change returns a Diff: the bindings that appeared
or whose expiry moved, and the ones that went. Applying the diffs in order
to an empty set gives `bindings()`.

- A row is one registration as FreeSWITCH keeps it: (node, profile,
  owner, call-id, contact), the owner being FreeSWITCH's sip_user and
  sip_host (fsevents.Registration.owner). Its expiry is FreeSWITCH's own
  (the late margin included). A binding is (user, realm, address), user
  and realm lower-cased in ASCII as the kernel compares them; it lives
  while any row holds it, until the latest of their expiries plus `grace`.
- An event changes the row it names at once. What else it changed depends
  on FreeSWITCH's registration mode and version (fsevents' docstring):
  where another row shares the event's owner, Call-ID or contact, the
  event cannot say, and Diff.reread names the owners whose rows must be
  read again from FreeSWITCH; `replace()` takes that answer. Expiries
  (sofia::expire) name every row they delete and are never re-read.
- A resync replaces one node's rows with its snapshot; rows that did not
  change, and expiries that moved by no more than `resync_tolerance`
  seconds (clocks and rounding), give no diff. From a node's second resync
  on, Diff.appeared names the bindings it had that the registry had not:
  with Diff.removed, what the event stream missed (drift).
- While a node is disconnected (degraded) its rows are kept for
  `degraded_grace` seconds from the disconnection even past their own
  expiry (the phones refresh, but the events cannot arrive), then expire.
- A registration whose user or realm is too long for the kernel's key is
  not stored: it is reported in Diff.rejected and in `rejected`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from nfguard.consts import REALM_MAX, USER_MAX
from nfguard.daemon.fsevents import Registered, Registration, Snapshot, Unregistered, gc_paused

DEFAULT_GRACE = 30.0
DEFAULT_DEGRADED_GRACE = 300.0
DEFAULT_RESYNC_TOLERANCE = 5.0


class Binding(NamedTuple):
    user: str
    realm: str
    ip: str

    def __str__(self) -> str:
        return f"{self.user}@{self.realm} {self.ip}"


def kernel_case(text: str) -> str:
    """Lower-case ASCII letters only, as the XDP program does."""
    return text.lower() if text.isascii() else text.encode("utf-8").lower().decode("utf-8")


_new_binding = tuple.__new__  # a NamedTuple without its slow keyword __new__


def _lowered(text: str) -> str:
    """kernel_case(), the same string object when nothing changes (most
    users and realms: no second copy held per binding)."""
    low = text.lower() if text.isascii() else kernel_case(text)
    return text if low == text else low


def binding_of(reg: Registration) -> Binding:
    return _new_binding(Binding, (_lowered(reg.user), _lowered(reg.realm), reg.ip))


def _bytes_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def too_long(reg: Registration, user_max: int = USER_MAX, realm_max: int = REALM_MAX) -> str:
    """Why the kernel cannot hold this registration's binding, or ''."""
    ulen, rlen = _bytes_len(reg.user), _bytes_len(reg.realm)
    if ulen > user_max:
        return f"user is {ulen} bytes, the limit is {user_max}"
    if rlen > realm_max:
        return f"realm is {rlen} bytes, the limit is {realm_max}"
    return ""


# A row's key: (profile, sip_user, sip_host, call_id, contact, node); its
# first three are the owner (fsevents.Registration.owner). The node is in
# it so that the key alone names the row: the binding's holder and the
# expiry schedule hold the key itself, no (node, key) tuple per row.
RowKey = tuple
Owner = tuple  # (profile, sip_user, sip_host)


def row_key(reg: Registration, node: str) -> RowKey:
    return (reg.profile, reg.reg_user or reg.user, reg.reg_host or reg.realm, reg.call_id,
            reg.contact, node)


@dataclass
class Diff:
    added: dict[Binding, float] = field(default_factory=dict)  # new, or expiry moved
    removed: set[Binding] = field(default_factory=set)
    rejected: list[tuple[Registration, str]] = field(default_factory=list)
    # owners whose rows FreeSWITCH must be asked for (apply() only): soon,
    # or once FreeSWITCH's deferred SQL has run (a shared contact or Call-ID)
    reread: set[Owner] = field(default_factory=set)
    reread_late: set[Owner] = field(default_factory=set)
    # bindings a resync added that the registry did not hold (resync() of
    # a node that had synced before): with `removed`, the event stream's misses
    appeared: set[Binding] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.rejected)

    def then(self, later: Diff) -> Diff:
        """This diff followed by `later`, as one."""
        for b, exp in later.added.items():
            self.added[b] = exp
            self.removed.discard(b)
        for b in later.removed:
            self.added.pop(b, None)
            self.removed.add(b)
        self.rejected.extend(later.rejected)
        self.reread |= later.reread
        self.reread_late |= later.reread_late
        return self


# Index values are a single tuple, or a set of them when there are several:
# nearly every binding and call-id has one row, and a set per entry would
# be most of the registry's memory.
def _index_add(index: dict, key, item: tuple) -> None:
    have = index.get(key)
    if have is None:
        index[key] = item
    elif type(have) is set:
        have.add(item)
    elif have != item:
        index[key] = {have, item}


def _index_remove(index: dict, key, item: tuple) -> None:
    have = index.get(key)
    if type(have) is set:
        have.discard(item)
        if len(have) == 1:
            index[key] = next(iter(have))
    elif have == item:
        del index[key]


def _index_items(index: dict, key) -> list[tuple]:
    have = index.get(key)
    if have is None:
        return []
    return list(have) if type(have) is set else [have]


class Registry:
    def __init__(self, *, grace: float = DEFAULT_GRACE,
                 degraded_grace: float = DEFAULT_DEGRADED_GRACE,
                 resync_tolerance: float = DEFAULT_RESYNC_TOLERANCE,
                 user_max: int = USER_MAX, realm_max: int = REALM_MAX):
        self.grace = grace
        self.degraded_grace = degraded_grace
        self.resync_tolerance = resync_tolerance
        self.user_max = user_max
        self.realm_max = realm_max
        self._rows: dict[str, dict[RowKey, Registration]] = {}
        # binding -> its row's key, or a set of them when several. A
        # binding's expiry is not stored: _until() reads it from its rows
        # (a table and a float a binding fewer: 7.6 MB at 100,000).
        self._holders: dict[Binding, tuple | set[tuple]] = {}
        # node -> text -> row key(s): who else an event may have touched.
        # Each row is under its owner's sip_user, its Call-ID and its
        # contact, in one table (one table of 300,000 is 4 MB less than
        # three of 100,000), and under the user, not the (profile, user,
        # host) tuple (one tuple fewer a row: 8 MB at 100,000). A lookup
        # keeps the rows whose field is the text (_texts).
        self._by_text: dict[str, dict[str, RowKey | set[RowKey]]] = {}
        # When rows may expire: whole second -> the keys of the rows that
        # were due in it when scheduled; the seconds in a heap. A key in a
        # list, not an (until, key) tuple in a heap: 8 bytes a row, not 72.
        # Invariant: a row whose expiry (_row_expiry) moves to `until` is
        # scheduled at int(until), so an entry of an earlier second can be
        # passed over. Stale entries are compacted away (_compact).
        self._due: dict[int, list[RowKey]] = {}
        self._due_seconds: list[int] = []
        self._scheduled = 0
        self.down_since: dict[str, float] = {}
        self.rejected: dict[tuple[str, RowKey], tuple[Registration, str]] = {}
        self._synced: set[str] = set()  # nodes that have had a full resync

    # -- reading -------------------------------------------------------------
    def bindings(self) -> dict[Binding, float]:
        """Every binding and its expiry (seconds since the epoch): a copy."""
        until = self._until
        return {b: until(b) for b in self._holders}

    def view(self) -> Mapping[Binding, float]:
        """bindings() without the copy (~10 MB at 100,000): read-only, each
        expiry read when asked, and live, so not to be held across a change."""
        return _View(self)

    def __len__(self) -> int:
        """How many bindings."""
        return len(self._holders)

    def rows(self, node: str | None = None) -> list[Registration]:
        nodes = [node] if node is not None else list(self._rows)
        return [reg for n in nodes for reg in self._rows.get(n, {}).values()]

    def owner_rows(self, node: str, owner: Owner) -> list[Registration]:
        rows = self._rows.get(node, {})
        return [rows[k] for k in self._owner_keys(node, owner)]

    def _owner_keys(self, node: str, owner: Owner) -> list[RowKey]:
        return [k for k in _index_items(self._by_text.get(node, {}), owner[1])
                if k[:3] == owner]

    def _texts(self, node: str, at: int, text: str) -> list[RowKey]:
        """The node's rows whose key has `text` at index `at` (3: the
        Call-ID, 4: the contact)."""
        return [k for k in _index_items(self._by_text.get(node, {}), text) if k[at] == text]

    def nodes(self) -> list[str]:
        return sorted(set(self._rows) | set(self.down_since))

    def next_expiry(self) -> float | None:
        """When expire() may next have something to do."""
        return self._due_seconds[0] + self.grace if self._due_seconds else None

    # -- changing ------------------------------------------------------------
    def apply(self, node: str, event, now: float) -> Diff:
        """One event of `node` (fsevents.Registered or Unregistered). The
        row it names changes at once; Diff.reread names the owners whose
        other rows it may have changed too (see the module docstring)."""
        diff, touched = Diff(), {}
        if isinstance(event, Registered):
            key = row_key(event.reg, node)
            owners, shared = self._sharers(node, key, {key})
            # a REGISTER's deferred delete goes by contact or Call-ID
            (diff.reread_late if shared else diff.reread).update(owners)
            self._store(node, event.reg, touched, diff)
        elif isinstance(event, Unregistered):
            owner = event.owner
            if event.contact is None:
                # the socket-close unregister: FreeSWITCH deletes (deferred)
                # the rows of this call-id at the socket's address, which
                # it does not name; this drops the owner's rows of the call-id
                keys = {k for k in self._owner_keys(node, owner) if k[3] == event.call_id}
                owners, _ = self._sharers(node, owner + (event.call_id, None), keys)
                diff.reread_late = owners | ({owner} if len(keys) > 1 else set())
            else:
                keys = {owner + (event.call_id, event.contact, node)}
                if event.why != "expire":  # an expiry names every row it deletes
                    # an unregister deletes before its event: no deferred SQL
                    diff.reread = self._sharers(node, next(iter(keys)), keys)[0]
            for key in keys:
                self._drop(node, key, touched)
                self.rejected.pop((node, key), None)
        else:
            raise TypeError(f"not a registry event: {event!r}")
        return self._settle(touched, diff)

    def _sharers(self, node: str, key: RowKey, exact: set[RowKey]) -> tuple[set[Owner], bool]:
        """The owners to re-read when an event names `key`: none when no
        other row of the node shares its owner, Call-ID or contact (then
        the event is exact in every mode); else its owner and theirs. And
        whether another row shares its Call-ID or contact."""
        owner, call_id, contact = key[:3], key[3], key[4]
        others = [k for k in self._owner_keys(node, owner) if k not in exact]
        profile, mine = key[0], len(others)
        for at, value in ((3, call_id), (4, contact)):
            if value is not None:
                others.extend(k for k in self._texts(node, at, value)
                              if k not in exact and k[0] == profile)
        if not others:
            return set(), False
        return {owner} | {k[:3] for k in others}, len(others) > mine

    def replace(self, node: str, owner: Owner, regs: Iterable[Registration],
                now: float) -> Diff:
        """Replace the node's rows of one owner with what FreeSWITCH says
        it holds now (fsevents.read_owner)."""
        diff, touched = Diff(), {}
        fresh = {row_key(reg, node): reg for reg in regs if reg.owner == owner}
        for key in self._owner_keys(node, owner):
            if key not in fresh:
                self._drop(node, key, touched)
                self.rejected.pop((node, key), None)
        rows = self._rows.get(node, {})
        for key, reg in fresh.items():
            if not self._same(rows.get(key), reg):
                self._store(node, reg, touched, diff)
        return self._settle(touched, diff)

    def _same(self, have: Registration | None, reg: Registration) -> bool:
        """Nothing to change: same address, expiry within the tolerance."""
        return (have is not None and have.user == reg.user and have.realm == reg.realm
                and have.ip == reg.ip and have.port == reg.port
                and abs(have.expires - reg.expires) <= self.resync_tolerance)

    def resync(self, node: str, snapshot: Snapshot | Iterable[Registration],
               now: float) -> Diff:
        """Replace `node`'s rows with a full snapshot of its table; the
        node is connected again."""
        regs = snapshot.registrations if isinstance(snapshot, Snapshot) else snapshot
        with gc_paused():
            return self._resync(node, regs)

    def _resync(self, node: str, regs: Iterable[Registration]) -> Diff:
        diff, touched = Diff(), {}
        track = node in self._synced  # the first resync is no drift
        self._synced.add(node)
        if node in self.down_since:
            for reg in self._rows.get(node, {}).values():
                self._touch(touched, binding_of(reg))  # their expiry is their own again
            del self.down_since[node]
            for key, reg in self._rows.get(node, {}).items():
                self._schedule(key, reg)
        old = self._rows.get(node, {})
        fresh: dict[RowKey, Registration] = {}
        for reg in regs:
            fresh[(reg.profile, reg.reg_user or reg.user, reg.reg_host or reg.realm,
                   reg.call_id, reg.contact, node)] = reg
        for key in [k for k in old if k not in fresh]:
            self._drop(node, key, touched)
        for key in [k for (n, k) in self.rejected if n == node and k not in fresh]:
            del self.rejected[(node, key)]
        if old:
            for key, reg in fresh.items():
                have = old.get(key)
                if have is not None and not self._same(have, reg):
                    self._store(node, reg, touched, diff)
        # the new rows as they are read: no list of the whole table
        self._insert(node, ((k, reg) for k, reg in fresh.items() if k not in old),
                     touched, diff, track)
        return self._settle(touched, diff, track)

    def _insert(self, node: str, regs: Iterable[tuple[RowKey, Registration]], touched: dict,
                diff: Diff, track: bool) -> None:
        """_store() for rows the node does not hold yet, in bulk: the whole
        table on a first sync, where per-row calls would double the time."""
        rows = self._rows.setdefault(node, {})
        by_text = self._by_text.setdefault(node, {})
        due, seconds = self._due, self._due_seconds
        holders, added = self._holders, diff.added
        user_max, realm_max, grace = self.user_max, self.realm_max, self.grace
        up = node not in self.down_since
        rejected = self.rejected
        for key, reg in regs:
            user, realm = reg.user, reg.realm
            if not (user.isascii() and realm.isascii() and len(user) <= user_max
                    and len(realm) <= realm_max):
                self._store(node, reg, touched, diff)  # maybe rejected: it says so
                continue
            if rejected:
                rejected.pop((node, key), None)
            rows[key] = reg
            # the index inline: nearly every entry is new and single
            for text in (key[1], key[3], key[4]):
                if text in by_text:
                    _index_add(by_text, text, key)
                else:
                    by_text[text] = key
            low_user, low_realm = user.lower(), realm.lower()
            b = _new_binding(Binding, (user if low_user == user else low_user,
                                       realm if low_realm == realm else low_realm, reg.ip))
            until = reg.expires if up else self._row_expiry(node, reg)
            if b in holders:
                self._touch(touched, b)
                _index_add(holders, b, key)
            else:  # a binding of this row alone: settled here
                holders[b] = key
                added[b] = until + grace
                if track:
                    diff.appeared.add(b)
            sec = int(until)
            keys = due.get(sec)
            if keys is None:
                due[sec] = [key]
                seconds.append(sec)
            else:
                keys.append(key)
            self._scheduled += 1
        if not rows:
            self._forget(node)
        heapq.heapify(seconds)
        self._compact()

    def node_down(self, node: str, now: float) -> Diff:
        """`node` disconnected: keep its rows for degraded_grace seconds."""
        if node in self.down_since:
            return Diff()
        touched: dict[Binding, float | None] = {}
        for reg in self._rows.get(node, {}).values():
            self._touch(touched, binding_of(reg))
        self.down_since[node] = now
        for key, reg in self._rows.get(node, {}).items():
            self._schedule(key, reg)
        return self._settle(touched, Diff())

    def expire(self, now: float) -> Diff:
        """Drop the rows whose time (plus grace) has come."""
        touched: dict[Binding, float | None] = {}
        seconds, not_yet = self._due_seconds, []
        while seconds and seconds[0] + self.grace <= now:
            sec = heapq.heappop(seconds)
            keys = self._due.pop(sec)
            self._scheduled -= len(keys)
            for key in keys:
                node = key[5]
                reg = self._rows.get(node, {}).get(key)
                if reg is None:
                    continue  # gone since it was scheduled
                until = self._row_expiry(node, reg)
                if until + self.grace <= now:
                    self._drop(node, key, touched)
                elif int(until) == sec:
                    not_yet.append(key)  # later in this very second
                # else: it moved later, and is scheduled there too
        for key in not_yet:
            self._schedule(key, self._rows[key[5]][key])
        return self._settle(touched, Diff())

    # -- internals -----------------------------------------------------------
    def _row_expiry(self, node: str, reg: Registration) -> float:
        if not self.down_since or node not in self.down_since:
            return reg.expires
        return max(reg.expires, self.down_since[node] + self.degraded_grace)

    def _schedule(self, key: RowKey, reg: Registration) -> None:
        sec = int(self._row_expiry(key[5], reg))
        keys = self._due.get(sec)
        if keys is None:
            self._due[sec] = [key]
            heapq.heappush(self._due_seconds, sec)
        else:
            keys.append(key)
        self._scheduled += 1
        self._compact()

    def _compact(self) -> None:
        """Every refresh of a row schedules it once more, and the earlier
        entries stay until their second comes (a phone refreshing every
        minute with an hour's expiry: 60 a row). Past twice the rows, the
        schedule is made anew, an entry a row."""
        rows = sum(len(r) for r in self._rows.values())
        if self._scheduled <= 2 * rows + 1024:
            return
        # emptied in place: a bulk insert under way holds them
        self._due.clear()
        self._due_seconds.clear()
        self._scheduled = 0
        for node_rows in self._rows.values():
            for key, reg in node_rows.items():
                self._schedule(key, reg)

    def _forget(self, node: str) -> None:
        """The node holds no rows: drop its (empty) tables."""
        for table in (self._rows, self._by_text):
            table.pop(node, None)

    def _store(self, node: str, reg: Registration, touched: dict, diff: Diff) -> None:
        key = row_key(reg, node)
        user, realm = reg.user, reg.realm
        if not (user.isascii() and realm.isascii() and len(user) <= self.user_max
                and len(realm) <= self.realm_max):
            why = too_long(reg, self.user_max, self.realm_max)
            if why:
                self._drop(node, key, touched)
                self.rejected[(node, key)] = (reg, why)
                diff.rejected.append((reg, why))
                return
        if self.rejected:
            self.rejected.pop((node, key), None)
        rows = self._rows.get(node)
        if rows is None:
            rows = self._rows[node] = {}
        old = rows.get(key)
        b = binding_of(reg)
        self._touch(touched, b)
        if old is not None:
            old_b = binding_of(old)
            self._touch(touched, old_b)
            _index_remove(self._holders, old_b, key)
        else:
            by_text = self._by_text.setdefault(node, {})
            for text in (key[1], key[3], key[4]):
                _index_add(by_text, text, key)
        rows[key] = reg
        _index_add(self._holders, b, key)
        self._schedule(key, reg)

    def _drop(self, node: str, key: RowKey, touched: dict) -> None:
        rows = self._rows.get(node)
        reg = rows.get(key) if rows else None
        if reg is None:
            return
        b = binding_of(reg)
        self._touch(touched, b)
        del rows[key]
        _index_remove(self._holders, b, key)
        by_text = self._by_text[node]
        for text in (key[1], key[3], key[4]):
            _index_remove(by_text, text, key)
        if not rows:
            self._forget(node)

    def _until(self, b: Binding) -> float | None:
        """The binding's expiry (the latest of its rows', plus grace), or
        None when no row holds it."""
        have = self._holders.get(b)
        if have is None:
            return None
        rows = self._rows
        if type(have) is set:
            return max(self._row_expiry(k[5], rows[k[5]][k]) for k in have) + self.grace
        if not self.down_since:
            return rows[have[5]][have].expires + self.grace
        return self._row_expiry(have[5], rows[have[5]][have]) + self.grace

    def _touch(self, touched: dict, b: Binding) -> None:
        """Note b's expiry before a change (once: the first is the before)."""
        if b not in touched:
            touched[b] = self._until(b)

    def _settle(self, touched: dict[Binding, float | None], diff: Diff,
                track: bool = False) -> Diff:
        """Each touched binding's expiry from the rows that hold it now,
        against the one before; `track`: note in diff.appeared the ones
        that were not bound."""
        added, removed, until = diff.added, diff.removed, self._until
        for b, was in touched.items():
            now = until(b)
            if now is None:
                if was is not None:
                    removed.add(b)
            elif now != was:
                if track and was is None:
                    diff.appeared.add(b)
                added[b] = now
        return diff


class _View(Mapping):
    """Registry.view(): the bindings and their expiries, each read when asked."""

    def __init__(self, registry: Registry):
        self._registry = registry

    def __getitem__(self, b: Binding) -> float:
        until = self._registry._until(b)
        if until is None:
            raise KeyError(b)
        return until

    def __contains__(self, b) -> bool:
        return b in self._registry._holders

    def __iter__(self):
        return iter(self._registry._holders)

    def __len__(self) -> int:
        return len(self._registry._holders)
