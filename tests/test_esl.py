"""ESL framing, FreeSWITCH event parsing, the README timeline of the real
captures, and the client against the fake ESL server."""

import asyncio
import calendar
import logging
import random
import time

import pytest

from nfguard.daemon import esl
from nfguard.daemon.esl import (
    REREAD_DELAY,
    REREAD_SOON,
    SUBSCRIBE,
    Backoff,
    Endpoint,
    EslAuthError,
    EslConnection,
    EslError,
    Frame,
    FramingError,
    read_frame,
)
from nfguard.daemon.fsevents import (
    AuthFailure,
    Registered,
    Unregistered,
    XmlstatusRegReader,
    event_headers,
    follow,
    normalize_ip,
    parse_event,
    parse_profiles,
    parse_show_registrations,
    parse_xmlstatus_reg,
)
from nfguard.daemon.registry import Binding, Registry

from fake_esl import (
    ACCEPTED,
    AUTH_REQUEST,
    FIXTURES,
    REAL,
    FakeEsl,
    Row,
    event_frames,
    profiles_xml,
    reg_xml,
    register_frame,
    split_frames,
)

CAPTURES = sorted(p.name for p in REAL.glob("esl_*.bin"))
SCENARIOS = sorted({n[len("esl_json_"):-4] for n in CAPTURES if n.startswith("esl_json_")})


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def frames_of(data: bytes) -> tuple[list[Frame], Exception]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out = []
    while True:
        try:
            out.append(await read_frame(reader))
        except EslError as e:
            return out, e


def stamp(frame: Frame) -> float:
    return int(event_headers(frame)["Event-Date-Timestamp"]) / 1e6


def parsed_events(name: str, node="vm"):
    """(now, event) for every event of a capture that parse_event() returns."""
    frames, _ = run(frames_of((REAL / name).read_bytes()))
    out = []
    for f in frames:
        if f.content_type.startswith("text/event-"):
            ev = parse_event(f, node, stamp(f))
            if ev is not None:
                out.append((stamp(f), ev))
    return out


def events_of(name: str, node="vm"):
    """(now, registry event) for every binding-changing event of a capture
    (an AuthFailure is for the bans: follow() never gives it to the registry)."""
    return [(now, ev) for now, ev in parsed_events(name, node)
            if isinstance(ev, (Registered, Unregistered))]


# -- framing -------------------------------------------------------------------
def test_every_capture_is_present():
    assert len(CAPTURES) == 28 and len(SCENARIOS) == 14


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_reads_as_frames_with_nothing_left_over(name):
    data = (REAL / name).read_bytes()
    frames, end = run(frames_of(data))
    raw = split_frames(data)
    assert len(frames) == len(raw) >= 4
    assert str(end) == "the connection closed"
    assert frames[0].content_type == "auth/request"
    assert frames[1].headers["Reply-Text"] == "+OK accepted"
    assert frames[-1].content_type == "text/disconnect-notice"
    for f, r in zip(frames, raw, strict=True):
        assert r.endswith(f.body)
        if "Content-Length" in f.headers:
            assert int(f.headers["Content-Length"]) == len(f.body)


@pytest.mark.parametrize("name", sorted(p.name for p in REAL.glob("*.raw.bin")))
def test_api_capture_body_is_the_reply_file(name):
    frames, _ = run(frames_of((REAL / name).read_bytes()))
    assert [f.content_type for f in frames] == ["auth/request", "command/reply", "api/response"]
    assert frames[-1].body == (REAL / name[:-len(".raw.bin")]).read_bytes()


def test_read_frame_ignores_cr_and_skips_a_line_without_colon(caplog):
    frames, _ = run(frames_of(b"Content-Type: command/reply\r\nnonsense\r\n"
                              b"Reply-Text: +OK\r\n\r\n"))
    assert frames[0].headers == {"Content-Type": "command/reply", "Reply-Text": "+OK"}
    assert "without ':'" in caplog.text


@pytest.mark.parametrize("length", [b"12x", b"-1", b"", b"99999999999"])
def test_untrusted_content_length_is_a_framing_error(length):
    frames, err = run(frames_of(b"Content-Length: " + length + b"\nContent-Type: x\n\nbody"))
    assert frames == [] and isinstance(err, FramingError) and "Content-Length" in str(err)


@pytest.mark.parametrize("data, why", [
    (b"Content-Type: text/event-json\nContent-Le", "middle of a frame"),
    (b"Content-Length: 10\nContent-Type: text/event-json\n\n{\"a\"", "middle of a frame body"),
])
def test_eof_inside_a_frame(data, why):
    _, err = run(frames_of(data))
    assert why in str(err)


# -- events --------------------------------------------------------------------
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_json_and_plain_captures_give_the_same_events(scenario):
    json_events = [e for _, e in events_of(f"esl_json_{scenario}.bin")]
    plain_events = [e for _, e in events_of(f"esl_plain_{scenario}.bin")]
    assert json_events == plain_events


