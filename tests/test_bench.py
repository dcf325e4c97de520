"""`nfguard bench`: shape of its output, never its timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nfguard import packets
from nfguard.bench import xdp
from nfguard.errors import NfguardError

from conftest import cannot_run, need_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ["non_sip_udp", "register", "invite_no_auth", "invite_bound", "invite_foreign",
         "invite_worst_case", "banned_source", "rate_limited"]


def nfguard(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nfguard", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_xdp_json_shape():
    need_kernel()
    out = nfguard("bench", "xdp", "--json", "--repeat", "2000")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert list(result) == ["bare_pass_ns", "cases"]
    assert isinstance(result["bare_pass_ns"], int) and result["bare_pass_ns"] > 0
    assert list(result["cases"]) == CASES
    for name, case in result["cases"].items():
        assert list(case) == ["ns", "ratio"], name
        assert isinstance(case["ns"], int) and case["ns"] > 0, name
        assert isinstance(case["ratio"], (int, float)) and case["ratio"] > 0, name


def test_socket_json_shape():
    """bench socket: every case checked for its path first (the bench
    refuses otherwise), then timed beside a bare cgroup_skb program and XDP
    on the same frame."""
    need_kernel()
    from nfguard.bench.socket import socket_cases

    out = nfguard("bench", "socket", "--json", "--repeat", "2000", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert list(result) == ["bare_allow_ns", "cases"]
    assert result["bare_allow_ns"] > 0
    assert list(result["cases"]) == [name for name, _, _ in socket_cases()]
    for name, case in result["cases"].items():
        assert list(case) == ["ns", "ratio", "xdp_ns"], name
        assert case["ns"] > 0 and case["xdp_ns"] > 0, name


def test_default_target_is_xdp_and_readable():
    need_kernel()
    out = nfguard("bench", "--repeat", "500", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in ["bare_pass"] + CASES:
        assert name in text
    assert len(text.splitlines()) == 2 + len(CASES)


def test_several_loads_report_their_median():
    need_kernel()
    out = nfguard("bench", "--repeat", "500", "--rounds", "1", "--loads", "3")
    assert out.returncode == 0, out.stderr
    assert "median of 3 loads" in out.stdout.splitlines()[0]
    assert len(out.stdout.splitlines()) == 2 + len(CASES)


def test_bench_esl_json():
    """The FreeSWITCH side needs no root; one round of 100,000 rows."""
    out = nfguard("bench", "esl", "--rounds", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["registrations"] == 100_000
    assert set(result["events_parsed_per_s"]) == {"json", "plain"}
    assert all(v > 1000 for v in result["events_parsed_per_s"].values())
    for key in ("resync_s", "resync_unchanged_s", "xmlstatus_parse_s", "registry_mb",
                "resync_peak_mb", "events_applied_per_s"):
        assert result[key] > 0, key


def test_bench_mirror_json():
    """The ESL load of the exact mirror: refreshes of lone rows cost no
    re-read, moves cost one each, never a full read, and every run ends with
    the registry equal to the table (the bench fails otherwise)."""
    out = nfguard("bench", "mirror", "--rounds", "1", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["mixes"]) == {"lone_refreshes", "two_devices_refreshes", "moves_10pct",
                               "moves_all"}
    assert r["mixes"]["lone_refreshes"]["rereads_per_s"] == 0
    assert r["mixes"]["moves_all"]["rereads_per_s"] > 0
    assert all(m["full_reads"] == 0 for m in r["mixes"].values())
    assert 0 < r["move_lag_ms"]["p50"] <= r["move_lag_ms"]["max"]


def test_bench_sync_json():
    """The controller's targets; in a network namespace of its own."""
    need_kernel()
    out = nfguard("bench", "sync", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bindings"] == 100_000 and 0 < result["sync_s"] < 60
    lat = result["event_latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert result["peak_rss_mb"] > 0 and result["events"] == 3000
    # the snapshot over the Event Socket and the daemon's first full sync
    # are part of it, and the load's own figures
    assert result["snapshot_s"] > 0 and result["first_sync_s"] > 0
    assert 0 < result["load_rss_mb"] <= result["load_peak_mb"] <= result["peak_rss_mb"]


def test_worst_case_frame():
    frame = xdp.worst_case_invite()
    assert len(frame) == 1400
    sip = frame[42:].decode()
    head, sep, body = sip.partition("\r\n\r\n")
    assert sep and body == ""
    lines = head.split("\r\n")
    assert lines[0].startswith("INVITE ") and lines[-1].startswith("Proxy-Authorization: Digest ")
    assert len(head) > 1300
    names = {line.split(":", 1)[0] for line in lines[1:]}
    assert {"Via", "Record-Route", "Allow", "Supported", "User-Agent",
            "P-Asserted-Identity"} <= names


def test_cases_are_distinct_and_named():
    cases = xdp.xdp_cases()
    assert [c.name for c in cases] == CASES
    assert len({c.frame for c in cases}) == len(cases)
    assert all(len(c.frame) >= len(packets.udp_frame(b"")) for c in cases)


@pytest.mark.parametrize("args, needle", [
    (["bench", "nosuch"], "unknown bench target 'nosuch'"),
    (["bench", "xdp", "--repeat", "0"], "--repeat"),
    (["bench", "xdp", "--repeat", "many"], "--repeat"),
    (["bench", "xdp", "--rounds", "-1"], "--rounds"),
    (["bench", "xdp", "--loads", "0"], "--loads"),
    (["bench", "attack", "--calls", "0"], "--calls"),
    (["bench", "attack", "--seconds", "1m"], "--seconds"),
])
def test_bad_arguments_are_one_line(args, needle):
    out = nfguard(*args)
    assert out.returncode != 0
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfguard: error:"), out.stderr
    assert needle in lines[0] and "Traceback" not in out.stderr


def test_a_case_with_the_wrong_reason_fails_loudly(program):
    """The bench refuses to time a frame that does not take the path its
    name claims (here: no binding, so invite_bound is not bound)."""
    program.configure(mode="enforce", action="drop")
    program.set_ports([5060])
    program.clear_bindings()

    with pytest.raises(NfguardError, match="invite_bound: the program says not_bound"):
        xdp.check_cases(program, xdp.xdp_cases())


def test_attack_table_has_a_row_per_scenario_and_phase(capsys):
    """The attack bench's table (its figures come from the real FreeSWITCH:
    tests/test_freeswitch_attack.py runs it)."""
    from nfguard.bench import attack

    row = {"answered": 59, "placed": 60, "call_ms_p50": 31.5, "call_ms_max": 80.2,
           "attacker_sent": 9000, "attacker_reached": 400, "fs_socket_drops": 0,
           "fs_cpu_s": 1.5, "fs_cpu_pct": 2.4}
    lost = dict(row, answered=0, call_ms_p50=None, call_ms_max=None)
    result = {"calls": 60, "seconds": 60,
              "scenarios": {name: {"without": lost, "with": row} for name in attack.SCENARIOS},
              "nfguard_counters": {"rate_limited": 12345, "banned": 7}}
    attack.print_attack(result)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 2 * len(attack.SCENARIOS) + 1
    assert lines[2].split()[:3] == ["invite_150", "without", "0/60"]
    assert lines[3].split()[:4] == ["invite_150", "with", "59/60", "32/80"]
    assert lines[-1].endswith("rate_limited 12345, banned 7")


@pytest.mark.netns
def test_bench_guard_runs_each_phase_on_the_real_freeswitch():
    """`nfguard bench guard` with 3 calls a phase: the phone answered in
    every phase, and each phase measured what it is named for (the bench
    checks the attacker's call: 200 without the guard, 403 with it and in
    its fallback, or it fails)."""
    from nfguard.lab.freeswitch import unavailable

    cannot_run(unavailable())
    out = nfguard("bench", "guard", "--guard-calls", "3", "--guard-rounds", "1", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert list(result["phases"]) == ["without", "with", "fallback"]
    for name, code in (("without", 200), ("with", 403), ("fallback", 403)):
        phase = result["phases"][name]
        assert phase["codes"] == {"200": 3} and phase["attacker_codes"] == [code], phase
        assert phase["cpu_s"] > 0 and phase["call_ms_p50"] > 0, phase
