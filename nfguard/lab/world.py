"""A SIP world in network namespaces, for the end-to-end tests, `nfguard
demo` and `nfguard selftest`:

    phone ns     eth0 10.200.1.2 --- pbx1 10.200.1.1    pbx ns
    attacker ns  eth0 10.200.2.2 --- pbx2 10.200.2.1    stand-in PBX on UDP 5060,
                                                        fake ESL on 127.0.0.1,
                                                        the nfguard daemon

The stand-in PBX and the fake Event Socket run on an asyncio loop in a
thread of this process, on sockets made inside the PBX namespace; the
daemon is the real `nfguard run`, a subprocess under `nsenter --net` (so
its interfaces, nft table and 127.0.0.1 are the namespace's, while the
pinned maps live on the host's bpffs, as on a real host). SIPp runs in the
phone and attacker namespaces. Nothing touches the host's interfaces or
ruleset; down() removes everything, also after a failure. The namespaces
and veth pairs are nfguard.lab.topology's, as in the netns tests.
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
import tempfile
import threading
import time
from importlib import resources

from nfguard.daemon import control
from nfguard.errors import NfguardError
from nfguard.lab import topology
from nfguard.lab.fakeesl import FakeEsl, Row, register_frame
from nfguard.lab.pbx import REALM, StandInPbx, serve
from nfguard.lab.topology import Topology

_V4 = topology.ADDR["ipv4"]
ADDR = {"phone": _V4["phone"], "phone_moved": "10.200.1.3", "attacker": _V4["attacker"],
        "pbx1": _V4["pbx1"], "pbx2": _V4["pbx2"]}
USER, PASSWORD = "1001", "s3cret-1001"


SYNC_WAIT_ENV = "NFGUARD_SYNC_WAIT"
_compile_s: float | None = None


def note_compile(seconds: float) -> None:
    """A compile and load of the classifier this process timed (selftest,
    the tests' session program): the measure of this host's speed that
    sync_wait() scales with. The longest one counts."""
    global _compile_s
    _compile_s = max(seconds, _compile_s or 0.0)


def compile_seconds() -> float:
    """This host's compile and load of the classifier, in seconds: the
    longest this process timed, or one timed now."""
    if _compile_s is None:
        from nfguard.kernel.program import Program

        t0 = time.monotonic()
        Program().close()
        note_compile(time.monotonic() - t0)
    return _compile_s


def sync_wait(base: float = 30.0) -> tuple[float, str]:
    """How long a daemon that is starting gets for its first full sync, and
    how that bound was chosen: NFGUARD_SYNC_WAIT seconds where it is set,
    else base plus three times this host's compile and load of the
    classifier, which the daemon does before it syncs (about 1.5 s on a
    2-core host, 20-30 s under qemu's software emulation)."""
    raw = os.environ.get(SYNC_WAIT_ENV, "").strip()
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = 0.0
        if not seconds > 0:
            raise NfguardError(f"{SYNC_WAIT_ENV}={raw!r}: give the seconds to wait "
                               "for the daemon's first sync, a number above 0")
        return seconds, f"{SYNC_WAIT_ENV}={raw}"
    c = compile_seconds()
    return base + 3 * c, (f"{base:g} s + 3 x this host's {c:.1f} s compile of the classifier; "
                          f"{SYNC_WAIT_ENV}=SECONDS sets it")


def wait_status(sock_path: str, pred, timeout: float, what: str,
                proc: subprocess.Popen | None, log_path: str, bound: str = "") -> dict:
    """The daemon's status once pred(status) holds; NfguardError (saying
    what it waited for, how long and why that long, with the end of the
    daemon's log) when the daemon exits or time runs out first."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise NfguardError(f"the daemon exited ({proc.returncode}) while waiting for "
                               f"{what or 'its status'}: " + open(log_path).read()[-3000:])
        try:
            last = control.request(sock_path, "status")
            if pred(last):
                return last
        except control.DaemonUnavailable:
            pass
        time.sleep(0.02)
    if last is None:
        seen = (f"the daemon never answered on {sock_path} (it listens once it has "
                "compiled, loaded and attached the classifier)")
    else:
        seen = f"its last status: {json.dumps(last)[:2000]}"
    raise NfguardError(f"timed out after {timeout:g} s waiting for {what or 'the daemon'}"
                       + (f" (bound: {bound})" if bound else "") + f"; {seen}; its log: "
                       + open(log_path).read()[-3000:])


def scenario(name: str) -> str:
    return str(resources.files("nfguard.lab") / "scenarios" / f"{name}.xml")


class Lab:
    def __init__(self, prefix: str = "nfglab", users: dict[str, str] | None = None):
        self.topo = Topology(prefix, ipv6=False)
        tag = self.topo.tag
        self.users = users or {USER: PASSWORD}
        self.pin_dir = f"/sys/fs/bpf/{tag}"
        self.run_dir = f"/run/{tag}"
        self.sock_path = f"{self.run_dir}/nfguard.sock"
        self.tmp = tempfile.mkdtemp(prefix=f"{tag}-")
        self.config_path = os.path.join(self.tmp, "nfguard.yaml")
        self.log_path = os.path.join(self.tmp, "daemon.log")
        self.proc: subprocess.Popen | None = None
        self.synced_after: float | None = None
        self.sync_bound: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registered_at: dict[tuple[str, str], float] = {}

    # -- the world ---------------------------------------------------------
    def up(self) -> None:
        self.topo.up()
        self.topo.add_address("phone", "eth0", f"{ADDR['phone_moved']}/24")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        with self.topo.in_netns("pbx"):
            esl_sock = socket.socket()
            sip_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        esl_sock.bind(("127.0.0.1", 0))
        esl_sock.listen()
        sip_sock.bind(("0.0.0.0", 5060))
        self.esl = FakeEsl()
        self.pbx = StandInPbx(self.users, on_register=self._registered,
                              on_unregister=self._unregistered)
        self.call(self.esl.start(sock=esl_sock))
        self.call(serve("0.0.0.0", 5060, self.pbx, sock=sip_sock))

    def call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _registered(self, reg) -> None:
        """On the loop thread: the stand-in accepted a REGISTER."""
        self.esl.table = [r for r in self.esl.table if r.user != reg.user]
        self.esl.table.append(Row(reg.user, REALM, reg.ip, reg.port, reg.call_id, reg.contact,
                                  reg.expires + 60))
        self.registered_at[(reg.user, reg.ip)] = time.time()
        self.loop.create_task(self.esl.push(register_frame(
            reg.user, REALM, reg.ip, reg.port, reg.call_id, reg.expires,
            contact=reg.contact)))

    def _unregistered(self, reg) -> None:
        self.esl.table = [r for r in self.esl.table
                          if not (r.user == reg.user and r.ip == reg.ip)]
        self.loop.create_task(self.esl.push(register_frame(
            reg.user, REALM, reg.ip, reg.port, reg.call_id, 0, subclass="sofia::unregister",
            contact=reg.contact)))

    # -- the daemon ----------------------------------------------------------
    def write_config(self, **over) -> None:
        cfg = {"interfaces": ["pbx1", "pbx2"], "mode": "enforce", "action": "drop",
               "esl": [{"name": "pbx", "host": "127.0.0.1", "port": self.esl.port,
                        "password": "ClueCon"}],
               "pin_dir": self.pin_dir, "socket": self.sock_path, "alert_interval": 60}
        cfg.update(over)
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=1)  # JSON is YAML

    def nfguard_argv(self, *args: str) -> list[str]:
        return self.topo.nsenter("pbx") + [sys.executable, "-m", "nfguard", *args]

    def start_daemon(self, wait: float | None = None) -> dict:
        """Start the daemon and wait for its first full sync, at most wait
        seconds (default: sync_wait()); its status. `synced_after` is how
        long that took."""
        if wait is None:
            wait, bound = sync_wait()
        else:
            bound = f"{wait:g} s, as asked"
        self.log = open(self.log_path, "a")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.nfguard_argv("run", "--config", self.config_path),
                                     stdout=self.log, stderr=self.log)
        st = wait_status(self.sock_path, lambda st: st["synced"], wait,
                         "the daemon's first sync", self.proc, self.log_path, bound)
        self.synced_after, self.sync_bound = time.monotonic() - t0, wait
        return st

    def stop_daemon(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()

    def status(self) -> dict:
        return control.request(self.sock_path, "status")

    def until(self, pred, timeout: float = 10, what: str = "") -> dict:
        return wait_status(self.sock_path, pred, timeout, what, self.proc, self.log_path)

    # -- SIP peers -------------------------------------------------------------
    def sipp(self, who: str, name: str, ip: str | None = None, user: str = USER,
             password: str | None = None, timeout: float = 4, **keys: str) -> int:
        """Run a SIPp scenario (register, invite) from the phone or the
        attacker namespace; its exit code (0: the call succeeded)."""
        ip = ip or ADDR[who]
        dst = ADDR["pbx1"] if who == "phone" else ADDR["pbx2"]
        keys = {"realm": REALM, "expires": "300", "callee": "9196", **keys}
        argv = self.topo.nsenter(who) + [
            "sipp", f"{dst}:5060", "-sf", scenario(name), "-m", "1", "-i", ip, "-p", "0",
            "-s", user, "-au", user, "-ap", password or self.users.get(user, "x"),
            "-timeout", f"{timeout:g}s", "-timeout_error", "-recv_timeout", "2000",
            "-nostdin", "-trace_err", "-error_file", os.path.join(self.tmp, "sipp.err")]
        for k, v in keys.items():
            argv += ["-key", k, str(v)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 20,
                           cwd=self.tmp)
        return r.returncode

    def udp(self, who: str) -> socket.socket:
        return self.topo.udp(who)

    # -- teardown --------------------------------------------------------------
    def down(self) -> None:
        errors = []
        try:
            self.stop_daemon()
        except Exception as e:  # noqa: BLE001 - go on tearing down
            errors.append(str(e))
        if self.loop is not None:
            try:
                self.call(self.esl.stop())
                self.pbx.transport.close()
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop = None
        try:
            self.topo.close()
        except NfguardError as e:
            errors.append(str(e))
        shutil.rmtree(self.pin_dir, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if errors:
            raise NfguardError("tearing the lab down: " + "; ".join(errors))

    def __enter__(self):
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc):
        self.down()