def test_register_event_fields():
    (now, ev), = [x for x in events_of("esl_json_register_tenant_b.bin")]
    r = ev.reg
    assert (r.user, r.realm, r.ip, r.port) == ("1001", "tenant-b.test", "127.0.0.5", 5065)
    assert (r.profile, r.contact, r.node) == ("internal", '"" <sip:1001@127.0.0.5:5065>', "vm")
    assert r.call_id == "90bd0b475c1ec379@127.0.0.5"
    assert r.expires == now + 300 + 60  # relative Expires plus FreeSWITCH's late margin


def test_expire_event_names_call_id_and_contact():
    evs = events_of("esl_json_expire.bin")
    assert [type(e) for _, e in evs] == [Registered, Unregistered]
    exp = evs[1][1]
    assert (exp.call_id, exp.contact, exp.why) == (
        "reg-1003-short@127.0.0.7", '"" <sip:1003@127.0.0.7:5068>', "expire")


def derived(name: str) -> Frame:
    """The event frame of a derived fixture transcript (fixtures/freeswitch)."""
    text = (FIXTURES / "freeswitch" / name).read_bytes()
    frames, _ = run(frames_of(text))
    return next(f for f in frames if f.content_type.startswith("text/event-"))


def test_ipv6_register_address_is_unbracketed():
    ev = parse_event(derived("sofia_register_ipv6.txt"), "fs1", 0.0)
    assert ev.reg.ip == "2001:db8:1::1003" and ev.reg.profile == "internal-ipv6"


def test_nat_register_keeps_the_source_address():
    ev = parse_event(derived("sofia_register_nat.txt"), "fs1", 0.0)
    assert ev.reg.ip == normalize_ip(event_headers(derived("sofia_register_nat.txt"))
                                     ["network-ip"])
    assert "fs_nat=yes" in ev.reg.contact


def test_socket_close_unregister_has_no_contact():
    ev = parse_event(derived("sofia_unregister_socket.txt"), "fs1", 0.0)
    assert ev == Unregistered("internal", "9qs2ah5l0n1s8c8rbbcv", None, "1004", "example.com",
                              "socket-disconnection", fired=ev.fired)
    assert ev.fired == 1787393940.077213  # its Event-Date-Timestamp


@pytest.mark.parametrize("name", ["sofia_pre_register.txt", "sofia_register_attempt.txt"])
def test_auth_events_never_change_bindings(name):
    assert parse_event(derived(name), "fs1", 0.0) is None


def test_register_failure_is_an_auth_failure_not_a_registry_event():
    ev = parse_event(derived("sofia_register_failure.txt"), "fs1", 0.0)
    assert ev == AuthFailure("203.0.113.99", "1001", "198.51.100.10", "internal", "REGISTER",
                             1787393820.412051)
    assert ev.cred == "1001@198.51.100.10 (REGISTER)"
    with pytest.raises(TypeError):
        Registry().apply("fs1", ev, 0.0)  # follow() must route it elsewhere


# The real captures: FreeSWITCH 1.10.12 fires sofia::register_failure for a
# wrong password, an unknown user, and a failed INVITE authentication.
@pytest.mark.parametrize("fmt", ["json", "plain"])
@pytest.mark.parametrize("scenario, want", [
    ("register_failure", AuthFailure("127.0.0.6", "1001", "127.0.0.1", "internal", "REGISTER")),
    ("register_failure_unknown_user",
     AuthFailure("127.0.0.6", "9999", "127.0.0.1", "internal", "REGISTER")),
    # an INVITE's To is the callee: 9196, not the credential
    ("invite_foreign_ip_wrong_password",
     AuthFailure("127.0.0.9", "9196", "127.0.0.1", "internal", "INVITE")),
])
def test_register_failure_of_the_real_captures(fmt, scenario, want):
    fails = [ev for _, ev in parsed_events(f"esl_{fmt}_{scenario}.bin")
             if isinstance(ev, AuthFailure)]
    assert len(fails) == 1
    got = fails[0]
    assert got.fired > 1.79e9  # its Event-Date-Timestamp, in seconds
    assert got == AuthFailure(want.ip, want.user, want.realm, want.profile, want.method,
                              got.fired)


def test_register_failure_address_forms():
    base = {"Event-Subclass": "sofia::register_failure", "to-user": "1001",
            "to-host": "pbx", "profile-name": "internal", "registration-type": "INVITE"}
    ev = parse_event(json_event(**base, **{"network-ip": "[2001:DB8::5]"}), "fs1", 0.0)
    assert ev.ip == "2001:db8::5"
    ev = parse_event(json_event(**base, **{"network-ip": "2001:db8::5"}), "fs1", 0.0)
    assert ev.ip == "2001:db8::5"
    with pytest.raises(ValueError, match="without network-ip"):
        parse_event(json_event(**base), "fs1", 0.0)
    with pytest.raises(ValueError, match="bad network-ip"):
        parse_event(json_event(**base, **{"network-ip": "pbx.example"}), "fs1", 0.0)


def json_event(**headers) -> Frame:
    import json
    body = json.dumps(headers).encode()
    return Frame({"Content-Type": "text/event-json", "Content-Length": str(len(body))}, body)


