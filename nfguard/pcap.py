"""Read and write classic libpcap capture files (no dependency).

Reading accepts both byte orders and both the microsecond (0xa1b2c3d4) and
nanosecond (0xa1b23c4d) magic, link type 1 (Ethernet) only. pcapng is
refused with a message saying how to convert it. Every problem with a file
is an NfguardError naming the file and what is wrong, so `nfguard replay`
reports it as one line.

    for index, timestamp, frame in read_pcap("call.pcap"):
        ...

    write_pcap("crafted.pcap", [packets.udp_frame(packets.sip_request())])
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from nfguard.errors import NfguardError

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A  # a Section Header Block, read in either byte order
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 262144
# No link layer captures packets over 256 KiB; a larger length means the
# file is corrupt (or is not what its magic says).
MAX_RECORD = 262144

_GLOBAL_HEADER = 24
_RECORD_HEADER = 16

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
    index: int  # 0-based position in the file
    ts_ns: int  # capture time, ns since the epoch (exact for both magics)
    data: bytes  # the captured bytes
    orig_len: int  # the packet's length on the wire (> len(data) when cut by the snaplen)

    @property
    def timestamp(self) -> float:
        return self.ts_ns / 1e9

    @property
    def truncated(self) -> bool:
        return self.orig_len > len(self.data)


class PcapReader:
    """A classic pcap file opened for reading. The global header is read and
    checked on construction (so a wrong file fails before anything else
    happens); records() then streams the packets."""

    def __init__(self, path: str, fileobj: BinaryIO | None = None):
        self.path = path
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
        head = self._read(_GLOBAL_HEADER)
        if len(head) < 4:
            raise self._fail(
                "empty file, not a pcap capture" if not head else
                f"not a pcap capture (only {len(head)} bytes)"
            )
        le, be = struct.unpack("<I", head[:4])[0], struct.unpack(">I", head[:4])[0]
        if le == PCAPNG_MAGIC:
            raise self._fail(
                "is a pcapng capture, which nfguard does not read: convert it with "
                f"'editcap -F pcap {self.path} out.pcap' and replay out.pcap"
            )
        if le in (MAGIC_US, MAGIC_NS):
            self.byteorder, magic = "<", le
        elif be in (MAGIC_US, MAGIC_NS):
            self.byteorder, magic = ">", be
        else:
            raise self._fail(
                f"not a pcap capture (magic number {head[:4].hex()} is not a1b2c3d4 "
                "or a1b23c4d in either byte order)"
            )
        self.nanosecond = magic == MAGIC_NS
        if len(head) < _GLOBAL_HEADER:
            raise self._fail(
                f"truncated pcap file header ({len(head)} of {_GLOBAL_HEADER} bytes)"
            )
        (self.version_major, self.version_minor, _zone, _sigfigs, self.snaplen,
         linktype) = struct.unpack(self.byteorder + "HHiIII", head[4:])
        if self.version_major != 2:
            raise self._fail(
                f"unsupported pcap format version {self.version_major}."
                f"{self.version_minor} (expected 2.4)"
            )
        # The upper bits of the field hold FCS information (RFC draft
        # "pcap"); the link type is the low 16 bits.
        self.linktype = linktype & 0xFFFF
        if self.linktype != LINKTYPE_ETHERNET:
            name = LINKTYPE_NAMES.get(self.linktype, "unknown")
            raise self._fail(
                f"link type {self.linktype} ({name}) is not supported: nfguard replays "
                f"Ethernet captures only (link type 1); capture on one interface, "
                "e.g. tcpdump -i eth0 -w FILE"
            )
        self._rec = struct.Struct(self.byteorder + "IIII")
        self._index = 0

    def records(self) -> Iterator[Record]:
        """Each packet in file order. A damaged or cut-off record raises an
        NfguardError naming its index, after the good ones before it."""
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
            sec, sub, caplen, orig_len = self._rec.unpack(hdr)
            if caplen > MAX_RECORD:
                raise self._fail(
                    f"packet {i} has an impossible captured length {caplen} "
                    f"(over {MAX_RECORD}): the file is corrupt"
                )
            if sub >= (1_000_000_000 if self.nanosecond else 1_000_000):
                raise self._fail(
                    f"packet {i} has an impossible timestamp fraction {sub} "
                    f"({'ns' if self.nanosecond else 'us'}): the file is corrupt"
                )
            data = self._read(caplen)
            if len(data) < caplen:
                raise self._fail(
                    f"packet {i} is truncated: its record says {caplen} bytes, "
                    f"the file has {len(data)} left"
                )
            self._index += 1
            yield Record(i, sec * 1_000_000_000 + sub * frac, data, max(orig_len, caplen))

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
    """(index, timestamp in seconds, frame bytes) for each packet of path."""
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
        if ts_ns is None:
            ts_ns = round(ts * 1e9) if ts is not None else self._next_ns
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
    "PcapReader", "PcapWriter", "Record", "read_pcap", "write_pcap",
    "LINKTYPE_ETHERNET", "MAGIC_US", "MAGIC_NS",
]
