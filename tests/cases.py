"""The table of in-kernel classifier cases (tests/test_classifier_kernel.py).

Every row is one named Ethernet frame, the state to set up before it
(bindings, trusted networks, ports, config), and what the XDP program must
decide for it: reason, action, would, and the (user, realm) it looked up
where that applies. The expected values follow docs/classifier.md and, where
that page is silent or unsafe, docs/design.md §2 (such rows say so in `note`).

Frames are built with nfguard.packets plus a few hand-made headers for what
the builders cannot express (odd line ends, folds, raw IPv4/IPv6 fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nfguard import consts
from nfguard import packets as P

# -- addresses and credentials ---------------------------------------------
SRC = "192.0.2.10"  # the phone: where USER@REALM is bound
OTHER = "198.51.100.7"  # the attacker
DST = "192.0.2.1"
SRC6 = "2001:db8::10"
OTHER6 = "2001:db8:bad::66"
DST6 = "2001:db8::1"
USER = "1001"
REALM = "pbx.example.com"
TARGET = "sip:1002@pbx.example.com"

ANY = object()  # "not checked" for user/realm/note fields


def bind(user=USER, realm=REALM, ip=SRC, expires_in=None):
    return (user, realm, ip, expires_in)


BOUND = (bind(),)
BOUND6 = (bind(ip=SRC6),)


@dataclass(frozen=True)
class Case:
    name: str
    frame: bytes
    reason: str
    action: str | None = None  # None: derived from reason and config (§8)
    would: str | None = None
    user: object = ANY
    realm: object = ANY
    bindings: tuple = ()
    trusted: tuple = ()
    ports: tuple | None = None
    config: dict = field(default_factory=dict)
    program: str = "default"  # or "small": built with -DNFG_SCAN_MAX=1024
    note: str = ""
    bans: tuple = ()  # (ip, expires_in seconds or None: until lifted)
    before: tuple = ()  # frames run first (rate limits: they fill the buckets)

    def expected(self) -> dict:
        mode = self.config.get("mode", "enforce")
        act = self.config.get("action", "drop")
        if consts.is_verdict(self.reason):
            # a flood is dropped, never rejected
            would = "mark" if act == "reject" and not consts.is_flood(self.reason) else "drop"
            action = would if mode == "enforce" else "pass"
        else:
            would = action = "pass"
        action = self.action or action
        would = self.would or would
        return {
            "reason": self.reason,
            "action": action,
            "would": would,
            "retval": 1 if action == "drop" else 2,  # XDP_DROP / XDP_PASS
        }


# -- SIP message builders ----------------------------------------------------
NONCE = "8d3c5a0e-57f3-4d52-b1a4"
RESPONSE = "5c1d7f0e3b9a2c4d6e8f0a1b2c3d4e5f"


def digest(user=USER, realm=REALM, scheme="Digest", user_q='"', realm_q='"',
           realm_first=False, uri=TARGET, tail=True) -> str:
    """A credential value. user_q/realm_q are the quote characters put around
    the values (empty for unquoted)."""
    u = f"username={user_q}{user}{user_q}"
    r = f"realm={realm_q}{realm}{realm_q}"
    params = [r, u] if realm_first else [u, r]
    params.append(f'nonce="{NONCE}"')
    if tail:
        params += [f'uri="{uri}"', f'response="{RESPONSE}"', "algorithm=MD5",
                   'cnonce="0a4f113b"', "qop=auth", "nc=00000001"]
    return f"{scheme} " + ", ".join(params)


def pa(value=None, name="Proxy-Authorization", sep=": ") -> str:
    return f"{name}{sep}{digest() if value is None else value}"


def au(value=None) -> str:
    return pa(value, name="Authorization")


def std_headers(method="INVITE", user=USER, realm=REALM) -> list[str]:
    return [
        "Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{realm}>;tag=1928301774",
        f"To: <{TARGET}>",
        "Call-ID: a84b4c76e66710@192.0.2.10",
        f"CSeq: 2 {method}",
        f"Contact: <sip:{user}@192.0.2.10:5060>",
    ]


def msg(*headers: str, method="INVITE", eol="\r\n", leading="", request_line=None,
        before=None, after=("Content-Type: application/sdp", "Content-Length: 0"),
        end=None, body="") -> bytes:
    """A SIP request: leading bytes, request line, the standard headers (or
    `before`), `headers`, `after`, then `end` (default: eol, the empty line)
    and the body. Header strings are put in verbatim (they may hold folds)."""
    rl = request_line if request_line is not None else f"{method} {TARGET} SIP/2.0"
    hdrs = list(std_headers(method) if before is None else before) + list(headers) + list(after)
    text = leading + eol.join([rl] + hdrs) + eol + (eol if end is None else end) + body
    return text.encode("utf-8") if isinstance(text, str) else text


def frame(payload: bytes, src=SRC, **kw) -> bytes:
    dst = DST6 if ":" in src else DST
    return P.udp_frame(payload, src=src, dst=dst, **kw)


def f_inv(*headers: str, src=SRC, frame_kw=None, **kw) -> bytes:
    """A frame with an INVITE (or `method`) holding `headers`."""
    return frame(msg(*headers, **kw), src=src, **(frame_kw or {}))


# -- raw frames: shorthands for nfguard.packets with this table's addresses --
def v4(payload_l4: bytes, proto=17, src=SRC, **kw) -> bytes:
    return P.ip_frame(src, DST, proto, payload_l4, **kw)


def v6(payload_l4: bytes, nexthdr=17, src=SRC6, **kw) -> bytes:
    return P.ip_frame(src, DST6, nexthdr, payload_l4, **kw)


def tcp_header(dport=5060, sport=40000, flags=0x02) -> bytes:
    """A 20-byte TCP header (a SYN by default); checksum left zero: XDP
    does not check it."""
    return (sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + b"\0\0\0\1" + b"\0" * 4
            + bytes([0x50, flags]) + b"\xff\xff" + b"\0\0\0\0")


def tcp(payload: bytes = b"", src=OTHER, dport=5060, **kw) -> bytes:
    """A TCP segment to dport (IPv4 or IPv6 by src)."""
    return (v6 if ":" in src else v4)(tcp_header(dport) + payload, 6, src=src, **kw)


def first_fragment(payload: bytes, first_size: int, src=SRC, extra: bytes = b"",
                   ip_extra: bytes = b"") -> bytes:
    """The first IP fragment of the UDP datagram: UDP header and first_size
    bytes of payload, plus `ip_extra` bytes inside the IP packet, plus `extra`
    bytes after it in the frame (Ethernet trailer/padding)."""
    dst = DST6 if ":" in src else DST
    chunk = P.udp_datagram(src, dst, payload)[: 8 + first_size] + ip_extra
    return P.ip_frame(src, dst, 17, chunk, frag=(0, True)) + extra


def headers_end(payload: bytes) -> int:
    return payload.index(b"\r\n\r\n") + 4


def round8(n: int) -> int:
    return (n + 7) // 8 * 8


# -- payloads used several times --------------------------------------------
BIG_BODY = "v=0\r\n" + "a=x-filler:" + "z" * 1200 + "\r\n"
FRAG_NOCRED = msg(body=BIG_BODY)  # header section short, body long
FRAG_CRED = msg(pa(), body=BIG_BODY)
FRAG_REGISTER = msg(pa(), method="REGISTER", body=BIG_BODY)


def _late_cred() -> bytes:
    """Credentials only in a later fragment: a long header before them, sized
    so that the credential header starts at a multiple of 8."""
    for extra in range(8):
        m = msg("X-Filler: " + "y" * (600 + extra), pa())
        if m.index(b"Proxy-Authorization") % 8 == 0:
            return m
    raise AssertionError("unreachable")


FRAG_LATE_CRED = _late_cred()


def frags(payload: bytes, first_size: int, src=SRC) -> list[bytes]:
    dst = DST6 if ":" in src else DST
    return P.udp_fragments(payload, first_size, src=src, dst=dst)


def pad_to(total: int, *headers: str, **kw) -> bytes:
    """A message of exactly `total` bytes, padded with an X-Pad header put
    before `headers`."""
    base = msg("X-Pad: ", *headers, **kw)
    need = total - len(base)
    if need < 0:
        raise ValueError("message already longer than requested")
    return msg("X-Pad: " + "p" * need, *headers, **kw)


# -- step counts of docs/classifier.md, to put rows exactly at the limits ------
def spec_line_steps(payload: bytes, first: int = 0) -> int:
    """Steps the line scanner (§4) takes to reach the end of the header
    section of `payload` (which must have one)."""
    n, b = len(payload), payload + b"\0" * 64
    pos, steps = first, 0
    while True:
        steps += 1
        assert pos < n
        idx = next((i for i, c in enumerate(b[pos:pos + 32]) if c < 0x0E or c >= 0x8E),
                   None)
        if idx is None:
            pos += 32
            continue
        t = pos + idx
        assert t < n
        if b[t] not in (13, 10):
            pos = t + 1
            continue
        nx = t + 2 if b[t] == 13 and b[t + 1] == 10 else t + 1
        assert nx < n
        pos = nx
        if b[nx] in (13, 10):
            return steps


def spec_param_steps(payload: bytes) -> int:
    """Steps the parameter scanner (§6) takes over the credential headers
    of `payload` (single-line Proxy-Authorization/Authorization headers)."""
    hdrs, at = [], 0
    low = payload.lower()
    while True:
        i = min((j for j in (low.find(b"\nproxy-authorization", at),
                             low.find(b"\nauthorization", at)) if j >= 0), default=-1)
        if i < 0:
            break
        start = payload.index(b":", i) + 1
        end = payload.index(b"\r", start)
        hdrs.append((start, end))
        at = end
    steps, k, pos = 0, 0, hdrs[0][0]
    while True:
        steps += 1
        start, end = hdrs[k]
        if pos >= end:
            k += 1
            if k == len(hdrs):
                return steps
            pos = hdrs[k][0]
            continue
        win = low[pos:pos + 32]
        idx = min((j for j in (win.find(b"u"), win.find(b"r")) if j >= 0), default=-1)
        if idx < 0:
            pos += 32
        else:
            pos += idx + 1


def with_line_steps(target: int, *after_tabs: str) -> bytes:
    """An INVITE whose header section takes exactly `target` line steps:
    an X-Tabs header of tabs (one step each), then `after_tabs`."""
    for k in range(target + 64):
        m = msg("X-Tabs: " + "\t" * k, *after_tabs)
        got = spec_line_steps(m)
        if got == target:
            return m
        if got > target:
            break
    raise ValueError(f"no message takes exactly {target} line steps")


def with_param_steps(target: int) -> bytes:
    """An INVITE whose credential header takes exactly `target` parameter
    steps: an opaque value of 'u' (one step each) and 'x' (1/32 step)."""
    for k in range(target + 16):
        for pad in range(32):
            m = msg(pa(digest() + ', opaque="' + "x" * pad + "u" * k + '"'))
            if spec_param_steps(m) == target:
                return m
    raise ValueError(f"no message takes exactly {target} parameter steps")


# -- the table ---------------------------------------------------------------
CASES: list[Case] = []


def case(name, frame_, reason, **kw):
    CASES.append(Case(name, frame_, reason, **kw))


U, R = USER, REALM
UR = dict(user=U, realm=R)

# 1. Core policy ----------------------------------------------------------------
case("bound_proxy_authorization", f_inv(pa()), "bound", bindings=BOUND, **UR)
case("bound_authorization", f_inv(au()), "bound", bindings=BOUND, **UR)
case("bound_packets_builder_default", frame(P.sip_request()), "bound", bindings=BOUND, **UR)
case("not_bound_no_bindings", f_inv(pa()), "not_bound", **UR)
case("not_bound_other_address", f_inv(pa(), src=OTHER), "not_bound", bindings=BOUND, **UR)
case("not_bound_authorization_other_address", f_inv(au(), src=OTHER), "not_bound",
     bindings=BOUND, **UR)
case("not_bound_other_user_bound_here", f_inv(pa()), "not_bound",
     bindings=(bind(user="1002"),), **UR)
case("not_bound_other_realm_bound_here", f_inv(pa()), "not_bound",
     bindings=(bind(realm="other.example.com"),), **UR)
case("bound_one_of_several_addresses", f_inv(pa()), "bound",
     bindings=(bind(ip=OTHER), bind(ip="203.0.113.9"), bind()), **UR)
case("ipv6_bound", f_inv(pa(), src=SRC6), "bound", bindings=BOUND6, **UR)
case("ipv6_not_bound_other_address", f_inv(pa(), src=OTHER6), "not_bound", bindings=BOUND6, **UR)
case("ipv6_not_bound_when_bound_to_ipv4", f_inv(pa(), src=SRC6), "not_bound", bindings=BOUND, **UR)
case("ipv4_not_bound_when_bound_to_ipv6", f_inv(pa()), "not_bound", bindings=BOUND6, **UR)
case("no_credentials", f_inv(), "no_credentials")
case("no_credentials_ipv6", f_inv(src=SRC6), "no_credentials")
case("no_credentials_packets_builder", frame(P.sip_request(auth="")), "no_credentials")

# 2. Methods --------------------------------------------------------------------
case("register_unbound_credentials", f_inv(pa(), method="REGISTER", src=OTHER),
     "method_not_guarded")
case("register_with_every_method_guarded", f_inv(pa(), method="REGISTER", src=OTHER),
     "method_not_guarded", config={"methods": tuple(consts.METHOD_BITS)})
for _m in ("ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "REFER", "SUBSCRIBE", "NOTIFY",
           "INFO", "UPDATE", "PRACK", "PUBLISH"):
    case(f"method_{_m.lower()}_not_guarded_by_default", f_inv(pa(), method=_m, src=OTHER),
         "method_not_guarded")
for _m in consts.METHOD_BITS:
    case(f"method_{_m.lower()}_guarded_when_configured", f_inv(pa(), method=_m, src=OTHER),
         "not_bound", config={"methods": (_m,)}, **UR)
case("message_guarded_bound", f_inv(pa(), method="MESSAGE"), "bound", bindings=BOUND,
     config={"methods": ("INVITE", "MESSAGE", "REFER")}, **UR)
case("message_guarded_not_bound", f_inv(pa(), method="MESSAGE", src=OTHER), "not_bound",
     bindings=BOUND, config={"methods": ("INVITE", "MESSAGE", "REFER")}, **UR)
case("refer_guarded_not_bound", f_inv(pa(), method="REFER", src=OTHER), "not_bound",
     bindings=BOUND, config={"methods": ("INVITE", "MESSAGE", "REFER")}, **UR)
case("refer_guarded_no_credentials", f_inv(method="REFER", src=OTHER), "no_credentials",
     config={"methods": ("INVITE", "MESSAGE", "REFER")})
case("invite_still_guarded_with_extra_methods", f_inv(pa(), src=OTHER), "not_bound",
     config={"methods": ("INVITE", "MESSAGE", "REFER")}, **UR)
case("invite_not_guarded_when_only_message", f_inv(pa(), src=OTHER), "method_not_guarded",
     config={"methods": ("MESSAGE",)})
case("method_lower_case_invite", f_inv(pa(), request_line=f"invite {TARGET} SIP/2.0", src=OTHER),
     "method_not_guarded")
case("method_mixed_case_invite", f_inv(pa(), request_line=f"Invite {TARGET} SIP/2.0", src=OTHER),
     "method_not_guarded")
case("method_lower_case_message_guarded", f_inv(pa(), request_line=f"message {TARGET} SIP/2.0",
     src=OTHER), "method_not_guarded", config={"methods": ("MESSAGE",)})
case("method_followed_by_tab", f_inv(pa(), request_line=f"INVITE\t{TARGET} SIP/2.0", src=OTHER),
     "not_bound", **UR)
case("method_followed_by_spaces_and_tabs",
     f_inv(pa(), request_line=f"INVITE \t \t  {TARGET} SIP/2.0", src=OTHER), "not_bound", **UR)
case("subscribe_followed_by_tab_guarded",
     f_inv(pa(), request_line=f"SUBSCRIBE\t{TARGET} SIP/2.0", method="SUBSCRIBE", src=OTHER),
     "not_bound", config={"methods": ("SUBSCRIBE",)}, **UR)
case("method_invite_prefix_of_longer_token",
     f_inv(pa(), request_line=f"INVITEX {TARGET} SIP/2.0", src=OTHER), "method_not_guarded")
case("method_invite_followed_by_line_end",
     f_inv(pa(), request_line="INVITE", src=OTHER), "method_not_guarded")
case("method_invite_followed_by_colon",
     f_inv(pa(), request_line=f"INVITE:{TARGET} SIP/2.0", src=OTHER), "method_not_guarded")
case("method_info_not_invite", f_inv(pa(), request_line=f"INFO {TARGET} SIP/2.0", src=OTHER),
     "method_not_guarded")
case("sip_response_not_a_request",
     f_inv(pa(), request_line="SIP/2.0 200 OK", src=OTHER), "method_not_guarded")
case("payload_empty", frame(b""), "method_not_guarded")
case("payload_only_invite_word", frame(b"INVITE"), "method_not_guarded")
case("payload_keepalive_crlf", frame(b"\r\n\r\n"), "method_not_guarded")
case("payload_not_sip", frame(b"\x00\x01\x02\x03" * 16), "method_not_guarded")

# 3. Trusted networks -----------------------------------------------------------
case("trusted_v4_network", f_inv(pa(), src=OTHER), "trusted", trusted=("198.51.100.0/24",))
case("trusted_v4_host", f_inv(pa(), src=OTHER), "trusted", trusted=("198.51.100.7/32",))
case("trusted_v4_no_credentials_checked_first", f_inv(src=OTHER), "trusted",
     trusted=("198.51.100.0/24",))
case("trusted_v4_other_network", f_inv(pa(), src=OTHER), "not_bound",
     trusted=("198.51.101.0/24", "10.0.0.0/8"), **UR)
case("trusted_v4_neighbour_host", f_inv(pa(), src=OTHER), "not_bound",
     trusted=("198.51.100.8/32",), **UR)
case("trusted_v6_network", f_inv(pa(), src=OTHER6), "trusted", trusted=("2001:db8:bad::/48",))
case("trusted_v6_other_network", f_inv(pa(), src=OTHER6), "not_bound",
     trusted=("2001:db8:cafe::/48",), **UR)
case("trusted_v4_everything_does_not_cover_v6", f_inv(pa(), src=OTHER6), "not_bound",
     trusted=("0.0.0.0/0",), **UR)
case("trusted_v6_everything_covers_v4", f_inv(pa(), src=OTHER), "trusted", trusted=("::/0",))
case("trusted_port_checked_first", f_inv(pa(), src=OTHER, frame_kw={"dport": 5061}),
     "port_not_guarded", trusted=("198.51.100.0/24",))

# 4. Expiry ---------------------------------------------------------------------
case("expired_binding", f_inv(pa()), "expired", bindings=(bind(expires_in=-10),), **UR)
case("expired_binding_ipv6", f_inv(pa(), src=SRC6), "expired",
     bindings=(bind(ip=SRC6, expires_in=-1),), **UR)
case("expires_zero_is_expired", f_inv(pa()), "expired", bindings=(bind(expires_in=-1e9),), **UR)
case("binding_not_yet_expired", f_inv(pa()), "bound", bindings=(bind(expires_in=3600),), **UR)
case("expired_binding_other_address_is_not_bound", f_inv(pa(), src=OTHER), "not_bound",
     bindings=(bind(expires_in=-10),), **UR)
case("expired_second_credential", f_inv(pa(), pa(digest(user="1002"))), "expired",
     bindings=(bind(), bind(user="1002", expires_in=-10)), user="1002", realm=R)

# 5. Case-insensitive binding match ------------------------------------------------
case("bind_lower_send_mixed_case",
     f_inv(pa(digest(user="AlIcE", realm="PBX.Example.COM"))), "bound",
     bindings=(bind(user="alice", realm="pbx.example.com"),), user="alice", realm="pbx.example.com")
case("bind_mixed_send_lower_case",
     f_inv(pa(digest(user="alice", realm="pbx.example.com"))), "bound",
     bindings=(bind(user="ALICE", realm="PBX.EXAMPLE.COM"),), user="alice", realm="pbx.example.com")
case("bind_upper_send_upper_case",
     f_inv(pa(digest(user="ALICE", realm="PBX.EXAMPLE.COM"))), "bound",
     bindings=(bind(user="AlIcE", realm="Pbx.Example.Com"),), user="alice", realm="pbx.example.com")
case("case_insensitive_but_other_user",
     f_inv(pa(digest(user="ALICE2", realm="PBX.EXAMPLE.COM")), src=OTHER), "not_bound",
     bindings=(bind(user="alice", realm="pbx.example.com"),), user="alice2",
     realm="pbx.example.com")
case("mixed_case_from_other_address_not_bound",
     f_inv(pa(digest(user="AlIcE", realm="PBX.Example.COM")), src=OTHER), "not_bound",
     bindings=(bind(user="alice", realm="pbx.example.com"),), user="alice", realm="pbx.example.com")
case("lowercase_is_ascii_only_bound",
     f_inv(pa(digest(user="JOS\u00c9"))), "bound", bindings=(bind(user="jos\u00c9"),),
     user="jos\u00c9", realm=R)
case("lowercase_is_ascii_only_not_bound",
     f_inv(pa(digest(user="JOS\u00c9"))), "not_bound", bindings=(bind(user="jos\u00e9"),),
     user="jos\u00c9", realm=R)
case("case_symbols_not_folded", f_inv(pa(digest(user="a@b[c"))), "not_bound",
     bindings=(bind(user="a`b{c"),), user="a@b[c", realm=R)

# 6. Line ends ------------------------------------------------------------------
for _eol, _tag in (("\r\n", "crlf"), ("\n", "lf"), ("\r", "cr")):
    case(f"eol_{_tag}_not_bound", f_inv(pa(), eol=_eol, src=OTHER), "not_bound", **UR)
    case(f"eol_{_tag}_bound", f_inv(pa(), eol=_eol), "bound", bindings=BOUND, **UR)
    case(f"eol_{_tag}_no_credentials", f_inv(eol=_eol, src=OTHER), "no_credentials")
_mixed = (f"INVITE {TARGET} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10\nMax-Forwards: 70\r"
          f"From: <sip:1001@pbx.example.com>;tag=1\r\nTo: <{TARGET}>\n"
          f"{pa()}\rCall-ID: x@y\nContent-Length: 0\r\r")
case("eol_mixed_not_bound", frame(_mixed.encode(), src=OTHER), "not_bound", **UR)
case("eol_mixed_bound", frame(_mixed.encode()), "bound", bindings=BOUND, **UR)
case("eol_mixed_header_end_lf_cr",
     frame(f"INVITE {TARGET} SIP/2.0\r\nVia: x\r\n{pa()}\n\r".encode(), src=OTHER),
     "not_bound", **UR)
case("eol_lf_then_cr_ends_headers",
     frame(f"INVITE {TARGET} SIP/2.0\r\nVia: x\n\r{pa()}\r\n\r\n".encode(), src=OTHER),
     "no_credentials", note="LF then CR is a line end and an empty line (sofia CRLF_TEST)")
case("eol_cr_cr_lf_ends_headers",
     frame(f"INVITE {TARGET} SIP/2.0\r\nVia: x\r\r\n{pa()}\r\n\r\n".encode(), src=OTHER),
     "no_credentials")
case("credential_header_in_body_not_counted",
     f_inv(end="\r\n", body=pa() + "\r\n", src=OTHER), "no_credentials")
case("credential_header_line_ends_with_bare_cr_then_lf_header",
     frame(f"INVITE {TARGET} SIP/2.0\r{pa()}\rVia: x\n\n".encode(), src=OTHER), "not_bound", **UR)

# 7. Empty lines before the request line --------------------------------------------
for _lead, _tag in (("\r\n", "1_crlf"), ("\n\n\n", "3_lf"), ("\r\r", "2_cr"),
                    ("\r\n" * 31, "31_crlf"),
                    ("\n" * 63, "63_lf"), ("\r\n\r\r\n\n" * 10 + "\r\n\r", "63_mixed")):
    case(f"leading_empty_lines_{_tag}", f_inv(pa(), leading=_lead, src=OTHER), "not_bound", **UR)
case("leading_empty_lines_63_lf_bound", f_inv(pa(), leading="\n" * 63), "bound",
     bindings=BOUND, **UR)
case("leading_empty_lines_64_lf", f_inv(pa(), leading="\n" * 64, src=OTHER),
     "too_many_empty_lines")
case("leading_empty_lines_32_crlf", f_inv(pa(), leading="\r\n" * 32), "too_many_empty_lines",
     bindings=BOUND)
case("leading_empty_lines_100_crlf_register",
     f_inv(pa(), leading="\r\n" * 100, method="REGISTER"), "too_many_empty_lines")
case("leading_empty_lines_then_register", f_inv(pa(), leading="\r\n" * 5, method="REGISTER",
     src=OTHER), "method_not_guarded")
case("leading_empty_lines_only_30", frame(b"\r\n" * 30), "method_not_guarded")
case("leading_empty_lines_only_64", frame(b"\r\n" * 32), "method_not_guarded")
case("leading_empty_lines_only_100", frame(b"\r\n" * 50), "too_many_empty_lines")
case("leading_space_before_method", f_inv(pa(), leading=" ", src=OTHER), "not_bound", **UR,
     note="sofia-sip extract_first() skips SP HT CR LF before the request line")
case("leading_crlf_tab_before_method", f_inv(pa(), leading="\r\n\t", src=OTHER), "not_bound",
     **UR)
case("leading_whitespace_63_mixed", f_inv(pa(), leading=" \t\r\n" * 15 + " \t\n", src=OTHER),
     "not_bound", **UR)
case("leading_whitespace_63_spaces_bound", f_inv(pa(), leading=" " * 63), "bound",
     bindings=BOUND, **UR)
case("leading_whitespace_64_spaces", f_inv(pa(), leading=" " * 64), "too_many_empty_lines",
     bindings=BOUND)
case("leading_whitespace_64_mixed", f_inv(pa(), leading="\t \r\n" * 16, src=OTHER),
     "too_many_empty_lines")
case("leading_spaces_then_register", f_inv(pa(), leading="  ", method="REGISTER", src=OTHER),
     "method_not_guarded")
case("leading_spaces_then_lower_case_invite",
     f_inv(pa(), leading="  ", request_line=f"invite {TARGET} SIP/2.0", src=OTHER),
     "method_not_guarded")
case("payload_only_spaces", frame(b" \t " * 10), "method_not_guarded")

# 8. Header names and the colon -------------------------------------------------------
for _n in ("proxy-authorization", "PROXY-AUTHORIZATION", "pRoXy-AuThOrIzAtIoN",
           "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"):
    case(f"header_name_{_n}", f_inv(pa(name=_n), src=OTHER), "not_bound", **UR)
case("header_name_upper_bound", f_inv(pa(name="PROXY-AUTHORIZATION")), "bound",
     bindings=BOUND, **UR)
for _sep, _tag in ((":", "no_space"), (" : ", "space_both_sides"), ("\t:\t", "tabs"),
                   (" \t :  \t ", "mixed_ws"), (" " * 15 + ":", "15_spaces_before_colon"),
                   (":" + " " * 40, "40_spaces_after_colon")):
    case(f"colon_{_tag}", f_inv(pa(sep=_sep), src=OTHER), "not_bound", **UR)
case("colon_16_spaces_before", f_inv(pa(sep=" " * 16 + ":"), src=OTHER), "credential_unparsable")
case("colon_fold_between_name_and_colon", f_inv(pa(sep="\r\n :"), src=OTHER), "not_bound", **UR)
case("colon_fold_lf_between_name_and_colon", f_inv(pa(sep="\n\t: "), eol="\n", src=OTHER),
     "not_bound", **UR)
case("colon_fold_cr_between_name_and_colon", f_inv(pa(sep="\r :"), eol="\r", src=OTHER),
     "not_bound", **UR)
case("colon_fold_between_name_and_colon_bound", f_inv(pa(sep="\r\n  : ")), "bound",
     bindings=BOUND, **UR)
case("colon_two_folds_before_colon", f_inv(pa(sep=" \r\n \r\n\t:"), src=OTHER), "not_bound", **UR)
case("colon_fold_after_colon", f_inv(pa(sep=":\r\n "), src=OTHER), "not_bound", **UR)
case("header_first_after_request_line", f_inv(pa(), before=(), src=OTHER), "not_bound", **UR)
case("header_last_before_empty_line", f_inv(pa(), after=(), src=OTHER), "not_bound", **UR)
case("header_name_without_colon", f_inv(pa(sep=" "), src=OTHER), "credential_unparsable")
case("header_name_then_semicolon", f_inv(pa(sep=";x: "), src=OTHER), "credential_unparsable")
case("header_name_alone", f_inv("Proxy-Authorization", src=OTHER), "credential_unparsable")
case("header_name_alone_bound_other", f_inv(pa(), "Authorization"), "credential_unparsable",
     bindings=BOUND)
case("header_name_then_garbage", f_inv("Proxy-Authorization \x01garbage", src=OTHER),
     "credential_unparsable")
case("header_name_then_fold_no_colon", f_inv("Proxy-Authorization\r\n Digest username=\"1001\"",
     src=OTHER), "credential_unparsable")
case("authorization_info_not_credential",
     f_inv(pa(name="Authorization-Info"), src=OTHER), "no_credentials")
case("proxy_authorization_info_not_credential",
     f_inv(pa(name="Proxy-Authorization-Info"), src=OTHER), "no_credentials")
case("authorizationx_not_credential", f_inv(pa(name="AuthorizationX"), src=OTHER),
     "no_credentials")
case("authorization_info_and_real_header", f_inv(pa(name="Authorization-Info"), pa(), src=OTHER),
     "not_bound", **UR)
case("x_prefixed_name_not_credential", f_inv(pa(name="X-Proxy-Authorization"), src=OTHER),
     "no_credentials")
case("proxy_authenticate_not_credential", f_inv(pa(name="Proxy-Authenticate"), src=OTHER),
     "no_credentials")
case("www_authenticate_not_credential", f_inv(pa(name="WWW-Authenticate"), src=OTHER),
     "no_credentials")
case("proxy_cr_authorization_is_two_lines",
     f_inv("Proxy\rAuthorization: " + digest(), src=OTHER), "not_bound", **UR,
     note="a bare CR ends the line 'Proxy': 'Authorization' starts a header")
case("proxy_control_byte_authorization_not_credential",
     f_inv("Proxy\x01Authorization: " + digest(), src=OTHER), "no_credentials")
case("header_name_folded_inside_not_credential",
     f_inv("Author\r\n ization: " + digest(), src=OTHER), "no_credentials")
case("credential_as_fold_of_previous_header",
     f_inv("Subject: hello\r\n " + pa(), src=OTHER), "no_credentials",
     note="a folded line continues the header before it (sofia-sip extract_header)")
case("whitespace_line_is_fold_not_end",
     f_inv("Subject: hello\r\n \t \r\n" + pa(), src=OTHER), "not_bound", **UR)
case("whitespace_line_lf_is_fold_not_end",
     f_inv("Subject: hello\n   \n" + pa(), eol="\n", src=OTHER), "not_bound", **UR)
case("whitespace_line_cr_is_fold_not_end",
     f_inv("Subject: hello\r\t\r" + pa(), eol="\r", src=OTHER), "not_bound", **UR)
case("fold_after_request_line_then_credential",
     f_inv(" " + pa(), before=(), src=OTHER), "not_bound", **UR,
     note="sofia-sip extract_first() skips SP/HT after the request line: a header, not a fold")
case("tab_after_request_line_then_credential_bound", f_inv("\t" + pa(), before=()), "bound",
     bindings=BOUND, **UR)
case("ws_15_after_request_line_then_credential", f_inv(" " * 15 + pa(), before=(), src=OTHER),
     "not_bound", **UR)
case("ws_16_after_request_line", f_inv(" " * 16 + pa(), before=(), src=OTHER), "scan_limit")
case("ws_after_request_line_lf", f_inv(" \t" + pa(), before=(), eol="\n", src=OTHER),
     "not_bound", **UR)
case("ws_after_request_line_bare_cr", f_inv("  " + pa(), before=(), eol="\r", src=OTHER),
     "not_bound", **UR)
case("ws_after_request_line_then_empty_line",
     f_inv(" \t", before=(), after=(), end="\r\n" + pa() + "\r\n", src=OTHER), "no_credentials",
     note="sofia: after the skipped SP/HT a CR LF is the empty line; the rest is body")
case("ws_after_request_line_other_header_then_fold",
     f_inv(" Subject: x", " " + pa(), before=(), src=OTHER), "no_credentials",
     note="only the line right after the request line is never a fold")
case("ws_after_request_line_credential_then_fold_value",
     f_inv("  Proxy-Authorization: Digest\r\n username=\"1001\",\r\n realm=\"pbx.example.com\"",
           before=(), src=OTHER), "not_bound", **UR)
case("request_line_then_spaces_at_end_of_payload",
     frame(f"INVITE {TARGET} SIP/2.0\r\n  ".encode()), "headers_truncated")

# 9. Folds inside the credential value ------------------------------------------------
_fold_val = (f'Digest username="{U}",\r\n realm="{R}",\r\n\tnonce="{NONCE}",\r\n'
             f'  uri="{TARGET}", response="{RESPONSE}"')
case("fold_inside_value_not_bound", f_inv(pa(_fold_val), src=OTHER), "not_bound", **UR)
case("fold_inside_value_bound", f_inv(pa(_fold_val)), "bound", bindings=BOUND, **UR)
case("fold_inside_value_lf", f_inv(pa(_fold_val.replace("\r\n", "\n")), eol="\n", src=OTHER),
     "not_bound", **UR)
case("fold_inside_value_cr", f_inv(pa(_fold_val.replace("\r\n", "\r")), eol="\r", src=OTHER),
     "not_bound", **UR)
case("fold_between_scheme_and_params",
     f_inv(pa(f'Digest\r\n username="{U}", realm="{R}"'), src=OTHER), "not_bound", **UR)
case("fold_before_equals", f_inv(pa(f'Digest username\r\n ="{U}", realm\r\n\t= "{R}"'),
     src=OTHER), "not_bound", **UR)
case("fold_after_equals", f_inv(pa(f'Digest username=\r\n "{U}", realm=\r\n {R}'), src=OTHER),
     "not_bound", **UR)
case("fold_realm_on_whitespace_only_line",
     f_inv(pa(f'Digest username="{U}",\r\n   \r\n realm="{R}"'), src=OTHER), "not_bound", **UR)
case("fold_realm_on_next_line_after_empty_line_is_body",
     f_inv(pa(f'Digest username="{U}",'), after=(), end=f'\r\n realm="{R}"\r\n', src=OTHER),
     "credential_unparsable",
     note="the header ends at the empty line: its realm is in the body")

# 10. Scheme word ---------------------------------------------------------------------
for _s in ("Digest", "digest", "DIGEST", "Basic", "Evil", "x"):
    case(f"scheme_{_s}", f_inv(pa(digest(scheme=_s)), src=OTHER), "not_bound", **UR)
case("scheme_evil_bound", f_inv(pa(digest(scheme="Evil"))), "bound", bindings=BOUND, **UR)
case("scheme_missing", f_inv(pa(f'username="{U}", realm="{R}"'), src=OTHER), "not_bound", **UR)

# 11. Parameters ------------------------------------------------------------------------
case("params_realm_first", f_inv(pa(digest(realm_first=True)), src=OTHER), "not_bound", **UR)
case("params_realm_first_bound", f_inv(pa(digest(realm_first=True))), "bound",
     bindings=BOUND, **UR)
case("params_at_end", f_inv(pa(f'Digest nonce="{NONCE}", uri="{TARGET}", realm="{R}", '
                               f'username="{U}"'), src=OTHER), "not_bound", **UR)
for _un, _rn in (("USERNAME", "REALM"), ("UserName", "Realm"), ("uSeRnAmE", "rEaLm")):
    case(f"param_names_{_un}_{_rn}",
         f_inv(pa(f'Digest {_un}="{U}", {_rn}="{R}", nonce="{NONCE}"'), src=OTHER),
         "not_bound", **UR)
case("params_spaces_around_equals_and_comma",
     f_inv(pa(f'Digest username = "{U}" , realm = "{R}" , nonce = "{NONCE}"'), src=OTHER),
     "not_bound", **UR)
case("params_spaces_around_equals_bound",
     f_inv(pa(f'Digest username = "{U}" , realm = "{R}" , nonce = "{NONCE}"')), "bound",
     bindings=BOUND, **UR)
case("params_tabs_around_equals_and_comma",
     f_inv(pa(f'Digest\tusername\t=\t"{U}"\t,\trealm\t=\t{R}\t,\tnonce="{NONCE}"'), src=OTHER),
     "not_bound", **UR)
case("params_no_space_after_comma",
     f_inv(pa(f'Digest username="{U}",realm="{R}",nonce="{NONCE}"'), src=OTHER),
     "not_bound", **UR)
case("params_empty_items_between",
     f_inv(pa(f'Digest username="{U}",, ,realm="{R}"'), src=OTHER), "not_bound", **UR)
case("param_15_spaces_before_equals",
     f_inv(pa(f'Digest username{" " * 15}="{U}", realm="{R}"'), src=OTHER), "not_bound", **UR)
case("param_16_spaces_before_equals",
     f_inv(pa(f'Digest username{" " * 16}="{U}", realm="{R}"'), src=OTHER),
     "credential_ambiguous")
case("param_15_spaces_after_equals",
     f_inv(pa(f'Digest username={" " * 15}"{U}", realm="{R}"'), src=OTHER), "not_bound", **UR)
case("param_16_spaces_after_equals",
     f_inv(pa(f'Digest username={" " * 16}"{U}", realm="{R}"'), src=OTHER),
     "credential_ambiguous")
case("param_15_spaces_after_value",
     f_inv(pa(f'Digest username="{U}"{" " * 15}, realm="{R}"'), src=OTHER), "not_bound", **UR)
case("param_16_spaces_after_value",
     f_inv(pa(f'Digest username="{U}"{" " * 16}, realm="{R}"'), src=OTHER),
     "credential_ambiguous")
case("param_trailing_spaces_at_header_end",
     f_inv(pa(f'Digest username="{U}", realm="{R}"   \t'), src=OTHER), "not_bound", **UR)
case("values_unquoted", f_inv(pa(digest(user_q="", realm_q="")), src=OTHER), "not_bound", **UR)
case("values_unquoted_bound", f_inv(pa(digest(user_q="", realm_q=""))), "bound",
     bindings=BOUND, **UR)
case("values_unquoted_last_in_header",
     f_inv(pa(f'Digest nonce="{NONCE}", username={U}, realm={R}'), src=OTHER), "not_bound", **UR)
case("values_unquoted_last_in_header_bound",
     f_inv(pa(f'Digest nonce="{NONCE}", username={U}, realm={R}')), "bound",
     bindings=BOUND, **UR)
case("values_mixed_quoting", f_inv(pa(digest(user_q="", realm_q='"')), src=OTHER),
     "not_bound", **UR)
# sofia-sip reads ""x"" as an empty quoted string, a token and another:
# balanced quotes leave the value as FreeSWITCH reads it; unbalanced ones
# shift sofia-sip's quoting, and a space or comma outside its quotes is
# compacted or split: both are ambiguous.
case("values_doubly_quoted", f_inv(pa(f'Digest username=""{U}"", realm=""{R}"", nonce="x"'),
     src=OTHER), "not_bound", **UR)
case("values_doubly_quoted_bound", f_inv(pa(f'Digest username=""{U}"", realm=""{R}"", nonce="x"')),
     "bound", bindings=BOUND, **UR)
case("values_doubly_quoted_unbalanced", f_inv(pa(f'Digest username=""{U}", realm="{R}"')),
     "credential_ambiguous", bindings=BOUND)
case("values_doubly_quoted_with_space", f_inv(pa(f'Digest username=""10 01"", realm="{R}"')),
     "credential_ambiguous", bindings=(bind(user="10 01"),))
case("values_doubly_quoted_with_comma", f_inv(pa(f'Digest username=""10,01"", realm="{R}"')),
     "credential_ambiguous")
case("values_triply_quoted", f_inv(pa(f'Digest username="""{U}", realm="{R}"')),
     "bound", bindings=BOUND, **UR)
