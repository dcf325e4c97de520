"""Build Ethernet frames carrying UDP (IPv4 or IPv6) and SIP messages.

The one home of frame building: `nfguard check`, `nfguard selftest`,
`nfguard bench` and every test use these builders. Besides well-formed
frames they make what an attacker sends: VLAN tags, IPv4 options, IPv6
extension header chains (AH and Fragment headers included), IP fragments
and forged IP and UDP length fields. Small and explicit, no dependency
beyond the standard library.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_UDP = 17
IPPROTO_TCP = 6
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _version(addr: str) -> int:
    return ipaddress.ip_address(addr).version


# -- layer 2 -----------------------------------------------------------------
def ethernet(ethertype: int, payload: bytes, vlans: tuple[int, ...] = (),
             tpid: int | None = None) -> bytes:
    """Ethernet header, then one VLAN tag per id (outer first). The outer of
    several tags is 802.1ad and the others 802.1Q, unless tpid gives the
    TPID of every tag (e.g. two 802.1Q tags in a row)."""
    hdr = DST_MAC + SRC_MAC
    for i, vid in enumerate(vlans):
        outer = i == 0 and len(vlans) > 1
        t = tpid if tpid is not None else ETH_P_8021AD if outer else ETH_P_8021Q
        hdr += struct.pack("!HH", t, vid & 0xFFF)
    return hdr + struct.pack("!H", ethertype) + payload


# -- UDP -----------------------------------------------------------------------
def udp_header(src: str, dst: str, sport: int, dport: int, payload: bytes,
               length: int | None = None, checksum_length: int | None = None) -> bytes:
    """The UDP header of `payload`. length forges the length field; the
    checksum's pseudo-header uses checksum_length, by default the real
    length (8 + payload), so that only the length field lies."""
    real = 8 + len(payload)
    length = real if length is None else length
    checksum_length = real if checksum_length is None else checksum_length
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, IPPROTO_UDP, checksum_length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", checksum_length, IPPROTO_UDP)
    csum = _csum(pseudo + hdr + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum)


def udp_datagram(src: str, dst: str, payload: bytes, sport: int = 5060, dport: int = 5060,
                 length: int | None = None, checksum_length: int | None = None) -> bytes:
    """UDP header and payload; length and checksum_length as in udp_header."""
    return udp_header(src, dst, sport, dport, payload, length, checksum_length) + payload


# -- IPv4 ----------------------------------------------------------------------
def ipv4(src: str, dst: str, proto: int, payload: bytes, *, options: bytes = b"",
         frag_offset: int = 0, more_fragments: bool = False, ident: int = 0x1234,
         total_length: int | None = None) -> bytes:
    """An IPv4 packet; total_length forges the length field."""
    if len(options) % 4:
        raise ValueError("IPv4 options must be a multiple of 4 bytes")
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload) if total_length is None else total_length
    flags = (0x2000 if more_fragments else 0) | (frag_offset // 8)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, flags, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr += options
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


# -- IPv6 and its extension headers --------------------------------------------
def ipv6(src: str, dst: str, nexthdr: int, payload: bytes,
         payload_length: int | None = None) -> bytes:
    """An IPv6 packet; payload_length forges the length field."""
    plen = len(payload) if payload_length is None else payload_length
    return struct.pack("!IHBB16s16s", 0x60000000, plen, nexthdr, 64,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def ipv6_ext(kind: int, nexthdr: int, body_len: int = 6) -> bytes:
    """A Hop-by-Hop (0), Routing (43) or Destination Options (60) header of
    8-byte units (body_len + 2 bytes), padded with PadN."""
    total = body_len + 2
    if total % 8:
        raise ValueError("extension header length must make a multiple of 8")
    body = bytes([1, body_len - 2]) + b"\0" * (body_len - 2) if body_len >= 2 else b""
    return bytes([nexthdr, total // 8 - 1]) + body


def ipv6_frag(nexthdr: int, offset: int, more: bool, ident: int = 0x1234) -> bytes:
    """A Fragment header; offset in bytes (a multiple of 8)."""
    return struct.pack("!BBHI", nexthdr, 0, (offset // 8) << 3 | int(more), ident)


def ipv6_ah(nexthdr: int, icv: bytes = b"", spi: int = 0, seq: int = 0) -> bytes:
    """An Authentication Header: 12 fixed bytes and the ICV. Its length
    field counts 4-byte units minus 2, so 12 + len(icv) need not be a
    multiple of 8 (the classifier must follow it either way)."""
    if len(icv) % 4:
        raise ValueError("the AH ICV must be a multiple of 4 bytes")
    return struct.pack("!BBHII", nexthdr, (12 + len(icv)) // 4 - 2, 0, spi, seq) + icv


def ipv6_ext_chain(kinds, last_next: int = IPPROTO_UDP, frag: tuple[int, bool] = (0, False),
                   ah_icv: bytes = b"") -> tuple[int, bytes]:
    """A chain of IPv6 extension headers, one per kind: 0, 43, 60 (8 bytes),
    51 (AH with ah_icv) or 44 (Fragment with frag = (offset, more)); the
    last points to last_next. Returns the first next-header value and the
    bytes."""
    kinds = list(kinds)
    chain = b""
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else last_next
        if kind == IPPROTO_AH:
            chain += ipv6_ah(nxt, ah_icv)
        elif kind == IPPROTO_FRAGMENT:
            chain += ipv6_frag(nxt, *frag)
        else:
            chain += ipv6_ext(kind, nxt)
    return (kinds[0] if kinds else last_next), chain


# -- an IP packet of either version --------------------------------------------
def ip_packet(src: str, dst: str, proto: int, payload: bytes, *, options: bytes = b"",
              ext_headers=(), frag: tuple[int, bool] | None = None, ah_icv: bytes = b"",
              length: int | None = None) -> bytes:
    """An IPv4 or IPv6 packet (the version of src) carrying `payload` of
    protocol `proto`.

    options: IPv4 options. ext_headers: IPv6 extension header kinds before
    `proto` (see ipv6_ext_chain). frag = (offset, more) makes an IP
    fragment: the IPv4 offset and MF flag, or the IPv6 Fragment header's
    values (a Fragment header is appended unless ext_headers has one;
    (0, False) there is an atomic fragment). length forges the IP length
    field (IPv4 total length, IPv6 payload length)."""
    if _version(src) == 4:
        if ext_headers:
            raise ValueError("IPv6 extension headers in an IPv4 packet")
        offset, more = frag or (0, False)
        return ipv4(src, dst, proto, payload, options=options, frag_offset=offset,
                    more_fragments=more, total_length=length)
    if options:
        raise ValueError("IPv4 options in an IPv6 packet")
    kinds = list(ext_headers)
    if frag is not None and IPPROTO_FRAGMENT not in kinds:
        kinds.append(IPPROTO_FRAGMENT)
    first, chain = ipv6_ext_chain(kinds, proto, frag or (0, False), ah_icv)
    return ipv6(src, dst, first, chain + payload, payload_length=length)


def ip_frame(src: str, dst: str, proto: int, payload: bytes, *, vlans: tuple[int, ...] = (),
             vlan_tpid: int | None = None, **ip: object) -> bytes:
    """ip_packet() in an Ethernet frame (keywords as there)."""
    ethertype = ETH_P_IP if _version(src) == 4 else ETH_P_IPV6
    return ethernet(ethertype, ip_packet(src, dst, proto, payload, **ip), vlans, vlan_tpid)


# -- UDP frames ------------------------------------------------------------------
def udp_frame(payload: bytes, src: str = "192.0.2.10", dst: str = "192.0.2.1",
              sport: int = 5060, dport: int = 5060, vlans: tuple[int, ...] = (),
              ip_options: bytes = b"", ext_headers=None, ah_icv: bytes = b"",
              vlan_tpid: int | None = None) -> bytes:
    """One UDP datagram in an Ethernet frame. ext_headers lists IPv6
    extension header kinds (0, 43, 60, 51, 44: see ipv6_ext_chain) to put
    before UDP."""
    return ip_frame(src, dst, IPPROTO_UDP, udp_datagram(src, dst, payload, sport, dport),
                    vlans=vlans, vlan_tpid=vlan_tpid, options=ip_options,
                    ext_headers=ext_headers or (), ah_icv=ah_icv)


def udp_fragments(payload: bytes, first_size: int, src: str = "192.0.2.10",
                  dst: str = "192.0.2.1", sport: int = 5060, dport: int = 5060) -> list[bytes]:
    """The datagram split into IP fragments; the first carries the UDP header
    and first_size bytes (a multiple of 8) of UDP data after it."""
    udp = udp_datagram(src, dst, payload, sport, dport)
    cut = 8 + first_size
    if cut % 8 or cut >= len(udp):
        raise ValueError("first fragment must be a multiple of 8 and shorter than the datagram")
    return [ip_frame(src, dst, IPPROTO_UDP, udp[:cut], frag=(0, True)),
            ip_frame(src, dst, IPPROTO_UDP, udp[cut:], frag=(cut, False))]


# -- SIP -------------------------------------------------------------------------
def sip_request(method: str = "INVITE", user: str = "1001", realm: str = "pbx.example.com",
                auth: str | None = None, header: str = "Proxy-Authorization",
                eol: str = "\r\n", extra_headers: list[str] = (), body: str = "",
                target: str = "sip:1002@pbx.example.com") -> bytes:
    """A SIP request. auth is the credential header's value; None for a
    default digest with user and realm, "" for no credential header."""
    if auth is None:
        auth = (f'Digest username="{user}", realm="{realm}", nonce="8d3c5a0e-57f3-4d52-b1a4", '
                f'uri="{target}", response="5c1d7f0e3b9a2c4d6e8f0a1b2c3d4e5f", '
                'algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001')
    lines = [
        f"{method} {target} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{realm}>;tag=1928301774",
        f"To: <{target}>",
        "Call-ID: a84b4c76e66710@192.0.2.10",
        f"CSeq: 2 {method}",
        f"Contact: <sip:{user}@192.0.2.10:5060>",
        *extra_headers,
    ]
    if auth != "":
        lines.append(f"{header}: {auth}")
    lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return (eol.join(lines) + eol + eol + body).encode()
