"""The real FreeSWITCH in the lab's PBX namespace, for the tests.

The bundle is a relocatable FreeSWITCH 1.10.12 build (a tarball in
`../shared/freeswitch/` beside the repository, or the path in
NFGUARD_FREESWITCH_BUNDLE; its README says what it is). It is test
infrastructure, never part of the package. It is unpacked once into a cache
directory keyed by the tarball's size and mtime; each FreeSwitch gets its
own configuration (the bundle's `conf-example/`, patched: addresses, ports,
one SIP profile per registration mode) and state directory in a temporary
directory.

    phone ns     eth0 10.200.1.2 --- pbx1 10.200.1.1    pbx ns: FreeSWITCH
    attacker ns  eth0 10.200.2.2 --- pbx2 10.200.2.1    SIP on 10.200.1.1,
                                                        ESL on 127.0.0.1

SIP and RTP bind 10.200.1.1 only; the attacker reaches it through a route
via 10.200.2.1, so its packets enter the PBX namespace on pbx2, where
nfguard's XDP program runs, as the phone's enter on pbx1.

FreeSWITCH runs under `nsenter --net` (not `ip netns exec`, which remounts
/sys). The harness's own Event Socket connections come from 127.0.0.2, so
that a test can cut the daemon's (from 127.0.0.1) and still ask FreeSWITCH.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from nfguard.daemon import control
from nfguard.errors import NfguardError
from nfguard.kernel.attach import in_netns
from nfguard.lab import topology
from nfguard.lab.topology import Topology

BUNDLE_ENV = "NFGUARD_FREESWITCH_BUNDLE"
CACHE_DIR = "/var/cache/nfguard-test"
SIP_IP = topology.ADDR["ipv4"]["pbx1"]
ESL_IP = "127.0.0.1"
API_SRC = "127.0.0.2"  # the harness's ESL source address (see the module doc)
FLUSH_SETTLE = 1.0  # seconds: see FreeSwitch.flush()
DEFAULT_PROFILES = {"internal": {"port": 5060, "multiple_registrations": None}}
# A profile with every transport (write_config): UDP and TCP on port, TLS,
# WS and WSS on their own ports
ALL_TRANSPORTS = {"internal": {"port": 5060, "multiple_registrations": None, "tls_port": 5061,
                               "ws_port": 5066, "wss_port": 7443}}
TLS_VERSIONS = "tlsv1.2"  # what sofia-sip 1.13.17 offers (and Python's ssl accepts)
MODES = (None, "contact", "true", "call-id")
# conf-example's directory: realm -> user -> password
USERS = {"pbx.test": {"1001": "pass1001", "1002": "pass1002", "1003": "pass1003"},
         "tenant-b.test": {"1001": "tb1001", "2001": "tb2001"}}
# What `ldd` must resolve: the binary and the modules conf-example loads.
_LINKED = ("bin/freeswitch", "bin/fs_cli", "lib/freeswitch/mod/*.so")


class FreeSwitchError(NfguardError):
    """FreeSWITCH did not start, answer or stop as asked."""


# -- the bundle ----------------------------------------------------------------
def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_bundle() -> str | None:
    """The tarball: NFGUARD_FREESWITCH_BUNDLE, else ../shared/freeswitch/
    beside the repository (where CI puts its copy of shared/)."""
    env = os.environ.get(BUNDLE_ENV)
    if env:
        return env if os.path.isfile(env) else None
    found = sorted(glob.glob(os.path.join(repo_root(), "..", "shared", "freeswitch",
                                          "freeswitch-*.tar.xz")))
    return os.path.realpath(found[-1]) if found else None


def _cache_base() -> str:
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        if os.access(CACHE_DIR, os.W_OK):
            return CACHE_DIR
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), "nfguard-test")


def unpack(bundle: str) -> str:
    """The unpacked `freeswitch/` directory of the bundle, unpacked at most
    once per tarball (size and mtime name the cache entry)."""
    st = os.stat(bundle)
    base = _cache_base()
    home = os.path.join(base, f"freeswitch-{st.st_size}-{st.st_mtime_ns}")
    if os.path.isfile(os.path.join(home, "freeswitch", "run-freeswitch")):
        return os.path.join(home, "freeswitch")
    os.makedirs(base, exist_ok=True)
    part = tempfile.mkdtemp(prefix="unpacking-", dir=base)
    try:
        subprocess.run(["tar", "-xJf", bundle, "-C", part], check=True, capture_output=True)
        try:
            os.rename(part, home)  # atomic: a parallel run sees all or nothing
        except OSError:
            if not os.path.isdir(home):  # not another run's finished copy
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return os.path.join(home, "freeswitch")


def missing_libraries(home: str) -> list[str]:
    """Shared libraries the bundle needs that this host lacks (Debian's
    runtime packages; scripts/setup installs them)."""
    env = {**os.environ, "LD_LIBRARY_PATH": os.path.join(home, "lib")}
    missing: set[str] = set()
    for pattern in _LINKED:
        for path in glob.glob(os.path.join(home, pattern)):
            out = subprocess.run(["ldd", path], capture_output=True, text=True, env=env).stdout
            missing.update(line.split()[0] for line in out.splitlines() if "not found" in line)
    return sorted(missing)


def unavailable() -> str | None:
    """Why the real FreeSWITCH cannot run here, or None."""
    if os.geteuid() != 0:
        return "the FreeSWITCH tests need root"
    bundle = find_bundle()
    if bundle is None:
        where = os.environ.get(BUNDLE_ENV) or os.path.normpath(
            os.path.join(repo_root(), "..", "shared", "freeswitch"))
        return f"no FreeSWITCH bundle (freeswitch-*.tar.xz) at {where} (or set {BUNDLE_ENV})"
    try:
        home = unpack(bundle)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"cannot unpack the FreeSWITCH bundle {bundle}: {e}"
    missing = missing_libraries(home)
    if missing:
        return ("FreeSWITCH's runtime libraries are missing: " + ", ".join(missing)
                + " (scripts/setup installs them)")
    return None


# -- a minimal Event Socket client (one command per connection) ----------------
def _read_frame(f) -> tuple[dict[str, str], bytes]:
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if not line:
            raise EOFError("the Event Socket closed the connection")
        line = line.rstrip(b"\r\n")
        if not line:
            if headers:
                break
            continue
        name, _, value = line.decode().partition(":")
        headers[name.strip()] = value.strip()
    body = f.read(int(headers["Content-Length"])) if "Content-Length" in headers else b""
    return headers, body


def esl_api(ns: str, cmd: str, port: int = 8021, password: str = "ClueCon",
            timeout: float = 10.0) -> str:
    """`api CMD` on the Event Socket at 127.0.0.1:port inside namespace ns;
    the command's output. OSError, EOFError or FreeSwitchError on failure."""
    with in_netns(ns):
        s = socket.socket()
    with s:
        s.settimeout(timeout)
        s.bind((API_SRC, 0))
        s.connect((ESL_IP, port))
        f = s.makefile("rb")
        headers, _ = _read_frame(f)
        if headers.get("Content-Type") != "auth/request":
            raise FreeSwitchError(f"ESL: expected auth/request, got {headers}")
        s.sendall(f"auth {password}\n\n".encode())
        headers, _ = _read_frame(f)
        if not headers.get("Reply-Text", "").startswith("+OK"):
            raise FreeSwitchError(f"ESL: auth refused: {headers.get('Reply-Text')}")
        s.sendall(f"api {cmd}\n\n".encode())
        while True:
            headers, body = _read_frame(f)
            if headers.get("Content-Type") == "api/response":
                return body.decode("utf-8", "replace")