case("values_7_leading_quotes", f_inv(pa(f'Digest username={chr(34) * 7}{U}", realm="{R}"'),
     src=OTHER), "not_bound", **UR)
case("values_8_leading_quotes", f_inv(pa(f'Digest username={chr(34) * 8}{U}", realm="{R}"'),
     src=OTHER), "credential_ambiguous")
case("value_quoted_with_space_inside", f_inv(pa(digest(user="10 01")), src=OTHER), "not_bound",
     user="10 01", realm=R)
case("value_quoted_with_space_inside_bound", f_inv(pa(digest(user="10 01"))), "bound",
     bindings=(bind(user="10 01"),), user="10 01", realm=R)
case("value_unquoted_with_symbols", f_inv(pa(digest(user="a.b-c_d!e%f*g+h~i'j`k@l:m/n",
     user_q="")), src=OTHER), "not_bound", user="a.b-c_d!e%f*g+h~i'j`k@l:m/n", realm=R)
case("value_realm_is_word_username",
     f_inv(pa(f'Digest username="{U}", realm=username'), src=OTHER), "not_bound",
     user=U, realm="username")
case("value_quoted_realm_is_word_username",
     f_inv(pa(f'Digest realm="username", username="{U}"'), src=OTHER), "not_bound",
     user=U, realm="username")
