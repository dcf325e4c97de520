"""Generated frames for the differential tests: hypothesis strategies and
deterministic sweeps across every limit.

SIP requests as a lenient SIP stack accepts them and as an attacker crafts
them (mixed line ends, folds anywhere, odd case and whitespace, quoting
games, duplicated parameters, look-alike headers, values near the limits,
junk bytes, truncation), in Ethernet frames with VLAN tags, IPv4 options,
IPv6 extension headers and IP fragments (built with nfguard.packets), under
random configurations, trusted networks and bindings.

Used by tests/test_reference.py (the reference alone, no root) and
tests/test_differential.py (kernel == reference). Imports nothing that
needs root or bcc.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from nfguard import consts, packets, reference
from nfguard.packets import ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP

HOUR = 3600 * 10**9
SMALL_SCAN = 1024
MAX_FRAME = 3500

SRC_V4 = ["192.0.2.10", "192.0.2.11", "203.0.113.5"]
SRC_V6 = ["2001:db8::10", "2001:db8::11", "::ffff:192.0.2.10"]
DST_V4, DST_V6 = "192.0.2.1", "2001:db8::1"
TRUSTED_POOL = ["192.0.2.0/24", "192.0.2.10/32", "10.0.0.0/8", "2001:db8::/32",
                "2001:db8::11/128", "::ffff:0:0/96", "fe80::/10"]
OTHER_METHODS = ["ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "REFER", "SUBSCRIBE",
                 "NOTIFY", "INFO", "UPDATE", "PRACK", "PUBLISH"]


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


# ---------------------------------------------------------------------------
# A test case: frame + configuration + bindings
# ---------------------------------------------------------------------------

@dataclass
class Case:
    frame: bytes
    mode: str = "enforce"
    action: str = "drop"
    methods: tuple = ("INVITE",)
    fragments: str = "verdict"
    ports: tuple = (5060,)
    trusted: tuple = ()
    # (user, realm, ip, offset from now in ns): the expiry is now + offset
    bindings: list = field(default_factory=list)
    note: str = ""
    # floods (docs/design.md §2.2): (ip, offset from now in ns) bans, the rate
    # limits (None: none), and how often the frame is sent before the run
    # that is judged (it fills its bucket)
    bans: list = field(default_factory=list)
    rate_limits: dict | None = None
    repeat: int = 0
    ipv6_prefix: int = 64

    def ref_kwargs(self, now: int, scan_max: int) -> dict:
        return dict(mode=self.mode, action=self.action, methods=self.methods,
                    fragments=self.fragments, ports=self.ports, trusted=self.trusted,
                    bindings=[(u, r, ip, now + off) for u, r, ip, off in self.bindings],
                    bans=[(ip, now + off) for ip, off in self.bans],
                    ipv6_prefix=self.ipv6_prefix, now_ns=now, scan_max=scan_max)

    def reference_verdict(self, now: int, scan_max: int = consts.SCAN_MAX):
        """The reference's verdict for the judged run, after `repeat` runs
        through the same buckets."""
        kw = self.ref_kwargs(now, scan_max)
        if self.rate_limits is not None:
            kw["limiter"] = reference.RateLimiter(self.rate_limits, self.ipv6_prefix)
        for _ in range(self.repeat):
            reference.classify(self.frame, **kw)
        return reference.classify(self.frame, **kw)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return (f"Case(frame={self.frame!r},\n mode={self.mode!r}, action={self.action!r}, "
                f"methods={self.methods!r}, fragments={self.fragments!r}, ports={self.ports!r},"
                f"\n trusted={self.trusted!r},\n bindings={self.bindings!r}, note={self.note!r},"
                f"\n bans={self.bans!r}, rate_limits={self.rate_limits!r}, "
                f"repeat={self.repeat}, ipv6_prefix={self.ipv6_prefix})")



# ---------------------------------------------------------------------------
# Frame building
# ---------------------------------------------------------------------------

@dataclass
class L2L4:
    """How to wrap a UDP payload into a frame."""
    version: int = 4
    src: str = "192.0.2.10"
    sport: int = 5060
    dport: int = 5060
    vlans: tuple = ()
    ip_options: bytes = b""
    ext: tuple = ()  # IPv6 extension header kinds (44 = the fragment header)
    frag: str = "none"  # none, first, later, atomic
    frag_offset: int = 8
    frag_keep: float = 1.0  # the share of the UDP payload a first fragment holds
    frag_extra: int = 0  # bytes a first fragment holds past its 8-byte boundary
    ip_len_delta: int | None = 0  # None: the IP length field is 0
    udp_len_delta: int | None = 0  # None: the length field is set to udp_len_abs
    udp_len_abs: int = 0
    trailer: bytes = b""
    corrupt: str = "none"
    cut: int = 0  # bytes cut from the frame's end


def build_frame(payload: bytes, w: L2L4) -> bytes:
    """The payload in a frame as w says (nfguard.packets builds the headers;
    the forgeries and corruptions are applied here)."""
    dst = DST_V4 if w.version == 4 else DST_V6
    length = 8 + len(payload) + w.udp_len_delta if w.udp_len_delta is not None else w.udp_len_abs
    length &= 0xFFFF
    # the checksum over the forged length, as the length field says
    udp = packets.udp_datagram(w.src, dst, payload, w.sport, w.dport, length=length,
                               checksum_length=length)
    more = w.frag == "first"
    if more:  # the fragment ends on an 8-byte boundary of the datagram (or not)
        udp = udp[:(8 + int(len(payload) * w.frag_keep)) // 8 * 8 + w.frag_extra]
    offset = w.frag_offset if w.frag == "later" else 0
    frag = None if w.frag == "none" else (offset, more)
    proto = 6 if w.corrupt == "proto" else IPPROTO_UDP

    def ip_packet(length=None):
        return packets.ip_packet(w.src, dst, proto, udp, options=w.ip_options,
                                 ext_headers=w.ext, frag=frag, length=length)

    ip = ip_packet()
    if w.ip_len_delta != 0:  # forge the IP length field (IPv4 total, IPv6 payload)
        real = len(ip) if w.version == 4 else len(ip) - 40
        ip = ip_packet(0 if w.ip_len_delta is None else max(0, real + w.ip_len_delta) & 0xFFFF)
    if w.corrupt == "ipver":
        ip = bytes([0x65 if w.version == 4 else 0x40]) + ip[1:]
    elif w.corrupt == "ihl_small" and w.version == 4:
        ip = bytes([0x44]) + ip[1:]
    elif w.corrupt == "ihl_big" and w.version == 4:
        ip = bytes([0x4F]) + ip[1:]
    ethertype = ETH_P_IP if w.version == 4 else ETH_P_IPV6
    if w.corrupt == "ethertype":
        ethertype = 0x0806
    frame = packets.ethernet(ethertype, ip, w.vlans) + w.trailer
    if w.cut:
        frame = frame[:max(14, len(frame) - w.cut)]
    return frame[:MAX_FRAME]


# ---------------------------------------------------------------------------
# Strategies: SIP text
# ---------------------------------------------------------------------------

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def pick(common, *rare, weight: int = 4):
    """common `weight` times as often as each rare choice."""
    return st.sampled_from([common] * weight + list(rare))


def rarely(draw, k: int) -> bool:
    """True one time in k + 1 (False is what hypothesis shrinks to)."""
    return draw(st.sampled_from([False] * k + [True]))


# Whitespace as it appears around ':' '=' ',': what a phone sends, and what
# an attacker adds (folds, bare CR, runs at and over LWS_MAX).
TAME_WS = st.sampled_from(["", "", "", " ", " ", "  ", "\t", " \t", "\r\n ", "\n\t", "\r "])
WILD_WS = st.sampled_from(["", " ", "\r\n\t ", " " * 15, " " * 16, "\t" * 17, " \r\n  ",
                           "\r\n\r\n ", " " * 14 + "\r\n"])


def ws(draw, wild: bool) -> str:
    if wild and rarely(draw, 3):
        return draw(WILD_WS)
    return draw(TAME_WS)


@st.composite
def rcase(draw, s: str) -> str:
    """s in some case: as is, lower, upper, or any mix."""
    kind = draw(st.sampled_from(["as_is", "as_is", "lower", "upper", "mixed"]))
    if kind == "lower":
        return s.lower()
    if kind == "upper":
        return s.upper()
    if kind == "mixed":
        bits = draw(st.integers(0, (1 << len(s)) - 1))
        return "".join(c.upper() if bits >> i & 1 else c.lower() for i, c in enumerate(s))
    return s


def identifiers(names: list[str]):
    long_lengths = [63, 64, 65, 127, 128, 129, 135, 136, 137, 150]
    return st.one_of(
        st.sampled_from(names),
        st.sampled_from(names),
        st.sampled_from(names),
        st.sampled_from(names),
        st.text(alphabet=ALNUM + ".-_", min_size=1, max_size=12),
        st.builds(lambda c, k: c * k, st.sampled_from(list("aZ9.")),
                  st.sampled_from(long_lengths)),
        # bytes a lenient reader keeps, and some it must not
        st.text(alphabet=ALNUM + " \t,;@=:'\\<>%é\"", min_size=1, max_size=10),
    )


USERS = identifiers(["1001", "1002", "alice", "Bob", "x", "User"])
REALMS = identifiers(["pbx.example.com", "PBX.Example.COM", "example.org", "10.0.0.1", "r"])


@st.composite
def quoted(draw, value: str, wild: bool) -> str:
    tame = ["q", "q", "q", "plain", "balanced"]
    style = draw(st.sampled_from(tame + (["multi", "multi", "open", "close", "single",
                                          "eight", "inner"] if wild else [])))
    if style == "q":
        return f'"{value}"'
    if style == "plain":
        return value
    if style == "balanced":
        k = draw(st.integers(1, 4))
        return '"' * k + value + '"' * k
    if style == "multi":
        return '"' * draw(st.integers(2, 9)) + value + '"' * draw(st.integers(0, 3))
    if style == "open":
        return '"' + value
    if style == "close":
        return value + '"'
    if style == "single":
        return f"'{value}'"
    if style == "eight":
        return '"' * 8 + value + '"'
    # a quote inside the value
    cut = draw(st.integers(0, len(value)))
    return '"' + value[:cut] + '"' + value[cut:] + '"'


EXTRA_PARAMS = [
    ("nonce", "8d3c5a0e-57f3-4d52-b1a4"),
    ("uri", "sip:1002@pbx.example.com"),
    ("response", "5c1d7f0e3b9a2c4d6e8f0a1b2c3d4e5f"),
    ("algorithm", "MD5"),
    ("cnonce", "0a4f113b"),
    ("qop", "auth"),
    ("nc", "00000001"),
    ("opaque", "rr"),
]
LOOKALIKE_PARAMS = [
    ("usernamex", "evil"), ("xusername", "evil"), ("user", "evil"), ("realms", "evil"),
    ("auth-realm", "evil"), ("realm_", "evil"), ("my.realm", "evil"),
    ("nonce", "username=evil"), ("opaque", "a, realm=evil"), ("uri", "sip:realm@x"),
]


@st.composite
def credential_value(draw, user: str, realm: str, wild: bool) -> str:
    params = []
    if not wild or not rarely(draw, 9):
        params.append(("username", user))
    if not wild or not rarely(draw, 9):
        params.append(("realm", realm))
    params += draw(st.lists(st.sampled_from(EXTRA_PARAMS), max_size=6, unique=True))
    if wild and rarely(draw, 3):
        params += draw(st.lists(st.sampled_from(LOOKALIKE_PARAMS), min_size=1, max_size=2))
    if wild and rarely(draw, 2):  # a duplicated username or realm
        params.append(draw(st.sampled_from([("username", user), ("realm", realm),
                                            ("username", "other"), ("realm", "other")])))
    params = draw(st.permutations(params))
    text = ""
    for i, (name, value) in enumerate(params):
        if i:
            sep = draw(pick(",", ";", " ", ",,", weight=12)) if wild else ","
            text += ws(draw, wild) + sep + ws(draw, wild)
        text += (draw(rcase(name)) + ws(draw, wild) + "=" + ws(draw, wild)
                 + draw(quoted(value, wild)))
    scheme = draw(st.sampled_from(["Digest", "Digest", "digest", "DIGEST", "Basic", "Evil",
                                   "", "Digest\t", "x,"]))
    return (draw(st.sampled_from(["", " ", " ", "\t", "  "])) + scheme
            + draw(st.sampled_from([" ", " ", "\t", "  ", "\r\n "])) + text)


CRED_NAMES = ["Proxy-Authorization", "Authorization"]
LOOKALIKE_NAMES = ["Authorization-Info", "Proxy-Authorization-Info", "Authorizationx",
                   "Authorizatio", "Proxy-Authorizatio", "Proxy_Authorization",
                   "Authorization2", "Authorization."]


@st.composite
def credential_header(draw, user: str, realm: str, wild: bool) -> str:
    name = draw(st.sampled_from(CRED_NAMES))
    colon = ":"
    if wild and rarely(draw, 4):
        name = draw(st.sampled_from(LOOKALIKE_NAMES))
    if wild and rarely(draw, 9):
        colon = draw(st.sampled_from(["=", "", " :", "::", ";"]))
    return (draw(rcase(name)) + ws(draw, wild) + colon
            + draw(credential_value(user, realm, wild)))


OTHER_HEADERS = [
    "Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1",
    "Max-Forwards: 70",
    "From: <sip:1001@pbx.example.com>;tag=1928301774",
    "To: <sip:1002@pbx.example.com>",
    "Call-ID: a84b4c76e66710@192.0.2.10",
    "CSeq: 2 INVITE",
    "Contact: <sip:1001@192.0.2.10:5060>",
    "Allow: INVITE, ACK, CANCEL, BYE",
    "Accept: application/sdp",
    "Proxy-Authenticate: Digest realm=\"pbx.example.com\", nonce=\"x\"",
    "Proxy-Require: foo",
    "P-Asserted-Identity: <sip:1001@pbx.example.com>",
    "Accept-Language: en",
    "Alert-Info: <http://www.example.com/sounds/moo.wav>",
    "User-Agent: Phone\t1.0",
    "Subject: username=\"x\", realm=\"y\"",
    "a: b",
    "p:",
    "AU:",
    "pR: x",
]
LOOKALIKE_HEADERS = [
    "Authorization-Info: nextnonce=\"47364c23432d2e131a5fb210812c\", username=\"a\"",
    "X-Authorization: Digest username=\"evil\", realm=\"evil\"",
    "Authorizations: Digest username=\"evil\", realm=\"evil\"",
    "Proxy-Authorization-Info: Digest username=\"evil\", realm=\"evil\"",
]


@st.composite
def sip_message(draw, wild: bool | None = None) -> tuple[bytes, list]:
    """A SIP request as bytes, and the (user, realm) pairs its credential
    headers were written with. Tame messages are what a phone or a careful
    attacker sends; wild ones add every trick and malformation."""
    if wild is None:
        wild = rarely(draw, 2)
    eol_mode = draw(st.sampled_from(["crlf", "crlf", "crlf", "lf", "cr", "mixed"]))

    def eol():
        if eol_mode == "mixed":
            return draw(st.sampled_from(["\r\n", "\n", "\r"]))
        return {"crlf": "\r\n", "lf": "\n", "cr": "\r"}[eol_mode]

    leading = ""
    kind = draw(pick("none", "few", "many", weight=6 if wild else 16))
    if kind == "few":
        leading = "".join(draw(st.sampled_from(["\r\n", "\n", "\r", " ", "\t"]))
                          for _ in range(draw(st.integers(1, 4))))
    elif kind == "many":
        leading = draw(st.sampled_from(["\r", "\n", "\r\n", " ", "\t", "\r\n \t"])) * 70
        leading = leading[:draw(st.sampled_from([62, 63, 64, 65, 66, 70]))]

    method = "INVITE"
    if rarely(draw, 7):
        method = draw(st.sampled_from(OTHER_METHODS + [
            "REGISTER", "invite", "Invite", "INVITEX", "INVIT", "SIP/2.0"]))
    sep = " "
    if wild and rarely(draw, 5):
        sep = draw(st.sampled_from(["\t", "  ", " \t", "", "x", "\r\n"]))
    request_line = f"{method}{sep}sip:1002@pbx.example.com SIP/2.0"

    headers = list(draw(st.lists(st.sampled_from(OTHER_HEADERS), max_size=10)))
    if wild and rarely(draw, 2):
        headers += draw(st.lists(st.sampled_from(LOOKALIKE_HEADERS), min_size=1, max_size=2))
        headers = draw(st.permutations(headers))
    creds = []
    counts = [1] * 8 + [0, 2, 2, 3, 4, 5] + ([5, 6] if wild else [])
    for _ in range(draw(st.sampled_from(counts))):
        user, realm = draw(USERS), draw(REALMS)
        if creds and draw(st.booleans()):  # another header with the same credentials
            user, realm = creds[-1]
        creds.append((user, realm))
        pos = draw(st.integers(0, len(headers)))
        headers.insert(pos, draw(credential_header(user, realm, wild)))

    # size knobs for the limits
    knob = draw(pick("none", "pad", "a_lines", "tabs", "ur", "lines", weight=20))
    if knob == "pad":
        n = draw(st.sampled_from([100, 900, 1000, 1100, 2000, 3000]))
        headers.insert(draw(st.integers(0, len(headers))), "X-Pad: " + "z" * n)
    elif knob == "a_lines":  # candidate lines (au, pr) up to MAX_LINES
        k = draw(st.integers(55, 70))
        at = draw(st.integers(0, len(headers)))
        line = draw(st.sampled_from(["Au: 1", "Authorization-Info: x", "PR: x",
                                     "Proxy-Require: x", "a: 1"]))
        headers[at:at] = [line] * k
    elif knob == "tabs":
        headers.insert(draw(st.integers(0, len(headers))),
                       "X-Tabs: " + "\t" * draw(st.integers(560, 700)))
    elif knob == "ur":
        # many 'u'/'r' bytes inside a credential value: parameter steps
        body = draw(st.sampled_from(["u", "r", "uR", "xu", "ur "])) * draw(st.integers(150, 420))
        for i, h in enumerate(headers):
            if "uthorization" in h.lower():
                headers[i] = h + ", x=\"" + body + "\""
                break
    elif knob == "lines":
        # many short lines: one line-scanner step each
        at = draw(st.integers(0, len(headers)))
        headers[at:at] = ["b:"] * draw(st.integers(560, 700))

    # folds anywhere
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2] if wild else [0, 0, 0, 0, 1]))):
        if not headers:
            break
        i = draw(st.integers(0, len(headers) - 1))
        h = headers[i]
        at = draw(st.integers(0, len(h)))
        headers[i] = h[:at] + draw(st.sampled_from(["\r\n ", "\n\t", "\r ", "\r\n\t\t"])) + h[at:]

    text = leading + request_line
    for i, h in enumerate(headers):
        text += eol()
        if i == 0 and rarely(draw, 5):
            # SP/HT at the start of the line after the request line
            text += draw(st.sampled_from([" ", "\t", " \t ", " " * 15, " " * 16, "\t" * 20]))
        text += h
    end = draw(pick("empty", "none", "ws_line", "eol_only", weight=6 if wild else 20))
    if end == "empty":
        text += eol() + eol()
    elif end == "ws_line":
        text += eol() + " \t" + eol() + eol()
    elif end == "eol_only":
        text += eol()
    body = draw(st.sampled_from(["", "", "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\n",
                                 "Proxy-Authorization: Digest username=\"evil\"\r\n"]))
    data = (text + body).encode("utf-8")
    if wild:
        data = draw(mutated(data))
    return data, creds


MUTATION_BYTES = st.one_of(
    st.sampled_from(list(b"\r\n\t \"=,:;uUrRaAp\x00\x0b\x0c\x0e\x1f\x7f\x80\xff")),
    st.integers(0, 255),
)


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """0 to 3 small edits: insert, delete, replace, duplicate, fold, truncate."""
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        if not data:
            break
        op = draw(st.sampled_from(["insert", "insert", "delete", "replace", "dup", "fold",
                                   "truncate"]))
        i = draw(st.integers(0, len(data) - 1))
        if op == "insert":
            data = data[:i] + bytes([draw(MUTATION_BYTES)]) + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + draw(st.integers(1, 8)):]
        elif op == "replace":
            data = data[:i] + bytes([draw(MUTATION_BYTES)]) + data[i + 1:]
        elif op == "dup":
            j = min(len(data), i + draw(st.integers(1, 40)))
            data = data[:j] + data[i:j] + data[j:]
        elif op == "fold":
            data = data[:i] + draw(st.sampled_from([b"\r\n ", b"\n ", b"\r\t"])) + data[i:]
        else:
            data = data[:i]
    return data


NON_SIP = st.one_of(
    st.binary(max_size=120),
    st.sampled_from([
        b"", b"\r\n", b"\r\n" * 40, b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n",
        b"\x00" * 64, b"INVITE", b"INVITE ", b"INVIT", b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        b"REGISTER sip:pbx.example.com SIP/2.0\r\nAuthorization: Digest username=\"1001\", "
        b"realm=\"r\"\r\n\r\n",
    ]),
)


# ---------------------------------------------------------------------------
# Strategies: configuration, bindings, frames
# ---------------------------------------------------------------------------

def storable(user: str, realm: str) -> bool:
    u, r = user.encode().lower(), realm.encode().lower()
    return 0 < len(u) <= consts.USER_MAX and 0 < len(r) <= consts.REALM_MAX


def swapcase_ascii(s: str) -> str:
    return "".join(c.swapcase() if c.isascii() else c for c in s)


@st.composite
def bindings_for(draw, creds: list, src: str) -> list:
    """Bind the credentials a message uses: to its source (perhaps in
    another case), expired, to another address, or not at all."""
    out = []
    other = draw(st.sampled_from(["192.0.2.99", "2001:db8::99", "192.0.2.11"]))
    for user, realm in creds:
        if not storable(user, realm):
            continue
        how = draw(st.sampled_from(["bound"] * 4 + ["bound_case"] * 2 + [
            "none", "none", "expired", "expired", "other", "other", "both"]))
        if how == "bound":
            out.append((user, realm, src, HOUR))
        elif how == "bound_case":
            out.append((swapcase_ascii(user), swapcase_ascii(realm), src, HOUR))
        elif how == "expired":
            out.append((user, realm, src, -HOUR))
        elif how == "other":
            out.append((user, realm, other, HOUR))
        elif how == "both":
            out.append((user, realm, other, HOUR))
            out.append((user, realm, src, HOUR))
    if rarely(draw, 4):
        out.append(("1001", "pbx.example.com", draw(st.sampled_from(SRC_V4 + SRC_V6)), HOUR))
    # One binding per key, the last one (as a map update leaves it).
    last = {}
    for b in out:
        last[(b[0].encode().lower(), b[1].encode().lower(), reference.addr16(b[2]))] = b
    return list(last.values())


TWISTS = ["vlan1", "vlan2", "vlan3", "ipopts", "ipopts40", "ext", "ext6", "ext7", "ah",
          "frag_first", "frag_first", "frag_unaligned", "frag_later", "frag_atomic", "ip_len",
          "ip_len", "udp_longer", "udp_shorter",
          "udp_tiny", "trailer", "ethertype", "ipver", "ihl_small", "ihl_big", "proto", "cut",
          "dport"]
BENIGN_TWISTS = ["vlan1", "vlan2", "ipopts", "ipopts40", "ext", "ah", "trailer"]


def twist(w: L2L4, t: str, draw) -> None:
    if t == "vlan1":
        w.vlans = (10,)
    elif t == "vlan2":
        w.vlans = (10, 20)
    elif t == "vlan3":
        w.vlans = (10, 20, 30)
    elif t == "ipopts":
        if w.version == 4:
            w.ip_options = draw(st.sampled_from([b"\x01" * 4, b"\x94\x04\x00\x00"]))
        else:
            w.ext = (0,)
    elif t == "ipopts40":
        if w.version == 4:
            w.ip_options = b"\x01" * 40
        else:
            w.ext = (0, 43, 60)
    elif t == "ext":
        if w.version == 6:
            w.ext = draw(st.sampled_from([(0,), (60,), (43,), (0, 43, 60), (0, 60, 43, 51, 60)]))
    elif t == "ext6":
        if w.version == 6:
            w.ext = draw(st.sampled_from([(0, 60, 60, 60, 60, 60), (60, 44), (60,) * 5 + (44,)]))
    elif t == "ext7":
        if w.version == 6:
            w.ext = draw(st.sampled_from([(60,) * 7, (0, 60, 60, 60, 60, 60, 44), (51,) * 8]))
    elif t == "ah":
        if w.version == 6:
            w.ext = (51,)
    elif t == "frag_first":
        w.frag = "first"
        w.frag_keep = draw(st.sampled_from([1.0, 1.0, 0.9, 0.5, 0.1, 0.0]))
    elif t == "frag_unaligned":
        w.frag = "first"
        w.frag_keep = draw(st.sampled_from([1.0, 0.5, 0.0]))
        w.frag_extra = draw(st.integers(1, 7))
    elif t == "ip_len":
        w.ip_len_delta = draw(st.sampled_from([-1, -7, -8, -9, -100, 1, 100, None]))
    elif t == "frag_later":
        w.frag = "later"
        w.frag_offset = draw(st.sampled_from([8, 1480, 8184]))
    elif t == "frag_atomic":
        w.frag = "atomic"  # IPv6 fragment header with offset 0 and M clear
    elif t == "udp_longer":
        w.udp_len_delta = draw(st.sampled_from([1, 100, 4000]))
    elif t == "udp_shorter":
        w.udp_len_delta = -draw(st.sampled_from([1, 2, 10, 100]))
    elif t == "udp_tiny":
        w.udp_len_delta, w.udp_len_abs = None, draw(st.integers(0, 9))
    elif t == "trailer":
        w.trailer = draw(st.sampled_from([b"\0" * 6, b"\r\n\r\n", b"padding!"]))
    elif t in ("ethertype", "ipver", "ihl_small", "ihl_big", "proto"):
        w.corrupt = t
    elif t == "cut":
        w.cut = draw(st.integers(1, 200))
    elif t == "dport":
        w.dport = draw(st.sampled_from([5080, 53]))


@st.composite
def wrapper(draw, plain: bool = False) -> L2L4:
    """How the payload travels: a plain UDP datagram to 5060, or that with
    one twist (and now and then a second, benign one)."""
    w = L2L4()
    w.version = draw(st.sampled_from([4, 4, 4, 6]))
    w.src = draw(st.sampled_from(SRC_V4 if w.version == 4 else SRC_V6))
    w.sport = draw(st.sampled_from([5060, 40000]))
    if plain:
        return w
    if rarely(draw, 2):
        twist(w, draw(st.sampled_from(TWISTS)), draw)
        if rarely(draw, 3):
            twist(w, draw(st.sampled_from(BENIGN_TWISTS)), draw)
    return w


@st.composite
def configs(draw, case: Case, src: str) -> Case:
    case.mode = draw(pick("enforce", "monitor"))
    case.action = draw(pick("drop", "reject", weight=2))
    extra = draw(st.lists(st.sampled_from(OTHER_METHODS), max_size=3, unique=True))
    case.methods = tuple(["INVITE"] + extra) if not rarely(draw, 19) else tuple(extra or ["BYE"])
    case.fragments = draw(pick("verdict", "pass", weight=2))
    case.ports = draw(pick((5060,), (5060, 5080), (5080,), weight=10))
    if rarely(draw, 11):
        case.trusted = tuple(draw(st.lists(st.sampled_from(TRUSTED_POOL), min_size=1,
                                           max_size=3, unique=True)))
    return draw(floods(case, src))


# A rate no bucket refills at while a test runs: one request per 1,000 s.
SLOW_RATE = 0.001
BAN_POOL_V4 = ["192.0.2.11", "203.0.113.5"]
BAN_POOL_V6 = ["2001:db8::99", "2001:db8:0:1::10", "::ffff:192.0.2.10"]


@st.composite
def floods(draw, case: Case, src: str) -> Case:
    """Bans (of the source, a neighbour, its /64, or expired) and rate
    limits with the frame repeated into its bucket, now and then."""
    if rarely(draw, 5):
        pool = [src] * 3 + BAN_POOL_V4 + BAN_POOL_V6
        case.bans = [(draw(st.sampled_from(pool)), draw(pick(HOUR, -HOUR, weight=3)))
                     for _ in range(draw(st.integers(1, 2)))]
    if rarely(draw, 4):
        classes = draw(st.lists(st.sampled_from(list(consts.RATE_CLASSES)), min_size=1,
                                unique=True))
        case.rate_limits = {c: (draw(pick(SLOW_RATE, 0.0, weight=5)), draw(st.integers(1, 3)))
                            for c in classes}
        case.repeat = draw(st.integers(0, 4))
    if rarely(draw, 6):
        case.ipv6_prefix = draw(st.sampled_from([48, 56, 128]))
    return case


@st.composite
def sip_cases(draw, plain_frames: bool = False, max_payload: int = 3300,
              wild: bool | None = None) -> Case:
    """The main mix: a SIP request, tame or wild, in a frame."""
    data, creds = draw(sip_message(wild))
    data = data[:max_payload]
    w = draw(wrapper(plain=plain_frames))
    case = Case(frame=build_frame(data, w), note=f"{w}")
    case.bindings = draw(bindings_for(creds, w.src))
    return draw(configs(case, w.src))


@st.composite
def fragment_cases(draw) -> Case:
    """The first or a later IP fragment of a SIP request."""
    data, creds = draw(sip_message())
    w = L2L4()
    w.version = draw(st.sampled_from([4, 6]))
    w.src = draw(st.sampled_from(SRC_V4 if w.version == 4 else SRC_V6))
    w.frag = draw(pick("first", "later", "atomic", weight=6))
    w.frag_keep = draw(st.floats(0.0, 1.0))
    w.frag_offset = draw(st.sampled_from([8, 1480]))
    if rarely(draw, 3):
        w.frag_extra = draw(st.integers(1, 7))
    if rarely(draw, 5):
        twist(w, draw(st.sampled_from(["ip_len", "udp_tiny", "trailer", "udp_longer"])), draw)
    if w.version == 6:
        w.ext = draw(st.sampled_from([(), (), (0,), (60, 44), (44, 44), (0, 60, 60, 60, 60, 44),
                                      (0, 60, 60, 60, 60, 60, 44)]))
    case = Case(frame=build_frame(data[:3300], w), note=f"{w}")
    case.bindings = draw(bindings_for(creds, w.src))
    return draw(configs(case, w.src))


@st.composite
def junk_cases(draw) -> Case:
    """Non-SIP payloads and odd frames."""
    kind = draw(st.sampled_from(["payload", "payload", "frame", "tcp"]))
    if kind == "tcp":
        w = draw(wrapper(plain=True))
        dst = DST_V6 if ":" in w.src else DST_V4
        header = struct.pack("!HHIIBBHHH", 40000, draw(pick(5060, 5080, 22)), 1, 0, 0x50,
                             0x02, 0xFFFF, 0, 0)
        body = draw(st.one_of(st.just(b""), NON_SIP))
        frame = packets.ip_frame(w.src, dst, 6, header[:draw(pick(20, 6))] + body)
        case = Case(frame=frame, note=f"tcp {w.src}")
        return draw(configs(case, w.src))
    if kind == "payload":
        w = draw(wrapper())
        case = Case(frame=build_frame(draw(NON_SIP), w), note=f"{w}")
    else:
        frame = draw(st.binary(min_size=14, max_size=80))
        if draw(st.booleans()):  # a real EtherType in front of junk
            et = draw(st.sampled_from([ETH_P_IP, ETH_P_IPV6, 0x8100, 0x88A8]))
            frame = frame[:12] + struct.pack("!H", et) + frame[14:]
        case = Case(frame=frame)
    return draw(configs(case, "192.0.2.10"))


@st.composite
def big_cases(draw) -> Case:
    """Payloads around the small program's 1 KiB scan limit."""
    data, creds = draw(sip_message())
    pad = draw(st.integers(600, 2600))
    at = draw(st.sampled_from(["before", "before", "after"]))
    lines = data.split(b"\r\n", 1)
    if at == "before" and len(lines) == 2:
        data = lines[0] + b"\r\nX-Pad: " + b"y" * pad + b"\r\n" + lines[1]
    else:
        data = data + b"y" * pad
    data = data[:3300]
    w = draw(wrapper(plain=draw(st.booleans())))
    case = Case(frame=build_frame(data, w), note=f"{w}")
    case.bindings = draw(bindings_for(creds, w.src))
    return draw(configs(case, w.src))


