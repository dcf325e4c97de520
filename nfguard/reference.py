"""The classifier of docs/classifier.md, in plain Python.

This is the readable statement of what the XDP program (bpf/nfguard.c)
decides for one Ethernet frame. It is written from the specification, byte
by byte and step by step, without the word-at-a-time tricks the C program
needs for speed; tests/test_differential.py holds the two to the same
verdicts on generated frames.

Standard library only: no bcc, no kernel. The section numbers in comments
are those of docs/classifier.md.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable

from nfguard import consts, policy
from nfguard.verdict import Verdict

XDP_DROP, XDP_PASS = 1, 2

CR, LF, SP, HT = 0x0D, 0x0A, 0x20, 0x09
LWS = frozenset((SP, HT, CR, LF))
TOKEN = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
)
UR = frozenset(b"uUrR")
# Where the line scanner stops (§4): CR, LF, HT and the other bytes below
# 0x0E, and every byte from 0x8E up.
LINE_STOPS = frozenset(range(0x0E)) | frozenset(range(0x8E, 0x100))

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)
IPPROTO_UDP = 17
IPPROTO_TCP = 6
EXT_HOPOPTS, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DSTOPTS = 0, 43, 44, 51, 60
EXT_HEADERS = frozenset((EXT_HOPOPTS, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DSTOPTS))

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"

# §3: the methods that can be guarded. REGISTER is not among them.
GUARDABLE_METHODS = tuple(consts.METHOD_BITS)

# Every reason the specification can give. consts.REASONS may hold more:
# failures of the kernel machinery itself, which no frame should reach.
SPEC_REASONS = (
    "not_ip", "not_udp", "port_not_guarded", "later_fragment", "trusted",
    "method_not_guarded", "no_credentials", "bound", "fragment_passed",
    "not_bound", "expired", "credential_unparsable", "credential_ambiguous",
    "credential_too_long", "too_many_credentials", "headers_truncated",
    "fragmented", "ext_header_limit", "scan_limit", "too_many_empty_lines",
    "banned", "rate_limited",
)


def lower(data: bytes) -> bytes:
    """ASCII A-Z to a-z, nothing else."""
    return bytes(c + 32 if 0x41 <= c <= 0x5A else c for c in data)


class _Stop(Exception):
    """The decision is made: carries the reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Payload:
    """The inspected payload: reads at or past n yield 0."""

    def __init__(self, data: bytes, n: int):
        self.data = data[:n]
        self.n = n

    def __getitem__(self, i: int) -> int:
        return self.data[i] if 0 <= i < self.n else 0

    def span(self, start: int, length: int) -> bytes:
        return bytes(self[i] for i in range(start, start + length))

    def count_lws(self, at: int) -> int:
        """LWS bytes at the start of buf[at:at+LWS_MAX]."""
        k = 0
        while k < consts.LWS_MAX and self[at + k] in LWS:
            k += 1
        return k


# -- §1 Frame ------------------------------------------------------------

class _Datagram:
    """What §1 and §2 learn about the UDP datagram in a frame."""

    def __init__(self, saddr: bytes, dport: int, payload_len: int, payload: bytes,
                 first_fragment: bool, tcp: bool = False, ipv6: bool = False):
        self.saddr = saddr  # 16 bytes, IPv4 mapped into ::ffff:0:0/96
        self.tcp = tcp  # a TCP segment: only bans apply to it
        self.ipv6 = ipv6
        self.dport = dport
        self.payload_len = payload_len  # what the UDP header claims
        self.payload = payload  # the bytes of it in this frame (avail of them)
        self.first_fragment = first_fragment