class EventListener:
    """FreeSWITCH's events on an Event Socket connection of their own (from
    API_SRC, as esl_api), read by a thread into a list of dicts (headers
    URL-decoded; the body, if any, under "_body"). events: the `event
    plain` list, e.g. "CHANNEL_EXECUTE CHANNEL_HANGUP_COMPLETE CUSTOM
    nfguard::guard". Use as a context manager; close() ends it."""

    def __init__(self, ns: str, events: str, port: int = 8021, password: str = "ClueCon",
                 timeout: float = 10.0):
        import threading

        with in_netns(ns):
            self.sock = socket.socket()
        try:
            self.sock.settimeout(timeout)
            self.sock.bind((API_SRC, 0))
            self.sock.connect((ESL_IP, port))
            self.f = self.sock.makefile("rb")
            _read_frame(self.f)  # auth/request
            self.sock.sendall(f"auth {password}\n\n".encode())
            headers, _ = _read_frame(self.f)
            if not headers.get("Reply-Text", "").startswith("+OK"):
                raise FreeSwitchError(f"ESL: auth refused: {headers.get('Reply-Text')}")
            self.sock.sendall(f"event plain {events}\n\n".encode())
            headers, _ = _read_frame(self.f)
            if not headers.get("Reply-Text", "").startswith("+OK"):
                raise FreeSwitchError(f"ESL: event {events}: {headers.get('Reply-Text')}")
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(None)
        self.events: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from urllib.parse import unquote

        try:
            while True:
                headers, body = _read_frame(self.f)
                if headers.get("Content-Type") != "text/event-plain":
                    continue
                text = body.decode("utf-8", "replace")
                head, _, rest = text.partition("\n\n")
                ev = {}
                for line in head.splitlines():
                    name, _, value = line.partition(":")
                    ev[name.strip()] = unquote(value.strip())
                if rest:
                    ev["_body"] = rest
                with self.lock:
                    self.events.append(ev)
        except (OSError, EOFError, ValueError):
            pass

    def of_call(self, call_id: str) -> list[dict[str, str]]:
        """The events so far whose channel's SIP Call-ID is call_id (or
        whose nfguard-call-id header is)."""
        with self.lock:
            return [e for e in self.events if call_id in (e.get("variable_sip_call_id"),
                                                           e.get("nfguard-call-id"))]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)

    def __enter__(self) -> EventListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL when the process that started us dies (a test
    run killed mid-way leaves no FreeSWITCH or daemon behind)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- the configuration ----------------------------------------------------------