GOOD = {"Event-Subclass": "sofia::register", "username": "1001", "realm": "r",
        "network-ip": "192.0.2.1", "network-port": "5060", "expires": "300",
        "profile-name": "internal", "call-id": "c", "contact": "<sip:1001@192.0.2.1>"}


@pytest.mark.parametrize("change, why", [
    ({"username": None}, "without username"),
    ({"network-ip": "300.1.1.1"}, "bad network-ip"),
    ({"network-ip": "[::1"}, "bad network-ip"),
    ({"network-port": "0"}, "bad network-port"),
    ({"expires": "soon"}, "bad expires"),
])
def test_malformed_register_is_a_value_error(change, why):
    h = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=why):
        parse_event(json_event(**h), "fs1", 0.0)


@pytest.mark.parametrize("body, why", [(b"{not json", "not JSON"), (b"[1]", "not a JSON object")])
def test_garbage_event_body_is_a_value_error(body, why):
    with pytest.raises(ValueError, match=why):
        parse_event(Frame({"Content-Type": "text/event-json"}, body), "fs1", 0.0)


# -- the README timeline -------------------------------------------------------
TIMELINE = [
    ("register", {"1001@127.0.0.1 127.0.0.2"}),
    ("reregister", {"1001@127.0.0.1 127.0.0.2"}),
    ("register_1002", {"1001@127.0.0.1 127.0.0.2", "1002@127.0.0.1 127.0.0.4"}),
    # contact mode: the old row stays until it expires
    ("register_ip_change", {"1001@127.0.0.1 127.0.0.2", "1001@127.0.0.1 127.0.0.3",
                            "1002@127.0.0.1 127.0.0.4"}),
    ("register_tenant_b", {"1001@127.0.0.1 127.0.0.2", "1001@127.0.0.1 127.0.0.3",
                           "1002@127.0.0.1 127.0.0.4", "1001@tenant-b.test 127.0.0.5"}),
    ("register_failure", None),  # None: unchanged
    ("register_failure_unknown_user", None),
    ("invite_foreign_ip", None),  # valid credentials from 127.0.0.9: no binding
    ("invite_foreign_ip_wrong_password", None),
    ("unregister", {"1001@127.0.0.1 127.0.0.2", "1001@127.0.0.1 127.0.0.3",
                    "1001@tenant-b.test 127.0.0.5"}),
    ("expire", None),  # 1003 registers and expires within the capture
    # the stale 127.0.0.2 row, the current one and tenant-b expire; smoke1
    # (1010) was never registered in these events: its expiry changes nothing
    ("expire_stale_after_ip_change", set()),
    ("register_tcp", {"1002@127.0.0.1 127.0.0.8"}),
]


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_bindings_after_each_scenario_follow_the_readme_timeline(fmt):
    reg = Registry()
    want: set[str] = set()
    for scenario, after in TIMELINE:
        for now, ev in events_of(f"esl_{fmt}_{scenario}.bin"):
            reg.apply("vm", ev, now)
        if after is not None:
            want = after
        assert {str(b) for b in reg.bindings()} == want, scenario


def test_whole_session_capture_ends_where_the_scenarios_do():
    for fmt in ("json", "plain"):
        reg = Registry()
        for now, ev in events_of(f"esl_{fmt}_all_session.bin"):
            reg.apply("vm", ev, now)
        assert {str(b) for b in reg.bindings()} == {
            "1001@127.0.0.1 127.0.0.2", "1001@127.0.0.1 127.0.0.3",
            "1001@tenant-b.test 127.0.0.5"}


def epoch(hms: str) -> float:
    return calendar.timegm(time.strptime(f"2026-11-27 {hms}", "%Y-%m-%d %H:%M:%S"))


def test_resync_from_the_real_xmlstatus_adds_exactly_the_row_no_event_named():
    """At 13:45:07 the events have given four bindings; sofia xmlstatus
    also lists the leftover smoke-test row of 1010. The diff is that row."""
    reg = Registry()
    for scenario, _ in TIMELINE[:5]:
        for now, ev in events_of(f"esl_json_{scenario}.bin"):
            reg.apply("vm", ev, now)
    now = epoch("13:45:07")
    rows = parse_xmlstatus_reg((REAL / "sofia_xmlstatus_reg.xml").read_text(), "vm",
                               "internal", now)
    assert len(rows) == 5
    diff = reg.resync("vm", rows, now)
    assert not diff.removed
    assert set(diff.added) == {Binding("1010", "127.0.0.1", "127.0.0.20")}


def test_xmlstatus_reg_fields_and_empty_search():
    now = epoch("13:52:55")
    rows = parse_xmlstatus_reg((REAL / "sofia_xmlstatus_reg_tcp.xml").read_text(), "vm",
                               "internal", now)
    tcp = [r for r in rows if r.ip == "127.0.0.8"]
    assert len(tcp) == 1 and tcp[0].port == 54181 and tcp[0].user == "1002"
    assert tcp[0].contact.endswith(";transport=tcp>")
    assert parse_xmlstatus_reg((REAL / "sofia_xmlstatus_reg_search_nomatch.xml").read_text(),
                               "vm", "internal", now) == []


