"""Read pcap and pcapng captures (with dpkt); write classic pcap.

Reading takes classic pcap (both byte orders, the microsecond 0xa1b2c3d4 and
nanosecond 0xa1b23c4d magic) and pcapng, Wireshark's default (any byte
order, several sections and interfaces, each interface's timestamp
resolution and offset). dpkt (python3-dpkt) unpacks the headers and blocks;
this module walks them itself because dpkt's readers drop what replay needs:
the packet's length on the wire (a capture cut by the snaplen must not be
judged), exact timestamps, the interface of each pcapng packet, and an error
for a cut-off file rather than a short last packet.

Every packet must be an Ethernet frame (link type 1): the XDP program sees
Ethernet. Every problem with a file is an NfguardError naming the file and
what is wrong, so `nfguard replay` reports it as one line.

    for index, timestamp, frame in read_pcap("call.pcapng"):
        ...

    write_pcap("crafted.pcap", [packets.udp_frame(packets.sip_request())])
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from nfguard.errors import NfguardError

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A  # a Section Header Block, the same in either byte order
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144
# No link layer captures packets over 256 KiB; a larger length means the
# file is corrupt (or is not what its magic says).
MAX_RECORD = 262144
MAX_BLOCK = MAX_RECORD + 65536  # a pcapng packet block: the packet and its options

_GLOBAL_HEADER = 24
_RECORD_HEADER = 16

# pcapng block types (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng)
_SHB, _IDB, _PB, _SPB, _EPB = PCAPNG_MAGIC, 1, 2, 3, 6
_BOM_BE, _BOM_LE = bytes.fromhex("1a2b3c4d"), bytes.fromhex("4d3c2b1a")
_OPT_TSRESOL, _OPT_TSOFFSET = 9, 14

LINKTYPE_NAMES = {
    0: "NULL (BSD loopback)",
    1: "EN10MB (Ethernet)",
    101: "RAW (IP without a link layer)",
    105: "IEEE802_11 (Wi-Fi)",
    108: "LOOP (OpenBSD loopback)",
    113: "LINUX_SLL (Linux cooked capture, e.g. tcpdump -i any)",
    127: "IEEE802_11_RADIOTAP",
    228: "IPV4 (raw IPv4)",
    229: "IPV6 (raw IPv6)",
    276: "LINUX_SLL2 (Linux cooked capture v2, e.g. tcpdump -i any)",
}


@dataclass(frozen=True)
class Record:
    index: int  # 0-based position among the file's packets
    ts_ns: int  # capture time, ns since the epoch (exact for every resolution)
    data: bytes  # the captured bytes
    orig_len: int  # the packet's length on the wire (> len(data) when cut by the snaplen)

    @property
    def timestamp(self) -> float:
        return self.ts_ns / 1e9

    @property
    def truncated(self) -> bool:
        return self.orig_len > len(self.data)


@dataclass(frozen=True)
class _Interface:
    """A pcapng interface: what its packets' timestamps count."""
    linktype: int
    ticks_per_sec: int  # 10**6 unless if_tsresol says otherwise
    offset_s: int  # if_tsoffset, seconds added to every timestamp

    def ns(self, ticks: int) -> int:
        return self.offset_s * 1_000_000_000 + ticks * 1_000_000_000 // self.ticks_per_sec


def _dpkt():
    try:
        import dpkt.pcap
        import dpkt.pcapng
    except ImportError:
        raise NfguardError("reading captures needs dpkt: apt install python3-dpkt") from None
    return dpkt


def _linktype_refusal(linktype: int) -> str:
    name = LINKTYPE_NAMES.get(linktype, "unknown")
    return (f"link type {linktype} ({name}) is not supported: nfguard replays Ethernet "
            "captures only (link type 1); capture on one interface, "
            "e.g. tcpdump -i eth0 -w FILE")