def _sub(pattern: str, repl: str, text: str, what: str) -> str:
    out, n = re.subn(pattern, repl, text)
    if n == 0:
        raise FreeSwitchError(f"conf-example changed: {what} not found")
    return out


def make_certificate(tls_dir: str, ip: str) -> None:
    """A self-signed certificate for ip (CN pbx.test) in tls_dir, in the
    files FreeSWITCH reads there: agent.pem (key and certificate: the TLS
    transport's), cafile.pem (the certificate) and wss.pem (key and
    certificate: the WSS transport's). Clients do not verify it."""
    os.makedirs(tls_dir, exist_ok=True)
    key, cert = os.path.join(tls_dir, "key.pem"), os.path.join(tls_dir, "cert.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                        "-subj", "/CN=pbx.test", "-addext", f"subjectAltName=IP:{ip},DNS:pbx.test",
                        "-keyout", key, "-out", cert], capture_output=True, text=True)
    if r.returncode != 0:
        raise FreeSwitchError(f"openssl req -x509 failed: {r.stderr.strip()[-500:]}")
    key_pem, cert_pem = open(key).read(), open(cert).read()
    for name, text in (("agent.pem", key_pem + cert_pem), ("cafile.pem", cert_pem),
                       ("wss.pem", cert_pem + key_pem)):
        with open(os.path.join(tls_dir, name), "w") as f:
            f.write(text)
    for path in (key, cert):
        os.remove(path)