def _parse_frame(frame: bytes) -> _Datagram:
    """Ethernet, VLAN, IPv4/IPv6, UDP. Raises _Stop for frames that end here."""
    if len(frame) < 14:
        raise _Stop("not_ip")
    ethertype = int.from_bytes(frame[12:14], "big")
    pos = 14
    for _ in range(consts.MAX_VLAN):
        if ethertype not in VLAN_TPIDS:
            break
        if pos + 4 > len(frame):
            raise _Stop("not_ip")
        ethertype = int.from_bytes(frame[pos + 2:pos + 4], "big")
        pos += 4
    if ethertype == ETH_P_IP:
        saddr, pos, first_fragment, ip_end, proto = _parse_ipv4(frame, pos)
        ipv6 = False
    elif ethertype == ETH_P_IPV6:
        saddr, pos, first_fragment, ip_end, proto = _parse_ipv6(frame, pos)
        ipv6 = True
    else:
        raise _Stop("not_ip")
    # §1.5 - §2; a TCP header starts with the same two ports
    if pos + 8 > len(frame):
        raise _Stop("not_udp")
    dport = int.from_bytes(frame[pos + 2:pos + 4], "big")
    if proto == IPPROTO_TCP:
        return _Datagram(saddr, dport, 0, b"", first_fragment, tcp=True, ipv6=ipv6)
    udp_len = int.from_bytes(frame[pos + 4:pos + 6], "big")
    udp_end = pos + 8
    if ipv6 and udp_len == 0:
        # Linux delivers UDP length 0 over IPv6 as the rest of the packet
        payload_len = max(0, ip_end - udp_end)
    else:
        payload_len = udp_len - 8 if udp_len >= 8 else 0
    # Ethernet trailer bytes after the IP packet are not payload.
    payload = frame[udp_end:max(udp_end, min(len(frame), ip_end))]
    return _Datagram(saddr, dport, payload_len, payload, first_fragment, ipv6=ipv6)


def _parse_ipv4(frame: bytes, pos: int) -> tuple[bytes, int, bool, int, int]:
    """Source, UDP (or TCP) header offset, first fragment, ip_end, protocol."""
    if pos + 20 > len(frame) or frame[pos] >> 4 != 4:
        raise _Stop("not_ip")
    hlen = (frame[pos] & 0x0F) * 4
    total = int.from_bytes(frame[pos + 2:pos + 4], "big")
    if hlen < 20 or pos + hlen > len(frame) or total < hlen:
        raise _Stop("not_ip")
    frag = int.from_bytes(frame[pos + 6:pos + 8], "big")
    if frag & 0x1FFF:
        raise _Stop("later_fragment")
    proto = frame[pos + 9]
    if proto not in (IPPROTO_UDP, IPPROTO_TCP):
        raise _Stop("not_udp")
    first_fragment = bool(frag & 0x2000)
    ip_payload = total - hlen
    if first_fragment:
        # reassembly drops the last 1-7 bytes of a non-last fragment
        ip_payload -= ip_payload % 8
    saddr = _V4_MAPPED + frame[pos + 12:pos + 16]
    return saddr, pos + hlen, first_fragment, pos + hlen + ip_payload, proto


def _parse_ipv6(frame: bytes, pos: int) -> tuple[bytes, int, bool, int, int]:
    """Source, UDP (or TCP) header offset, first fragment, ip_end, protocol."""
    if pos + 40 > len(frame) or frame[pos] >> 4 != 6:
        raise _Stop("not_ip")
    saddr = frame[pos + 8:pos + 24]
    plen = int.from_bytes(frame[pos + 4:pos + 6], "big")
    # payload length 0 (a jumbogram): the frame's end bounds the packet
    ip_end = pos + 40 + plen if plen else len(frame)
    nexthdr = frame[pos + 6]
    pos += 40
    first_fragment = False
    for _ in range(consts.MAX_EXT_HDRS):
        if nexthdr in (IPPROTO_UDP, IPPROTO_TCP):
            return saddr, pos, first_fragment, ip_end, nexthdr
        if nexthdr in (EXT_HOPOPTS, EXT_ROUTING, EXT_DSTOPTS):
            if pos + 2 > len(frame):
                raise _Stop("not_ip")
            nexthdr, pos = frame[pos], pos + (frame[pos + 1] + 1) * 8
        elif nexthdr == EXT_AH:
            if pos + 2 > len(frame):
                raise _Stop("not_ip")
            nexthdr, pos = frame[pos], pos + (frame[pos + 1] + 2) * 4
        elif nexthdr == EXT_FRAGMENT:
            if pos + 8 > len(frame):
                raise _Stop("not_ip")
            frag = int.from_bytes(frame[pos + 2:pos + 4], "big")
            if frag >> 3:
                raise _Stop("later_fragment")
            # "whose M flag makes a first fragment"
            if frag & 1:
                first_fragment = True
            nexthdr, pos = frame[pos], pos + 8
        else:
            raise _Stop("not_udp")
    if nexthdr in (IPPROTO_UDP, IPPROTO_TCP):
        return saddr, pos, first_fragment, ip_end, nexthdr
    if nexthdr in EXT_HEADERS:
        raise _Stop("ext_header_limit")
    raise _Stop("not_udp")