class PcapReader:
    """A pcap or pcapng file opened for reading. The file header (pcapng: up
    to the first packet) is read and checked on construction, so a wrong
    file fails before anything else happens; records() then streams the
    packets. `format` is "pcap" or "pcapng"; `linktype` is the first
    interface's (None for a pcapng file without one: it has no packets)."""

    def __init__(self, path: str, fileobj: BinaryIO | None = None):
        self.path = path
        self._dp = _dpkt()
        if fileobj is None:
            try:
                fileobj = open(path, "rb")
            except IsADirectoryError:
                raise NfguardError(f"cannot read pcap {path}: it is a directory") from None
            except OSError as e:
                raise NfguardError(f"cannot read pcap {path}: {e.strerror or e}") from None
            self._owns = True
        else:
            self._owns = False
        self._f = fileobj
        self._index = 0
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> NfguardError:
        return NfguardError(f"{self.path}: {what}")

    def _read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except OSError as e:
            raise self._fail(f"read error: {e.strerror or e}") from None

    def _read_header(self) -> None:
        head = self._read(4)
        if not head:
            raise self._fail("empty file, not a pcap or pcapng capture")
        if len(head) < 4:
            raise self._fail(f"not a pcap or pcapng capture (only {len(head)} bytes)")
        if struct.unpack("<I", head)[0] == PCAPNG_MAGIC:
            self.format = "pcapng"
            self._pcapng_start(head)
        else:
            self.format = "pcap"
            self._pcap_start(head)

    # -- classic pcap ----------------------------------------------------
    def _pcap_start(self, head: bytes) -> None:
        pcap = self._dp.pcap
        le, be = struct.unpack("<I", head)[0], struct.unpack(">I", head)[0]
        if le in (MAGIC_US, MAGIC_NS):
            self.byteorder, magic = "<", le
        elif be in (MAGIC_US, MAGIC_NS):
            self.byteorder, magic = ">", be
        else:
            raise self._fail(
                f"not a pcap or pcapng capture (magic number {head.hex()} is not a1b2c3d4 "
                "or a1b23c4d in either byte order, nor a pcapng section 0a0d0d0a)"
            )
        self.nanosecond = magic == MAGIC_NS
        head += self._read(_GLOBAL_HEADER - 4)
        if len(head) < _GLOBAL_HEADER:
            raise self._fail(
                f"truncated pcap file header ({len(head)} of {_GLOBAL_HEADER} bytes)"
            )
        little = self.byteorder == "<"
        fh = (pcap.LEFileHdr if little else pcap.FileHdr)(head)
        self._PktHdr = pcap.LEPktHdr if little else pcap.PktHdr
        self.version_major, self.version_minor = fh.v_major, fh.v_minor
        self.snaplen = fh.snaplen
        if self.version_major != 2:
            raise self._fail(
                f"unsupported pcap format version {self.version_major}."
                f"{self.version_minor} (expected 2.4)"
            )
        # The upper bits of the field hold FCS information (RFC draft
        # "pcap"); the link type is the low 16 bits.
        self.linktype = fh.linktype & 0xFFFF
        if self.linktype != LINKTYPE_ETHERNET:
            raise self._fail(_linktype_refusal(self.linktype))

    def _pcap_records(self) -> Iterator[Record]:
        frac = 1 if self.nanosecond else 1000
        while True:
            hdr = self._read(_RECORD_HEADER)
            if not hdr:
                return
            i = self._index
            if len(hdr) < _RECORD_HEADER:
                raise self._fail(
                    f"packet {i} is truncated: the file ends inside its record header "
                    f"({len(hdr)} of {_RECORD_HEADER} bytes)"
                )
            ph = self._PktHdr(hdr)
            if ph.caplen > MAX_RECORD:
                raise self._fail(
                    f"packet {i} has an impossible captured length {ph.caplen} "
                    f"(over {MAX_RECORD}): the file is corrupt"
                )
            if ph.tv_usec >= (1_000_000_000 if self.nanosecond else 1_000_000):
                raise self._fail(
                    f"packet {i} has an impossible timestamp fraction {ph.tv_usec} "
                    f"({'ns' if self.nanosecond else 'us'}): the file is corrupt"
                )
            data = self._read(ph.caplen)
            if len(data) < ph.caplen:
                raise self._fail(
                    f"packet {i} is truncated: its record says {ph.caplen} bytes, "
                    f"the file has {len(data)} left"
                )
            self._index += 1
            yield Record(i, ph.tv_sec * 1_000_000_000 + ph.tv_usec * frac, data,
                         max(ph.len, ph.caplen))

    # -- pcapng ----------------------------------------------------------
    def _pcapng_start(self, head: bytes) -> None:
        self.nanosecond = None  # per interface in pcapng
        self.linktype = None
        self._interfaces: list[_Interface] = []
        _, block = self._block(head)
        self._section(block)
        # interfaces come before their packets: read up to the first packet
        # (kept for records()), so that a non-Ethernet capture fails now
        self._pending = None
        while True:
            got = self._block()
            if got is None or got[0] in (_EPB, _PB, _SPB):
                self._pending = got
                break
            self._other_block(*got)

    def _block(self, head: bytes = b"") -> tuple[int, bytes] | None:
        """The next block, whole: (type, bytes); None at the end of the file."""
        head += self._read(12 - len(head))  # type, length, and an SHB's byte-order magic
        if not head:
            return None
        where = f"after packet {self._index - 1}" if self._index else "before the first packet"
        if len(head) < 12:
            raise self._fail(f"truncated {where}: the file ends inside a pcapng block header")
        btype = struct.unpack("<I", head[:4])[0]
        if btype == _SHB:  # a new section says its byte order
            bom = head[8:12]
            if bom not in (_BOM_BE, _BOM_LE):
                raise self._fail(f"not a pcapng capture: byte-order magic {bom.hex()} is "
                                 "not 1a2b3c4d in either byte order")
            self.byteorder = ">" if bom == _BOM_BE else "<"
        else:
            btype = struct.unpack(self.byteorder + "I", head[:4])[0]
        length = struct.unpack(self.byteorder + "I", head[4:8])[0]
        if length < 12 or length % 4 or length > MAX_BLOCK:
            raise self._fail(f"a pcapng block {where} has an impossible length {length}: "
                             "the file is corrupt")
        rest = self._read(length - 12)
        if len(rest) < length - 12:
            what = f"packet {self._index} is truncated" if btype in (_EPB, _PB, _SPB) \
                else f"truncated {where}"
            raise self._fail(f"{what}: the file ends inside its pcapng block "
                             f"({12 + len(rest)} of {length} bytes)")
        return btype, head + rest

    def _unpack(self, big, little, block: bytes, what: str):
        """A dpkt block class over block's bytes; corrupt: one clear line."""
        try:
            return (little if self.byteorder == "<" else big)(block)
        except (self._dp.Error, struct.error, ValueError):
            raise self._fail(f"{what} is corrupt (a damaged pcapng block)") from None

    def _section(self, block: bytes) -> None:
        ng = self._dp.pcapng
        if len(block) < 28:
            raise self._fail(f"a pcapng section header of {len(block)} bytes (at least 28): "
                             "the file is corrupt")
        shb = self._unpack(ng.SectionHeaderBlock, ng.SectionHeaderBlockLE, block,
                           "the pcapng section header")
        self.version_major, self.version_minor = shb.v_major, shb.v_minor
        if shb.v_major != 1:
            raise self._fail(f"unsupported pcapng version {shb.v_major}.{shb.v_minor} "
                             "(expected 1.0)")
        self._interfaces = []  # interface numbers start again in each section

    def _other_block(self, btype: int, block: bytes) -> None:
        """Sections and interfaces; any other block has nothing for replay."""
        if btype == _SHB:
            self._section(block)
        elif btype == _IDB:
            self._interface(block)

    def _interface(self, block: bytes) -> None:
        ng = self._dp.pcapng
        n = len(self._interfaces)
        idb = self._unpack(ng.InterfaceDescriptionBlock, ng.InterfaceDescriptionBlockLE,
                           block, f"interface {n}")
        if idb.linktype != LINKTYPE_ETHERNET:
            raise self._fail(f"interface {n}: " + _linktype_refusal(idb.linktype))
        ticks, offset = 1_000_000, 0
        for opt in idb.opts:
            if opt.code == _OPT_TSRESOL and len(opt.data) >= 1:
                # top bit set: a power of 2, else of 10 (if_tsresol)
                exp = opt.data[0] & 0x7F
                if exp > 63:  # no clock ticks that fast: the option is damaged
                    raise self._fail(f"interface {n}: impossible timestamp resolution "
                                     f"{opt.data[0]:#x}: the file is corrupt")
                ticks = 2 ** exp if opt.data[0] & 0x80 else 10 ** exp
            elif opt.code == _OPT_TSOFFSET and len(opt.data) >= 8:
                offset = struct.unpack(self.byteorder + "q", opt.data[:8])[0]
        if self.linktype is None:
            self.linktype = idb.linktype
        self._interfaces.append(_Interface(idb.linktype, ticks, offset))

    def _pcapng_records(self) -> Iterator[Record]:
        ng = self._dp.pcapng
        got, self._pending = self._pending, None
        while got is not None:
            btype, block = got
            if btype in (_EPB, _PB):
                yield self._packet(btype, block, ng)
            elif btype == _SPB:
                raise self._fail(
                    f"packet {self._index} is in a Simple Packet Block, which has no "
                    f"timestamp: convert the file with 'editcap -F pcap {self.path} out.pcap'"
                )
            else:
                self._other_block(btype, block)
            got = self._block()

    def _packet(self, btype: int, block: bytes, ng) -> Record:
        i = self._index
        if btype == _EPB:
            pkt = self._unpack(ng.EnhancedPacketBlock, ng.EnhancedPacketBlockLE, block,
                               f"packet {i}")
        else:  # the obsolete Packet Block: the same fields
            pkt = self._unpack(ng.PacketBlock, ng.PacketBlockLE, block, f"packet {i}")
        if pkt.iface_id >= len(self._interfaces):
            raise self._fail(f"packet {i} names interface {pkt.iface_id}, which the file "
                             "does not describe: the file is corrupt")
        if pkt.caplen > len(block) - 32 or pkt.caplen > MAX_RECORD:
            raise self._fail(f"packet {i} has an impossible captured length {pkt.caplen}: "
                             "the file is corrupt")
        ts = self._interfaces[pkt.iface_id].ns(pkt.ts_high << 32 | pkt.ts_low)
        self._index += 1
        return Record(i, ts, bytes(pkt.pkt_data), max(pkt.pkt_len, pkt.caplen))

    # -- both ------------------------------------------------------------
    def records(self) -> Iterator[Record]:
        """Each packet in file order. A damaged or cut-off record raises an
        NfguardError naming its index, after the good ones before it."""
        if self.format == "pcapng":
            return self._pcapng_records()
        return self._pcap_records()

    def __iter__(self) -> Iterator[tuple[int, float, bytes]]:
        for r in self.records():
            yield r.index, r.timestamp, r.data

    def close(self) -> None:
        if self._owns:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_pcap(path: str) -> Iterator[tuple[int, float, bytes]]:
    """(index, timestamp in seconds, frame bytes) for each packet of path
    (pcap or pcapng)."""
    with PcapReader(path) as r:
        yield from r