case("username_inside_uri_value_not_counted",
     f_inv(pa(digest(uri="sip:username@pbx.example.com")), src=OTHER), "not_bound", **UR)
case("realm_inside_nonce_value_not_counted",
     f_inv(pa(f'Digest nonce="realm", username="{U}", opaque="x-realm", realm="{R}"'),
           src=OTHER), "not_bound", **UR)
case("username_inside_uri_value_bound",
     f_inv(pa(digest(uri="sip:username@realm.example.com"))), "bound", bindings=BOUND, **UR)
case("param_with_username_suffix_not_counted",
     f_inv(pa(f'Digest myusername="evil", username="{U}", xrealm="evil", realm="{R}"'),
           src=OTHER), "not_bound", **UR)
case("param_with_username_prefix_not_counted",
     f_inv(pa(f'Digest username2="evil", username="{U}", realmx="evil", realm="{R}"'),
           src=OTHER), "not_bound", **UR)
case("param_username_without_value_not_counted",
     f_inv(pa(f'Digest username, realm="{R}"'), src=OTHER), "credential_unparsable")
case("username_eq_inside_quoted_value_is_ambiguous",
     f_inv(pa(f'Digest cnonce="x, username=evil", username="{U}", realm="{R}"'), src=OTHER),
     "credential_ambiguous",
     note="counted although sofia-sip sees it inside quotes: the counts are never below sofia's")

