"""nfguard.pcap: classic pcap reading and writing (no kernel needed)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from conftest import REQUIRE_KERNEL

from nfguard import packets
from nfguard.errors import NfguardError
from nfguard.pcap import (
    MAGIC_US,
    PcapReader,
    PcapWriter,
    read_pcap,
    write_pcap,
)

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
    assert write_pcap(path, list(zip(TS, FRAMES)), byteorder=order, nanosecond=nanosecond) == 3
    got = list(read_pcap(path))
    assert [(i, f) for i, _, f in got] == list(enumerate(FRAMES))
    for (_, ts, _), want in zip(got, TS):
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
        if REQUIRE_KERNEL:
            pytest.fail("NFGUARD_REQUIRE_KERNEL=1 but tcpdump is not installed")
        pytest.skip("tcpdump is not installed")
    ours, theirs = str(tmp_path / "ours.pcap"), str(tmp_path / "theirs.pcap")
    write_pcap(ours, list(zip(TS, FRAMES)), byteorder=order)
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


def test_pcapng_says_how_to_convert(tmp_path):
    p = tmp_path / "cap.pcapng"
    p.write_bytes(bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000"))
    msg = error_of(p)
    assert "pcapng" in msg and "editcap -F pcap" in msg and str(p) in msg


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