class PcapWriter:
    """Write Ethernet frames to a classic pcap file.

    byteorder "<" or ">" (little- or big-endian), nanosecond for the ns
    magic. Frames without a timestamp get consecutive ones 1 ms apart from
    the time the writer was created.
    """

    def __init__(self, path: str, *, nanosecond: bool = False, byteorder: str = "<",
                 linktype: int = LINKTYPE_ETHERNET, snaplen: int = DEFAULT_SNAPLEN):
        if byteorder not in ("<", ">"):
            raise ValueError("byteorder must be '<' or '>'")
        self.path = path
        self.nanosecond = nanosecond
        self.byteorder = byteorder
        self.snaplen = snaplen
        self._next_ns = time.time_ns()
        self._f = open(path, "wb")
        magic = MAGIC_NS if nanosecond else MAGIC_US
        self._f.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, frame: bytes, ts: float | None = None, *, ts_ns: int | None = None,
              orig_len: int | None = None) -> None:
        """Append one frame; ts in seconds or ts_ns in ns since the epoch."""
        if ts_ns is None and ts is not None:
            # a float is not exact (1.25 s is 1.2499999 s): round it at the
            # file's resolution rather than cut it
            unit = 1 if self.nanosecond else 1000
            ts_ns = round(ts * 1e9 / unit) * unit
        elif ts_ns is None:
            ts_ns = self._next_ns
        self._next_ns = ts_ns + 1_000_000
        sec, rem = divmod(ts_ns, 1_000_000_000)
        sub = rem if self.nanosecond else rem // 1000
        frame = bytes(frame)
        orig = len(frame) if orig_len is None else orig_len
        self._f.write(struct.pack(self.byteorder + "IIII", sec, sub, len(frame), orig))
        self._f.write(frame)

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_pcap(path: str, frames: Iterable[bytes | tuple[float, bytes]], **kwargs) -> int:
    """Write frames (bytes, or (timestamp in seconds, bytes)) to path;
    returns how many. kwargs as for PcapWriter."""
    n = 0
    with PcapWriter(path, **kwargs) as w:
        for item in frames:
            if isinstance(item, tuple):
                w.write(item[1], item[0])
            else:
                w.write(item)
            n += 1
    return n


__all__ = [
    "LINKTYPE_ETHERNET",
    "MAGIC_NS",
    "MAGIC_US",
    "PcapReader",
    "PcapWriter",
    "Record",
    "read_pcap",
    "write_pcap",
]