# 12. Duplicates -----------------------------------------------------------------------
case("duplicate_username", f_inv(pa(f'Digest username="{U}", realm="{R}", username="1002"')),
     "credential_ambiguous", bindings=BOUND)
case("duplicate_username_same_value",
     f_inv(pa(f'Digest username="{U}", realm="{R}", username="{U}"')), "credential_ambiguous",
     bindings=BOUND)
case("duplicate_username_other_case",
     f_inv(pa(f'Digest username="{U}", realm="{R}", USERNAME="evil"')), "credential_ambiguous",
     bindings=BOUND)
case("duplicate_realm", f_inv(pa(f'Digest username="{U}", realm="{R}", realm="evil.example"')),
     "credential_ambiguous", bindings=BOUND)
case("duplicate_realm_unquoted", f_inv(pa(f'Digest realm=evil, username="{U}", realm="{R}"')),
     "credential_ambiguous", bindings=BOUND)

# 13. Several credential headers ---------------------------------------------------------
case("two_headers_same_credential_bound", f_inv(pa(), pa()), "bound", bindings=BOUND, **UR)
case("two_headers_both_bound", f_inv(pa(), pa(digest(user="1002"))), "bound",
     bindings=(bind(), bind(user="1002")))
case("authorization_and_proxy_authorization_bound", f_inv(au(), pa()), "bound",
     bindings=BOUND, **UR)
case("second_header_not_bound", f_inv(pa(), pa(digest(user="1002"))), "not_bound",
     bindings=BOUND, user="1002", realm=R)
case("first_header_not_bound", f_inv(pa(digest(user="1002")), pa()), "not_bound",
     bindings=BOUND, user="1002", realm=R)
case("authorization_bound_proxy_not_bound", f_inv(au(), pa(digest(realm="evil.example"))),
     "not_bound", bindings=BOUND, user=U, realm="evil.example")
case("proxy_bound_authorization_not_bound", f_inv(pa(), au(digest(user="1009"))),
     "not_bound", bindings=BOUND, user="1009", realm=R)
