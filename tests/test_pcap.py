"""nfguard.pcap: pcap and pcapng reading, pcap writing (no kernel needed).

pcapng files are written with dpkt (its Writer, or its block classes for
what the Writer does not do: big-endian sections, several interfaces,
timestamp resolutions, cut packets) and checked against tcpdump (libpcap).
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import dpkt
import dpkt.pcapng as ng
import pytest

from nfguard import packets
from nfguard.errors import NfguardError
from nfguard.pcap import (
    MAGIC_US,
    PcapReader,
    PcapWriter,
    read_pcap,
    write_pcap,
)

from conftest import cannot_run

FRAMES = [
    packets.udp_frame(packets.sip_request()),
    packets.udp_frame(packets.sip_request("REGISTER"), src="2001:db8::10", dst="2001:db8::1"),
    packets.udp_frame(b"\x01\x02\x03", dport=53, vlans=(100,)),
]
TS = [1_700_000_000.25, 1_700_000_001.5, 1_700_000_002.000125]


def header(magic=MAGIC_US, order="<", major=2, minor=4, snaplen=262144, linktype=1) -> bytes:
    return struct.pack(order + "IHHiIII", magic, major, minor, 0, 0, snaplen, linktype)


def record(data: bytes, sec=1, sub=0, order="<", caplen=None, orig=None) -> bytes:
    caplen = len(data) if caplen is None else caplen
    orig = len(data) if orig is None else orig
    return struct.pack(order + "IIII", sec, sub, caplen, orig) + data


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_round_trip(tmp_path, order, nanosecond):
    path = str(tmp_path / "t.pcap")
    frames = list(zip(TS, FRAMES, strict=True))
    assert write_pcap(path, frames, byteorder=order, nanosecond=nanosecond) == 3
    got = list(read_pcap(path))
    assert [(i, f) for i, _, f in got] == list(enumerate(FRAMES))
    for (_, ts, _), want in zip(got, TS, strict=True):
        assert ts == pytest.approx(want, abs=1e-6)
    with PcapReader(path) as r:
        assert r.byteorder == order
        assert r.nanosecond is nanosecond
        assert r.linktype == 1
        recs = list(r.records())
    assert all(not rec.truncated and rec.orig_len == len(rec.data) for rec in recs)


def test_byte_orders_are_what_the_magic_says(tmp_path):
    le, be = str(tmp_path / "le.pcap"), str(tmp_path / "be.pcap")
    write_pcap(le, FRAMES[:1], byteorder="<")
    write_pcap(be, FRAMES[:1], byteorder=">", nanosecond=True)
    assert open(le, "rb").read(4) == bytes.fromhex("d4c3b2a1")
    assert open(be, "rb").read(4) == bytes.fromhex("a1b23c4d")
    # the rest of the file header, as libpcap writes it
    assert open(le, "rb").read(24)[4:] == bytes.fromhex("0200040000000000000000000000040001000000")


def test_nanosecond_timestamps_are_exact(tmp_path):
    path = str(tmp_path / "ns.pcap")
    with PcapWriter(path, nanosecond=True, byteorder=">") as w:
        w.write(FRAMES[0], ts_ns=1_700_000_000_123_456_789)
        w.write(FRAMES[1], ts_ns=1_700_000_000_999_999_999)
    with PcapReader(path) as r:
        assert [rec.ts_ns for rec in r.records()] == [
            1_700_000_000_123_456_789, 1_700_000_000_999_999_999]


def test_microsecond_file_keeps_microseconds(tmp_path):
    path = str(tmp_path / "us.pcap")
    with PcapWriter(path) as w:
        w.write(FRAMES[0], ts_ns=1_700_000_000_123_456_789)
    with PcapReader(path) as r:
        assert [rec.ts_ns for rec in r.records()] == [1_700_000_000_123_456_000]


def test_hand_built_big_endian_file(tmp_path):
    """A file assembled byte by byte, independent of the writer."""
    path = tmp_path / "be.pcap"
    path.write_bytes(header(order=">") + record(b"A" * 20, 7, 999_999, ">")
                     + record(b"B" * 14, 8, 1, ">", orig=1514))
    with PcapReader(str(path)) as r:
        recs = list(r.records())
    assert [(x.index, x.ts_ns, x.data, x.orig_len, x.truncated) for x in recs] == [
        (0, 7_999_999_000, b"A" * 20, 20, False),
        (1, 8_000_001_000, b"B" * 14, 1514, True),
    ]


def test_default_timestamps_increase(tmp_path):
    path = str(tmp_path / "t.pcap")
    write_pcap(path, FRAMES)
    ts = [t for _, t, _ in read_pcap(path)]
    assert ts == sorted(ts) and len(set(ts)) == 3


def test_empty_capture_has_no_packets(tmp_path):
    path = str(tmp_path / "empty.pcap")
    write_pcap(path, [])
    assert list(read_pcap(path)) == []


@pytest.mark.parametrize("order", ["<", ">"])
def test_tcpdump_reads_ours_and_we_read_tcpdumps(tmp_path, order):
    if not shutil.which("tcpdump"):  # scripts/setup installs it; CI requires it
        cannot_run("tcpdump is not installed")
    ours, theirs = str(tmp_path / "ours.pcap"), str(tmp_path / "theirs.pcap")
    write_pcap(ours, list(zip(TS, FRAMES, strict=True)), byteorder=order)
    out = subprocess.run(["tcpdump", "-nn", "-r", ours], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 3 and "192.0.2.10.5060 > 192.0.2.1.5060" in out.stdout
    # tcpdump rewrites it with libpcap's own writer (nanosecond magic asked for)
    subprocess.run(["tcpdump", "-r", ours, "--time-stamp-precision=nano", "-w", theirs],
                   check=True, capture_output=True)
    got = list(read_pcap(theirs))
    assert [f for _, _, f in got] == FRAMES
    assert [t for _, t, _ in got] == pytest.approx(TS, abs=1e-6)


# -- errors ----------------------------------------------------------------
def error_of(path) -> str:
    with pytest.raises(NfguardError) as e:
        list(read_pcap(str(path)))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    msg = error_of(tmp_path / "nope.pcap")
    assert "nope.pcap" in msg and "No such file" in msg


def test_directory(tmp_path):
    assert "directory" in error_of(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "e.pcap"
    p.write_bytes(b"")
    msg = error_of(p)
    assert str(p) in msg and "empty" in msg


def test_not_a_pcap(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("INVITE sip:1002@pbx SIP/2.0\r\n" * 3)
    msg = error_of(p)
    assert str(p) in msg and "not a pcap" in msg


def test_pcapng_without_interfaces_has_no_packets(tmp_path):
    # a section header and nothing else: a valid, empty capture
    p = tmp_path / "cap.pcapng"
    p.write_bytes(bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000"))
    with PcapReader(str(p)) as r:
        assert (r.format, r.linktype, list(r.records())) == ("pcapng", None, [])


def test_truncated_pcapng_section_header(tmp_path):
    p = tmp_path / "cap.pcapng"
    p.write_bytes(bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000"))
    msg = error_of(p)
    assert "truncated" in msg and "16 of 28 bytes" in msg and str(p) in msg


@pytest.mark.parametrize("order", ["<", ">"])
def test_other_link_types_are_refused_by_name(tmp_path, order):
    p = tmp_path / "any.pcap"
    p.write_bytes(header(order=order, linktype=113) + record(b"x" * 20, order=order))
    msg = error_of(p)
    assert "link type 113" in msg and "LINUX_SLL" in msg and "Ethernet" in msg


def test_unknown_link_type(tmp_path):
    p = tmp_path / "odd.pcap"
    p.write_bytes(header(linktype=4242))
    assert "link type 4242" in error_of(p)


def test_truncated_file_header(tmp_path):
    p = tmp_path / "short.pcap"
    p.write_bytes(header()[:10])
    msg = error_of(p)
    assert "truncated" in msg and "10 of 24" in msg


def test_bad_version(tmp_path):
    p = tmp_path / "v.pcap"
    p.write_bytes(header(major=3))
    assert "version 3.4" in error_of(p)


def test_truncated_record_header_after_good_packets(tmp_path):
    p = tmp_path / "cut.pcap"
    p.write_bytes(header() + record(FRAMES[0]) + record(FRAMES[1])[:9])
    got = []
    with pytest.raises(NfguardError) as e:
        for item in read_pcap(str(p)):
            got.append(item)
    assert [f for _, _, f in got] == [FRAMES[0]]
    assert "packet 1 is truncated" in str(e.value) and str(p) in str(e.value)


def test_truncated_record_data(tmp_path):
    p = tmp_path / "cut.pcap"
    p.write_bytes(header() + record(FRAMES[0])[:-5])
    msg = error_of(p)
    assert "packet 0 is truncated" in msg and f"{len(FRAMES[0])} bytes" in msg


def test_garbage_lengths(tmp_path):
    p = tmp_path / "garbage.pcap"
    p.write_bytes(header() + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 60) + b"\0" * 64)
    msg = error_of(p)
    assert "packet 0" in msg and "corrupt" in msg


def test_garbage_timestamp(tmp_path):
    p = tmp_path / "garbage.pcap"
    p.write_bytes(header() + record(b"x" * 20, sub=5_000_000))
    assert "corrupt" in error_of(p)


def test_writer_rejects_bad_byteorder(tmp_path):
    with pytest.raises(ValueError):
        PcapWriter(str(tmp_path / "x.pcap"), byteorder="big")


# -- pcapng ------------------------------------------------------------------
BE, LE = ">", "<"


def shb(order=LE, major=1) -> bytes:
    cls = ng.SectionHeaderBlockLE if order == LE else ng.SectionHeaderBlock
    return bytes(cls(v_major=major))


def opt(order, code, data: bytes):
    return (ng.PcapngOptionLE if order == LE else ng.PcapngOption)(code=code, data=data)


def idb(order=LE, linktype=1, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = []
    if tsresol is not None:
        opts.append(opt(order, ng.PCAPNG_OPT_IF_TSRESOL, bytes([tsresol])))
    if tsoffset is not None:
        opts.append(opt(order, ng.PCAPNG_OPT_IF_TSOFFSET, struct.pack(order + "q", tsoffset)))
    if opts:
        opts.append(opt(order, ng.PCAPNG_OPT_ENDOFOPT, b""))
    cls = ng.InterfaceDescriptionBlockLE if order == LE else ng.InterfaceDescriptionBlock
    blk = cls(linktype=linktype, snaplen=262144)
    blk.opts = opts
    return bytes(blk)


def epb(data: bytes, ticks: int, order=LE, iface=0, orig=None, btype=6) -> bytes:
    """An Enhanced Packet Block (btype 2: the obsolete Packet Block) by hand:
    dpkt's writer always stores the whole packet, never a cut one."""
    orig = len(data) if orig is None else orig
    pad = b"\0" * (-len(data) % 4)
    n = 32 + len(data) + len(pad)
    # the interface: 32 bits in an EPB, 16 (and a drop count) in a Packet Block
    iface_field = struct.pack(order + "I", iface) if btype == 6 else \
        struct.pack(order + "HH", iface, 0)
    return (struct.pack(order + "II", btype, n) + iface_field
            + struct.pack(order + "IIII", ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig)
            + data + pad + struct.pack(order + "I", n))


