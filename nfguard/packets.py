"""Build Ethernet frames carrying UDP (IPv4 or IPv6) and SIP messages.

Used by the in-kernel tests, `nfguard bench` and `nfguard selftest`: small
and explicit, no dependency beyond the standard library.
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

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ethernet(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    """Ethernet header, then one 802.1ad/802.1Q tag per VLAN id (outer first)."""
    hdr = DST_MAC + SRC_MAC
    for i, vid in enumerate(vlans):
        tpid = ETH_P_8021AD if i == 0 and len(vlans) > 1 else ETH_P_8021Q
        hdr += struct.pack("!HH", tpid, vid & 0xFFF)
    return hdr + struct.pack("!H", ethertype) + payload


def udp_header(src: str, dst: str, sport: int, dport: int, payload: bytes, length=None) -> bytes:
    length = 8 + len(payload) if length is None else length
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", length, IPPROTO_UDP)
    csum = _csum(pseudo + hdr + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, csum)


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, options: bytes = b"",
         frag_offset: int = 0, more_fragments: bool = False, ident: int = 0x1234,
         total_length: int | None = None) -> bytes:
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


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nexthdr, 64,
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
    return struct.pack("!BBHI", nexthdr, 0, (offset // 8) << 3 | int(more), ident)


def udp_frame(payload: bytes, src: str = "192.0.2.10", dst: str = "192.0.2.1",
              sport: int = 5060, dport: int = 5060, vlans: tuple[int, ...] = (),
              ip_options: bytes = b"", ext_headers: list[int] | None = None) -> bytes:
    """One unfragmented UDP datagram in an Ethernet frame. ext_headers lists
    IPv6 extension header kinds (0, 43, 60) to put before UDP."""
    udp = udp_header(src, dst, sport, dport, payload) + payload
    if ipaddress.ip_address(src).version == 4:
        return ethernet(ETH_P_IP, ipv4(src, dst, IPPROTO_UDP, udp, options=ip_options), vlans)
    chain = b""
    kinds = list(ext_headers or [])
    for i, kind in enumerate(kinds):
        nxt = kinds[i + 1] if i + 1 < len(kinds) else IPPROTO_UDP
        chain += ipv6_ext(kind, nxt)
    first = kinds[0] if kinds else IPPROTO_UDP
    return ethernet(ETH_P_IPV6, ipv6(src, dst, first, chain + udp), vlans)


def udp_fragments(payload: bytes, first_size: int, src: str = "192.0.2.10",
                  dst: str = "192.0.2.1", sport: int = 5060, dport: int = 5060) -> list[bytes]:
    """The datagram split into IP fragments; the first carries the UDP header
    and first_size bytes (a multiple of 8) of UDP data after it."""
    udp = udp_header(src, dst, sport, dport, payload) + payload
    cut = 8 + first_size
    if cut % 8 or cut >= len(udp):
        raise ValueError("first fragment must be a multiple of 8 and shorter than the datagram")
    parts = [(0, udp[:cut], True), (cut, udp[cut:], False)]
    frames = []
    for off, chunk, more in parts:
        if ipaddress.ip_address(src).version == 4:
            frames.append(ethernet(ETH_P_IP, ipv4(src, dst, IPPROTO_UDP, chunk,
                                                  frag_offset=off, more_fragments=more)))
        else:
            frames.append(ethernet(ETH_P_IPV6, ipv6(src, dst, 44,
                                                    ipv6_frag(IPPROTO_UDP, off, more) + chunk)))
    return frames


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