case("headers_separated_by_others_second_not_bound",
     f_inv(pa(), "Subject: x", "Allow: INVITE", au(digest(user="1009"))), "not_bound",
     bindings=BOUND, user="1009", realm=R)
case("four_headers_bound", f_inv(pa(), au(), pa(), au()), "bound", bindings=BOUND, **UR)
case("four_headers_last_not_bound", f_inv(pa(), au(), pa(), au(digest(user="1009"))),
     "not_bound", bindings=BOUND, user="1009", realm=R)
case("five_headers_too_many", f_inv(pa(), au(), pa(), au(), pa()), "too_many_credentials",
     bindings=BOUND)
case("five_headers_too_many_unbound", f_inv(pa(), au(), pa(), au(), pa(), src=OTHER),
     "too_many_credentials")
case("bound_header_and_unparsable_header", f_inv(pa(), "Proxy-Authorization garbage"),
     "credential_unparsable", bindings=BOUND)
case("unparsable_header_then_bound_header", f_inv("Authorization", pa()),
     "credential_unparsable", bindings=BOUND)
case("bound_header_and_ambiguous_header",
     f_inv(pa(), au(f'Digest username="{U}", username="x", realm="{R}"')),
     "credential_ambiguous", bindings=BOUND)
case("bound_header_and_header_without_username", f_inv(pa(), au(f'Digest realm="{R}"')),
     "credential_unparsable", bindings=BOUND)
case("bound_header_and_empty_header", f_inv(pa(), "Authorization:"), "credential_unparsable",
     bindings=BOUND)

# 14. Unparsable values ------------------------------------------------------------------
case("value_empty", f_inv("Proxy-Authorization:", src=OTHER), "credential_unparsable")
case("value_only_spaces", f_inv("Proxy-Authorization:    \t", src=OTHER),
     "credential_unparsable")
case("value_garbage", f_inv(pa("garbage"), src=OTHER), "credential_unparsable")
case("value_scheme_only", f_inv(pa("Digest"), src=OTHER), "credential_unparsable")
case("missing_username", f_inv(pa(f'Digest realm="{R}", nonce="{NONCE}"')),
     "credential_unparsable", bindings=BOUND)
case("missing_realm", f_inv(pa(f'Digest username="{U}", nonce="{NONCE}"')),
     "credential_unparsable", bindings=BOUND)
case("username_empty_quoted", f_inv(pa(f'Digest username="", realm="{R}"'), src=OTHER),
     "credential_unparsable")
case("username_empty_unquoted", f_inv(pa(f'Digest username=, realm="{R}"'), src=OTHER),
     "credential_unparsable")
case("realm_empty_at_header_end", f_inv(pa(f'Digest username="{U}", realm='), src=OTHER),
     "credential_unparsable")
case("realm_empty_spaces_at_header_end", f_inv(pa(f'Digest username="{U}", realm=   '),
     src=OTHER), "credential_unparsable")
case("realm_only_quotes_at_header_end", f_inv(pa(f'Digest username="{U}", realm=""'),
     src=OTHER), "credential_unparsable")

# 15. Lengths ------------------------------------------------------------------------------
U64, U65 = "a" * 63 + "9", "a" * 64 + "9"
R128, R129 = "x" * 124 + ".com", "x" * 125 + ".com"
case("username_64_bytes_bound", f_inv(pa(digest(user=U64))), "bound",
     bindings=(bind(user=U64),), user=U64, realm=R)
case("username_64_bytes_not_bound", f_inv(pa(digest(user=U64)), src=OTHER), "not_bound",
     bindings=(bind(user=U64),), user=U64, realm=R)
case("username_64_bytes_unquoted_bound", f_inv(pa(digest(user=U64, user_q=""))), "bound",
     bindings=(bind(user=U64),), user=U64, realm=R)
case("username_65_bytes", f_inv(pa(digest(user=U65))), "credential_too_long",
     bindings=(bind(user=U64),))
case("username_65_bytes_unquoted", f_inv(pa(digest(user=U65, user_q=""))),
     "credential_too_long")
case("username_65_bytes_prefix_bound", f_inv(pa(digest(user=U64 + "x"))), "credential_too_long",
     bindings=(bind(user=U64),), note="a truncated lookup would find the 64-byte binding")
case("username_200_bytes", f_inv(pa(digest(user="a" * 200))), "credential_too_long")
case("username_200_bytes_unterminated", f_inv(pa(f'Digest realm="{R}", username={"a" * 200}')),
     "credential_too_long")
case("realm_128_bytes_bound", f_inv(pa(digest(realm=R128))), "bound",
     bindings=(bind(realm=R128),), user=U, realm=R128)
case("realm_128_bytes_unquoted_bound", f_inv(pa(digest(realm=R128, realm_q=""))), "bound",
     bindings=(bind(realm=R128),), user=U, realm=R128)
case("realm_128_bytes_not_bound", f_inv(pa(digest(realm=R128)), src=OTHER), "not_bound",
     user=U, realm=R128)
case("realm_129_bytes", f_inv(pa(digest(realm=R129))), "credential_too_long",
     bindings=(bind(realm=R128),))
case("realm_129_bytes_unquoted", f_inv(pa(digest(realm=R129, realm_q=""))),
     "credential_too_long")
case("realm_300_bytes", f_inv(pa(digest(realm="x" * 300))), "credential_too_long")
case("realm_300_bytes_last", f_inv(pa(f'Digest username="{U}", realm="{"x" * 300}"')),
     "credential_too_long")

# 16. Ambiguous values ---------------------------------------------------------------------
# Inside quotes a comma is part of the value to sofia-sip and FreeSWITCH
# (realm="Acme, Inc."); the candidate count still sees any parameter
# hidden behind it.
case("comma_inside_quoted_username", f_inv(pa(digest(user="10,01")), src=OTHER),
     "not_bound", user="10,01", realm=R)
case("comma_inside_quoted_realm_bound", f_inv(pa(digest(realm="Acme, Inc."))),
     "bound", bindings=(bind(realm="acme, inc."),), user=U, realm="acme, inc.")
case("comma_inside_quoted_realm", f_inv(pa(digest(realm="pbx,example.com"))),
     "not_bound", bindings=BOUND, user=U, realm="pbx,example.com")
case("comma_inside_quoted_hides_username", f_inv(pa(
     f'Digest realm="{R}, username=evil", username="{U}"')), "credential_ambiguous",
     bindings=BOUND)
case("crlf_inside_quoted_username", f_inv(pa(digest(user="10\r\n 01")), src=OTHER),
     "credential_ambiguous")
case("lf_inside_quoted_realm", f_inv(pa(digest(realm="pbx.\n example.com")), eol="\n",
     src=OTHER), "credential_ambiguous")
case("cr_inside_quoted_realm", f_inv(pa(digest(realm="pbx.\r example.com")), eol="\r",
     src=OTHER), "credential_ambiguous")
case("unterminated_quoted_username_at_end",
     f_inv(pa(f'Digest realm="{R}", username="{U}'), src=OTHER), "credential_ambiguous")
case("quote_inside_unquoted_username", f_inv(pa(f'Digest username=10"01, realm="{R}"'),
     src=OTHER), "credential_ambiguous")
case("quote_ends_unquoted_username", f_inv(pa(f'Digest username={U}", realm="{R}"'),
     src=OTHER), "credential_ambiguous")
case("quote_inside_unquoted_realm", f_inv(pa(f'Digest username="{U}", realm=pbx"x"')),
     "credential_ambiguous", bindings=BOUND)
case("escaped_quote_inside_quoted_username",
     f_inv(pa(f'Digest username="10\\"01", realm="{R}"'), src=OTHER), "credential_ambiguous")
case("junk_after_quoted_username", f_inv(pa(f'Digest username="{U}"x, realm="{R}"'),
     src=OTHER), "credential_ambiguous")
case("junk_after_unquoted_username", f_inv(pa(f'Digest username={U} x, realm="{R}"'),
     src=OTHER), "credential_ambiguous")
case("params_without_comma", f_inv(pa(f'Digest username="{U}" realm="{R}"'), src=OTHER),
     "credential_ambiguous")
case("params_separated_by_semicolon", f_inv(pa(f'Digest username="{U}"; realm="{R}"'),
     src=OTHER), "credential_ambiguous")
case("junk_after_realm_at_end", f_inv(pa(f'Digest username="{U}", realm="{R}" x')),
     "credential_ambiguous", bindings=BOUND)

# 17. Truncated header sections ------------------------------------------------------------
case("headers_not_ended", f_inv(pa(), end="", src=OTHER), "headers_truncated")
case("headers_not_ended_bound", f_inv(pa(), end=""), "headers_truncated", bindings=BOUND,
     note="bound credentials do not help when the header section does not end")
case("headers_not_ended_no_credentials", f_inv(end=""), "headers_truncated")
case("headers_end_in_last_line_without_terminator",
     frame(msg(pa(), end="").rstrip(b"\r\n")), "headers_truncated", bindings=BOUND)
case("request_line_only", frame(f"INVITE {TARGET} SIP/2.0\r\n".encode()), "headers_truncated")
case("request_line_without_terminator", frame(f"INVITE {TARGET} SIP/2.0".encode()),
     "headers_truncated")
case("udp_length_longer_than_frame_headers_complete",
     v4(P.udp_datagram(OTHER, DST, msg(pa()), length=8 + len(msg(pa())) + 100), src=OTHER),
     "not_bound", **UR)
case("udp_length_longer_than_frame_headers_incomplete",
     v4(P.udp_datagram(SRC, DST, msg(pa(), end=""), length=8 + len(msg(pa())) + 100)),
     "headers_truncated", bindings=BOUND)
case("headers_end_with_single_byte_empty_line",
     frame(f"INVITE {TARGET} SIP/2.0\r\nVia: x\r\n\r".encode()), "no_credentials")
case("headers_end_with_single_lf_empty_line",
     frame(f"INVITE {TARGET} SIP/2.0\nVia: x\n\n".encode()), "no_credentials")
_udp_short = msg(pa(), after=("X-Filler: " + "f" * 40,))
_cut = _udp_short.index(b"X-Filler") + 4
case("udp_length_cuts_header_section",
     v4(P.udp_datagram(SRC, DST, _udp_short, length=8 + _cut, checksum_length=8 + _cut)),
     "headers_truncated", bindings=BOUND, note="the kernel trims the datagram to the UDP length")
_ndata = msg(after=("X-Filler: f",), end="")
case("ethernet_padding_does_not_end_headers",
     v4(P.udp_datagram(SRC, DST, _ndata)) + b"\r\n\r\n",
     "headers_truncated", note="bytes after the IP packet are not payload")
case("udp_length_zero_ipv4", v4(P.udp_datagram(SRC, DST, msg(pa()), length=0), src=SRC),
     "method_not_guarded", note="IPv4 drops UDP length < 8")
case("udp_length_zero_ipv6_jumbo",
     v6(P.udp_datagram(OTHER6, DST6, msg(pa()), length=0), src=OTHER6), "not_bound", **UR,
     note="SPEC-UNSAFE: Linux udp6 treats UDP length 0 as 'jumbo' (ulen = skb->len) and "
          "delivers the INVITE; the spec makes payload_len 0 -> method_not_guarded")

