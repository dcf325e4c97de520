"""`nfguard replay` end to end: the real CLI in a subprocess, on captures
written with nfguard.pcap (pcap) and dpkt (pcapng) from nfguard.packets
frames, through the kernel program (kernel tests), and every bad input as
one clear line."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import dpkt.pcapng
import pytest

from nfguard import packets as P
from nfguard.pcap import write_pcap

from conftest import need_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REALM = "pbx.example.com"
PHONE = "198.51.100.20"
PHONE6 = "2001:db8::20"
ATTACKER = "203.0.113.66"
LAN = "10.1.2.3"


def nfguard(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nfguard", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=120,
    )


def invite(user="1001", src=PHONE, **kw) -> bytes:
    dst = "2001:db8::1" if ":" in src else "192.0.2.1"
    return P.udp_frame(P.sip_request("INVITE", user, REALM, **kw), src=src, dst=dst)


# index: frame (the comment says what it is)
FRAMES = [
    invite("1001", PHONE),  # 0 bound
    invite("1001", ATTACKER),  # 1 foreign source
    invite("1001", PHONE, auth=""),  # 2 no credentials
    invite("1001", LAN),  # 3 from the trusted network when --trusted 10.0.0.0/8
    P.udp_frame(P.sip_request("REGISTER", "1001", REALM), src=ATTACKER),  # 4
    P.udp_frame(b"\x00" * 32, src=PHONE, dport=53),  # 5 not SIP
    invite("2002", PHONE),  # 6 binding expired (expires_in: 0)
    invite("3003", PHONE6),  # 7 IPv6, bound for an hour
    invite("3003", "2001:db8::66"),  # 8 IPv6, foreign
    P.ethernet(0x0806, b"\x00" * 28),  # 9 ARP: not IP
    invite("1001", PHONE, extra_headers=["X-Pad: " + "a" * 4000]),  # 10 over the test-run limit
    P.udp_frame(P.sip_request("MESSAGE", "1001", REALM), src=ATTACKER),  # 11 MESSAGE, foreign
    # 12, 13: an INVITE in two IP fragments, headers not finished in the first
    *P.udp_fragments(P.sip_request("INVITE", "1001", REALM), 256, src=ATTACKER),
]

BINDINGS = """\
# user, realm, ip[, expires_in]
- user: "1001"
  realm: pbx.example.com
  ip: 198.51.100.20
- {user: "2002", realm: PBX.Example.com, ip: 198.51.100.20, expires_in: 0}
- user: 3003
  realm: pbx.example.com
  ip: 2001:db8::20
  expires_in: 3600
