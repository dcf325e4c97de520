"""The FreeSWITCH-side guard (freeswitch/nfguard_guard.lua) end to end:
SIP over TCP, TLS, WS and WSS, which XDP cannot judge, refused inside the
real FreeSWITCH when the credentials are used from where they are not
bound, with the state nfguard writes into FreeSWITCH's hash store.

One FreeSWITCH 1.10.12 for the module (nfguard.lab.freeswitch) with UDP and
TCP on 5060, TLS on 5061, WS on 5066 and WSS on 7443 (a self-signed test
certificate), the guard installed into its configuration by
nfguard.guard_install.install() before it starts; one `nfguard run`
following it (XDP on pbx1 and pbx2, as tests/test_freeswitch.py runs it),
restarted only where a test needs another mode or no daemon. The phone
(1001@pbx.test) registers once over UDP from 10.200.1.2; the attacker holds
the phone's password and calls from the attacker namespace, from an address
of its own per case (the daemon's ALERT lines are rate-limited per
credentials and source). An Event Socket listener records CHANNEL_EXECUTE,
CHANNEL_ANSWER, CHANNEL_HANGUP_COMPLETE and the guard's CUSTOM
nfguard::guard events, so that a test sees which applications ran for a
call.

Where the bundle is missing these tests skip (fail under
NFGUARD_REQUIRE_KERNEL=1), as tests/test_freeswitch.py does.
"""

from __future__ import annotations

import os
import re

import pytest

from nfguard.lab.sipclient import SipClient
from nfguard.lab.topology import ADDR

from conftest import wait_for

pytestmark = pytest.mark.netns

PHONE = ADDR["ipv4"]["phone"]
REALM, USER = "pbx.test", "1001"
# the attacker's address per case (all in the attacker namespace)
ATTACKER = {"tcp": "10.200.2.2", "tls": "10.200.2.3", "ws": "10.200.2.4", "wss": "10.200.2.5",
            "monitor": "10.200.2.6", "fallback": "10.200.2.7", "via_udp": "10.200.2.8"}
EVENTS = "CHANNEL_EXECUTE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE CUSTOM nfguard::guard"
BINDING = f"b:{USER}@{REALM}"


@pytest.fixture(scope="module")
def fs(fs_topo):
    from nfguard.guard_install import guard_script, install
    from nfguard.lab.freeswitch import ALL_TRANSPORTS, FreeSwitch

    for ip in set(ATTACKER.values()) - {ADDR["ipv4"]["attacker"]}:
        fs_topo.add_address("attacker", "eth0", f"{ip}/24")
    fs = FreeSwitch(fs_topo, profiles=ALL_TRANSPORTS)
    try:
        changes = install(fs.conf, guard_script())
        assert changes, "install() changed nothing in a vanilla configuration"
        fs.start()
    except BaseException:
        fs.close()
        raise
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def events(fs):
    with fs.listen(EVENTS) as listener:
        yield listener


@pytest.fixture(scope="module")
def daemon(fs):
    from nfguard.lab.freeswitch import Nfguard

    d = Nfguard(fs)
    d.mode = None
    try:
        yield d
    finally:
        d.close()


@pytest.fixture(scope="module")
def phone_registered(fs):
    """The phone's one registration (UDP, from its address), in
    FreeSWITCH's table."""
    c = client(fs, PHONE, "udp")
    assert c.register(USER, password(fs), REALM, expires=3600) == 200
    wait_for(lambda: any(r["ip"] == PHONE for r in fs.registrations()), 5,
             "the phone's registration in FreeSWITCH's table")
    return True


def daemon_in(d, fs, mode: str) -> None:
    """The daemon running in mode, its state (meta saying mode, the phone's
    binding) in FreeSWITCH's hash store."""
    if d.proc is None or d.mode != mode:
        d.stop()
        d.start(mode=mode)
        d.mode = mode
    try:
        wait_for(lambda: f"mode={mode};" in fs.api("hash select/nfguard/meta"), 10,
                 f"meta with mode={mode} in FreeSWITCH's hash")
    except AssertionError as e:
        raise AssertionError(f"{e}; the daemon's log: {d.log()[-3000:]}") from None
    wait_for(lambda: PHONE in fs.api(f"hash select/nfguard/{BINDING}"), 10,
             "the phone's binding in FreeSWITCH's hash")