SETTINGS = dict(
    deadline=None,
    # no target phase: its pareto shrinking of the corpus costs more than
    # the generation itself
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def ref_reason(case: Case, scan_max: int = consts.SCAN_MAX) -> str:
    return case.reference_verdict(now_ns(), scan_max).reason


# ---------------------------------------------------------------------------
# Deterministic sweeps across every limit: each boundary on both sides
# ---------------------------------------------------------------------------

def _payload_with(value: str, extra=()) -> bytes:
    return packets.sip_request(auth=value, extra_headers=list(extra))


def sweep_frames():
    base_user = "1001"
    out = []
    for k in range(58, 70):  # LEADING_MAX
        out.append(("leading", k, packets.udp_frame(b"\r\n" * (k // 2) + b"\n" * (k % 2)
                                                    + packets.sip_request())))
    for k in range(58, 70):  # LEADING_MAX, with SP and HT
        out.append(("leading_ws", k, packets.udp_frame((b" \t\r\n" * 20)[:k]
                                                       + packets.sip_request())))
    line, rest = packets.sip_request(user="evil").split(b"\r\n", 1)
    for k in range(12, 20):  # SP/HT after the request line
        out.append(("req_ws", k, packets.udp_frame(line + b"\r\n" + (b" \t" * 10)[:k] + rest)))
    for k in range(58, 70):  # MAX_LINES
        msg = packets.sip_request(extra_headers=["Au: 1"] * k)
        out.append(("lines", k, packets.udp_frame(msg)))
    for k in range(600, 660):  # LINE_STEPS
        out.append(("tabs", k, packets.udp_frame(packets.sip_request(
            extra_headers=["X: " + "\t" * k]))))
    for k in range(330, 400):  # PARAM_STEPS
        value = f'Digest username="{base_user}", realm="pbx.example.com", x="' + "u" * k + '"'
        out.append(("ur", k, packets.udp_frame(_payload_with(value))))
    for k in range(0, 400, 4):  # PARAM_STEPS, 32-byte steps
        value = ('Digest username="1001", realm="pbx.example.com", x="' + "u" * 372 + '"'
                 + ", y=" + "z" * k)
        out.append(("ur8", k, packets.udp_frame(_payload_with(value))))
    for k in range(60, 70):  # USER_MAX
        for q in ['"', ""]:
            value = f"Digest username={q}{'U' * k}{q}, realm={q}{'r' * 128}{q}"
            out.append(("user_len", (k, q), packets.udp_frame(_payload_with(value))))
    for k in range(124, 142):  # REALM_MAX and the 136-byte window
        for q in ['"', ""]:
            value = f"Digest username={q}{'u' * 64}{q}, realm={q}{'R' * k}{q}"
            out.append(("realm_len", (k, q), packets.udp_frame(_payload_with(value))))
    for k in range(12, 20):  # LWS_MAX at each place
        ws = " " * k
        for value in [
            f'Digest username{ws}="1001", realm="pbx.example.com"',
            f'Digest username={ws}"1001", realm="pbx.example.com"',
            f'Digest username="1001"{ws}, realm="pbx.example.com"',
            f'Digest username=1001{ws}, realm="pbx.example.com"',
        ]:
            out.append(("lws", k, packets.udp_frame(_payload_with(value))))
        out.append(("lws_colon", k, packets.udp_frame(packets.sip_request(
            header="Proxy-Authorization" + ws))))
    for k in range(5, 11):  # QUOTES_MAX, leading and trailing
        for j in (1, k):
            out.append(("quotes", (k, j), packets.udp_frame(_payload_with(
                'Digest username=' + '"' * k + '1001' + '"' * j + ', realm="pbx.example.com"'))))
    for k in range(3, 6):  # MAX_CRED_HDRS
        hdrs = ['Authorization: Digest username="1001", realm="pbx.example.com"'] * k
        msg = packets.sip_request(auth="", extra_headers=hdrs)
        out.append(("creds", k, packets.udp_frame(msg)))
    for k in range(4, 9):  # MAX_EXT_HDRS
        out.append(("ext", k, packets.udp_frame(packets.sip_request(), src="2001:db8::10",
                                                dst=DST_V6, ext_headers=[60] * k)))
    return out


SWEEPS = sorted({name for name, _, _ in sweep_frames()})
SWEEP_BINDINGS = [("1001", "pbx.example.com", "192.0.2.10", HOUR),
                  ("u" * 64, "r" * 128, "192.0.2.10", HOUR),
                  ("1001", "pbx.example.com", "2001:db8::10", HOUR)]