def _net16(cidr) -> tuple[int, int]:
    """A trusted network as (prefix bits over the mapped 128-bit address, value)."""
    net = ipaddress.ip_network(cidr, strict=False)
    if net.version == 4:
        addr = _V4_MAPPED + net.network_address.packed
        plen = 96 + net.prefixlen
    else:
        addr = net.network_address.packed
        plen = net.prefixlen
    return plen, int.from_bytes(addr, "big")


def _in_trusted(saddr: bytes, trusted: Iterable) -> bool:
    a = int.from_bytes(saddr, "big")
    for cidr in trusted:
        plen, net = _net16(cidr)
        shift = 128 - plen
        if a >> shift == net >> shift:
            return True
    return False


def addr16(ip) -> bytes:
    a = ipaddress.ip_address(ip)
    return _V4_MAPPED + a.packed if a.version == 4 else a.packed


# -- Floods (docs/design.md §2.2) ----------------------------------------------

def source_key(saddr: bytes, ipv6: bool, ipv6_prefix: int = 64) -> bytes:
    """The key of a source in bans and buckets: an IPv6 address masked to
    ipv6_prefix bits, an IPv4 one (mapped) whole."""
    if not ipv6:
        return saddr
    mask = ((1 << 128) - 1) ^ ((1 << (128 - ipv6_prefix)) - 1)
    return (int.from_bytes(saddr, "big") & mask).to_bytes(16, "big")


def ban_table(bans: Iterable, ipv6_prefix: int = 64) -> dict:
    """(ip, expires_ns) pairs as the bans map holds them: {key: expires_ns}."""
    table = {}
    for ip, expires_ns in bans:
        a = ipaddress.ip_address(ip)
        table[source_key(addr16(a), a.version == 6, ipv6_prefix)] = expires_ns
    return table


def bound_table(bindings: dict) -> dict:
    """The addresses of a binding_table() with the latest expiry at each: what
    the controller keeps in the bound map."""
    table: dict[bytes, int] = {}
    for (_, _, addr), expires_ns in bindings.items():
        table[addr] = max(expires_ns, table.get(addr, 0))
    return table


def _rate_class(buf: _Payload, first: int) -> str | None:
    """The rate class of the message whose first word is at `first`: INVITE
    or REGISTER exactly, followed by SP or HT; None for a response ("SIP/",
    any case); "other" for any other request and for what is not SIP."""
    if buf.span(first, 6) == b"INVITE" and buf[first + 6] in (SP, HT):
        return "invite"
    if buf.span(first, 8) == b"REGISTER" and buf[first + 8] in (SP, HT):
        return "register"
    if lower(buf.span(first, 3)) == b"sip" and buf[first + 3] == ord("/"):
        return None
    return "other"


class RateLimiter:
    """The token buckets of the rate limits, as the XDP program keeps them:
    one time per (source key, class), a GCRA. limits: {class: (per second,
    burst)}, 0 a second unlimited."""

    def __init__(self, limits: dict, ipv6_prefix: int = 64):
        self.limits = policy.rate_limits(limits)
        self.ipv6_prefix = ipv6_prefix
        self.tat: dict[tuple[bytes, str], int] = {}

    def over(self, saddr: bytes, ipv6: bool, cls: str, now_ns: int) -> bool:
        rate, burst = self.limits[cls]
        if not rate:
            return False
        interval = round(1e9 / rate)
        key = (source_key(saddr, ipv6, self.ipv6_prefix), cls)
        if key not in self.tat:
            self.tat[key] = now_ns + interval
            return False
        t = max(self.tat[key], now_ns)
        if t - now_ns > (burst - 1) * interval:
            return True
        self.tat[key] = t + interval
        return False


# -- §2 to §7 Payload ------------------------------------------------------

class _Config:
    def __init__(self, methods, fragments, scan_max, bindings, now_ns):
        for m in methods:
            if m not in consts.METHOD_BITS:
                raise ValueError(f"method {m!r} cannot be guarded")
        self.methods = frozenset(m.encode() for m in methods)
        self.fragments = fragments
        self.scan_max = scan_max
        self.bindings = bindings  # {(user, realm, addr16): expires_ns}
        self.now_ns = now_ns


