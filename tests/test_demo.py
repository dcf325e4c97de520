"""`nfguard selftest` and `nfguard demo` as an operator runs them."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, need_kernel

pytestmark = pytest.mark.netns


def nfguard(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "nfguard", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def leftovers(prefix: str) -> list[str]:
    out = []
    if os.path.isdir("/var/run/netns"):
        out += [n for n in os.listdir("/var/run/netns") if n.startswith(prefix)]
    out += glob.glob(f"/sys/fs/bpf/{prefix}*") + glob.glob(f"/run/{prefix}*")
    return out


def test_selftest_passes_every_check():
    need_kernel()
    r = nfguard("selftest")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("  ")]
    states = [line.split()[0] for line in lines if not line.strip().startswith("fix:")
              and "skip  interfaces: no config at" not in line]  # none on a test host
    assert set(states) <= {"ok", "warn"}, r.stdout
    for what in ("kernel headers", "compile and load", "rule table: 12 rules",
                 "namespace round trip"):
        assert what in r.stdout
    assert r.stdout.rstrip().endswith("result: all good")
    assert leftovers("nfgself") == []


def test_selftest_names_the_fix_for_missing_headers(tmp_path):
    need_kernel()
    r = nfguard("selftest", "--skip-netns", env={"NFGUARD_MODULES_DIR": str(tmp_path)})
    assert r.returncode == 1
    assert "FAIL  kernel headers" in r.stdout
    assert f"fix: apt install linux-headers-{os.uname().release}" in r.stdout
    assert r.stdout.rstrip().endswith("failed")


def test_demo_shows_the_phone_through_and_the_attacker_stopped():
    need_kernel()
    r = nfguard("demo")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "call connected: 1 INVITE with credentials reached the PBX" in out
    assert "call failed: 0 INVITE with credentials reached the PBX" in out
    assert "bindings    bpf 1, nft 1, registry 1" in out
    assert "ALERT: the credentials of 1001@pbx.example.com were used from 10.200.2.2" in out
    assert leftovers("nfgdemo") == []


def test_interrupted_demo_removes_everything():
    need_kernel()
    p = subprocess.Popen([sys.executable, "-m", "nfguard", "demo"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    seen = ""
    deadline = time.monotonic() + 60
    while "the phone calls" not in seen and time.monotonic() < deadline:
        seen += p.stdout.readline()
    assert "the phone calls" in seen, seen
    assert leftovers("nfgdemo"), "the demo's lab should exist by now"
    p.send_signal(signal.SIGINT)
    p.wait(60)
    assert p.returncode != 0
    assert leftovers("nfgdemo") == []


def test_selftest_warns_of_generic_xdp_on_a_configured_interface(topo, prog, tmp_path):
    """An interface of the config where nfguard runs in generic XDP mode
    (loopback has no native XDP) is a warning that says what it costs."""
    import json

    from nfguard.kernel import attach as A

    assert A.attach("lo", prog.xdp_fn.fd, prog.tc_fn.fd, netns=topo.pbx) == "generic"
    config = tmp_path / "nfguard.yaml"
    config.write_text(json.dumps({
        "interfaces": [{"name": "lo", "netns": topo.pbx}, {"name": "pbx1", "netns": topo.pbx}],
        "esl": [{"name": "fs1", "password": "ClueCon"}],
        "pin_dir": f"/sys/fs/bpf/{topo.tag}-none", "socket": str(tmp_path / "no-daemon.sock")}))
    try:
        r = nfguard("selftest", "--skip-netns", "--config", str(config))
    finally:
        A.detach("lo", netns=topo.pbx)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"  warn  interface lo (netns {topo.pbx}): XDP generic (" in r.stdout, r.stdout
    assert "GSO super-packet" in r.stdout
    assert f"  warn  interface pbx1 (netns {topo.pbx}): nfguard is not attached" in r.stdout