# 18. Scan limits (default build) ------------------------------------------------------------
# Candidate lines start with "au" or "pr" in any case (the first two bytes
# of Authorization and Proxy-Authorization); Allow, Accept and P- headers
# are not candidates and not counted.
_cand = tuple(f"Proxy-Require-{i}: x" if i % 2 else f"AUTH-X{i}: x" for i in range(63))
case("candidate_lines_64_with_credential_last", f_inv(*_cand, pa(), after=(), src=OTHER),
     "not_bound", **UR)
case("candidate_lines_65", f_inv(*_cand, "Priority: y", pa(), after=(), src=OTHER), "scan_limit")
case("candidate_lines_65_no_credentials", f_inv(*_cand, "Priority: y", "Privacy: z", after=()),
     "scan_limit")
case("allow_accept_p_lines_not_counted", f_inv(
     *(f"Allow-{i}: x" for i in range(40)), *(f"Accept-{i}: x" for i in range(40)),
     *(f"P-Header-{i}: x" for i in range(40)), pa(), src=OTHER), "not_bound", **UR)
case("other_lines_not_counted", f_inv(*(f"X-H{i}: x" for i in range(150)), pa(), src=OTHER),
     "not_bound", **UR)
case("line_steps_400_tabs", f_inv("X-Tabs: " + "\t" * 400, pa(), src=OTHER), "not_bound", **UR)
case("line_steps_exhausted_by_tabs", f_inv("X-Tabs: " + "\t" * 700, pa(), src=OTHER),
     "scan_limit")
case("line_steps_exhausted_by_tabs_no_credentials", f_inv("X-Tabs: " + "\t" * 700),
     "scan_limit")
# Bytes from 0x8E up are stop bytes too (§4): a step each, like HT.
_high = bytes(range(0x8E, 0x100))
_low_high = bytes(range(0x80, 0x8E))
case("line_steps_utf8_display_name_bound",
     f_inv('From: "J\u00e9r\u00f4me \u00dcnal" <sip:1001@example.com>;tag=x', pa()), "bound",
     bindings=BOUND, **UR)
case("line_steps_exhausted_by_high_bytes",
     frame(f"INVITE {TARGET} SIP/2.0\r\nX-Bin: ".encode() + _high * 6
           + f"\r\n{pa()}\r\n\r\n".encode(), src=OTHER), "scan_limit",
     note="114 stop bytes, six times: more steps than LINE_STEPS")
case("line_steps_bytes_0x80_to_0x8d_are_not_stops",
     frame(f"INVITE {TARGET} SIP/2.0\r\nX-Bin: ".encode() + _low_high * 60
           + f"\r\n{pa()}\r\n\r\n".encode(), src=OTHER), "not_bound", **UR,
     note="840 bytes, none a stop byte: 27 steps")
case("param_steps_250_u", f_inv(pa(digest() + ', opaque="' + "u" * 250 + '"'), src=OTHER),
     "not_bound", **UR)
case("param_steps_exhausted_by_u", f_inv(pa(digest() + ', opaque="' + "uR" * 250 + '"'),
     src=OTHER), "scan_limit")
case("line_steps_exactly_at_limit", frame(with_line_steps(consts.LINE_STEPS, pa()), src=OTHER),
     "not_bound", **UR, note="the header section takes exactly LINE_STEPS steps (§4)")
case("line_steps_one_over_limit", frame(with_line_steps(consts.LINE_STEPS + 1, pa()), src=OTHER),
     "scan_limit")
case("line_steps_exactly_at_limit_bound", frame(with_line_steps(consts.LINE_STEPS, pa())),
     "bound", bindings=BOUND, **UR)
case("param_steps_exactly_at_limit", frame(with_param_steps(consts.PARAM_STEPS), src=OTHER),
     "not_bound", **UR, note="the credential header takes exactly PARAM_STEPS steps (§6)")
case("param_steps_one_over_limit", frame(with_param_steps(consts.PARAM_STEPS + 1), src=OTHER),
     "scan_limit")
for _k in (10, 25, 40, 55, 60):
    _four = [pa(digest(user=f"10{i}") + ', opaque="' + "u" * _k + '"') for i in range(4)]
    case(f"four_headers_{_k}_u_each_bound", f_inv(*_four), "bound",
         bindings=tuple(bind(user=f"10{i}") for i in range(4)))
    case(f"four_headers_{_k}_u_each_last_not_bound", f_inv(*_four), "not_bound",
         bindings=tuple(bind(user=f"10{i}") for i in range(3)), user="103", realm=R)
case("four_headers_too_many_param_steps",
     f_inv(*[pa(digest() + ', opaque="' + "u" * 100 + '"') for _ in range(4)]), "scan_limit",
     bindings=BOUND)
case("tabs_inside_credential_value", f_inv(pa(digest() + ', opaque="' + "\t" * 150 + '"'),
     src=OTHER), "not_bound", **UR)
case("tabs_inside_credential_value_bound",
     f_inv(pa(f'Digest username="{U}",' + "\t" * 150 + f'realm="{R}"')), "bound",
     bindings=BOUND, **UR)
case("credential_header_after_many_tab_steps",
     f_inv("X-Tabs: " + "\t" * 200, pa(), "Subject: " + "\t" * 100), "bound",
     bindings=BOUND, **UR)
case("large_datagram_3000_bytes", f_inv(pa(), "X-Big: " + "b" * 2800, src=OTHER), "not_bound", **UR)
case("large_datagram_3000_bytes_bound", f_inv("X-Big: " + "b" * 2800, pa()), "bound",
     bindings=BOUND, **UR)

# 19. Fragments --------------------------------------------------------------------------
_he = headers_end(FRAG_NOCRED)
case("v4_first_fragment_whole_headers_no_credentials",
     frags(FRAG_NOCRED, round8(_he + 8), src=OTHER)[0], "no_credentials")
case("v4_first_fragment_whole_headers_bound", frags(FRAG_CRED, round8(headers_end(FRAG_CRED)))[0],
     "bound", bindings=BOUND, **UR)
case("v4_first_fragment_whole_headers_not_bound",
     frags(FRAG_CRED, round8(headers_end(FRAG_CRED)), src=OTHER)[0], "not_bound", **UR)
case("v4_first_fragment_register", frags(FRAG_REGISTER, 256, src=OTHER)[0], "method_not_guarded")
case("v4_first_fragment_headers_continue", frags(FRAG_LATE_CRED, 256, src=OTHER)[0],
     "fragmented")
case("v4_first_fragment_headers_continue_bound", frags(FRAG_CRED, 256)[0], "fragmented",
     bindings=BOUND)
case("v4_first_fragment_headers_continue_frag_pass", frags(FRAG_LATE_CRED, 256, src=OTHER)[0],
     "fragment_passed", config={"fragments": "pass"})
case("v4_first_fragment_headers_end_exactly_at_cut",
     frags(pad_to(600, body="y" * 200), 400, src=OTHER)[0], "no_credentials")
case("v4_first_fragment_only_invite_word", frags(FRAG_LATE_CRED, 8, src=OTHER)[0], "fragmented")
case("v4_first_fragment_only_crlfs",
     frags(b"\r\n\r\n\r\n\r\n" + FRAG_LATE_CRED, 8, src=OTHER)[0], "fragmented")
case("v4_first_fragment_register_word_8_bytes",
     frags(msg(pa(), method="REGISTER"), 8, src=OTHER)[0], "fragmented",
     note="n - first < 10: the method is not proved in 8 bytes")
case("v4_first_fragment_options_16_bytes",
     frags(msg(pa(), method="OPTIONS"), 16, src=OTHER)[0], "method_not_guarded")
case("v4_first_fragment_no_payload", frags(FRAG_LATE_CRED, 0, src=OTHER)[0], "fragmented",
     note="SPEC-UNSAFE: n == 0 -> method_not_guarded passes a first fragment that proves "
          "nothing; the INVITE with credentials is all in the second fragment")
case("v4_first_fragment_no_payload_frag_pass", frags(FRAG_LATE_CRED, 0, src=OTHER)[0],
     "fragment_passed", config={"fragments": "pass"},
     note="SPEC-UNSAFE: as v4_first_fragment_no_payload")
_cut_at = FRAG_LATE_CRED.index(b"Proxy-Authorization")  # a line start
_cut8 = _cut_at // 8 * 8
case("v4_first_fragment_trailer_fakes_header_end",
     first_fragment(FRAG_LATE_CRED, _cut8, src=OTHER,
                       extra=FRAG_LATE_CRED[_cut8:_cut_at] + b"\r\n"),
     "fragmented",
     note="SPEC-UNSAFE: bytes after the IP packet (Ethernet trailer) are read as payload of "
          "a first fragment: they fake the end of the header section; the kernel trims them "
          "and reassembles with the credentials of the next fragment")
case("v4_first_fragment_unaligned_tail_fakes_header_end",
     first_fragment(FRAG_LATE_CRED, _cut8, src=OTHER,
                       ip_extra=FRAG_LATE_CRED[_cut8:_cut_at] + b"\r\n"),
     "fragmented",
     note="SPEC-UNSAFE: Linux trims a non-last IPv4 fragment to a multiple of 8 bytes "
          "(ip_frag_queue: end &= ~7); the up to 7 dropped bytes fake the header end")
for _i, _f in enumerate(frags(FRAG_LATE_CRED, 256, src=OTHER)[1:], 1):
    case(f"v4_later_fragment_{_i}", _f, "later_fragment")
    case(f"v4_later_fragment_{_i}_frag_pass", _f, "later_fragment", config={"fragments": "pass"})
case("v4_later_fragment_tcp", v4(b"\0" * 64, proto=6, frag=(1480, False)), "later_fragment")
case("v4_later_fragment_last", v4(b"x" * 32, frag=(64, False)),
     "later_fragment")

case("v6_first_fragment_whole_headers_no_credentials",
     frags(FRAG_NOCRED, round8(_he + 8), src=OTHER6)[0], "no_credentials")
case("v6_first_fragment_whole_headers_bound",
     frags(FRAG_CRED, round8(headers_end(FRAG_CRED)), src=SRC6)[0], "bound", bindings=BOUND6, **UR)
case("v6_first_fragment_whole_headers_not_bound",
     frags(FRAG_CRED, round8(headers_end(FRAG_CRED)), src=OTHER6)[0], "not_bound", **UR)
case("v6_first_fragment_headers_continue", frags(FRAG_LATE_CRED, 256, src=OTHER6)[0],
     "fragmented")
case("v6_first_fragment_headers_continue_frag_pass", frags(FRAG_LATE_CRED, 256, src=OTHER6)[0],
     "fragment_passed", config={"fragments": "pass"})
case("v6_first_fragment_register", frags(FRAG_REGISTER, 256, src=OTHER6)[0],
     "method_not_guarded")
case("v6_first_fragment_no_payload", frags(FRAG_LATE_CRED, 0, src=OTHER6)[0], "fragmented",
     note="SPEC-UNSAFE: as v4_first_fragment_no_payload")
case("v6_first_fragment_trailer_fakes_header_end",
     first_fragment(FRAG_LATE_CRED, _cut8, src=OTHER6,
                       extra=FRAG_LATE_CRED[_cut8:_cut_at] + b"\r\n"),
     "fragmented", note="SPEC-UNSAFE: as v4_first_fragment_trailer_fakes_header_end")
for _i, _f in enumerate(frags(FRAG_LATE_CRED, 256, src=OTHER6)[1:], 1):
    case(f"v6_later_fragment_{_i}", _f, "later_fragment")
