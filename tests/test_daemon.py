"""`nfguard run` in a network namespace, fed by the fake ESL server.

The daemon runs as a subprocess under `nsenter --net` in the PBX namespace
of the lab topology (nfguard.lab.topology, the `topo` fixture): its
interfaces (pbx1, pbx2), nft table and 127.0.0.1 are that namespace's,
while /sys/fs/bpf is the host's, so pinned maps outlive a daemon restart
as on a real host. The fake ESL server listens on a socket made inside the
namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from nfguard.daemon import control
from nfguard.kernel import attach as A
from nfguard.lab.topology import ADDR, Topology, run

from conftest import ROOT
from fake_esl import FakeEsl, Row, register_frame
from test_netns import recv_until, sentinel

pytestmark = pytest.mark.netns

USER, REALM = "1001", "pbx.example.com"
PHONE, ATTACKER = ADDR["ipv4"]["phone"], ADDR["ipv4"]["attacker"]


class EslThread:
    """The fake ESL server on its own event loop thread, listening inside
    the PBX namespace."""

    def __init__(self, topo: Topology, table: list[Row]):
        self.server = FakeEsl(table=table)
        with topo.in_netns("pbx"):
            self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start(sock=self.sock))

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def push(self, *frames: bytes) -> None:
        self.call(self.server.push(*frames))

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Env:
    def __init__(self, topo: Topology, tmp_path):
        self.topo = topo
        self.pin_dir = f"/sys/fs/bpf/{topo.tag}"
        self.run_dir = f"/run/{topo.tag}"
        self.sock = f"{self.run_dir}/nfguard.sock"
        self.config = str(tmp_path / "nfguard.yaml")
        self.proc: subprocess.Popen | None = None
        self.log = tmp_path / "daemon.log"
        self.esl = EslThread(topo, [])

    def write_config(self, **over) -> None:
        cfg = {
            "interfaces": ["pbx1", "pbx2"], "mode": "enforce", "action": "drop",
            "esl": [{"name": "fs1", "host": "127.0.0.1", "port": self.esl.port,
                     "password": "ClueCon"}],
            "pin_dir": self.pin_dir, "socket": self.sock, "expiry_grace": 0,
            "resync_interval": 300, "alert_interval": 300,
        }
        cfg.update(over)
        with open(self.config, "w") as f:
            json.dump(cfg, f)  # JSON is YAML

    def nfguard(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        argv = self.topo.nsenter("pbx") + [sys.executable, "-m", "nfguard", *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        if check and r.returncode != 0:
            raise AssertionError(f"nfguard {' '.join(args)}: {r.stderr}")
        return r

    def start(self, **env: str) -> None:
        argv = self.topo.nsenter("pbx") + [sys.executable, "-m", "nfguard", "run",
                                            "--config", self.config]
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=self.logf, cwd=ROOT,
                                     env={**os.environ, **env})
        # It answers once it has compiled and loaded the classifier: as long
        # as that takes on this host (nfguard.lab.world.sync_wait).
        from nfguard.lab.world import sync_wait, wait_status
        wait, bound = sync_wait()
        wait_status(self.sock, lambda s: True, wait, "the daemon's control socket", self.proc,
                    str(self.log), bound)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        self.proc = None
        self.logf.close()
        return rc

    def status(self) -> dict:
        return control.request(self.sock, "status", timeout=10)

    def until(self, pred, timeout: float = 20.0, what: str = ""):
        from nfguard.lab.world import wait_status
        return wait_status(self.sock, pred, timeout, what, self.proc, str(self.log))

    def nft_elements(self) -> dict[str, str]:
        out = json.loads(run("nft", "-j", "list", "set", "inet", "nfguard", "bindings_v4",
                            ns=self.topo.pbx))
        elems = next(o["set"] for o in out["nftables"] if "set" in o).get("elem", [])
        res = {}
        for e in elems:
            e = e.get("elem", e)
            res[e["val"]] = e.get("comment", "")
        return res

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.esl.close()
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def env(request, topo, tmp_path):
    e = Env(topo, tmp_path)
    request.addfinalizer(e.close)  # before topo's close: the daemon goes first
    return e


def synced(st):
    return st["synced"]


def reaches(env: Env, src_ns: str, tag: str) -> bool:
    """Does an INVITE of USER@REALM sent from src_ns reach the PBX's 5060
    socket? A REGISTER sent after it on the same path (never guarded)
    marks the point by which it would have arrived."""
    from nfguard.packets import sip_request
    a = ADDR["ipv4"]
    s = env.topo.udp(src_ns)
    dst = a["pbx1"] if src_ns == env.topo.phone else a["pbx2"]
    invite = sip_request("INVITE", user=USER, realm=REALM, extra_headers=[f"X-Tag: {tag}"])
    stop = sentinel(tag)
    s.sendto(invite, (dst, 5060))
    s.sendto(stop, (dst, 5060))
    return any(data == invite for data, _ in recv_until(env.pbx5060, stop))


def test_registration_reaches_bpf_and_nft_and_enforces(env):
    env.write_config()
    env.pbx5060 = env.topo.udp(env.topo.pbx)
    env.pbx5060.bind(("0.0.0.0", 5060))
    env.start()
    st = env.until(synced, what="the first sync")
    assert st["kernel"]["mode"] == "enforce" and st["bindings"]["registry"] == 0
    assert all(i["nfguard_xdp"] and i["nfguard_tc"] for i in st["interfaces"])

    env.esl.push(register_frame(USER, REALM, PHONE, call_id="c-phone"))
    st = env.until(lambda s: s["bindings"]["bpf"] == 1 and s["bindings"]["nft"] == 1,
                   what="the binding")
    assert env.nft_elements() == {PHONE: f"{USER}@{REALM}"}
    assert not any(st["drift"].values()) or not any(st["drift"]["nft"].values())
    assert reaches(env, env.topo.phone, "bound")
    assert not reaches(env, env.topo.attacker, "foreign")
    st = env.until(lambda s: s["counters"].get("not_bound", 0) >= 1, what="the verdict count")
    assert st["counters"]["bound"] >= 1

    # unregister removes exactly that binding
    env.esl.push(register_frame("2002", REALM, ATTACKER, call_id="c-other"))
    env.until(lambda s: s["bindings"]["bpf"] == 2, what="a second binding")
    env.esl.push(register_frame(USER, REALM, PHONE, call_id="c-phone", expires=0,
                                subclass="sofia::unregister"))
    env.until(lambda s: s["bindings"]["bpf"] == 1 and s["bindings"]["nft"] == 1,
              what="the unregister")
    assert env.nft_elements() == {ATTACKER: f"2002@{REALM}"}
    assert not reaches(env, env.topo.phone, "after-unregister")

    # expire removes exactly that binding
    env.esl.push(register_frame("2002", REALM, ATTACKER, call_id="c-other",
                                subclass="sofia::expire"))
    env.until(lambda s: s["bindings"]["bpf"] == 0 and s["bindings"]["nft"] == 0,
              what="the expire")


def started(env: Env, **config) -> dict:
    env.write_config(**config)
    env.pbx5060 = env.topo.udp(env.topo.pbx)
    env.pbx5060.bind(("0.0.0.0", 5060))
    env.start()
    return env.until(synced, what="the first sync")


def test_resync_after_reconnect_removes_exactly_what_went(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1"),
                            Row("2002", REALM, ATTACKER, 5060, "c2")]
    st = started(env)
    # the kernel's bound map holds the bound addresses too (it spares them rate limits)
    assert st["bindings"] == {"bpf": 2, "nft": 2, "registry": 2, "bound_addresses": 2}
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    env.esl.call(env.esl.server.drop())
    st = env.until(lambda s: s["esl"][0]["connects"] == 2 and s["bindings"]["bpf"] == 1
                   and s["bindings"]["nft"] == 1, what="the resync")
    assert st["bindings"]["bound_addresses"] == 1
    assert st["drift"]["bound_missing"] == [] and st["drift"]["bound_extra"] == []
    assert env.nft_elements() == {PHONE: f"{USER}@{REALM}"}
    assert [b["user"] for b in json.loads(env.nfguard("bindings", "--json", "--config",
                                                      env.config, check=True).stdout)
            ["bindings"]] == [USER]


def test_restart_keeps_enforcing_and_converges(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1"),
                            Row("2002", REALM, "10.200.2.99", 5060, "c2")]
    started(env)
    assert reaches(env, env.topo.phone, "before")
    assert env.stop() == 0
    # the daemon is gone: XDP, TC, pinned bindings and nft stay; enforcing
    st_if = A.xdp_status("pbx1", netns=env.topo.pbx)
    assert st_if.prog_name == "nfguard_xdp"
    assert reaches(env, env.topo.phone, "daemon-down")
    assert not reaches(env, env.topo.attacker, "daemon-down-attacker")
    out = env.nfguard("status", "--json", "--config", env.config, check=True)
    down = json.loads(out.stdout)
    assert down["daemon"] == "down" and down["kernel"]["mode"] == "enforce"
    assert down["bindings"] == {"bpf": 2, "nft": 2}
    # while it was down, 2002 went away; the restart converges without a gap
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    env.start()
    st = env.until(lambda s: s["synced"] and s["bindings"]["bpf"] == 1
                   and s["bindings"]["nft"] == 1, what="convergence")
    assert st["kernel"]["mode"] == "enforce"
    assert not any(st["drift"]["nft"].values()) and not st["drift"]["bpf_extra"]
    assert reaches(env, env.topo.phone, "after")


def test_drift_is_seen_when_the_nft_set_is_edited_by_hand(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env)
    run("nft", "add", "element", "inet", "nfguard", "bindings_v4", "{ 10.9.9.9 }",
       ns=env.topo.pbx)
    run("nft", "delete", "element", "inet", "nfguard", "bindings_v4", f"{{ {PHONE} }}",
       ns=env.topo.pbx)
    st = env.status()
    assert st["drift"]["nft"]["extra"] == ["10.9.9.9"]
    assert st["drift"]["nft"]["missing"] == [PHONE]
    text = env.nfguard("status", "--config", env.config, check=True).stdout
    assert "drift" in text and "10.9.9.9" in text


def test_reject_mode_sends_icmp_to_the_attacker(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env, action="reject")
    from nfguard.packets import sip_request
    att = env.topo.udp(env.topo.attacker)
    att.connect((ADDR["ipv4"]["pbx2"], 5060))
    att.send(sip_request("INVITE", user=USER, realm=REALM))
    att.settimeout(3)
    with pytest.raises(OSError) as err:
        att.recv(100)  # the ICMP error surfaces on the connected socket
    assert not isinstance(err.value, socket.timeout), "no ICMP rejection arrived"
    st = env.until(lambda s: (s["nft"]["rejected"] or {}).get("packets", 0) >= 1,
                   what="the reject counter")
    assert st["counters"]["not_bound"] >= 1


def test_check_and_events_commands(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env)
    out = json.loads(env.nfguard("check", f"{USER}@{REALM}", PHONE, "--json", "--config",
                                 env.config, check=True).stdout)
    assert (out["action"], out["reason"]) == ("pass", "bound")
    out = json.loads(env.nfguard("check", f"{USER}@{REALM}", ATTACKER, "--json", "--config",
                                 env.config, check=True).stdout)
    assert (out["action"], out["reason"]) == ("drop", "not_bound")
    assert "not registered" in out["explain"]
    # the check ran in a private program: the live counters did not move
    assert "not_bound" not in env.status()["counters"]
    # a foreign INVITE: an event, an alert line in the log
    got = []
    reader = threading.Thread(target=lambda: got.extend(
        ev for ev, _ in zip(control.stream(env.sock, "events"), range(1), strict=False)),
        daemon=True)
    reader.start()
    time.sleep(0.3)
    assert not reaches(env, env.topo.attacker, "event")
    reader.join(5)
    assert got and got[0]["reason"] == "not_bound" and got[0]["src"] == ATTACKER
    env.until(lambda s: True)
    assert "ALERT: the credentials of 1001@pbx.example.com were used from 10.200.2.2" in \
        env.log.read_text()


def test_sighup_reloads_and_a_bad_reload_keeps_the_running_config(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env)
    env.write_config(mode="monitor")
    env.proc.send_signal(signal.SIGHUP)
    env.until(lambda s: s["kernel"]["mode"] == "monitor", what="the reload")
    with open(env.config, "w") as f:
        f.write("mdoe: enforce\n")
    env.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert env.status()["kernel"]["mode"] == "monitor"
    assert "reload refused" in env.log.read_text() and "mdoe" in env.log.read_text()


def test_bad_config_attaches_nothing(env):
    env.write_config(ports=[0])
    r = env.nfguard("run", "--config", env.config)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ports" in lines[0], r.stderr
    assert A.xdp_status("pbx1", netns=env.topo.pbx).prog_id == 0
    assert "nfguard" not in run("nft", "list", "tables", ns=env.topo.pbx)
    assert not os.path.exists(env.pin_dir)
    env.write_config(interfaces=["pbx1", "nosuch0"])
    r = env.nfguard("run", "--config", env.config)
    assert r.returncode == 1 and "nosuch0" in r.stderr
    assert A.xdp_status("pbx1", netns=env.topo.pbx).prog_id == 0


def test_uninstall_removes_everything(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env)
    env.stop()
    r = env.nfguard("uninstall", "--config", env.config, check=True)
    assert "deleted table inet nfguard" in r.stdout
    assert A.xdp_status("pbx1", netns=env.topo.pbx).prog_id == 0
    assert A.tc_status("pbx1", netns=env.topo.pbx) == []
    assert "nfguard" not in run("nft", "list", "tables", ns=env.topo.pbx)
    assert not os.path.exists(env.pin_dir)


def test_uninstall_stops_a_running_daemon_first(env):
    started(env)
    pid = env.status()["pid"]
    r = env.nfguard("uninstall", "--config", env.config, check=True)
    assert f"stopping the running daemon (pid {pid})" in r.stdout
    assert env.proc.wait(5) == 0  # stopped by uninstall, not by the test
    env.proc = None
    env.logf.close()
    assert A.xdp_status("pbx1", netns=env.topo.pbx).prog_id == 0
    assert not os.path.exists(env.pin_dir)


def test_an_upgrade_across_a_map_layout_takes_over_without_a_gap(env):
    """An older build whose binding value layout differs enforces with its
    pinned maps. The new daemon does not reuse them: the old program keeps
    enforcing (its maps retired) until the first full sync has filled the
    new maps, then the new program replaces it and the old pins go."""
    from nfguard.kernel.pins import RETIRED
    from nfguard.kernel.program import Program

    env.write_config()
    env.pbx5060 = env.topo.udp(env.topo.pbx)
    env.pbx5060.bind(("0.0.0.0", 5060))
    old = Program(pin_dir=env.pin_dir, cflags=["-DNFG_TEST_BINDING_PAD=8"], count_all=False)
    old.configure(mode="enforce")
    old.add_binding(USER, REALM, PHONE)
    # a ban is not in FreeSWITCH: the new build carries it over from the retired map
    from nfguard.kernel.program import boottime_ns
    # (another address than the attacker's, whose INVITEs this test follows)
    old.set_ban("10.200.5.5", boottime_ns() + 3600 * 10**9, offenses=3)
    for itf in ("pbx1", "pbx2"):
        A.attach(itf, old.xdp_fn.fd, old.tc_fn.fd, netns=env.topo.pbx)
    old.close()  # as the old daemon exits: attached and pinned
    old_id = A.xdp_status("pbx1", netns=env.topo.pbx).prog_id
    assert reaches(env, env.topo.phone, "old-phone")
    assert not reaches(env, env.topo.attacker, "old-attacker")

    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    env.esl.server.api_delay = 2.0  # a slow first sync: the old program meanwhile
    env.start()
    st = env.until(lambda s: True, what="the daemon's socket")
    assert not st["synced"]
    assert os.path.isdir(os.path.join(env.pin_dir, RETIRED))
    assert A.xdp_status("pbx1", netns=env.topo.pbx).prog_id == old_id
    assert reaches(env, env.topo.phone, "mid-phone")
    assert not reaches(env, env.topo.attacker, "mid-attacker")

    st = env.until(synced, timeout=30, what="the first sync")
    new_id = A.xdp_status("pbx1", netns=env.topo.pbx).prog_id
    assert new_id not in (0, old_id)
    assert A.xdp_status("pbx2", netns=env.topo.pbx).prog_id == new_id
    assert not os.path.exists(os.path.join(env.pin_dir, RETIRED))
    assert st["kernel"]["mode"] == "enforce"
    assert reaches(env, env.topo.phone, "new-phone")
    assert not reaches(env, env.topo.attacker, "new-attacker")
    assert "made by another nfguard build" in env.log.read_text()
    assert "1 ban(s) carried over from the older build's retired maps" in env.log.read_text()
    (ban,) = cli_bans(env)["bans"]
    assert (ban["key"], ban["offenses"]) == ("10.200.5.5", 3) and ban["remaining_s"] > 3500
    assert set(banned_elements(env)) == {"10.200.5.5"}


def test_systemd_notify_metrics_and_a_root_only_socket(env, tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    env.write_config(metrics={"listen": "127.0.0.1:9477"})
    env.start(NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000",
              WATCHDOG_PID="")
    got = []
    while not any(m.startswith(b"READY=1") for m in got):
        got.append(notify.recv(4096))
    assert b"STATUS=" in got[-1]
    while b"WATCHDOG=1" not in got:
        got.append(notify.recv(4096))
    env.until(synced, what="the first sync")
    mode = os.stat(env.sock).st_mode & 0o777
    assert mode == 0o600 and os.stat(env.run_dir).st_mode & 0o777 == 0o700
    with env.topo.in_netns("pbx"):
        c = socket.create_connection(("127.0.0.1", 9477), timeout=5)
    with c:
        c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := c.recv(65536):
            body += chunk
    text = body.decode()
    assert text.startswith("HTTP/1.0 200 OK")
    assert "nfguard_bindings 1" in text and 'nfguard_esl_up{endpoint="fs1"} 1' in text
    assert "nfguard_synced 1" in text
    assert "nfguard_bans_active 0" in text and "nfguard_auth_failures_total 0" in text
    assert 'nfguard_packets_total{reason="banned"} 0' in text
    assert 'nfguard_packets_total{reason="rate_limited"} 0' in text
    assert env.stop() == 0
    while b"STOPPING=1" not in got:
        got.append(notify.recv(4096))


def test_status_without_daemon_or_pins_says_so_and_creates_nothing(env):
    env.write_config()
    for cmd in (["status"], ["bindings"], ["check", f"{USER}@{REALM}", PHONE]):
        r = env.nfguard(*cmd, "--config", env.config)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert "nfguard has not run on this host yet" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(env.pin_dir)


def test_restart_with_freeswitch_down_holds_the_bindings_for_the_degraded_grace(env):
    # 120 s: outlives a restart that compiles for 25 s under emulation
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1", expires_in=120)]
    started(env, degraded_grace=600, expiry_grace=0)
    assert env.stop() == 0
    env.esl.call(env.esl.server.stop())  # FreeSWITCH is down as well
    from nfguard.kernel.program import Program, boottime_ns
    restart = boottime_ns()
    env.start()
    env.until(lambda s: s["esl"] and s["esl"][0]["state"] == "down", what="ESL down")
    prog = Program(pin_dir=env.pin_dir)  # a compile: 25 s under emulation
    try:
        (b,) = prog.bindings()
        read = boottime_ns()
    finally:
        prog.close()
    # held for the degraded grace from the restart on, not the 120 s left
    # (1 s for the daemon's wall-clock to boot-clock conversion)
    assert restart + 599e9 <= b.expires_ns <= read + 600e9
    assert reaches(env, env.topo.phone, "held")
    assert "pinned bindings held for 600 s" in env.log.read_text()


# -- bans -------------------------------------------------------------------------
def register_reaches(env: Env, src_ns: str, tag: str) -> bool:
    """Does a REGISTER (never guarded by the credential rule: only a ban
    stops it) from src_ns reach the PBX's 5060 socket? The marker comes
    from the phone, which no test bans (a ban drops a banned source's
    marker too), a moment later; what else arrives soon after it counts."""
    from nfguard.packets import sip_request
    a = ADDR["ipv4"]
    s = env.topo.udp(src_ns)
    dst = a["pbx1"] if src_ns == env.topo.phone else a["pbx2"]
    register = sip_request("REGISTER", user="2002", realm=REALM, auth="",
                           extra_headers=[f"X-Tag: {tag}"], target=f"sip:{REALM}")
    stop = sentinel(tag)
    s.sendto(register, (dst, 5060))
    time.sleep(0.05)
    env.topo.udp(env.topo.phone).sendto(stop, (a["pbx1"], 5060))
    got = recv_until(env.pbx5060, stop)
    env.pbx5060.settimeout(0.2)
    try:
        while True:
            got.append(env.pbx5060.recvfrom(65535))
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        env.pbx5060.settimeout(None)
    return any(data == register for data, _ in got)


def banned_elements(env: Env) -> dict[str, str]:
    out = json.loads(run("nft", "-j", "list", "set", "inet", "nfguard", "banned4",
                         ns=env.topo.pbx))
    elems = next(o["set"] for o in out["nftables"] if "set" in o).get("elem", [])
    return {e["elem"]["val"]: e["elem"].get("comment", "") for e in elems}


def cli_bans(env: Env) -> dict:
    return json.loads(env.nfguard("bans", "--json", "--config", env.config, check=True).stdout)


def test_auth_failures_ban_in_the_kernel_and_nft_then_unban_and_expiry(env):
    from test_bans import failure_frame

    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env, bans={"failures": 3, "ban_time": "10m"})
    assert register_reaches(env, env.topo.attacker, "before")
    env.esl.push(*(failure_frame(ATTACKER, user="2002", realm=REALM) for _ in range(3)))
    st = env.until(lambda s: s["bans"]["active"] == 1, what="the ban")
    assert st["bans"]["auth_failures"] == 3 and st["bans"]["bans"] == 1
    assert banned_elements(env) == {
        ATTACKER: f"3 failures in 10m, last 2002@{REALM} (REGISTER)"}
    (row,) = cli_bans(env)["bans"]
    assert (row["key"], row["offenses"], row["manual"]) == (ATTACKER, 1, False)
    assert 590 < row["remaining_s"] <= 600
    # everything from it is dropped now, REGISTERs too; the phone is not touched
    assert not register_reaches(env, env.topo.attacker, "banned")
    assert register_reaches(env, env.topo.phone, "phone")
    assert reaches(env, env.topo.phone, "phone-call")
    st = env.until(lambda s: s["counters"].get("banned", 0) >= 1, what="the banned count")
    log = env.log.read_text()
    assert log.count("ALERT: banned") == 1
    assert f"ALERT: banned {ATTACKER} for 10m: 3 authentication failures in 10m" in log
    # the phone's address crosses the threshold too: spared, and the log says why
    env.esl.push(*(failure_frame(PHONE, user="1003", realm=REALM) for _ in range(3)))
    env.until(lambda s: s["bans"]["spared"] == 1, what="the spared address")
    assert f"not banning {PHONE}" in env.log.read_text()
    assert f"bound to {USER}@{REALM}" in env.log.read_text()

    # an operator lifts it
    r = env.nfguard("unban", ATTACKER, "--config", env.config, check=True)
    assert f"lifted the ban of {ATTACKER} (daemon)" in r.stdout
    assert banned_elements(env) == {} and cli_bans(env)["bans"] == []
    assert register_reaches(env, env.topo.attacker, "unbanned")
    assert f"ban of {ATTACKER} lifted by an operator" in env.log.read_text()

    # a short ban runs out by itself: the kernel stops dropping, the log says so
    r = env.nfguard("ban", ATTACKER, "--for", "2s", "--config", env.config, check=True)
    assert f"banned {ATTACKER} for 2s (daemon)" in r.stdout
    assert banned_elements(env) == {ATTACKER: "manual"}
    assert not register_reaches(env, env.topo.attacker, "manual-ban")
    env.until(lambda s: s["bans"]["active"] == 0, timeout=10, what="the expiry")
    deadline = time.monotonic() + 10
    while f"ban of {ATTACKER} lifted: it expired" not in env.log.read_text():
        assert time.monotonic() < deadline, "no expiry line"
        time.sleep(0.2)
    assert register_reaches(env, env.topo.attacker, "expired")
    # bad input: exit code 2, one line, no traceback
    for args in (["ban", "10.200.2"], ["ban", ATTACKER, "--for", "soon"], ["unban", "x"]):
        r = env.nfguard(*args, "--config", env.config)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    r = env.nfguard("ban", "192.168.77.1", "--config", env.config)
    assert r.returncode == 0  # not trusted here: allowed


def test_bans_survive_a_restart_and_the_cli_works_without_the_daemon(env):
    env.esl.server.table = [Row(USER, REALM, PHONE, 5060, "c1")]
    started(env, trusted=["10.200.9.0/24"])
    r = env.nfguard("ban", ATTACKER, "--for", "1h", "--config", env.config, check=True)
    assert "(daemon)" in r.stdout
    r = env.nfguard("ban", "10.200.9.5", "--config", env.config)
    assert r.returncode == 1 and "trusted network 10.200.9.0/24" in r.stderr
    r = env.nfguard("ban", PHONE, "--for", "1h", "--config", env.config, check=True)
    assert f"{USER}@{REALM}" in r.stderr  # warned: that phone is cut off too
    assert env.stop() == 0

    # the daemon is down: the pinned map keeps dropping; the CLI reads and changes it
    down = cli_bans(env)
    assert down["source"] == "bans map (daemon down)"
    assert sorted(b["key"] for b in down["bans"]) == sorted([ATTACKER, PHONE])
    assert {b["reason"] for b in down["bans"]} == {"manual"}
    r = env.nfguard("unban", PHONE, "--config", env.config, check=True)
    assert "daemon down" in r.stdout
    assert not register_reaches(env, env.topo.attacker, "down")
    assert register_reaches(env, env.topo.phone, "phone-unbanned")
    r = env.nfguard("ban", "10.200.7.7", "--for", "30m", "--config", env.config, check=True)
    assert "daemon down" in r.stdout
    st = json.loads(env.nfguard("status", "--json", "--config", env.config, check=True).stdout)
    assert st["bans"]["active"] == 2
    text = env.nfguard("status", "--config", env.config, check=True).stdout
    assert "bans        2 active (2 manual)" in text
    # an nft element removed by hand: the restart puts the map's bans back
    run("nft", "delete", "element", "inet", "nfguard", "banned4", f"{{ {ATTACKER} }}",
        ns=env.topo.pbx)

    env.start()
    st = env.until(lambda s: s["synced"], what="the restart's sync")
    assert st["bans"]["active"] == 2
    assert set(banned_elements(env)) == {ATTACKER, "10.200.7.7"}
    (att,) = [b for b in cli_bans(env)["bans"] if b["key"] == ATTACKER]
    assert att["manual"] and 3500 < att["remaining_s"] <= 3600
    assert not register_reaches(env, env.topo.attacker, "after-restart")
    assert "2 active ban(s) kept from the pinned map" in env.log.read_text()
    text = env.nfguard("status", "--config", env.config, check=True).stdout
    assert "bans        2 active (2 manual); 0 authentication failures, 0 bans" in text
    assert "packets banned" in text  # the REGISTER dropped just now


def test_status_says_why_an_interface_runs_generic_xdp(env):
    """xdp_mode auto falls back to generic where the kernel refuses native
    XDP (here: veth refuses it while its peer's MTU is above what one page
    holds); the daemon keeps the kernel's reason and `nfguard status` shows
    it, with what generic mode costs."""
    run("ip", "link", "set", "eth0", "mtu", "9000", ns=env.topo.attacker)
    env.write_config()
    env.start()
    rows = {i["name"]: i for i in env.status()["interfaces"]}
    assert (rows["pbx1"]["xdp"]["mode"], rows["pbx1"]["native_refused"]) == ("native", None)
    assert rows["pbx2"]["xdp"]["mode"] == "generic"
    assert "MTU" in rows["pbx2"]["native_refused"], rows["pbx2"]
    out = env.nfguard("status", "--config", env.config, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("interface") and "pbx2" in ln)
    assert ": attached, XDP generic (the kernel refused native mode: " in line, line
    assert "GSO super-packet" in line
    assert "pbx1" in out and "XDP native" in out