def password(fs) -> str:
    return fs.users[REALM][USER]


def client(fs, ip: str, transport: str, via: str | None = None) -> SipClient:
    ns = fs.topo.name("phone" if ip.startswith("10.200.1.") else "attacker")
    return SipClient(ns, ip, (fs.sip_ip, fs.port("internal", transport)), transport, via=via)


def call(fs, ip: str, transport: str, via: str | None = None) -> tuple[int | None, str]:
    """An authenticated call to 9196 from ip over transport (its Via naming
    `via` instead, when given); its final status and the Call-ID FreeSWITCH
    saw."""
    c = client(fs, ip, transport, via)
    code = c.invite(USER, password(fs), REALM)
    return code, c.last.get("call-id") if c.last else ""


def call_events(events, call_id: str) -> list[dict]:
    """The call's events, once its CHANNEL_HANGUP_COMPLETE is in."""
    wait_for(lambda: any(e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE"
                         for e in events.of_call(call_id)), 10,
             f"CHANNEL_HANGUP_COMPLETE of {call_id}")
    return events.of_call(call_id)


def events_from(events, ip: str) -> list[dict]:
    """Every event so far of a channel (or guard verdict) from ip."""
    return [e for e in events.events if ip in (e.get("Caller-Network-Addr"),
                                               e.get("variable_sip_network_ip"),
                                               e.get("nfguard-source-ip"))]


def applications(evs: list[dict]) -> list[str]:
    return [e.get("Application", "") for e in evs if e.get("Event-Name") == "CHANNEL_EXECUTE"]


def verdicts(evs: list[dict]) -> list[dict]:
    return [e for e in evs if e.get("Event-Subclass") == "nfguard::guard"]


def assert_guard_ran_and_routed(evs: list[dict]) -> None:
    apps = applications(evs)
    assert apps[:1] == ["lua"], apps  # the guard, before anything else
    assert "nfguard_guard.lua" in next(e for e in evs if e.get("Application") == "lua")[
        "Application-Data"]
    # routed: 9196 answers (echo may not start before the BYE that follows at once)
    assert "answer" in apps, apps
    assert any(e.get("Event-Name") == "CHANNEL_ANSWER" for e in evs)