case("v6_hop_by_hop_then_first_fragment",
     v6(P.udp_datagram(OTHER6, DST6, FRAG_LATE_CRED)[:264], src=OTHER6, ext_headers=[0],
        frag=(0, True)),
     "fragmented")
case("v6_hop_by_hop_then_later_fragment",
     v6(FRAG_LATE_CRED[256:], src=OTHER6, ext_headers=[0], frag=(264, False)), "later_fragment")
case("v6_atomic_fragment_is_whole_datagram", frame(msg(pa()), src=OTHER6, ext_headers=[44]),
     "not_bound", **UR)

# 20. IPv6 extension headers ---------------------------------------------------------------
for _kinds, _tag in (([0], "hop_by_hop"), ([43], "routing"), ([60], "dest_opts"),
                     ([0, 43, 60], "hbh_routing_dest"), ([51], "ah"), ([0, 60, 51, 43], "mixed_4"),
                     ([0, 60, 60, 60, 60, 60], "six")):
    case(f"v6_ext_{_tag}_not_bound",
         frame(msg(pa()), src=OTHER6, ext_headers=_kinds, ah_icv=b"\0" * 4), "not_bound", **UR)
case("v6_ext_six_bound", frame(msg(pa()), src=SRC6, ext_headers=[0, 43, 60, 60, 60, 60]),
     "bound", bindings=BOUND6, **UR)
case("v6_ext_six_no_credentials", frame(msg(), src=OTHER6, ext_headers=[0, 43, 60, 60, 60, 60]),
     "no_credentials")
case("v6_ext_seven_limit", frame(msg(pa()), src=SRC6, ext_headers=[0, 43, 60, 60, 60, 60, 60]),
     "ext_header_limit", bindings=BOUND6)
case("v6_ext_seven_limit_no_credentials",
     frame(msg(), src=OTHER6, ext_headers=[60, 60, 60, 60, 60, 60, 60]), "ext_header_limit")
case("v6_ext_six_then_fragment_limit",
     frame(msg(), src=OTHER6, ext_headers=[0, 60, 60, 60, 60, 60, 44]), "ext_header_limit")
case("v6_ext_then_tcp", v6(tcp_header() + b"\0" * 20, nexthdr=6, src=OTHER6, ext_headers=[0]),
     "not_udp")
case("v6_ext_then_tcp_port_not_guarded",
     v6(tcp_header(dport=443), nexthdr=6, src=OTHER6, ext_headers=[0]), "port_not_guarded")
case("v6_ext_truncated", P.ethernet(P.ETH_P_IPV6, P.ipv6(OTHER6, DST6, 0, b"")), "not_ip")
case("v6_ext_truncated_one_byte", P.ethernet(P.ETH_P_IPV6, P.ipv6(OTHER6, DST6, 43, b"\x11")),
     "not_ip")
case("v6_fragment_header_truncated",
     P.ethernet(P.ETH_P_IPV6, P.ipv6(OTHER6, DST6, 44, b"\x11\x00\x00\x01")), "not_ip")
case("v6_ext_pointing_past_frame", P.ethernet(P.ETH_P_IPV6, P.ipv6(OTHER6, DST6, 60,
     bytes([17, 10]) + b"\0" * 6)), "not_udp")
case("v6_no_next_header", v6(b"\0" * 16, nexthdr=59, src=OTHER6), "not_udp")
case("v6_tcp", v6(tcp_header() + b"\0" * 20, nexthdr=6, src=OTHER6), "not_udp")
case("v6_tcp_port_not_guarded", v6(b"\0" * 40, nexthdr=6, src=OTHER6), "port_not_guarded",
     note="a TCP header of zeros: destination port 0")
case("v6_esp", v6(b"\0" * 40, nexthdr=50, src=OTHER6), "not_udp")
case("v6_header_truncated", P.ethernet(P.ETH_P_IPV6, P.ipv6(OTHER6, DST6, 17, b"")[:30]),
     "not_ip")
case("v6_wrong_version", P.ethernet(P.ETH_P_IPV6, b"\x40" + P.ipv6(OTHER6, DST6, 17,
     P.udp_datagram(OTHER6, DST6, msg(pa())))[1:]), "not_ip")

# 21. L2 and IPv4 -----------------------------------------------------------------------------
case("vlan_one_tag_not_bound", f_inv(pa(), src=OTHER, frame_kw={"vlans": (100,)}), "not_bound",
     **UR)
case("vlan_two_tags_not_bound", f_inv(pa(), src=OTHER, frame_kw={"vlans": (100, 200)}),
     "not_bound", **UR)
case("vlan_two_tags_bound", f_inv(pa(), frame_kw={"vlans": (100, 200)}), "bound",
     bindings=BOUND, **UR)
case("vlan_two_tags_ipv6_not_bound", f_inv(pa(), src=OTHER6, frame_kw={"vlans": (7, 8)}),
     "not_bound", **UR)
case("vlan_two_8021q_tags_not_bound",
     f_inv(pa(), src=OTHER, frame_kw={"vlans": (10, 20), "vlan_tpid": P.ETH_P_8021Q}),
     "not_bound", **UR)
case("vlan_three_tags", f_inv(pa(), src=OTHER, frame_kw={"vlans": (1, 2, 3)}), "not_ip")
case("vlan_tag_truncated", P.DST_MAC + P.SRC_MAC + b"\x81\x00\x00", "not_ip")
case("vlan_tag_then_arp", P.ethernet(0x0806, b"\0" * 28, vlans=(5,)), "not_ip")
case("ipv4_options_4_bytes", f_inv(pa(), src=OTHER, frame_kw={"ip_options": b"\x01" * 4}),
     "not_bound", **UR)
case("ipv4_options_40_bytes_bound", f_inv(pa(), frame_kw={"ip_options": b"\x01" * 39 + b"\x00"}),
     "bound", bindings=BOUND, **UR)
case("ipv4_options_with_vlans", f_inv(pa(), src=OTHER,
     frame_kw={"ip_options": b"\x01" * 8, "vlans": (3, 4)}), "not_bound", **UR)
case("ipv4_ihl_below_5", P.ethernet(P.ETH_P_IP, b"\x44" + P.ipv4(OTHER, DST, 17,
     P.udp_datagram(OTHER, DST, msg(pa())))[1:]), "not_ip")
case("ipv4_ihl_past_frame", P.ethernet(P.ETH_P_IP, b"\x4f" + P.ipv4(OTHER, DST, 17, b"")[1:]),
     "not_ip")
case("ipv4_wrong_version", P.ethernet(P.ETH_P_IP, b"\x65" + P.ipv4(OTHER, DST, 17,
     P.udp_datagram(OTHER, DST, msg(pa())))[1:]), "not_ip")
case("ipv4_header_truncated", P.ethernet(P.ETH_P_IP, P.ipv4(OTHER, DST, 17, b"")[:12]), "not_ip")
case("ipv4_tcp", v4(tcp_header() + msg(pa()), proto=6, src=OTHER), "not_udp",
     note="TCP to a guarded port passes XDP unjudged (docs/design.md §2.1: its stream is)")
case("ipv4_tcp_port_not_guarded", v4(b"\0" * 20 + msg(pa()), proto=6, src=OTHER),
     "port_not_guarded")
case("ipv4_tcp_header_truncated", v4(tcp_header()[:6], proto=6, src=OTHER), "not_udp")
case("ipv4_icmp", v4(b"\x08\0\0\0\0\0\0\0", proto=1, src=OTHER), "not_udp")
case("ipv4_udp_header_truncated", v4(b"\x13\xc4\x13\xc4", src=OTHER), "not_udp")
case("arp", P.ethernet(0x0806, b"\0" * 28), "not_ip")
case("ethertype_unknown", P.ethernet(0x88B5, msg(pa())), "not_ip")
case("ethernet_header_only", P.DST_MAC + P.SRC_MAC + b"\x08\x00", "not_ip")

# 22. Ports ---------------------------------------------------------------------------------
case("port_5061_not_guarded", f_inv(pa(), src=OTHER, frame_kw={"dport": 5061}),
     "port_not_guarded")
case("port_source_5060_only", f_inv(pa(), src=OTHER, frame_kw={"sport": 5060, "dport": 40000}),
     "port_not_guarded")
case("port_5080_added", f_inv(pa(), src=OTHER, frame_kw={"dport": 5080}), "not_bound",
     ports=(5060, 5080), **UR)
case("port_5080_added_bound", f_inv(pa(), frame_kw={"dport": 5080}), "bound",
     ports=(5060, 5080), bindings=BOUND, **UR)
case("port_5060_still_guarded_with_5080", f_inv(pa(), src=OTHER), "not_bound",
     ports=(5060, 5080), **UR)
case("port_5060_unguarded_when_only_5080", f_inv(pa(), src=OTHER), "port_not_guarded",
     ports=(5080,))
for _dp in (5059, 5061, 5060 - 64, 5060 + 64, 5060 + 1024):
    case(f"port_{_dp}_near_5060_not_guarded", f_inv(pa(), src=OTHER, frame_kw={"dport": _dp}),
         "port_not_guarded")
for _dp in (1, 63, 64, 65535):
    case(f"port_{_dp}_guarded", f_inv(pa(), src=OTHER, frame_kw={"dport": _dp}), "not_bound",
         ports=(1, 63, 64, 65535), **UR)
case("port_5060_unguarded_with_edge_ports", f_inv(pa(), src=OTHER), "port_not_guarded",
     ports=(1, 63, 64, 65535))
case("port_5080_not_guarded_by_default", f_inv(pa(), src=OTHER, frame_kw={"dport": 5080}),
     "port_not_guarded")
case("port_ipv6_5080_added", f_inv(pa(), src=OTHER6, frame_kw={"dport": 5080}), "not_bound",
     ports=(5080,), **UR)

# 23. Modes ---------------------------------------------------------------------------------
case("monitor_not_bound", f_inv(pa(), src=OTHER), "not_bound", action="pass", would="drop",
     config={"mode": "monitor"}, **UR)
case("monitor_reject_not_bound", f_inv(pa(), src=OTHER), "not_bound", action="pass",
     would="mark", config={"mode": "monitor", "action": "reject"}, **UR)
case("monitor_bound", f_inv(pa()), "bound", action="pass", would="pass",
     config={"mode": "monitor"}, bindings=BOUND, **UR)
case("monitor_ext_header_limit", frame(msg(), src=OTHER6, ext_headers=[60] * 7),
     "ext_header_limit", action="pass", would="drop", config={"mode": "monitor"})
case("reject_not_bound", f_inv(pa(), src=OTHER), "not_bound", action="mark", would="mark",
     config={"action": "reject"}, **UR)
case("reject_headers_truncated", f_inv(pa(), end="", src=OTHER), "headers_truncated",
     action="mark", would="mark", config={"action": "reject"})
case("reject_bound", f_inv(pa()), "bound", action="pass", would="pass",
     config={"action": "reject"}, bindings=BOUND, **UR)
case("reject_no_credentials", f_inv(src=OTHER), "no_credentials", action="pass", would="pass",
     config={"action": "reject"})
case("drop_not_bound", f_inv(pa(), src=OTHER), "not_bound", action="drop", would="drop",
     config={"mode": "enforce", "action": "drop"}, **UR)

# 24. The small build (NFG_SCAN_MAX=1024): the scan limit -----------------------------------
SMALL = 1024
case("small_headers_end_within_scan_max", frame(pad_to(1000, pa()), src=OTHER), "not_bound",
     program="small", **UR)
