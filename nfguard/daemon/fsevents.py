"""FreeSWITCH registration events and tables, as registry input.

What each source means (from mod_sofia's sofia_reg.c, confirmed by the
captures in tests/fixtures/freeswitch-real/ and explained in their README):

- `sofia::register`: `username` and `realm` are the digest credentials
  (never `from-user`/`to-user`, whose names mod_sofia swaps); `network-ip`
  and `network-port` are where the REGISTER came from (IPv6 unbracketed);
  `expires` is relative seconds. FreeSWITCH keeps the row `expires` plus
  its `sip-expires-late-margin` (60 s by default) before it expires it.
- `sofia::unregister`: the same names, `expires: 0`. The variant sent when
  a WS/TCP connection closes carries only profile-name, from-user,
  from-host, call-id and `reason: socket-disconnection`: no contact and
  no address.
- `sofia::expire`: `expires` is an absolute epoch time; user names are
  `user`/`username` and `host`/`realm`.
- `sofia::register_failure`: a failed authentication (wrong password or
  unknown user), of a REGISTER or of an INVITE (`registration-type`).
  `network-ip` is the source; `to-user`/`to-host` are the request's To URI
  (for an INVITE the callee, not the credential): there is no `username`
  or `realm`. It never changes bindings: parse_event() returns an
  AuthFailure, which follow() hands to the bans (bans.py), never to the
  registry.
- `nfguard::guard` (CUSTOM): a failing verdict of nfguard's Lua guard in
  FreeSWITCH (freeswitch/nfguard_guard.lua: calls over TCP, TLS and
  WebSocket, which XDP does not see). parse_event() returns a
  GuardVerdict, which follow() hands to on_guard_verdict, never to the
  registry.
- `pre_register` and `register_attempt` also fire for INVITE challenges
  and never change bindings: they are ignored (and not subscribed to).

A row of FreeSWITCH's sip_registrations table belongs to its owner, the
user and host of the REGISTER's To (`sip_user`, `sip_host`; `from-user` and
`from-host` in register and unregister events, `user` and `host` in
expire events, `<user>` in xmlstatus), usually the digest credentials. What
a REGISTER does to the owner's other rows depends on the profile's
`multiple-registrations`, on a per-user `sip-allow-multiple-registrations`,
and even on whether the phone answered the challenge with qop (sofia_reg.c,
1.10.12, confirmed against the real FreeSWITCH):

- off (vanilla): every row of the owner is deleted, then the new one
  inserted; an `Expires: 0` (any contact, or `Contact: *`) deletes every row
  of the owner. No event names the rows that went.
- `contact` (or `true`): the row of the owner with this contact is updated
  or replaced (its Call-ID and address change with it); then, deferred, rows
  of any owner with this contact and another expiry are deleted. `Expires:
  0` deletes the owner's rows with that contact only (`Contact: *` deletes
  nothing).
- `call-id`: the owner's row with this contact is updated (its Call-ID
  changes) or a row inserted; then, deferred, rows of any owner with this
  Call-ID and another expiry are deleted. `Expires: 0` deletes every row of
  that Call-ID.

"Deferred" is FreeSWITCH's SQL queue: up to about 0.3 s after the event
(and the socket-close unregister's delete is deferred too). Every other
delete and insert is done before the event is sent. Where an event cannot
say exactly which rows changed, the registry asks for the owner's rows
again (`sofia xmlstatus profile P user U@H`, read_owner()): soon, or,
where a deferred delete may matter, once it has run.

The snapshot comes from `sofia xmlstatus` (profile names) and `sofia
xmlstatus profile NAME reg` (the same table the events come from, with
network address, auth user and realm, and the seconds left);
`show registrations as json` reads a core table that lags behind and is
only a fallback.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import ipaddress
import json
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import unquote

from nfguard.daemon.esl import Frame

# mod_sofia's default sip-expires-late-margin: how long after `expires`
# FreeSWITCH itself still keeps a registration.
DEFAULT_LATE_MARGIN = 60.0


@dataclass(frozen=True, slots=True)
class Registration:
    user: str
    realm: str
    ip: str
    port: int
    expires: float  # absolute, seconds since the epoch
    profile: str
    contact: str
    call_id: str
    node: str
    # the owner as FreeSWITCH keys it (sip_user, sip_host); "" = user, realm
    reg_user: str = ""
    reg_host: str = ""

    def __post_init__(self) -> None:
        # The values many rows repeat, one string each (a large table holds
        # 100,000 rows of a few realms, profiles and one node).
        for name in _SHARED:
            value = getattr(self, name)
            if type(value) is str:
                _set(self, name, _intern(value))

    @property
    def owner(self) -> tuple[str, str, str]:
        """(profile, sip_user, sip_host): whose rows a REGISTER rewrites."""
        return (self.profile, self.reg_user or self.user, self.reg_host or self.realm)


_SHARED = ("realm", "profile", "node", "reg_host")
_set = object.__setattr__  # the row is frozen: its own fields, once, as it is made
_intern = sys.intern


@dataclass(frozen=True)
class Registered:
    reg: Registration
    fired: float = 0.0  # when FreeSWITCH made the event (Event-Date-Timestamp), 0 unknown


@dataclass(frozen=True)
class Unregistered:
    """An unregister or an expiry. `contact` None: the socket-close
    unregister, which names only the call-id (and the user)."""
    profile: str
    call_id: str
    contact: str | None
    user: str
    realm: str
    why: str  # "unregister", "expire", "socket-disconnection"
    reg_user: str = ""  # the owner (sip_user, sip_host); "" = user, realm
    reg_host: str = ""
    ip: str = ""  # network-ip, where the event has it
    fired: float = 0.0  # when FreeSWITCH made the event (Event-Date-Timestamp), 0 unknown

    @property
    def owner(self) -> tuple[str, str, str]:
        return (self.profile, self.reg_user or self.user, self.reg_host or self.realm)


@dataclass(frozen=True)
class AuthFailure:
    """A failed authentication (sofia::register_failure): for the bans,
    never for the registry."""
    ip: str  # network-ip, normalized
    user: str  # to-user: the To URI's user (for an INVITE, the callee)
    realm: str  # to-host
    profile: str
    method: str  # registration-type: REGISTER or INVITE ("" when absent)
    fired: float = 0.0  # Event-Date-Timestamp in seconds, 0 unknown

    @property
    def cred(self) -> str:
        """What a log line names: "1001@pbx.example (REGISTER)"."""
        text = f"{self.user or '?'}@{self.realm or '?'}"
        return f"{text} ({self.method})" if self.method else text


GUARD_REASONS = ("not_bound", "expired", "malformed")
GUARD_ACTIONS = ("refused", "monitor")
GUARD_STATES = ("nfguard", "registrations")
# What a guard verdict's transport may be named; anything else the caller
# wrote in its Via is "unknown" (a metric label must not be the attacker's).
GUARD_EVENT_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss", "sctp", "unknown")


@dataclass(frozen=True)
class GuardVerdict:
    """A failing verdict of the Lua guard in FreeSWITCH (nfguard::guard):
    for the alerts and counters, never for the registry. `ip` is normalized
    (for reason "malformed": the text FreeSWITCH had, printable, at most 64
    characters); `port` 0 when absent."""
    user: str
    realm: str
    ip: str
    port: int
    transport: str  # GUARD_EVENT_TRANSPORTS
    reason: str  # GUARD_REASONS
    action: str  # GUARD_ACTIONS: refused (403, enforce) or monitor
    state: str  # what it judged by: nfguard's state, or FreeSWITCH's registrations
    call_id: str
    profile: str
    fired: float = 0.0  # Event-Date-Timestamp in seconds, 0 unknown


def _printable(text: str, limit: int = 64) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def parse_guard(h: dict[str, str], fired: float) -> GuardVerdict:
    """A GuardVerdict from an nfguard::guard event's headers; ValueError
    (the reason) when it is not one the guard can have sent."""
    reason, action, user, realm = _required(
        h, "nfguard-verdict", "nfguard-action", "nfguard-user", "nfguard-realm")
    if reason not in GUARD_REASONS:
        raise ValueError(f"nfguard::guard with an unknown verdict {reason[:40]!r}")
    if action not in GUARD_ACTIONS:
        raise ValueError(f"nfguard::guard with an unknown action {action[:40]!r}")
    state = h.get("nfguard-state", "")
    if state not in GUARD_STATES:
        raise ValueError(f"nfguard::guard with an unknown state {state[:40]!r}")
    raw_ip = h.get("nfguard-source-ip", "")
    if reason == "malformed":
        ip = _ip_or_empty(raw_ip) or _printable(raw_ip.strip())
    else:
        ip = normalize_ip(raw_ip)
    port_text = h.get("nfguard-source-port", "")
    port = _port(port_text) if port_text else 0
    transport = h.get("nfguard-transport", "").strip().lower() or "unknown"
    if transport not in GUARD_EVENT_TRANSPORTS:
        transport = "unknown"
    return GuardVerdict(user=_printable(user, 256), realm=_printable(realm, 256), ip=ip,
                        port=port, transport=transport, reason=reason, action=action,
                        state=state, call_id=_printable(h.get("nfguard-call-id", ""), 256),
                        profile=_printable(h.get("nfguard-profile", ""), 64), fired=fired)


@dataclass(frozen=True)
class Snapshot:
    """A full registration table of one node."""
    registrations: list[Registration]
    source: str  # "sofia xmlstatus" or "show registrations"
    skipped: list[str]  # rows that could not be read, why


@contextlib.contextmanager
def gc_paused():
    """No cyclic GC inside: bulk parsing and resyncs make hundreds of
    thousands of objects, and the collector would scan the whole heap
    several times over (half the time, or more)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# -- event bodies ----------------------------------------------------------