def assert_refused_before_routing(evs: list[dict], transport: str, ip: str,
                                  state: str = "nfguard") -> None:
    apps = applications(evs)
    assert apps[:1] == ["lua"], apps
    assert "answer" not in apps and "echo" not in apps, apps
    assert not any(e.get("Event-Name") == "CHANNEL_ANSWER" for e in evs), evs
    hangup = next(e for e in evs if e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE")
    assert hangup.get("Hangup-Cause") == "CALL_REJECTED", hangup.get("Hangup-Cause")
    [v] = verdicts(evs)
    assert (v["nfguard-verdict"], v["nfguard-action"], v["nfguard-transport"],
            v["nfguard-source-ip"], v["nfguard-user"], v["nfguard-realm"],
            v["nfguard-state"]) == ("not_bound", "refused", transport, ip, USER, REALM, state), v


def fs_log(fs) -> str:
    """FreeSWITCH's log file (mod_logfile, every level)."""
    with open(os.path.join(fs.state, "log", "freeswitch.log"), errors="replace") as f:
        return f.read()


def alert(ip: str, transport: str) -> str:
    return f"ALERT: the credentials of {USER}@{REALM} were used from {ip} over {transport}"


def alert_line(d, ip: str, transport: str) -> str:
    wait_for(lambda: alert(ip, transport) in d.log(), 5, f"the ALERT line for {ip}")
    return next(line for line in d.log().splitlines() if alert(ip, transport) in line)


# -- (a) the bound phone, every transport ---------------------------------------------------
def test_bound_phone_calls_over_udp_tcp_and_tls(fs, daemon, events, phone_registered):
    daemon_in(daemon, fs, "enforce")
    for transport in ("udp", "tcp", "tls"):
        code, call_id = call(fs, PHONE, transport)
        assert code == 200, (transport, code)
        evs = call_events(events, call_id)
        assert_guard_ran_and_routed(evs)
        assert verdicts(evs) == [], transport  # a pass is silent


# -- (b, c) the attacker with the phone's password -----------------------------------------
def test_attacker_over_tcp_and_tls_is_refused_before_routing_and_alerted(
        fs, daemon, events, phone_registered):
    daemon_in(daemon, fs, "enforce")
    for transport in ("tcp", "tls"):
        ip = ATTACKER[transport]
        code, call_id = call(fs, ip, transport)
        assert code == 403, (transport, code)
        assert_refused_before_routing(call_events(events, call_id), transport, ip)
        line = alert_line(daemon, ip, transport)
        assert "refused" in line, line
    # The guard reads the transport from sip_via_protocol, the caller's Via.
    # A caller over TCP or TLS whose Via claims UDP (outside the guard's
    # default transports) gets no answer at all, over the stream or over
    # UDP: sofia-sip drops a request whose Via names another transport than
    # the one it came over, before any challenge, so no such call reaches
    # the dialplan (and in enforce the guard would judge it anyway).
    ip = ATTACKER["via_udp"]
    for transport in ("tcp", "tls"):
        assert client(fs, ip, transport, via="udp").invite(USER, password(fs), REALM) is None
    assert events_from(events, ATTACKER["tcp"])  # the refused calls above are seen so
    assert events_from(events, ip) == []
    # `nfguard status` counts them (the guard's verdicts, per transport)
    counts = daemon.until(lambda s: all(s["guard"]["verdicts"].get(t, 0) >= 1
                                        for t in ("tcp", "tls")),
                          what="the guard's verdicts in the status")["guard"]["verdicts"]
    line = next(x for x in daemon.cli("status").stdout.splitlines() if x.startswith("guard"))
    assert f"tcp {counts['tcp']}" in line and f"tls {counts['tls']}" in line, line
    # and the phone still calls over both
    for transport in ("tcp", "tls"):
        assert call(fs, PHONE, transport)[0] == 200


# -- (f) WebSocket ---------------------------------------------------------------------------
def test_websocket_bound_phone_passes_and_attacker_is_refused(fs, daemon, events,
                                                             phone_registered):
    daemon_in(daemon, fs, "enforce")
    for transport in ("ws", "wss"):
        code, call_id = call(fs, PHONE, transport)
        assert code == 200, (transport, code)
        assert_guard_ran_and_routed(call_events(events, call_id))
        ip = ATTACKER[transport]
        code, call_id = call(fs, ip, transport)
        assert code == 403, (transport, code)
        assert_refused_before_routing(call_events(events, call_id), transport, ip)
        alert_line(daemon, ip, transport)


# -- (d) monitor -------------------------------------------------------------------------------
def test_monitor_mode_routes_the_call_and_alerts(fs, daemon, events, phone_registered):
    daemon_in(daemon, fs, "monitor")
    ip = ATTACKER["monitor"]
    code, call_id = call(fs, ip, "tls")
    assert code == 200
    evs = call_events(events, call_id)
    assert_guard_ran_and_routed(evs)
    [v] = verdicts(evs)
    assert (v["nfguard-verdict"], v["nfguard-action"], v["nfguard-transport"]) == (
        "not_bound", "monitor", "tls"), v
    assert "monitor" in alert_line(daemon, ip, "tls")


# -- (e) no state from nfguard: the registration table ------------------------------------------
def test_without_nfguards_state_the_guard_falls_back_to_registrations(
        fs, daemon, events, phone_registered):
    daemon_in(daemon, fs, "enforce")
    daemon.stop()
    daemon.mode = None
    fs.api("hash delete/nfguard/meta")
    assert "mode=" not in fs.api("hash select/nfguard/meta")
    log_before = len(fs_log(fs))

    code, call_id = call(fs, PHONE, "tls")
    assert code == 200
    evs = call_events(events, call_id)
    assert_guard_ran_and_routed(evs)
    ip = ATTACKER["fallback"]
    code, call_id = call(fs, ip, "tls")
    assert code == 403
    assert_refused_before_routing(call_events(events, call_id), "tls", ip,
                                  state="registrations")
    new_log = fs_log(fs)[log_before:]
    # the guard's NOTICE, once per call judged from the registration table
    said = re.findall(r"\[NOTICE\].*nfguard guard: no nfguard state in the hash store.*"
                      r"registration table of profile internal", new_log)
    assert len(said) >= 2, new_log[-3000:]