def write_config(home: str, conf: str, profiles: dict[str, dict], ip: str, esl_port: int,
                 password: str) -> None:
    """conf-example copied to conf and patched: the address, the Event
    Socket, and one SIP profile per entry of profiles."""
    shutil.copytree(os.path.join(home, "conf-example"), conf)
    path = os.path.join(conf, "vars.xml")
    text = open(path).read()
    for var in ("local_ip_v4", "external_rtp_ip", "external_sip_ip"):
        text = _sub(rf'data="{var}=[^"]*"', f'data="{var}={ip}"', text, var)
    open(path, "w").write(text)

    path = os.path.join(conf, "autoload_configs", "event_socket.conf.xml")
    text = open(path).read()
    text = _sub(r'name="listen-port" value="\d+"', f'name="listen-port" value="{esl_port}"',
                text, "listen-port")
    text = _sub(r'name="password" value="[^"]*"', f'name="password" value="{password}"',
                text, "ESL password")
    open(path, "w").write(text)

    if any(p.get("tls_port") or p.get("wss_port") for p in profiles.values()):
        make_certificate(os.path.join(conf, "tls"), ip)

    sip_dir = os.path.join(conf, "sip_profiles")
    template = open(os.path.join(sip_dir, "internal.xml")).read()
    os.remove(os.path.join(sip_dir, "internal.xml"))
    ports = [p["port"] for p in profiles.values()]
    if len(set(ports)) != len(ports):
        raise FreeSwitchError(f"two profiles on one port: {profiles}")
    for i, (name, p) in enumerate(profiles.items()):
        mode = p.get("multiple_registrations")
        if mode not in MODES:
            raise FreeSwitchError(f"profile {name}: multiple_registrations {mode!r}, "
                                  f"not one of {MODES}")
        text = _sub(r'<profile name="internal">', f'<profile name="{name}">', template, "profile")
        text = _sub(r'name="sip-port" value="\d+"', f'name="sip-port" value="{p["port"]}"',
                    text, "sip-port")
        for param in ("sip-ip", "rtp-ip"):
            text = _sub(rf'name="{param}" value="[^"]*"', f'name="{param}" value="{ip}"',
                        text, param)
        extra = []
        if mode is not None:
            extra.append(f'<param name="multiple-registrations" value="{mode}"/>')
        if not p.get("tcp", True):
            extra.append('<param name="bind-params" value="transport=udp"/>')
        if p.get("tls_port"):
            # the template's own TLS params (tls-bind-params transport=tls,
            # tls-verify-policy none ...) stay; these are set here
            for param, value in (("tls", "true"), ("tls-sip-port", p["tls_port"]),
                                 ("tls-version", TLS_VERSIONS)):
                text = _sub(rf'<param name="{param}" value="[^"]*"/>',
                            f'<param name="{param}" value="{value}"/>', text, param)
            extra.append(f'<param name="tls-cert-dir" value="{os.path.join(conf, "tls")}"/>')
        for kind in ("ws", "wss"):
            if p.get(f"{kind}_port"):
                extra.append(f'<param name="{kind}-binding" value=":{p[f"{kind}_port"]}"/>')
        if extra:
            text = _sub(r"<settings>", "<settings>\n    " + "\n    ".join(extra), text,
                        "<settings>")
        if i > 0:  # the domains are aliased to the first profile only
            text = _sub(r'<domain name="all" alias="true"', '<domain name="all" alias="false"',
                        text, "domain alias")
        open(os.path.join(sip_dir, f"{name}.xml"), "w").write(text)


def parse_registrations(xml_text: str) -> list[dict]:
    """Rows of `sofia xmlstatus profile P reg`: user, realm (the digest
    credentials), ip, port, call_id, contact, expires (seconds left),
    agent, status."""
    rows = []
    for el in ET.fromstring(xml_text).iter("registration"):
        f = {child.tag: (child.text or "").strip() for child in el}
        m = re.search(r"expsecs\((-?\d+)\)", f.get("status", ""))
        rows.append({"user": f.get("sip-auth-user", ""), "realm": f.get("sip-auth-realm", ""),
                     "ip": f.get("network-ip", ""), "port": int(f.get("network-port") or 0),
                     "call_id": f.get("call-id", ""), "contact": f.get("contact", ""),
                     "expires": int(m.group(1)) if m else None, "agent": f.get("agent", ""),
                     "status": f.get("status", "")})
    return rows