def event_headers(frame: Frame) -> dict[str, str]:
    """The headers of an event frame: JSON keeps values raw; the plain
    format's values are URL-encoded (decoded once, as libesl does)."""
    if frame.content_type == "text/event-json":
        try:
            data = json.loads(frame.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"event body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("event body is not a JSON object")
        return {str(k): v if isinstance(v, str) else str(v) for k, v in data.items()}
    if frame.content_type == "text/event-plain":
        headers: dict[str, str] = {}
        for line in frame.body.decode("utf-8", "replace").split("\n"):
            name, sep, value = line.partition(": ")
            if sep:
                headers.setdefault(name, unquote(value))
        return headers
    raise ValueError(f"not an event frame: {frame.content_type!r}")


def _required(h: dict[str, str], *names: str) -> list[str]:
    missing = [n for n in names if not h.get(n)]
    if missing:
        raise ValueError(f"{h.get('Event-Subclass', 'event')} without {', '.join(missing)}")
    return [h[n] for n in names]


def normalize_ip(text: str) -> str:
    """An address as nfguard stores it; ValueError when it is none."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise ValueError(f"bad network-ip {text[:60]!r}") from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad network-port {text[:20]!r}")
    return int(text)


def _seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"bad {what} {text[:20]!r}") from None
    if value != value or value < 0:
        raise ValueError(f"bad {what} {text[:20]!r}")
    return value


def parse_event(frame: Frame, node: str, now: float, late_margin: float = DEFAULT_LATE_MARGIN
                ) -> Registered | Unregistered | AuthFailure | GuardVerdict | None:
    """A registry event from an ESL event frame, an AuthFailure (for the
    bans) or a GuardVerdict (for the alerts); None for events that concern
    none of them. ValueError (with the reason) for a malformed one."""
    h = event_headers(frame)
    subclass = h.get("Event-Subclass", "")
    fired = _fired(h.get("Event-Date-Timestamp", ""))
    if subclass == "sofia::register":
        user, realm, ip, port, expires, profile, call_id = _required(
            h, "username", "realm", "network-ip", "network-port", "expires",
            "profile-name", "call-id")
        return Registered(Registration(
            user=user, realm=realm, ip=normalize_ip(ip), port=_port(port),
            expires=now + _seconds(expires, "expires") + late_margin,
            profile=profile, contact=h.get("contact", ""), call_id=call_id, node=node,
            reg_user=_unless_same(h.get("from-user", ""), user),
            reg_host=_unless_same(h.get("from-host", ""), realm)), fired)
    if subclass == "sofia::unregister":
        profile, call_id = _required(h, "profile-name", "call-id")
        if h.get("reason") == "socket-disconnection" or "contact" not in h:
            # no contact, no address: every row of this call-id and user
            return Unregistered(profile, call_id, None, h.get("from-user", ""),
                                h.get("from-host", ""), "socket-disconnection", fired=fired)
        user, realm = _required(h, "username", "realm")
        return Unregistered(profile, call_id, h["contact"], user, realm, "unregister",
                            h.get("from-user", ""), h.get("from-host", ""),
                            _ip_or_empty(h.get("network-ip", "")), fired)
    if subclass == "sofia::expire":
        # user/username are the row's sip_user, host its sip_host
        profile, call_id, contact, user, realm = _required(
            h, "profile-name", "call-id", "contact", "username", "realm")
        return Unregistered(profile, call_id, contact, user, realm, "expire",
                            h.get("user", ""), h.get("host", ""),
                            _ip_or_empty(h.get("network-ip", "")), fired)
    if subclass == "sofia::register_failure":
        (ip,) = _required(h, "network-ip")
        # to-user/to-host in 1.10.12; username/realm should a version add them
        return AuthFailure(normalize_ip(ip), h.get("to-user") or h.get("username", ""),
                           h.get("to-host") or h.get("realm", ""), h.get("profile-name", ""),
                           h.get("registration-type", ""), fired)
    if subclass == "nfguard::guard":
        return parse_guard(h, fired)
    return None


def _fired(text: str) -> float:
    """Event-Date-Timestamp (microseconds since the epoch) in seconds; 0
    when absent or unreadable."""
    return int(text) / 1e6 if text.isdigit() else 0.0


def _unless_same(owner_part: str, cred: str) -> str:
    """The owner's part, or "" where it equals the credential (most rows:
    no second string kept)."""
    return "" if owner_part == cred else owner_part


def _ip_or_empty(text: str) -> str:
    try:
        return normalize_ip(text) if text else ""
    except ValueError:
        return ""


# -- snapshots -------------------------------------------------------------
def _xml(text: str, what: str) -> ET.Element:
    # From a str, expat ignores the declared ISO-8859-1 (FreeSWITCH writes
    # its strings' bytes, UTF-8 in practice, whatever it declares).
    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"{what} is not XML ({e}): {text[:80]!r}") from None


def parse_profiles(xml_text: str) -> list[str]:
    """Profile names from `sofia xmlstatus` (aliases and gateways left out;
    a profile listed once per transport counts once)."""
    root = _xml(xml_text, "sofia xmlstatus")
    names: list[str] = []
    for el in root.iter("profile"):
        name = (el.findtext("name") or "").strip()
        if (el.findtext("type") or "").strip() == "profile" and name and name not in names:
            names.append(name)
    return names


_EXPSECS = re.compile(r"expsecs\((-?\d+)\)")


def parse_xmlstatus_reg(xml_text: str, node: str, profile: str, now: float,
                        skipped: list[str] | None = None) -> list[Registration]:
    """Registrations from `sofia xmlstatus profile NAME reg`. Rows that
    cannot be read are named in `skipped` and left out."""
    reader = XmlstatusRegReader(node, profile, now, skipped)
    for i in range(0, len(xml_text), 1 << 16):  # in pieces: the parser's events stay few
        reader.feed_text(xml_text[i:i + (1 << 16)])
    return reader.close()


class XmlstatusRegReader:
    """parse_xmlstatus_reg() a piece at a time, as the body arrives: each
    <registration> becomes a Registration once read, and its element is
    let go. The whole body (70 MB at 100,000 rows), its text and its tree
    (~500 MB) are never held at once."""

    def __init__(self, node: str, profile: str, now: float, skipped: list[str] | None = None):
        self.node, self.profile, self.now, self.skipped = node, profile, now, skipped
        self.registrations: list[Registration] = []
        # UTF-8 in practice, whatever FreeSWITCH declares: fed as str, expat
        # ignores the declared ISO-8859-1 (see _xml)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._parent: ET.Element | None = None  # <registrations>
        self._head = ""  # the body's start, for the error

    def feed(self, chunk: bytes) -> None:
        self.feed_text(self._decoder.decode(chunk))

    def feed_text(self, text: str) -> None:
        if len(self._head) < 80:
            self._head += text[:80 - len(self._head)]
        with gc_paused():
            try:
                self._parser.feed(text)
                self._take()  # read_events() raises the parser's errors
            except ET.ParseError as e:
                raise self._not_xml(e) from None

    def close(self) -> list[Registration]:
        """The rows read; ValueError when the body was not XML."""
        with gc_paused():
            try:
                self._parser.feed(self._decoder.decode(b"", final=True))
                self._parser.close()
                self._take()
            except ET.ParseError as e:
                raise self._not_xml(e) from None
        return self.registrations

    def _not_xml(self, e: ET.ParseError) -> ValueError:
        return ValueError(f"sofia xmlstatus profile {self.profile} reg is not XML ({e}): "
                          f"{self._head!r}")

    def _take(self) -> None:
        for event, el in self._parser.read_events():
            if el.tag == "registrations" and event == "start":
                self._parent = el
            elif el.tag == "registration" and event == "end":
                reg = _registration_of(el, self.node, self.profile, self.now, self.skipped)
                if reg is not None:
                    self.registrations.append(reg)
                # read in order: the row is its parent's first (the parser
                # may have gone on to the next rows of this piece)
                if self._parent is not None and len(self._parent) and self._parent[0] is el:
                    del self._parent[0]
                else:
                    el.clear()


def _registration_of(el: ET.Element, node: str, profile: str, now: float,
                     skipped: list[str] | None) -> Registration | None:
    f = {child.tag: (child.text or "").strip() for child in el}
    try:
        user, realm = f.get("sip-auth-user"), f.get("sip-auth-realm")
        if not user or not realm:
            raise ValueError("no sip-auth-user or sip-auth-realm")
        m = _EXPSECS.search(f.get("status", ""))
        if not m:
            raise ValueError(f"no expsecs in status {f.get('status', '')[:60]!r}")
        # <user> is sip_user@sip_host, the owner
        reg_user, _, reg_host = f.get("user", "").rpartition("@")
        return Registration(
            user=user, realm=realm, ip=normalize_ip(f.get("network-ip", "")),
            port=_port(f.get("network-port", "")), expires=now + max(0, int(m.group(1))),
            profile=profile, contact=f.get("contact", ""), call_id=f.get("call-id", ""),
            node=node, reg_user=_unless_same(reg_user, user),
            reg_host=_unless_same(reg_host, realm))
    except ValueError as e:
        if skipped is not None:
            skipped.append(f"{f.get('user') or '?'} ({f.get('call-id') or 'no call-id'}): {e}")
        return None


def parse_show_registrations(json_text: str, node: str, now: float,
                             skipped: list[str] | None = None) -> list[Registration]:
    """Registrations from `show registrations as json` (the fallback: it
    has no profile, and `expires` is absolute)."""
    try:
        data = json.loads(json_text)
    except ValueError as e:
        raise ValueError(f"show registrations is not JSON: {e}") from None
    if not isinstance(data, dict) or "row_count" not in data:
        raise ValueError("show registrations: no row_count")
    regs: list[Registration] = []
    for row in data.get("rows") or []:
        try:
            regs.append(Registration(
                user=row["reg_user"], realm=row["realm"], ip=normalize_ip(row["network_ip"]),
                port=_port(row["network_port"]), expires=_seconds(row["expires"], "expires"),
                profile="", contact=row.get("url", ""), call_id=row["token"], node=node))
        except (KeyError, TypeError, ValueError) as e:
            if skipped is not None:
                skipped.append(f"{row!r:.80}: {e}")
    return regs


async def read_snapshot(conn, node: str, clock) -> Snapshot:
    """The node's whole registration table over an open EslConnection."""
    skipped: list[str] = []
    profiles_xml = await conn.api("sofia xmlstatus")
    if profiles_xml.lstrip().startswith("<"):
        regs: list[Registration] = []
        for profile in parse_profiles(profiles_xml):
            # read as it arrives (XmlstatusRegReader): no whole body of 100,000
            reader = XmlstatusRegReader(node, profile, clock(), skipped)
            await conn.api_into(f"sofia xmlstatus profile {profile} reg", reader.feed)
            regs.extend(reader.close())
        return Snapshot(regs, "sofia xmlstatus", skipped)
    # mod_sofia not answering in XML (not loaded?): the core table
    body = await conn.api("show registrations as json")
    return Snapshot(parse_show_registrations(body, node, clock(), skipped),
                    "show registrations", skipped)