"""


def row(index, action, reason, src, user=None, realm=None, **extra):
    return {"index": index, "action": action, "reason": reason, "src": src,
            "user": user, "realm": realm, **extra}


def enforce_rows(verdict: str) -> list[dict]:
    """What enforce mode says about FRAMES with BINDINGS (no trusted nets)."""
    return [
        row(0, "pass", "bound", PHONE, "1001", REALM),
        row(1, verdict, "not_bound", ATTACKER, "1001", REALM),
        row(2, "pass", "no_credentials", PHONE),
        row(3, verdict, "not_bound", LAN, "1001", REALM),
        row(4, "pass", "method_not_guarded", ATTACKER),
        row(5, "pass", "port_not_guarded", PHONE),
        row(6, verdict, "expired", PHONE, "2002", REALM),
        row(7, "pass", "bound", PHONE6, "3003", REALM),
        row(8, verdict, "not_bound", "2001:db8::66", "3003", REALM),
        row(9, "pass", "not_ip", None),
        row(10, None, "frame_too_large", PHONE),
        row(11, "pass", "method_not_guarded", ATTACKER),
        row(12, verdict, "fragmented", ATTACKER),
        row(13, "pass", "later_fragment", ATTACKER),
    ]


def write_pcapng(path, frames) -> None:
    """frames as pcapng, Wireshark's default format, by dpkt's writer."""
    with open(path, "wb") as f:
        w = dpkt.pcapng.Writer(f, snaplen=262144)
        for i, frame in enumerate(frames):
            w.writepkt(frame, 1_700_000_000 + i / 1000)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay")
    pcap, bindings = d / "calls.pcap", d / "bindings.yaml"
    write_pcap(str(pcap), FRAMES)
    write_pcapng(str(d / "calls.pcapng"), FRAMES)
    bindings.write_text(BINDINGS)
    return str(pcap), str(bindings), d


def json_rows(out: subprocess.CompletedProcess) -> list[dict]:
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return [json.loads(line) for line in out.stdout.splitlines()]


# -- through the kernel program ---------------------------------------------
def test_enforce_drop(files):
    need_kernel()
    pcap, bindings, _ = files
    rows = json_rows(nfguard("replay", "--pcap", pcap, "--bindings", bindings, "--json"))
    assert rows == enforce_rows("drop")
    assert [list(r) for r in rows] == [["index", "action", "reason", "src", "user", "realm"]] * 14


def test_monitor_adds_would(files):
    need_kernel()
    pcap, bindings, _ = files
    rows = json_rows(nfguard("replay", "--pcap", pcap, "--bindings", bindings, "--json",
                             "--mode", "monitor"))
    want = []
    for r in enforce_rows("drop"):
        would = r["action"]
        want.append({**r, "action": "pass" if would else None, "would": would})
    assert rows == want


def test_reject_trusted_methods_ports_fragments(files):
    need_kernel()
    pcap, bindings, _ = files
    rows = json_rows(nfguard(
        "replay", "--pcap", pcap, "--bindings", bindings, "--json", "--action", "reject",
        "--trusted", "10.0.0.0/8", "2001:db8::66/128", "--methods", "INVITE,MESSAGE",
        "--ports", "5060,53", "--fragments", "pass",
    ))
    want = enforce_rows("mark")
    want[3] = row(3, "pass", "trusted", LAN)
    want[5] = row(5, "pass", "method_not_guarded", PHONE)  # port 53 guarded now
    want[8] = row(8, "pass", "trusted", "2001:db8::66")
    want[11] = row(11, "mark", "not_bound", ATTACKER, "1001", REALM)
    want[12] = row(12, "pass", "fragment_passed", ATTACKER)
    assert rows == want


def test_without_bindings_everything_with_credentials_is_foreign(files):
    need_kernel()
    pcap, _, _ = files
    rows = json_rows(nfguard("replay", "--pcap", pcap, "--json"))
    assert [r["reason"] for r in rows] == [
        "not_bound", "not_bound", "no_credentials", "not_bound", "method_not_guarded",
        "port_not_guarded", "not_bound", "not_bound", "not_bound", "not_ip",
        "frame_too_large", "method_not_guarded", "fragmented", "later_fragment"]


def test_readable_output_is_aligned(files):
    need_kernel()
    pcap, bindings, _ = files
    out = nfguard("replay", "--pcap", pcap, "--bindings", bindings, "--mode", "monitor")
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == len(FRAMES)
    assert "pass (would drop)" in lines[1] and "not_bound" in lines[1]
    assert "1001@pbx.example.com" in lines[1] and ATTACKER in lines[1]
    assert "frame_too_large" in lines[10]
    col = lines[0].index("bound")
    assert all(line[col - 1] == " " for line in lines)
    first = zip(lines, ["bound", "not_bound", "no_credentials"], strict=False)
    assert {line.index(r) for line, r in first} == {col}


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_pcapng_gives_the_verdicts_of_the_same_pcap(files, mode):
    need_kernel()
    pcap, bindings, d = files
    args = ["--bindings", bindings, "--json", "--mode", mode, "--trusted", "10.0.0.0/8"]
    ng = json_rows(nfguard("replay", "--pcap", str(d / "calls.pcapng"), *args))
    assert ng == json_rows(nfguard("replay", "--pcap", pcap, *args))
    want = enforce_rows("drop")
    want[3] = row(3, "pass", "trusted", LAN)
    if mode == "monitor":
        want = [{**r, "action": "pass" if r["action"] else None, "would": r["action"]}
                for r in want]
    assert ng == want


def test_pcapng_packet_cut_by_snaplen_is_not_judged(tmp_path):
    need_kernel()
    frame = invite("1001", ATTACKER)
    pcapng = tmp_path / "snap.pcapng"
    # dpkt's writer stores whole packets: the cut one is built by hand
    epb = struct.pack("<IIIII", 0, 0, 1, 96, len(frame)) + frame[:96]  # iface, ts, caplen, len
    epb = struct.pack("<II", 6, len(epb) + 12) + epb + struct.pack("<I", len(epb) + 12)
    write_pcapng(str(pcapng), [])
    pcapng.write_bytes(pcapng.read_bytes() + epb)
    rows = json_rows(nfguard("replay", "--pcap", str(pcapng), "--json"))
    assert rows == [row(0, None, "capture_truncated", ATTACKER)]


def test_capture_cut_by_snaplen_is_not_judged(tmp_path):
    need_kernel()
    frame = invite("1001", ATTACKER)
    pcap = tmp_path / "snap.pcap"
    pcap.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)
                     + struct.pack("<IIII", 1, 0, 96, len(frame)) + frame[:96])
    rows = json_rows(nfguard("replay", "--pcap", str(pcap), "--json"))
    assert rows == [row(0, None, "capture_truncated", ATTACKER)]


def test_damaged_pcapng_block_after_good_ones(tmp_path):
    need_kernel()
    pcapng = tmp_path / "cut.pcapng"
    write_pcapng(str(pcapng), FRAMES[:3])
    pcapng.write_bytes(pcapng.read_bytes()[:-20])
    out = nfguard("replay", "--pcap", str(pcapng), "--json")
    assert out.returncode == 1
    assert [json.loads(line)["index"] for line in out.stdout.splitlines()] == [0, 1]
    assert out.stderr.startswith("nfguard: error:") and len(out.stderr.splitlines()) == 1
    assert "packet 2 is truncated" in out.stderr


def test_damaged_record_after_good_ones(tmp_path):
    need_kernel()
    pcap = tmp_path / "cut.pcap"
    write_pcap(str(pcap), FRAMES[:2])
    pcap.write_bytes(pcap.read_bytes() + b"\x01\x02\x03")
    out = nfguard("replay", "--pcap", str(pcap), "--json")
    assert out.returncode == 1
    assert [json.loads(line)["index"] for line in out.stdout.splitlines()] == [0, 1]
    assert out.stderr.startswith("nfguard: error:") and len(out.stderr.splitlines()) == 1
    assert "packet 2 is truncated" in out.stderr


# -- bad input: one line, no traceback, non-zero exit ------------------------
def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("nfguard: error:"), out.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert out.stdout == ""
    return lines[0]


def test_missing_headers_names_the_package(files):
    need_kernel()  # the check comes after the one for root
    pcap, _, _ = files
    out = nfguard("replay", "--pcap", pcap, env={"NFGUARD_MODULES_DIR": "/nonexistent"})
    one_line_error(out, "linux-headers-")


@pytest.mark.parametrize("name, content, needles", [
    ("missing.pcap", None, ["missing.pcap", "No such file"]),
    ("text.pcap", b"hello, this is not a capture\n", ["not a pcap"]),
    ("empty.pcap", b"", ["empty"]),
    ("cap.pcapng", bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000"), ["truncated", "of 28"]),
    ("sll.pcap", struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 113), ["link type 113"]),
    ("sll.pcapng", bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000"
                                 "0100000014000000710000000000040014000000"),
     ["interface 0", "link type 113", "LINUX_SLL"]),
    ("short.pcap", bytes.fromhex("d4c3b2a10200"), ["truncated"]),
])
def test_bad_pcap(files, name, content, needles):
    _, _, d = files
    path = d / name
    if content is not None:
        path.write_bytes(content)
    one_line_error(nfguard("replay", "--pcap", str(path)), str(path), *needles)


def test_pcap_is_a_directory(files):
    _, _, d = files
    one_line_error(nfguard("replay", "--pcap", str(d)), "directory")


def test_pcap_unreadable(files):
    pcap, _, d = files
    if os.geteuid() == 0:
        # root reads anything: a file it cannot read is one behind a non-directory
        path = pcap + "/inside"
        one_line_error(nfguard("replay", "--pcap", path), path, "Not a directory")
    else:
        path = d / "secret.pcap"
        path.write_bytes(open(pcap, "rb").read())
        path.chmod(0)
        one_line_error(nfguard("replay", "--pcap", str(path)), "Permission denied")


LONG = "u" * 65
BAD_BINDINGS = [
    ("not yaml", "- user: [1001\n", ["not valid YAML", "line"]),
    ("empty", "", ["empty"]),
    ("a mapping", "user: '1001'\nrealm: r\nip: 192.0.2.1\n", ["expected a list"]),
    ("a scalar", "hello\n", ["expected a list"]),
    ("entry not a mapping", "- {user: a, realm: r, ip: 192.0.2.1}\n- 192.0.2.7\n",
     ["entry 1", "line 2", "mapping"]),
    ("missing realm", "- {user: a, realm: r, ip: 192.0.2.1}\n- {user: b, ip: 192.0.2.2}\n",
     ["entry 1", "missing key 'realm'"]),
    ("missing ip", "- {user: a, realm: r}\n", ["entry 0", "missing key 'ip'"]),
    ("bad ip", "- {user: a, realm: r, ip: 192.0.2.1}\n- {user: a, realm: r, ip: 192.0.2.300}\n",
     ["entry 1", "192.0.2.300", "not an IP address"]),
    ("user too long", f"- {{user: {LONG}, realm: r, ip: 192.0.2.1}}\n",
     ["entry 0", "longer than 64"]),
    ("realm too long", f"- {{user: a, realm: {'r' * 129}, ip: 192.0.2.1}}\n",
     ["entry 0", "longer than 128"]),
    ("empty user", "- {user: '', realm: r, ip: 192.0.2.1}\n", ["entry 0", "user is empty"]),
    ("unknown key", "- {user: a, realm: r, ip: 192.0.2.1, expire_in: 5}\n",
     ["entry 0", "unknown key 'expire_in'"]),
    ("duplicate key", "- {user: a, user: b, realm: r, ip: 192.0.2.1}\n", ["appears twice"]),
    ("bad expiry", "- {user: a, realm: r, ip: 192.0.2.1, expires_in: soon}\n",
     ["entry 0", "expires_in", "'soon'"]),
    ("list value", "- {user: [a, b], realm: r, ip: 192.0.2.1}\n", ["entry 0", "user"]),
]


@pytest.mark.parametrize("content, needles", [(c, n) for _, c, n in BAD_BINDINGS],
                         ids=[name for name, _, _ in BAD_BINDINGS])
def test_bad_bindings(files, tmp_path, content, needles):
    pcap, _, _ = files
    path = tmp_path / "b.yaml"
    path.write_text(content)
    one_line_error(nfguard("replay", "--pcap", pcap, "--bindings", str(path)),
                   str(path), *needles)


def test_missing_bindings_file(files):
    pcap, _, d = files
    one_line_error(nfguard("replay", "--pcap", pcap, "--bindings", str(d / "nope.yaml")),
                   "nope.yaml", "No such file")


@pytest.mark.parametrize("args, needles", [
    (["--trusted", "10.0.0.0/33"], ["--trusted", "10.0.0.0/33"]),
    (["--trusted", "10.0.0.0/8", "lan"], ["'lan'"]),
    (["--trusted", "10.0.0.1/8"], ["--trusted: 10.0.0.1/8 has host bits set: did you mean "
                                   "10.0.0.0/8?"]),
    (["--trusted", "10.0.0.0/8", "10.0.0.0/255.0.0.0"], ["10.0.0.0/8 is listed twice"]),
    (["--mode", "enforcing"], ["--mode: must be 'monitor' or 'enforce', not 'enforcing' "
                               "(did you mean 'enforce'?)"]),
    (["--action", "block"], ["--action", "'block'"]),
    (["--fragments", "drop"], ["--fragments"]),
    (["--methods", "INVITE,REGISTER"], ["REGISTER cannot be guarded"]),
    (["--methods", "INVITE,FOO"], ["unknown SIP method"]),
    (["--methods", "invite"], ["--methods: unknown SIP method 'invite' "
                               "(method names are upper case: 'INVITE')"]),
    (["--methods", ","], ["--methods: must not be empty"]),
    (["--ports", "5060,70000"], ["--ports", "70000"]),
    (["--ports", "sip"], ["--ports", "'sip'"]),
    (["--ports", "5060,5060"], ["--ports: 5060 is listed twice"]),
])
def test_bad_options(files, args, needles):
    pcap, _, _ = files
    one_line_error(nfguard("replay", "--pcap", pcap, *args), *needles)


def test_pcap_is_required():
    one_line_error(nfguard("replay", "--json"), "--pcap")