def test_xmlstatus_rows_that_cannot_be_read_are_named():
    skipped = []
    xml = reg_xml([Row("1001", "r", "192.0.2.1", 5060, "a"), Row("1002", "r", "bad", 5060, "b")])
    rows = parse_xmlstatus_reg(xml, "fs1", "internal", 0.0, skipped)
    assert [r.user for r in rows] == ["1001"]
    assert len(skipped) == 1 and "1002@r" in skipped[0] and "bad network-ip" in skipped[0]


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_xmlstatus_read_a_piece_at_a_time_is_the_same(piece):
    """The snapshot as the daemon reads it (XmlstatusRegReader, fed as the
    body arrives, a multi-byte character cut between two pieces) gives the
    rows of the whole text, and lets go of each row's element."""
    real = (REAL / "sofia_xmlstatus_reg.xml").read_bytes()
    mine = reg_xml([Row("1001", "r\u00e9alm", "192.0.2.1", 5060, "a"),
                    Row("1002", "r", "bad", 5060, "b"),
                    Row("\u00e91003", "r", "192.0.2.3", 5060, "c")]).encode()
    for body in (real, mine):
        whole_skipped, skipped = [], []
        whole = parse_xmlstatus_reg(body.decode(), "vm", "internal", 0.0, whole_skipped)
        reader = XmlstatusRegReader("vm", "internal", 0.0, skipped)
        for i in range(0, len(body), piece):
            reader.feed(body[i:i + piece])
            if reader._parent is not None:  # the row being read, no more
                assert len(reader._parent) <= 1
        assert reader.close() == whole and skipped == whole_skipped
        assert whole
    assert [r.realm for r in whole] == ["r\u00e9alm", "r"] and len(skipped) == 1
    with pytest.raises(ValueError, match=r"is not XML .*Invalid Profile"):
        reader = XmlstatusRegReader("vm", "internal", 0.0)
        reader.feed(b"Invalid Profile!\n")
        reader.close()


def test_api_into_feeds_the_body_in_pieces_and_keeps_the_stream_in_step():
    """A body longer than one piece arrives in pieces; a feed that fails
    gets its error raised, and the rest of that body is still read, so the
    next reply is the next command's."""
    from nfguard.daemon import esl as esl_mod

    big = b"x" * (3 * esl_mod.BODY_PIECE + 5)

    async def main():
        server = FakeEsl(api={"big": big, "small": b"ok"})
        port = await server.start()
        conn = await EslConnection.open("127.0.0.1", port, "ClueCon", on_event=lambda f: None)
        pieces = []
        await conn.api_into("big", pieces.append)
        assert b"".join(pieces) == big and len(pieces) >= 4
        assert max(map(len, pieces)) <= esl_mod.BODY_PIECE

        def failing(chunk):
            raise ValueError("not what I expected")
        with pytest.raises(ValueError, match="not what I expected"):
            await conn.api_into("big", failing)
        assert await conn.api("small") == "ok"
        await conn.close()
        await server.stop()
    run(main())


def test_profiles_leave_out_aliases_and_count_a_profile_once():
    xml = profiles_xml(["internal", "internal", "external"], {"127.0.0.1": "internal"})
    assert parse_profiles(xml) == ["internal", "external"]
    with pytest.raises(ValueError, match="not XML"):
        parse_profiles("-ERR sofia Command not found!\n")


def test_show_registrations_fallback():
    rows = parse_show_registrations((REAL / "show_registrations.json").read_text(), "vm", 0.0)
    assert {(r.user, r.realm, r.ip) for r in rows} == {
        ("1001", "127.0.0.1", "127.0.0.3"), ("1002", "127.0.0.1", "127.0.0.4"),
        ("1001", "tenant-b.test", "127.0.0.5")}
    assert all(r.expires > 1.7e9 for r in rows)  # absolute epoch strings
    assert parse_show_registrations((REAL / "show_registrations_empty.json").read_text(),
                                    "vm", 0.0) == []


# -- the client against the fake server ---------------------------------------
def test_fake_server_handshake_is_byte_faithful():
    """What a client receives from the fake server up to the subscription
    is byte for byte what FreeSWITCH sent in the capture."""
    async def main():
        server = FakeEsl()
        port = await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((REAL / "esl_json_register.sent.txt").read_bytes().split(b"exit")[0])
        got = await reader.readexactly(len(AUTH_REQUEST) + len(ACCEPTED) + 70)
        writer.close()
        await server.stop()
        return got
    got = run(main())
    assert (REAL / "esl_json_register.bin").read_bytes().startswith(got)


class Harness:
    """A fake server, a registry and a runner following it."""

    def __init__(self, server: FakeEsl, **runner_kw):
        self.server = server
        self.registry = Registry(grace=0)
        self.diffs = []
        self.runner_kw = runner_kw

    async def __aenter__(self):
        port = await self.server.start()
        self.endpoint = Endpoint("fs1", "127.0.0.1", port, password="ClueCon")
        self.runner = follow(self.endpoint, self.registry, on_change=self.diffs.append,
                             backoff=Backoff(0.01, 0.05), timeout=2, **self.runner_kw)
        self.task = asyncio.get_running_loop().create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        await self.server.stop()

    def bindings(self) -> set[str]:
        return {str(b) for b in self.registry.bindings()}

    async def until(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; state {self.runner.state}, "
                                     f"bindings {self.bindings()}")
            await asyncio.sleep(0.01)