# What can go on one `sofia xmlstatus profile P user U@H` line: mod_sofia
# splits its arguments at spaces and the owner at the first '@'.
_ARG_OK = re.compile(r"[^\s@]+")


def owner_command(owner: tuple[str, str, str]) -> str | None:
    """The api command that lists exactly one owner's rows (an indexed
    select on sip_user and sip_host), or None when the names cannot be
    written on its command line."""
    profile, user, host = owner
    if not all(_ARG_OK.fullmatch(part) for part in owner):
        return None
    return f"sofia xmlstatus profile {profile} user {user}@{host}"


async def read_owner(conn, node: str, owner: tuple[str, str, str],
                     clock) -> list[Registration] | None:
    """The rows FreeSWITCH holds now for one owner (profile, sip_user,
    sip_host); None when they cannot be asked for (a name the command line
    cannot carry, an answer that is not the table): then only a full resync
    can tell. Rows of other owners (the search is exact, but be sure) are
    left out."""
    cmd = owner_command(owner)
    if cmd is None:
        return None
    body = await conn.api(cmd)
    if "<registrations>" not in body:
        return None  # "-ERR ...", "Invalid Profile!": not the table
    try:
        regs = parse_xmlstatus_reg(body, node, owner[0], clock())
    except ValueError:
        return None
    return [r for r in regs if r.owner == owner]