class _Classifier:
    """§2-§7 over one datagram. `key` is the last binding key looked up."""

    def __init__(self, cfg: _Config, dgram: _Datagram):
        self.cfg = cfg
        self.dgram = dgram
        self.key: tuple[bytes, bytes] | None = None
        self.rate_class: str | None = None  # §2.2: set once the request line is found

    def unfinished(self) -> str:
        if self.dgram.first_fragment:
            return "fragment_passed" if self.cfg.fragments == "pass" else "fragmented"
        return "headers_truncated"

    def run(self) -> str:
        try:
            return self._classify()
        except _Stop as s:
            return s.reason

    # §2
    def _classify(self) -> str:
        d = self.dgram
        payload_len = d.payload_len
        avail = len(d.payload)
        n0 = min(payload_len, avail)
        scan_max = self.cfg.scan_max
        self.more = d.first_fragment or payload_len > n0 or n0 > scan_max
        n = min(n0, scan_max)
        if n == 0:
            return self.unfinished() if self.more else "method_not_guarded"
        self.n = n
        self.buf = _Payload(d.payload, n)
        first = self._request_line()
        lines = self._scan_lines(first)
        creds = self._credential_headers(lines)
        if not creds:
            return "no_credentials"
        self._count_params(creds)
        return self._check_bindings(creds)

    # §3
    def _request_line(self) -> int:
        buf, n = self.buf, self.n
        first = consts.LEADING_MAX
        for i in range(consts.LEADING_MAX):
            if buf[i] not in LWS:  # sofia-sip skips SP, HT, CR and LF here
                first = i
                break
        if first >= n:
            raise _Stop(self.unfinished() if self.more else "method_not_guarded")
        if first == consts.LEADING_MAX:
            raise _Stop("too_many_empty_lines")
        self.rate_class = _rate_class(buf, first)
        for m in self.cfg.methods:
            if buf.span(first, len(m)) == m and buf[first + len(m)] in (SP, HT):
                return first
        if self.more and n - first < consts.METHOD_SPAN:
            raise _Stop(self.unfinished())
        raise _Stop("method_not_guarded")

    # §4: the candidate header lines (starting au/pr, any case) as [start, end]
    def _scan_lines(self, first: int) -> list[list[int]]:
        buf, n = self.buf, self.n
        pos = first
        lines: list[list[int]] = []
        open_ = False
        request_line = True  # no terminator seen yet
        for _step in range(consts.LINE_STEPS):
            if pos >= n:
                raise _Stop(self.unfinished())
            t = None
            for i in range(pos, pos + consts.SCAN_STRIDE):
                if buf[i] in LINE_STOPS:
                    t = i
                    break
            if t is None:
                pos += consts.SCAN_STRIDE
                continue
            if t >= n:
                raise _Stop(self.unfinished())
            if buf[t] not in (CR, LF):
                pos = t + 1
                continue
            nx = t + 2 if buf[t] == CR and buf[t + 1] == LF else t + 1
            if nx >= n:
                raise _Stop(self.unfinished())
            if open_:
                lines[-1][1] = t
            if request_line:
                # sofia-sip skips SP and HT after the request line: the
                # next line is a header, never a fold.
                request_line = False
                if buf[nx] in (SP, HT):
                    k = 0
                    while k < consts.LWS_MAX and buf[nx + k] in (SP, HT):
                        k += 1
                    if k == consts.LWS_MAX:
                        raise _Stop("scan_limit")
                    nx += k
                    if nx >= n:
                        raise _Stop(self.unfinished())
            pos = nx
            if buf[nx] in (CR, LF):
                return lines  # the empty line: the header section ends
            if buf[nx] in (SP, HT):
                continue  # a fold
            # the first two bytes of the two credential header names
            open_ = lower(buf.span(nx, 2)) in (b"au", b"pr")
            if open_:
                if len(lines) >= consts.MAX_LINES:
                    raise _Stop("scan_limit")
                lines.append([nx, -1])
        raise _Stop("scan_limit")

    # §5: credential headers as dicts with the value's [start, end)
    def _credential_headers(self, lines) -> list[dict]:
        buf = self.buf
        creds: list[dict] = []
        for at, end in lines:
            name_len = 0
            for name in (b"authorization", b"proxy-authorization"):
                if lower(buf.span(at, len(name))) == name:
                    name_len = len(name)
                    break
            if not name_len:
                continue
            name_end = at + name_len
            if name_end < end and buf[name_end] in TOKEN:
                continue  # a longer name, e.g. Authorization-Info
            k = buf.count_lws(name_end)
            colon = name_end + k
            if k == consts.LWS_MAX or colon >= end or buf[colon] != ord(":"):
                raise _Stop("credential_unparsable")
            if len(creds) >= consts.MAX_CRED_HDRS:
                raise _Stop("too_many_credentials")
            creds.append({"start": colon + 1, "end": end,
                          "user": [], "realm": []})  # lists of '=' positions
        return creds

    # §6
    def _count_params(self, creds: list[dict]) -> None:
        buf = self.buf
        steps = 0
        for cr in creds:
            pos, end = cr["start"], cr["end"]
            while True:
                if steps == consts.PARAM_STEPS:
                    raise _Stop("scan_limit")
                steps += 1
                if pos >= end:
                    break  # on to the next credential header
                p = None
                for i in range(pos, pos + consts.SCAN_STRIDE):
                    if buf[i] in UR:
                        p = i
                        break
                if p is None:
                    pos += consts.SCAN_STRIDE
                    continue
                pos = p + 1
                if p < end:
                    self._candidate(cr, p)

    def _candidate(self, cr: dict, p: int) -> None:
        buf, end = self.buf, cr["end"]
        if buf[p - 1] in TOKEN:
            return
        if lower(buf.span(p, 8)) == b"username":
            kind, q = "user", p + 8
        elif lower(buf.span(p, 5)) == b"realm":
            kind, q = "realm", p + 5
        else:
            return
        if q >= end or buf[q] in TOKEN:
            return
        k = buf.count_lws(q)
        if k == consts.LWS_MAX:
            raise _Stop("credential_ambiguous")
        q += k
        if q >= end or buf[q] != ord("="):
            return
        cr[kind].append(q)

    # §7
    def _check_bindings(self, creds: list[dict]) -> str:
        reason = "bound"
        for cr in creds:
            if len(cr["user"]) > 1 or len(cr["realm"]) > 1:
                return "credential_ambiguous"
            if not cr["user"] or not cr["realm"]:
                return "credential_unparsable"
            user = self._value(cr, cr["user"][0], consts.USER_MAX)
            realm = self._value(cr, cr["realm"][0], consts.REALM_MAX)
            reason = self._lookup(user, realm)
            if reason != "bound":
                return reason
        return reason

    def _value(self, cr: dict, eq: int, limit: int) -> bytes:
        buf, end = self.buf, cr["end"]
        v = eq + 1
        k = buf.count_lws(v)
        if k == consts.LWS_MAX:
            raise _Stop("credential_ambiguous")
        v += k
        lead = self._quotes(v)
        if lead == consts.QUOTES_MAX:
            raise _Stop("credential_ambiguous")
        v += lead
        quoted = lead > 0
        if v >= end:
            raise _Stop("credential_unparsable")
        # sofia-sip tokenizes before FreeSWITCH strips the quotes: after an
        # odd number of leading quotes the value is inside a quoted string;
        # outside one (none, or an even number) sofia-sip splits at commas
        # and compacts whitespace.
        stops = set(b'"\r\n') if lead % 2 else set(b'"\r\n, \t')
        t = None
        for i in range(v, v + consts.REALM_MAX + 8):
            if buf[i] in stops:
                t = i
                break
        if t is None or t > end:
            t = end
        if t - v > limit:
            raise _Stop("credential_too_long")
        if t == v:
            raise _Stop("credential_unparsable")
        c = buf[t] if t < end else LF
        if quoted:
            if c != ord('"'):
                raise _Stop("credential_ambiguous")
            trail = self._quotes(t)
            if trail == consts.QUOTES_MAX or (lead + trail) % 2:
                raise _Stop("credential_ambiguous")  # unbalanced quoting
            after = t + trail
        else:
            if c == ord('"'):
                raise _Stop("credential_ambiguous")
            after = t
        if after < end:
            k = buf.count_lws(after)
            if k == consts.LWS_MAX:
                raise _Stop("credential_ambiguous")
            after += k
            if after < end and buf[after] != ord(","):
                raise _Stop("credential_ambiguous")
        return buf.span(v, t - v)

    def _quotes(self, at: int) -> int:
        """'"' bytes at the start of buf[at:at+QUOTES_MAX]."""
        k = 0
        while k < consts.QUOTES_MAX and self.buf[at + k] == ord('"'):
            k += 1
        return k

    def _lookup(self, user: bytes, realm: bytes) -> str:
        u, r = lower(user), lower(realm)
        self.key = (u, r)
        expires = self.cfg.bindings.get((u, r, self.dgram.saddr))
        if expires is None:
            return "not_bound"
        if expires <= self.cfg.now_ns:
            return "expired"
        return "bound"