def rows(*specs):
    return [Row(u, "pbx", ip, 5060, f"{u}-{ip}") for u, ip in specs]


def test_runner_resyncs_then_follows_events():
    async def main():
        server = FakeEsl(table=rows(("1001", "192.0.2.1")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            assert h.bindings() == {"1001@pbx 192.0.2.1"}
            assert server.commands[:4] == ["auth ClueCon", SUBSCRIBE, "api sofia xmlstatus",
                                           "api sofia xmlstatus profile internal reg"]
            await server.push(*event_frames("esl_json_register_1002.bin"))
            await h.until(lambda: "1002@127.0.0.1 127.0.0.4" in h.bindings())
            await server.push(*event_frames("esl_json_unregister.bin"))
            await h.until(lambda: "1002@127.0.0.1 127.0.0.4" not in h.bindings())
            # pre_register and register_attempt came too: read, not applied
            assert h.runner.events_applied == 2
    run(main())


def test_runner_hands_auth_failures_to_the_bans_never_to_the_registry():
    async def main():
        server = FakeEsl(table=rows(("1001", "192.0.2.1")))
        failures = []
        async with Harness(server, on_auth_failure=failures.append) as h:
            await h.until(lambda: h.runner.state == "up")
            before = len(h.diffs)
            await server.push(*event_frames("esl_json_register_failure.bin"),
                              *event_frames("esl_json_invite_foreign_ip_wrong_password.bin"))
            await h.until(lambda: len(failures) == 2)
            assert [(f.ip, f.method) for f in failures] == [("127.0.0.6", "REGISTER"),
                                                            ("127.0.0.9", "INVITE")]
            assert h.bindings() == {"1001@pbx 192.0.2.1"} and len(h.diffs) == before
            assert h.runner.events_skipped == 0
    run(main())


def test_reconnect_after_a_drop_resyncs_with_the_exact_diff():
    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1"), ("2", "192.0.2.2"), ("3", "192.0.2.3")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            before = len(h.diffs)
            # while disconnected the table changes: 2 goes, 4 comes, 3 moves
            server.table = rows(("1", "192.0.2.1"), ("3", "192.0.2.33"), ("4", "192.0.2.4"))
            await server.drop()
            await h.until(lambda: h.runner.connects == 2 and h.runner.state == "up")
            down, resync = h.diffs[before:]
            # down: the kernel keeps all three for the degraded grace
            assert {str(b) for b in down.added} == {"1@pbx 192.0.2.1", "2@pbx 192.0.2.2",
                                                    "3@pbx 192.0.2.3"}
            assert {str(b) for b in resync.removed} == {"2@pbx 192.0.2.2", "3@pbx 192.0.2.3"}
            # 1 gets its own expiry back; 3 moved and 4 is new
            assert {str(b) for b in resync.added} == {"1@pbx 192.0.2.1", "3@pbx 192.0.2.33",
                                                      "4@pbx 192.0.2.4"}
            assert resync.added[Binding("1", "pbx", "192.0.2.1")] < down.added[
                Binding("1", "pbx", "192.0.2.1")]
            assert h.bindings() == {"1@pbx 192.0.2.1", "3@pbx 192.0.2.33", "4@pbx 192.0.2.4"}
    run(main())


def test_freeswitch_restart_with_another_registration_set():
    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1"), ("2", "192.0.2.2")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            port = server.port
            await server.stop()
            await h.until(lambda: h.runner.state == "down")
            assert "fs1" in h.registry.down_since  # degraded: bindings kept
            assert h.bindings() == {"1@pbx 192.0.2.1", "2@pbx 192.0.2.2"}
            server.table = rows(("2", "192.0.2.2"), ("5", "192.0.2.5"))
            await server.start(port)
            await h.until(lambda: h.runner.state == "up" and h.runner.connects == 2)
            assert h.bindings() == {"2@pbx 192.0.2.2", "5@pbx 192.0.2.5"}
            assert "fs1" not in h.registry.down_since
    run(main())


def test_two_endpoints_merge_into_one_registry():
    """A cluster: both nodes feed one registry; a binding both hold stays
    while either does, and a node that goes down is degraded, not lost."""
    async def main():
        fs1 = FakeEsl(table=rows(("1", "192.0.2.1"), ("2", "192.0.2.2")))
        fs2 = FakeEsl(table=rows(("2", "192.0.2.2"), ("3", "192.0.2.3")))
        registry = Registry(grace=0, degraded_grace=300)
        runners = []
        for name, server in (("fs1", fs1), ("fs2", fs2)):
            port = await server.start()
            runners.append(follow(Endpoint(name, "127.0.0.1", port, password="ClueCon"),
                                  registry, backoff=Backoff(0.01, 0.05), timeout=2))
        tasks = [asyncio.get_running_loop().create_task(r.run()) for r in runners]

        async def until(pred):
            for _ in range(500):
                if pred():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"timed out: {sorted(map(str, registry.bindings()))}")
        try:
            await until(lambda: all(r.state == "up" for r in runners))
            assert {str(b) for b in registry.bindings()} == {
                "1@pbx 192.0.2.1", "2@pbx 192.0.2.2", "3@pbx 192.0.2.3"}
            assert {r.node for r in registry.rows()} == {"fs1", "fs2"}
            fs2.table = []
            await fs2.stop()
            await until(lambda: runners[1].state == "down")
            assert len(registry.bindings()) == 3  # degraded: fs2's rows kept
            await fs2.start(fs2.port)
            await until(lambda: runners[1].state == "up" and runners[1].connects == 2)
            # fs2 came back empty; 2 is still held by fs1
            assert {str(b) for b in registry.bindings()} == {"1@pbx 192.0.2.1",
                                                              "2@pbx 192.0.2.2"}
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await fs1.stop()
            await fs2.stop()
    run(main())


def test_event_arriving_during_a_resync_is_not_lost():
    async def main():
        server = FakeEsl(table=[], api_delay=0.3)
        async with Harness(server) as h:
            await server.wait_subscribed()
            await server.wait_commands("api sofia xmlstatus")
            # the snapshot is being read: this event arrives in the middle
            await server.push(*event_frames("esl_json_register_1002.bin"))
            await h.until(lambda: h.runner.state == "up")
            assert h.bindings() == {"1002@127.0.0.1 127.0.0.4"}
    run(main())


def test_malformed_events_are_skipped_and_the_client_goes_on(caplog):
    def frame(h):
        import json
        body = json.dumps(h).encode()
        return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body

    async def main():
        server = FakeEsl()
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            bad = [frame({k: v for k, v in GOOD.items() if k != "realm"}),
                   frame({**GOOD, "network-ip": "not-an-ip"}),
                   b"Content-Length: 9\nContent-Type: text/event-json\n\n{garbage!",
                   frame({**GOOD, "network-port": "70000"})]
            await server.push(*bad, frame(GOOD))
            await h.until(lambda: h.bindings() == {"1001@r 192.0.2.1"})
            assert h.runner.events_skipped == 4 and h.runner.connects == 1
    run(main())
    assert caplog.text.count("skipped an event") == 4


async def _bad_length(server):
    await server.push(b"Content-Length: lots\nContent-Type: text/event-json\n\n{}")


async def _cut_mid_event(server):
    half = event_frames("esl_json_register_1002.bin")[-1]
    await server.drop(partial=half[:len(half) // 2])


@pytest.mark.parametrize("fault, why", [(_bad_length, "Content-Length"),
                                        (_cut_mid_event, "middle of a frame")])
def test_broken_stream_drops_the_connection_and_resyncs(fault, why):
    """A bad Content-Length (where the next frame starts is lost) or a
    connection cut inside an event: reconnect, resync, half an event never
    applied."""
    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            await fault(server)
            await h.until(lambda: h.runner.connects == 2 and h.runner.state == "up")
            assert why in h.runner.last_error
            assert h.bindings() == {"1@pbx 192.0.2.1"}
    run(main())


def test_slow_partial_writes():
    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1")), chunk=7, pause=0.0005)
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            await server.push(*event_frames("esl_plain_register_tenant_b.bin"))
            await h.until(lambda: "1001@tenant-b.test 127.0.0.5" in h.bindings())
    run(main())


def test_refused_password_is_reported_and_retried():
    async def main():
        server = FakeEsl(password="other", table=rows(("1", "192.0.2.1")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "down" and server.connections >= 2)
            assert "refused the password" in h.runner.last_error
            assert h.bindings() == set()
            server.password = "ClueCon"
            await h.until(lambda: h.runner.state == "up")
            assert h.bindings() == {"1@pbx 192.0.2.1"}
    run(main())


def test_periodic_resync():
    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1")))
        async with Harness(server, resync_interval=0.1) as h:
            await h.until(lambda: h.runner.state == "up")
            server.table = rows(("9", "192.0.2.9"))
            await h.until(lambda: h.bindings() == {"9@pbx 192.0.2.9"})
            assert h.runner.connects == 1
    run(main())


def user_rereads(server: FakeEsl) -> list[str]:
    return [c for c in server.commands if " user " in c and c.startswith("api sofia")]


def test_a_lone_refresh_is_not_reread_but_a_replaced_row_is():
    """Vanilla FreeSWITCH (multiple-registrations off): a REGISTER from a
    new address replaces the user's row, and no event names the old one."""
    async def main():
        server = FakeEsl(table=rows(("1001", "192.0.2.1")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            await server.push(register_frame("1001", "pbx", "192.0.2.1", call_id="1001-192.0.2.1"))
            await h.until(lambda: h.runner.events_applied == 1)
            await asyncio.sleep(REREAD_DELAY + 0.2)
            assert user_rereads(server) == []  # the event said everything
            server.table = rows(("1001", "192.0.2.2"))  # what FreeSWITCH did
            t0 = time.monotonic()
            await server.push(register_frame("1001", "pbx", "192.0.2.2", call_id="1001-192.0.2.2"))
            await h.until(lambda: "1001@pbx 192.0.2.2" in h.bindings())
            assert "1001@pbx 192.0.2.1" in h.bindings()  # until FreeSWITCH says
            await h.until(lambda: h.bindings() == {"1001@pbx 192.0.2.2"})
            lag = time.monotonic() - t0
            # FreeSWITCH changed its table before the event: read soon
            assert REREAD_SOON <= lag < 0.3, lag
            assert user_rereads(server) == ["api sofia xmlstatus profile internal user 1001@pbx"]
            assert h.runner.rereads == 1
    run(main())


def test_a_shared_call_id_is_read_once_freeswitchs_deferred_delete_has_run():
    """call-id mode: a second line's REGISTER with the first line's Call-ID
    deletes the first line's row in FreeSWITCH's SQL queue, after the event."""
    async def main():
        server = FakeEsl(table=[Row("1001", "pbx", "192.0.2.1", 5060, "boot")])
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            server.table = [Row("1002", "pbx", "192.0.2.1", 5062, "boot")]
            lags = []
            for fired_ago in (0.0, 0.3):  # a fresh event, and one FreeSWITCH sent late
                t0 = time.monotonic()
                await server.push(register_frame("1002", "pbx", "192.0.2.1", 5062,
                                                 call_id="boot", fired=time.time() - fired_ago))
                await h.until(lambda: h.bindings() == {"1002@pbx 192.0.2.1"})
                lags.append(time.monotonic() - t0)
                # both lines again (their reads done) for the next round
                server.table.append(Row("1001", "pbx", "192.0.2.1", 5060, "boot"))
                await server.push(register_frame("1001", "pbx", "192.0.2.1", call_id="boot"))
                await asyncio.sleep(REREAD_DELAY + 0.2)
                assert len(h.bindings()) == 2
                server.table.pop()
            return lags
    fresh, late = run(main())
    assert REREAD_DELAY <= fresh < REREAD_DELAY + 0.3, fresh
    assert REREAD_DELAY - 0.3 <= late < REREAD_DELAY - 0.1, late


def test_a_thousand_refreshes_ask_freeswitch_nothing():
    """The ESL load of the common case: phones refreshing their one row."""
    async def main():
        table = [Row(str(1000 + i), "pbx", f"192.0.2.{i % 250}", 5060, f"c{i}")
                 for i in range(1000)]
        server = FakeEsl(table=table)
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            before = len(server.commands)
            await server.push(*[register_frame(r.user, "pbx", r.ip, call_id=r.call_id)
                                for r in table])
            await h.until(lambda: h.runner.events_applied == 1000)
            await asyncio.sleep(REREAD_DELAY + 0.1)
            assert server.commands[before:] == [] and h.runner.rereads == 0
            assert len(h.bindings()) == 1000
    run(main())


def test_a_burst_of_events_for_one_user_is_read_once():
    async def main():
        server = FakeEsl(table=rows(("1001", "192.0.2.1")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            server.table = rows(("1001", "192.0.2.99"))
            await server.push(*[register_frame("1001", "pbx", f"192.0.2.{i}",
                                               call_id=f"1001-192.0.2.{i}")
                                for i in range(2, 100)])
            await h.until(lambda: h.runner.events_applied == 98)
            await h.until(lambda: h.bindings() == {"1001@pbx 192.0.2.99"}, timeout=2)
            await asyncio.sleep(2 * REREAD_DELAY)
            assert len(user_rereads(server)) == 1
    run(main())


def test_a_user_that_cannot_be_asked_for_alone_gives_a_full_resync():
    async def main():
        server = FakeEsl(table=[Row("a b", "pbx", "192.0.2.1", 5060, "c1")])
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            server.table = [Row("a b", "pbx", "192.0.2.2", 5060, "c2")]
            await server.push(register_frame("a b", "pbx", "192.0.2.2", call_id="c2"))
            await h.until(lambda: h.bindings() == {"a b@pbx 192.0.2.2"}, timeout=3)
            assert user_rereads(server) == [] and h.runner.reread_fallbacks == 1
    run(main())


def test_drift_counts_what_a_resync_found_that_no_event_said(monkeypatch, caplog):
    monkeypatch.setattr(esl, "DRIFT_WINDOW", 0.3)
    caplog.set_level(logging.WARNING, "nfguard.esl")

    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1"), ("2", "192.0.2.2")))
        async with Harness(server, resync_interval=0.5) as h:
            await h.until(lambda: h.runner.state == "up")
            # 3 registers with its event; 2 goes and 4 comes silently
            server.table = rows(("1", "192.0.2.1"), ("3", "192.0.2.3"), ("4", "192.0.2.4"))
            await server.push(register_frame("3", "pbx", "192.0.2.3", call_id="3-192.0.2.3"))
            await h.until(lambda: h.runner.drift["resyncs"] == 1, timeout=3)
            await asyncio.sleep(1.2)  # more resyncs: nothing new missed
            return h.runner.drift
    drift = run(main())
    assert (drift["resyncs"], drift["added"], drift["removed"]) == (1, 1, 1)
    assert {(i["binding"], i["change"]) for i in drift["last"]} == {
        ("4@pbx 192.0.2.4", "added"), ("2@pbx 192.0.2.2", "removed")}
    assert "add 1 and remove 1 binding(s) that the events missed: +4@pbx 192.0.2.4, " \
        "-2@pbx 192.0.2.2" in caplog.text


def test_fallback_to_show_registrations_when_sofia_does_not_answer_xml():
    async def main():
        server = FakeEsl(api={"sofia xmlstatus": "-ERR sofia Command not found!\n",
                              "show registrations as json":
                                  (REAL / "show_registrations.json").read_bytes()})
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            assert len(h.bindings()) == 3
    run(main())


def test_unreadable_snapshot_keeps_the_bindings_and_retries():
    async def main():
        server = FakeEsl(table=rows(("1", "192.0.2.1")))
        async with Harness(server) as h:
            await h.until(lambda: h.runner.state == "up")
            server.api["sofia xmlstatus profile internal reg"] = "Invalid Profile!\n"
            await server.drop()
            await h.until(lambda: h.runner.connects >= 3)
            assert "resync failed" in h.runner.last_error and "not XML" in h.runner.last_error
            assert h.bindings() == {"1@pbx 192.0.2.1"}  # kept (degraded), not wiped
            del server.api["sofia xmlstatus profile internal reg"]
            await h.until(lambda: h.runner.state == "up")
    run(main())


def test_connection_api_and_command_errors():
    async def main():
        server = FakeEsl()
        port = await server.start()
        events = []
        conn = await EslConnection.open("127.0.0.1", port, "ClueCon", on_event=events.append)
        body = await conn.api("no-such-command")
        assert body == "-ERR no-such-command Command not found!\n"
        with pytest.raises(EslError, match="refused"):
            await conn.command("bogus")
        await conn.close()
        with pytest.raises(EslError, match="connection lost"):
            await conn.api("status")
        with pytest.raises(EslAuthError):
            await EslConnection.open("127.0.0.1", port, "wrong", on_event=events.append)
        await server.stop()
        with pytest.raises(EslError, match="cannot connect"):
            await EslConnection.open("127.0.0.1", port, "ClueCon", on_event=events.append,
                                     timeout=1)
    run(main())


def test_password_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text("ClueCon\n")
    assert Endpoint("fs1", password_file=str(f)).read_password() == "ClueCon"
    with pytest.raises(EslError, match="cannot read password file"):
        Endpoint("fs1", password_file=str(tmp_path / "missing")).read_password()
    with pytest.raises(EslError, match="no password"):
        Endpoint("fs1").read_password()


def test_backoff_grows_with_full_jitter_and_resets():
    b = Backoff(initial=1.0, cap=8.0, rng=random.Random(1))
    waits = [b.next() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert len(set(waits)) == len(waits)  # jittered, not in step
    b.reset()
    assert b.next() <= 1.0


def test_reap_never_swallows_the_callers_own_cancellation():
    """The package test's daemon did not stop on SIGTERM: its runner was
    cancelled while it awaited the re-read task it had just cancelled, the
    `except CancelledError: pass` around that await took both
    cancellations, and the runner reconnected forever. esl.reap() lets the
    caller's cancellation through, and still ends the task."""
    async def go():
        ended = asyncio.Event()

        async def slow_to_end():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.1)  # clean-up that takes a while
                ended.set()
                raise

        inner = asyncio.create_task(slow_to_end())
        await asyncio.sleep(0)
        outer = asyncio.create_task(esl.reap(inner))
        await asyncio.sleep(0.02)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await asyncio.wait_for(ended.wait(), 1)
        assert inner.cancelled()
        # a task that failed on its own: reaped without a complaint
        failed = asyncio.create_task(asyncio.sleep(0, result=None))
        await failed
        await esl.reap(failed)

    asyncio.run(go())


def test_wait_set_keeps_a_cancellation_that_comes_as_the_event_is_set():
    """The daemon's stop, as its Event Socket closed: the runner waited for
    the connection's `closed` with asyncio.wait_for, which (before Python
    3.12) returns the result and drops a cancellation that arrives in the
    same turn as the event; the runner reconnected forever after SIGTERM.
    wait_set() raises the CancelledError."""
    async def go(wait):
        event = asyncio.Event()
        task = asyncio.create_task(wait(event))
        await asyncio.sleep(0.01)
        event.set()
        task.cancel()  # in the same turn
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "swallowed"

    assert asyncio.run(go(lambda ev: esl.wait_set(ev, 10))) == "cancelled"
    assert asyncio.run(go(lambda ev: esl.wait_set(ev, None))) == "cancelled"

    async def timed_out():
        return await esl.wait_set(asyncio.Event(), 0.01)
    assert asyncio.run(timed_out()) is False