def follow(endpoint, sink, *, late_margin: float = DEFAULT_LATE_MARGIN,
           on_auth_failure=None, on_guard_verdict=None, **kwargs):
    """An esl.EndpointRunner that keeps `sink` (the registry) in step with
    the endpoint's registrations: snapshots from sofia xmlstatus, events
    parsed here, and one owner's rows re-read where an event is not enough.
    Failed authentications go to on_auth_failure(AuthFailure), the Lua
    guard's verdicts to on_guard_verdict(GuardVerdict), never to the
    registry. Other kwargs are EndpointRunner's (on_connected,
    on_disconnected, ...)."""
    import time

    from nfguard.daemon.esl import EndpointRunner

    clock = kwargs.setdefault("clock", time.time)

    def parse(frame: Frame):
        event = parse_event(frame, endpoint.name, clock(), late_margin)
        if isinstance(event, AuthFailure):
            if on_auth_failure is not None:
                on_auth_failure(event)
            return None
        if isinstance(event, GuardVerdict):
            if on_guard_verdict is not None:
                on_guard_verdict(event)
            return None
        return event

    return EndpointRunner(
        endpoint, sink,
        snapshot=lambda conn: read_snapshot(conn, endpoint.name, clock),
        parse=parse,
        reread=lambda conn, owner: read_owner(conn, endpoint.name, owner, clock),
        **kwargs)