# -- the public function -------------------------------------------------

def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def binding_table(bindings: Iterable) -> dict:
    """(user, realm, ip, expires_ns) tuples as the kernel map holds them:
    credentials lower-cased (exact bytes and lengths), address in 16 bytes,
    later entries replacing earlier ones with the same key."""
    table = {}
    for user, realm, ip, expires_ns in bindings:
        u = user.encode("utf-8") if isinstance(user, str) else bytes(user)
        r = realm.encode("utf-8") if isinstance(realm, str) else bytes(realm)
        u, r = lower(u), lower(r)
        if not u or not r or len(u) > consts.USER_MAX or len(r) > consts.REALM_MAX:
            raise ValueError(f"binding {user!r}@{realm!r} cannot be stored")
        table[(u, r, addr16(ip))] = max(0, min(int(expires_ns), (1 << 64) - 1))
    return table


def classify_reason(frame: bytes, *, methods=("INVITE",), fragments="verdict",
                    ports=(5060,), trusted=(), bindings=(), now_ns: int | None = None,
                    scan_max: int = consts.SCAN_MAX, bans=(), bound=None,
                    ipv6_prefix: int = 64, limiter: RateLimiter | None = None):
    """The reason (a word of SPEC_REASONS) and the last binding key looked
    up, (user, realm) lower-cased bytes, or None.

    bans: (ip, expires_ns) pairs or a ban_table(); bound: {addr16:
    expires_ns}, by default bound_table() of the bindings (what the
    controller keeps); limiter: the rate limits' buckets, kept across calls
    (None: no rate limits)."""
    if now_ns is None:
        now_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    fragments = policy.fragments(fragments)  # the config's check: a ValueError
    table = bindings if isinstance(bindings, dict) else binding_table(bindings)
    banned = bans if isinstance(bans, dict) else ban_table(bans, ipv6_prefix)
    cfg = _Config(methods, fragments, scan_max, table, now_ns)
    try:
        dgram = _parse_frame(bytes(frame))
    except _Stop as s:
        return s.reason, None
    if dgram.dport not in set(ports):
        return "port_not_guarded", None
    # a ban: every packet to a guarded port, before its payload is read, and
    # before the trusted networks (the controller never bans those itself)
    if banned.get(source_key(dgram.saddr, dgram.ipv6, ipv6_prefix), 0) > now_ns:
        return "banned", None
    if _in_trusted(dgram.saddr, trusted):
        return "trusted", None
    if dgram.tcp:
        return "not_udp", None
    c = _Classifier(cfg, dgram)
    reason = c.run()
    # a request the policy passes may be one of a flood (no credentials, or
    # a method not guarded), unless its source holds a binding
    if reason in ("no_credentials", "method_not_guarded") and c.rate_class \
            and limiter is not None:
        held = (bound_table(table) if bound is None else bound).get(dgram.saddr, 0)
        if held <= now_ns and limiter.over(dgram.saddr, dgram.ipv6, c.rate_class, now_ns):
            reason = "rate_limited"
    return reason, c.key