case("small_payload_exactly_scan_max", frame(pad_to(SMALL, pa()), src=OTHER), "not_bound",
     program="small", **UR)
case("small_payload_exactly_scan_max_bound", frame(pad_to(SMALL, pa())), "bound",
     bindings=BOUND, program="small", **UR)
case("small_payload_one_over_scan_max_empty_line_starts_inside",
     frame(pad_to(SMALL + 1, pa())), "bound", bindings=BOUND, program="small", **UR,
     note="the empty line's first byte is the last inspected byte")
case("small_payload_two_over_scan_max", frame(pad_to(SMALL + 2, pa())), "headers_truncated",
     bindings=BOUND, program="small")
case("small_headers_cross_scan_max", frame(pad_to(1500, pa())), "headers_truncated",
     bindings=BOUND, program="small")
case("small_headers_cross_scan_max_no_credentials", frame(pad_to(1500)), "headers_truncated",
     program="small")
case("small_credential_beyond_scan_max", frame(msg("X-Pad: " + "p" * 1100, pa()), src=OTHER),
     "headers_truncated", program="small")
case("small_body_beyond_scan_max", frame(msg(pa(), body="b" * 2000), src=OTHER), "not_bound",
     program="small", **UR)
case("small_body_beyond_scan_max_bound", frame(msg(pa(), body="b" * 2000)), "bound",
     bindings=BOUND, program="small", **UR)
case("small_body_beyond_scan_max_no_credentials", frame(msg(body="b" * 2000), src=OTHER),
     "no_credentials", program="small")
case("small_register_beyond_scan_max", frame(pad_to(1500, pa(), method="REGISTER"), src=OTHER),
     "method_not_guarded", program="small")
case("small_exact_scan_max_with_leading_empty_lines",
     frame(pad_to(SMALL, pa(f'Digest username="{U}", nonce="{NONCE}", realm="{R}"    '),
                  leading="\r\n" * 16, after=())),
     "bound", bindings=BOUND, program="small", **UR,
     note="bytes past n read as 0 (classifier.md): at n == SCAN_MAX, skip_lws() after the "
          "realm value (8 LWS bytes up to n) loads its second word at index SCAN_MAX, which "
          "the mask wraps to buf[0], here leading CR LF: 16 LWS -> credential_ambiguous")
case("small_large_frame_credential_near_limit",
     frame(pad_to(SMALL - 4, pa()) + b"\r\n\r\n", src=OTHER), "not_bound", program="small", **UR)


# 30. Bans (docs/design.md §2.2): every packet of a banned source to a guarded
# port, UDP or TCP, before its payload is read -----------------------------------------
BANNED = ((OTHER, None),)
BANNED6 = ((OTHER6, None),)
OTHER6_SAME64 = "2001:db8:bad::99"  # OTHER6's /64
OTHER6_NEXT64 = "2001:db8:bad:1::66"
case("banned_invite_with_credentials", f_inv(pa(), src=OTHER), "banned", bans=BANNED)
case("banned_invite_without_credentials", f_inv(src=OTHER), "banned", bans=BANNED)
case("banned_register", f_inv(pa(), src=OTHER, method="REGISTER"), "banned", bans=BANNED)
case("banned_junk_payload", frame(b"\xff" * 64, src=OTHER), "banned", bans=BANNED,
     note="the payload is never read")
case("banned_empty_datagram", frame(b"", src=OTHER), "banned", bans=BANNED)
case("banned_tcp_syn", tcp(src=OTHER), "banned", bans=BANNED)
case("banned_tcp_with_invite", tcp(msg(pa()), src=OTHER), "banned", bans=BANNED)
case("banned_tcp_v6", tcp(src=OTHER6), "banned", bans=BANNED6)
case("banned_port_not_guarded", f_inv(pa(), src=OTHER, frame_kw={"dport": 5061}),
     "port_not_guarded", bans=BANNED, note="a ban covers the guarded ports only")
case("banned_tcp_port_not_guarded", tcp(src=OTHER, dport=22), "port_not_guarded", bans=BANNED)
case("banned_monitor", f_inv(pa(), src=OTHER), "banned", bans=BANNED,
     config={"mode": "monitor"})
case("banned_reject_action_drops", f_inv(pa(), src=OTHER), "banned", bans=BANNED,
     config={"action": "reject"}, note="a flood is dropped: a reject would answer each packet")
case("banned_expired", f_inv(src=OTHER), "no_credentials", bans=((OTHER, -1),),
     note="the program checks the expiry itself")
case("banned_other_address", f_inv(pa()), "bound", bans=BANNED, bindings=BOUND, **UR)
case("banned_inside_trusted_network", f_inv(pa(), src=OTHER), "banned", bans=BANNED,
     trusted=("198.51.100.0/24",), note="a ban wins: the controller never bans a trusted "
     "source itself, so this one is an operator's")
case("banned_neighbour_of_trusted_host", f_inv(pa(), src=OTHER), "trusted",
     bans=(("198.51.100.8", None),),
     trusted=("198.51.100.7/32",), note="the ban of another source leaves it trusted")
case("banned_bound_address", f_inv(pa()), "banned", bans=((SRC, None),), bindings=BOUND,
     note="the kernel obeys a ban; the controller never bans a bound address")
case("banned_v6_prefix", f_inv(pa(), src=OTHER6_SAME64), "banned", bans=BANNED6,
     note="an IPv6 ban covers the /64 (the default ipv6_prefix)")
case("banned_v6_next_prefix", f_inv(src=OTHER6_NEXT64), "no_credentials", bans=BANNED6)
case("banned_v6_prefix_128_exact", f_inv(src=OTHER6_SAME64), "no_credentials", bans=BANNED6,
     config={"ipv6_prefix": 128})
case("banned_v6_prefix_128_same", f_inv(src=OTHER6), "banned", bans=BANNED6,
     config={"ipv6_prefix": 128})
case("banned_v6_prefix_48", f_inv(src=OTHER6_NEXT64), "banned", bans=BANNED6,
     config={"ipv6_prefix": 48})
case("banned_v4_neighbour", f_inv(src="198.51.100.8"), "no_credentials", bans=BANNED,
     note="IPv4 bans are one address")
case("banned_fragment_first", first_fragment(msg(pa()), 64, src=OTHER), "banned", bans=BANNED)
case("banned_later_fragment_passes", v4(b"\0" * 64, src=OTHER, frag=(1480, False)),
     "later_fragment", bans=BANNED, note="no UDP header: the first fragment was dropped")

# 31. Rate limits: requests from sources neither trusted nor bound -----------------------------
SLOW = 0.001  # one request per 1,000 s: no bucket refills during a test


def limits(**per_class) -> dict:
    return {"rate_limits": {cls: (SLOW, burst) for cls, burst in per_class.items()}}


INV2 = limits(invite=2)
case("rate_invite_within_burst", f_inv(src=OTHER), "no_credentials", config=INV2,
     before=(f_inv(src=OTHER),))
case("rate_invite_over_burst", f_inv(src=OTHER), "rate_limited", config=INV2,
     before=(f_inv(src=OTHER),) * 2)
case("rate_invite_over_burst_monitor", f_inv(src=OTHER), "rate_limited",
     config={**INV2, "mode": "monitor"}, before=(f_inv(src=OTHER),) * 2)
case("rate_invite_over_burst_reject_drops", f_inv(src=OTHER), "rate_limited",
     config={**INV2, "action": "reject"}, before=(f_inv(src=OTHER),) * 2)
case("rate_credentials_not_bound_stays_verdict", f_inv(pa(), src=OTHER), "not_bound",
     config=INV2, before=(f_inv(src=OTHER),) * 2, **UR,
     note="a verdict already: the credential check decides")
case("rate_bound_address_never_limited", f_inv(), "no_credentials", config=INV2,
     bindings=BOUND, before=(f_inv(),) * 3)
case("rate_bound_address_register_never_limited", f_inv(method="REGISTER"),
     "method_not_guarded", config=limits(register=1), bindings=BOUND,
     before=(f_inv(method="REGISTER"),) * 3)
case("rate_expired_binding_limited", f_inv(), "rate_limited", config=INV2,
     bindings=(bind(expires_in=-1),), before=(f_inv(),) * 2,
     note="an expired binding is no binding")
case("rate_bound_elsewhere_limited", f_inv(src=OTHER), "rate_limited", config=INV2,
     bindings=BOUND, before=(f_inv(src=OTHER),) * 2)
case("rate_trusted_never_limited", f_inv(src=OTHER), "trusted", config=INV2,
     trusted=("198.51.100.0/24",), before=(f_inv(src=OTHER),) * 3)
case("rate_register_over_burst", f_inv(pa(), src=OTHER, method="REGISTER"), "rate_limited",
     config=limits(register=2), before=(f_inv(pa(), src=OTHER, method="REGISTER"),) * 2)
case("rate_classes_have_their_own_buckets", f_inv(src=OTHER, method="REGISTER"),
     "method_not_guarded", config=limits(invite=1, register=1), before=(f_inv(src=OTHER),) * 2)
case("rate_other_options", f_inv(src=OTHER, method="OPTIONS"), "rate_limited",
     config=limits(other=1), before=(f_inv(src=OTHER, method="BYE"),))
case("rate_other_junk", frame(b"\x16\x03\x01 hello", src=OTHER), "rate_limited",
     config=limits(other=1), before=(frame(b"GET / HTTP/1.0\r\n\r\n", src=OTHER),),
     note="what is not SIP is limited as other requests")
case("rate_invite_lower_case_is_other", frame(msg(request_line="invite sip:x SIP/2.0"),
     src=OTHER), "rate_limited", config=limits(other=1, invite=100),
     before=(f_inv(src=OTHER, method="OPTIONS"),))
case("rate_response_never_limited", frame(b"SIP/2.0 200 OK\r\n\r\n", src=OTHER),
     "method_not_guarded", config=limits(other=1),
     before=(frame(b"sip/2.0 180 Ringing\r\n\r\n", src=OTHER),) * 2)
case("rate_keepalive_never_limited", frame(b"\r\n\r\n", src=OTHER), "method_not_guarded",
     config=limits(other=1), before=(frame(b"\r\n\r\n", src=OTHER),) * 2)
case("rate_sources_have_their_own_buckets", f_inv(src="198.51.100.8"), "no_credentials",
     config=INV2, before=(f_inv(src=OTHER),) * 2)
case("rate_v6_prefix_shares_a_bucket", f_inv(src=OTHER6_SAME64), "rate_limited", config=INV2,
     before=(f_inv(src=OTHER6),) * 2)
case("rate_v6_next_prefix_own_bucket", f_inv(src=OTHER6_NEXT64), "no_credentials",
     config=INV2, before=(f_inv(src=OTHER6),) * 2)
case("rate_v6_bound_exact_address_only", f_inv(src=OTHER6_SAME64), "rate_limited",
     config=INV2, bindings=(bind(ip=OTHER6),), before=(f_inv(src=OTHER6_SAME64),) * 2,
     note="bound is the exact address; the bucket is the /64's")
case("rate_unlimited_class", f_inv(src=OTHER), "no_credentials",
     config={"rate_limits": {"invite": (0, 1)}}, before=(f_inv(src=OTHER),) * 5)


def by_name() -> dict[str, Case]:
    out = {}
    for c in CASES:
        if c.name in out:
            raise ValueError(f"duplicate case name {c.name}")
        out[c.name] = c
    return out


by_name()  # fail at import on a duplicate name