def spb(data: bytes, order=LE) -> bytes:
    pad = b"\0" * (-len(data) % 4)
    n = 16 + len(data) + len(pad)
    return struct.pack(order + "III", 3, n, len(data)) + data + pad + struct.pack(order + "I", n)


def dpkt_pcapng(path, frames, timestamps=TS) -> None:
    """frames as dpkt's own pcapng writer writes them (microseconds)."""
    with open(path, "wb") as f:
        w = ng.Writer(f, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, frame in zip(timestamps, frames, strict=True):
            w.writepkt(frame, ts)


def records(path) -> list[tuple]:
    with PcapReader(str(path)) as r:
        return [(x.index, x.ts_ns, x.data, x.orig_len, x.truncated) for x in r.records()]


def test_pcapng_from_dpkts_writer_reads_as_the_same_pcap(tmp_path):
    ours, theirs = tmp_path / "a.pcap", tmp_path / "a.pcapng"
    write_pcap(str(ours), list(zip(TS, FRAMES, strict=True)))
    dpkt_pcapng(str(theirs), FRAMES)
    assert records(theirs) == records(ours)
    assert [f for _, _, f in read_pcap(str(theirs))] == FRAMES
    with PcapReader(str(theirs)) as r:
        assert (r.format, r.linktype, r.byteorder) == ("pcapng", 1, "<")


@pytest.mark.parametrize("order", [LE, BE])
def test_pcapng_resolutions_offsets_and_interfaces(tmp_path, order):
    p = tmp_path / "multi.pcapng"
    p.write_bytes(
        shb(order)
        + idb(order)  # 0: microseconds, the default
        + idb(order, tsresol=9)  # 1: nanoseconds
        + idb(order, tsresol=0x80 | 10, tsoffset=1_700_000_000)  # 2: 1/1024 s, plus an offset
        + epb(FRAMES[0], 1_700_000_000_250_000, order, iface=0)
        + epb(FRAMES[1], 1_700_000_001_123_456_789, order, iface=1)
        + epb(FRAMES[2], 512, order, iface=2)
        + epb(FRAMES[0], 7, order, iface=1, btype=2)  # the obsolete Packet Block
    )
    assert records(p) == [
        (0, 1_700_000_000_250_000_000, FRAMES[0], len(FRAMES[0]), False),
        (1, 1_700_000_001_123_456_789, FRAMES[1], len(FRAMES[1]), False),
        (2, 1_700_000_000_500_000_000, FRAMES[2], len(FRAMES[2]), False),
        (3, 7, FRAMES[0], len(FRAMES[0]), False),
    ]
    with PcapReader(str(p)) as r:
        assert r.byteorder == order


def test_pcapng_sections_restart_interfaces_and_byte_order(tmp_path):
    p = tmp_path / "two.pcapng"
    p.write_bytes(shb(LE) + idb(LE) + epb(FRAMES[0], 1, LE)
                  # an Interface Statistics Block, which has nothing for replay
                  + b"\x05\x00\x00\x00\x10\x00\x00\x00abcd\x10\x00\x00\x00"
                  + shb(BE) + idb(BE, tsresol=9) + epb(FRAMES[1], 2, BE))
    assert [(i, ts, d) for i, ts, d, _, _ in records(p)] == [(0, 1000, FRAMES[0]),
                                                             (1, 2, FRAMES[1])]


def test_pcapng_packet_cut_by_the_snaplen(tmp_path):
    p = tmp_path / "snap.pcapng"
    p.write_bytes(shb() + idb() + epb(FRAMES[0][:40], 1, orig=len(FRAMES[0])))
    assert records(p) == [(0, 1000, FRAMES[0][:40], len(FRAMES[0]), True)]


def test_tcpdump_reads_our_pcapng_like_the_pcap(tmp_path):
    """libpcap reads pcapng too: the files these tests build are what a real
    reader sees, and tcpdump's pcap of them reads back the same."""
    if not shutil.which("tcpdump"):
        cannot_run("tcpdump is not installed")
    ours, theirs = tmp_path / "ours.pcapng", tmp_path / "theirs.pcap"
    ours.write_bytes(shb(BE) + idb(BE, tsresol=9)
                     + b"".join(epb(f, round(t * 1e9), BE)
                                for t, f in zip(TS, FRAMES, strict=True)))
    out = subprocess.run(["tcpdump", "-nn", "-r", str(ours)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 3 and "192.0.2.10.5060 > 192.0.2.1.5060" in out.stdout
    subprocess.run(["tcpdump", "-r", str(ours), "--time-stamp-precision=nano", "-w", str(theirs)],
                   check=True, capture_output=True)
    assert records(ours) == records(theirs)


def test_scapy_pcapng_reads_as_written(tmp_path):
    """An independent pcapng writer (scapy's, with a comment on every packet;
    a test dependency that scripts/setup installs)."""
    try:
        import scapy.utils as scapy
    except ImportError:
        cannot_run("scapy (python3-scapy) is not installed")
    from scapy.layers.l2 import Ether

    path = str(tmp_path / "scapy.pcapng")
    stamps = [1_700_000_000.25, 1_700_000_001.5, 1_700_000_002.125]  # exact in binary
    w = scapy.PcapNgWriter(path)
    for t, frame in zip(stamps, FRAMES, strict=True):
        pkt = Ether(frame)
        pkt.time, pkt.comment = t, b"written by scapy"
        w.write(pkt)
    w.close()
    ns = [1_700_000_000_250_000_000, 1_700_000_001_500_000_000, 1_700_000_002_125_000_000]
    assert records(path) == [(i, t, f, len(f), False)
                             for i, (t, f) in enumerate(zip(ns, FRAMES, strict=True))]


@pytest.mark.parametrize("content, needles", [
    (shb() + idb(linktype=113), ["interface 0", "link type 113", "LINUX_SLL", "Ethernet"]),
    (shb() + idb() + idb(linktype=101), ["interface 1", "link type 101", "RAW"]),
    (shb(major=2), ["pcapng version 2.0"]),
    (shb()[:8] + b"\x01\x02\x03\x04" + shb()[12:], ["byte-order magic 01020304"]),
    (shb() + epb(FRAMES[0], 1), ["packet 0 names interface 0", "corrupt"]),
    (shb() + idb() + epb(FRAMES[0], 1, iface=1), ["packet 0 names interface 1"]),
    (shb() + idb() + spb(FRAMES[0]), ["packet 0", "Simple Packet Block", "editcap -F pcap"]),
    (shb() + idb() + struct.pack("<II", 6, 0x7FFFFFF0) + b"\0" * 8,
     ["impossible length 2147483632", "corrupt"]),
    (shb() + idb() + struct.pack("<II", 6, 13) + b"\0" * 8, ["impossible length 13"]),
    (shb() + idb() + epb(FRAMES[0], 1)[:-4] + b"\xff\xff\x00\x00", ["packet 0", "corrupt"]),
    (shb() + idb() + epb(FRAMES[0], 1)[:20] + struct.pack("<I", 9999)
     + epb(FRAMES[0], 1)[24:], ["packet 0", "impossible captured length 9999"]),
])
def test_bad_pcapng(tmp_path, content, needles):
    p = tmp_path / "bad.pcapng"
    p.write_bytes(content)
    msg = error_of(p)
    assert str(p) in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_pcapng_cut_after_good_packets(tmp_path):
    p = tmp_path / "cut.pcapng"
    p.write_bytes(shb() + idb() + epb(FRAMES[0], 1) + epb(FRAMES[1], 2)[:50])
    got = []
    with pytest.raises(NfguardError) as e:
        for item in read_pcap(str(p)):
            got.append(item)
    assert [f for _, _, f in got] == [FRAMES[0]]
    assert "packet 1 is truncated" in str(e.value) and "50 of" in str(e.value)


def test_non_ethernet_pcapng_fails_before_any_packet(tmp_path):
    # the check happens on opening, as for pcap: replay refuses before compiling
    p = tmp_path / "any.pcapng"
    p.write_bytes(shb() + idb(linktype=276) + epb(b"x" * 20, 1))
    with pytest.raises(NfguardError, match="LINUX_SLL2"):
        PcapReader(str(p))