# -- FreeSWITCH ------------------------------------------------------------------
class FreeSwitch:
    """One FreeSWITCH in topo's PBX namespace with one SIP profile per entry
    of profiles: name -> {"port": int, "multiple_registrations": None |
    "contact" | "true" | "call-id", "tcp": bool (default True), and, each
    optional, "tls_port", "ws_port", "wss_port": int}. None (the vanilla
    default, commented out) means one registration per user. A TLS or WSS
    port makes a self-signed certificate in CONF/tls (make_certificate)."""

    def __init__(self, topo: Topology, profiles: dict[str, dict] | None = None,
                 password: str = "ClueCon", esl_port: int = 8021):
        bundle = find_bundle()
        if bundle is None:
            raise FreeSwitchError(unavailable() or "no FreeSWITCH bundle")
        self.home = unpack(bundle)
        self.topo = topo
        self.profiles = {k: dict(v) for k, v in (profiles or DEFAULT_PROFILES).items()}
        self.password = password
        self.esl_port = esl_port
        self.sip_ip = SIP_IP
        self.users = USERS
        self.tmp = tempfile.mkdtemp(prefix=f"{topo.tag}-fs-")
        self.conf = os.path.join(self.tmp, "conf")
        self.state = os.path.join(self.tmp, "state")
        self.out_path = os.path.join(self.tmp, "console.log")
        self.proc: subprocess.Popen | None = None
        write_config(self.home, self.conf, self.profiles, self.sip_ip, esl_port, password)

    def port(self, profile: str, transport: str = "udp") -> int:
        """The profile's port for transport: udp and tcp share "port";
        tls, ws and wss have their own (FreeSwitchError: not configured)."""
        p = self.profiles[profile]
        if transport in ("udp", "tcp"):
            return p["port"]
        if not p.get(f"{transport}_port"):
            raise FreeSwitchError(f"profile {profile} has no {transport} listener")
        return p[f"{transport}_port"]

    # -- life cycle ----------------------------------------------------------
    def routes(self) -> None:
        """The attacker reaches sip_ip through pbx2 (see the module doc)."""
        pbx2 = topology.ADDR["ipv4"]["pbx2"]
        topology.run("ip", "-n", self.topo.name("attacker"), "route", "replace",
                     f"{self.sip_ip}/32", "via", pbx2)

    def start(self, timeout: float = 30) -> None:
        """Start it and wait until ESL answers and every profile is RUNNING."""
        if self.proc is not None:
            raise FreeSwitchError("FreeSWITCH is already running")
        self.routes()
        out = open(self.out_path, "a")
        # -nf -nc: in the foreground (this Popen is FreeSWITCH: nsenter and
        # run-freeswitch exec), without a console; -nonat: no UPnP/NAT-PMP.
        self.proc = subprocess.Popen(
            self.topo.nsenter("pbx") + [os.path.join(self.home, "run-freeswitch"), self.conf,
                                        self.state, "-nonat", "-nf", "-nc"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        out.close()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc, self.proc = self.proc.returncode, None
                raise FreeSwitchError(f"FreeSWITCH exited ({rc}) while starting: "
                                      + self.log_tail())
            try:
                last = self.api("sofia xmlstatus", timeout=2, refused_wait=0)
                states = {p.findtext("name"): p.findtext("state") or ""
                          for p in ET.fromstring(last).iter("profile")}
                if all(states.get(n, "").startswith("RUNNING") for n in self.profiles):
                    return
            except (OSError, EOFError, ET.ParseError, FreeSwitchError) as e:
                last = str(e)
            time.sleep(0.1)
        self.stop()
        raise FreeSwitchError(f"FreeSWITCH not ready within {timeout:g} s (last: {last[:300]}): "
                              + self.log_tail())

    def stop(self, timeout: float = 15) -> None:
        """`shutdown` over ESL, then SIGKILL if it is still there."""
        if self.proc is None:
            return
        try:
            self.api("shutdown", timeout=2, refused_wait=0)
        except (OSError, EOFError, FreeSwitchError):
            pass  # it may close the connection before it answers
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        """Stop and start with the same configuration and state directory:
        registrations survive (the sofia database), with no events."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop it and remove its configuration and state."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> FreeSwitch:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- asking it -------------------------------------------------------------
    def api(self, cmd: str, timeout: float = 10, refused_wait: float = 3) -> str:
        """The output of an ESL `api` command (a connection of its own).
        A refused connection is retried for refused_wait seconds: during a
        `reload mod_event_socket` (a background job) nothing listens."""
        deadline = time.monotonic() + refused_wait
        while True:
            try:
                return esl_api(self.topo.name("pbx"), cmd, self.esl_port, self.password,
                               timeout)
            except ConnectionRefusedError:
                if time.monotonic() > deadline or self.proc is None or \
                        self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def listen(self, events: str) -> EventListener:
        """An EventListener for events (see there), started."""
        return EventListener(self.topo.name("pbx"), events, self.esl_port, self.password)

    def registrations(self, profile: str = "internal") -> list[dict]:
        """The profile's own registration table, sorted (parse_registrations)."""
        rows = parse_registrations(self.api(f"sofia xmlstatus profile {profile} reg"))
        return sorted(rows, key=lambda r: (r["user"], r["realm"], r["ip"], r["port"],
                                           r["call_id"]))

    def bound(self) -> set[tuple[str, str, str]]:
        """What nfguard must hold: (user, realm, ip), lower-cased, over
        every profile."""
        return {(r["user"].lower(), r["realm"].lower(), r["ip"])
                for name in self.profiles for r in self.registrations(name)}

    @contextlib.contextmanager
    def daemon_esl_outage(self):
        """An Event Socket outage for the daemon while FreeSWITCH runs: its
        connection (from 127.0.0.1) is closed by a reload of
        mod_event_socket and its reconnects are refused until the block
        ends. The harness asks from 127.0.0.2, which passes."""
        pbx = self.topo.name("pbx")
        topology.run("nft", "-f", "-", ns=pbx, input=(
            "table inet nfgtest-esl {\n chain input {\n  type filter hook input priority 0;\n"
            f"  ip saddr {ESL_IP} tcp dport {self.esl_port} reject with tcp reset\n }}\n}}\n"))
        try:
            self.api("reload mod_event_socket")
            yield
        finally:
            topology.run("nft", "delete", "table", "inet", "nfgtest-esl", ns=pbx)

    def flush(self, profile: str | None = None, timeout: float = 5) -> None:
        """Forget every registration (`sofia profile P flush_inbound_reg`,
        which answers before the rows are gone: wait for that)."""
        names = [profile] if profile else list(self.profiles)
        for name in names:
            self.api(f"sofia profile {name} flush_inbound_reg")
        deadline = time.monotonic() + timeout
        while any(self.registrations(n) for n in names):
            if time.monotonic() > deadline:
                raise FreeSwitchError(f"flush_inbound_reg left rows after {timeout:g} s")
            time.sleep(0.05)
        # The flush's delete is deferred (FreeSWITCH's SQL queue) and also
        # takes a REGISTER that arrives shortly after it, with no event:
        # let it pass before anyone registers again.
        time.sleep(FLUSH_SETTLE)

    def log_tail(self, n: int = 3000) -> str:
        text = ""
        for path in (self.out_path, os.path.join(self.state, "log", "freeswitch.log")):
            try:
                with open(path, errors="replace") as f:
                    text += f"[{os.path.basename(path)}] " + f.read()[-n:]
            except OSError:
                pass
        return text


# -- nfguard following it ----------------------------------------------------------
class Nfguard:
    """`nfguard run` as on a real host, in the PBX namespace (nsenter
    --net: interfaces, nft table and 127.0.0.1 are the namespace's, pinned
    maps on the host's bpffs), following fs's Event Socket, XDP on pbx1 and
    pbx2, enforcing. Pin directory, socket and temporary directory are this
    instance's own; close() stops the daemon and uninstalls (XDP, TC, the
    nft table, the pins)."""

    def __init__(self, fs: FreeSwitch):
        self.fs = fs
        self.topo = fs.topo
        self.tmp = tempfile.mkdtemp(prefix=f"{fs.topo.tag}-nfguard-")
        tag = os.path.basename(self.tmp)
        self.pin_dir = f"/sys/fs/bpf/{tag}"
        self.run_dir = f"/run/{tag}"
        self.sock = f"{self.run_dir}/nfguard.sock"
        self.config = os.path.join(self.tmp, "nfguard.yaml")
        self.log_path = os.path.join(self.tmp, "daemon.log")
        self.proc: subprocess.Popen | None = None

    def write_config(self, **over) -> None:
        cfg = {"interfaces": ["pbx1", "pbx2"], "mode": "enforce", "action": "drop",
               "esl": [{"name": "fs1", "host": ESL_IP, "port": self.fs.esl_port,
                        "password": self.fs.password}],
               "ports": sorted({p["port"] for p in self.fs.profiles.values()}),
               "pin_dir": self.pin_dir, "socket": self.sock, "alert_interval": 60}
        cfg.update(over)
        with open(self.config, "w") as f:
            json.dump(cfg, f, indent=1)  # JSON is YAML

    def argv(self, *args: str) -> list[str]:
        return self.topo.nsenter("pbx") + [sys.executable, "-m", "nfguard", *args]

    def start(self, wait: float | None = None, **config) -> dict:
        """Write the configuration (defaults updated by config), start the
        daemon, and wait for its first full sync, at most wait seconds
        (default: nfguard.lab.world.sync_wait(60): FreeSWITCH's resync is
        slower than the fake Event Socket's); its status."""
        from nfguard.lab.world import sync_wait, wait_status

        if self.proc is not None:
            raise NfguardError("the daemon is already running")
        if wait is None:
            wait, bound = sync_wait(60)
        else:
            bound = f"{wait:g} s, as asked"
        self.write_config(**config)
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.argv("run", "--config", self.config),
                                         stdout=log, stderr=log, cwd=repo_root(),
                                         preexec_fn=_die_with_parent)
        return wait_status(self.sock, lambda st: st["synced"], wait, "the first sync",
                           self.proc, self.log_path, bound)

    def stop(self) -> int | None:
        """SIGTERM; the exit code (None: it was not running)."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if os.path.exists(self.config):
                subprocess.run(self.argv("uninstall", "--config", self.config),
                               capture_output=True, timeout=60, cwd=repo_root())
            shutil.rmtree(self.pin_dir, ignore_errors=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- asking it ---------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """An nfguard command with this configuration, in the namespace."""
        r = subprocess.run(self.argv(*args, "--config", self.config), capture_output=True,
                           text=True, timeout=60, cwd=repo_root())
        if check and r.returncode != 0:
            raise NfguardError(f"nfguard {' '.join(args)} ({r.returncode}): {r.stderr.strip()}")
        return r

    def status(self) -> dict:
        return control.request(self.sock, "status")

    def until(self, pred, timeout: float = 10, what: str = "") -> dict:
        """The status once pred(status) holds; NfguardError with the end of
        the log when the daemon exits or time runs out."""
        from nfguard.lab.world import wait_status
        return wait_status(self.sock, pred, timeout, what, self.proc, self.log_path)

    def bound(self) -> set[tuple[str, str, str]]:
        """The daemon's bindings: (user, realm, ip), lower-cased."""
        rows = control.request(self.sock, "bindings")["bindings"]
        return {(r["user"].lower(), r["realm"].lower(), r["ip"]) for r in rows}

    def until_mirrors(self, timeout: float = 1.0) -> float:
        """Seconds until the daemon's bindings equal FreeSWITCH's table
        (both read, as they are now); AssertionError naming the difference
        when they still differ after timeout."""
        t0 = time.monotonic()
        while True:
            want, have = self.fs.bound(), self.bound()
            if want == have:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(
                    f"after {timeout:g} s nfguard's bindings differ from FreeSWITCH's table: "
                    f"missing {sorted(want - have)}, extra {sorted(have - want)}")
            time.sleep(0.02)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()