def classify(frame: bytes, *, mode: str = "enforce", action: str = "drop",
             methods=("INVITE",), fragments: str = "verdict", ports=(5060,),
             trusted=(), bindings=(), now_ns: int | None = None,
             scan_max: int = consts.SCAN_MAX, bans=(), bound=None, ipv6_prefix: int = 64,
             limiter: RateLimiter | None = None) -> Verdict:
    """What the XDP program decides for frame (§1-§8 of docs/classifier.md).

    bindings are (user, realm, ip, expires_ns) tuples (or a binding_table());
    now_ns is CLOCK_BOOTTIME (default: now); scan_max is the program's
    NFG_SCAN_MAX."""
    mode, action = policy.mode(mode), policy.action(action)  # the config's checks
    reason, key = classify_reason(frame, methods=methods, fragments=fragments, ports=ports,
                                  trusted=trusted, bindings=bindings, now_ns=now_ns,
                                  scan_max=scan_max, bans=bans, bound=bound,
                                  ipv6_prefix=ipv6_prefix, limiter=limiter)
    # user and realm: the key that decided bound / not_bound / expired (for
    # bound with several headers the last one's), else None.
    user = realm = None
    if key is not None and reason in ("bound", "not_bound", "expired"):
        user, realm = _cstr(key[0]), _cstr(key[1])
    # §8
    if not consts.is_verdict(reason):
        act = would = "pass"
    else:
        # a flood is dropped, never rejected
        would = "mark" if action == "reject" and not consts.is_flood(reason) else "drop"
        act = would if mode == "enforce" else "pass"
    return Verdict(action=act, reason=reason, would=would, user=user, realm=realm,
                   retval=XDP_DROP if act == "drop" else XDP_PASS)
