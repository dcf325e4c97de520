"""The registry: rows, bindings, diffs (pure logic)."""

import pytest

from nfguard.daemon.fsevents import Registered, Registration, Snapshot, Unregistered
from nfguard.daemon.registry import Binding, Diff, Registry, kernel_case

T0 = 1_800_000_000.0


def reg(user="1001", realm="pbx.example.com", ip="192.0.2.10", *, port=5060, expires=T0 + 360,
        profile="internal", contact=None, call_id=None, node="fs1"):
    return Registration(user, realm, ip, port, expires, profile,
                        contact if contact is not None else f'"" <sip:{user}@{ip}:{port}>',
                        call_id or f"{user}-{ip}", node)


def b(user="1001", realm="pbx.example.com", ip="192.0.2.10"):
    return Binding(user, realm, ip)


def replay(diffs, start=None):
    """Apply diffs in order to a set of bindings."""
    state = dict(start or {})
    for d in diffs:
        for k in d.removed:
            state.pop(k, None)
        state.update(d.added)
    return state


def test_register_adds_a_binding_with_expiry_plus_grace():
    r = Registry(grace=30)
    d = r.apply("fs1", Registered(reg()), T0)
    assert d.added == {b(): T0 + 360 + 30} and not d.removed
    assert r.bindings() == {b(): T0 + 390}


def test_refresh_moves_the_expiry_and_same_expiry_is_no_diff():
    r = Registry(grace=0)
    r.apply("fs1", Registered(reg()), T0)
    assert not r.apply("fs1", Registered(reg()), T0)
    d = r.apply("fs1", Registered(reg(expires=T0 + 700)), T0 + 300)
    assert d.added == {b(): T0 + 700} and not d.removed


def test_user_and_realm_are_lower_cased_in_ascii_only():
    assert kernel_case("Alice@PBX") == "alice@pbx"
    assert kernel_case("ÄLICE") == "Älice"  # the kernel lower-cases ASCII only
    r = Registry()
    r.apply("fs1", Registered(reg(user="Alice", realm="PBX.Example.COM")), T0)
    assert list(r.bindings()) == [b("alice", "pbx.example.com")]


def test_two_contacts_of_one_call_id_are_two_rows():
    """Contact mode: a phone that moved keeps its old row until it expires."""
    r = Registry()
    r.apply("fs1", Registered(reg(ip="192.0.2.10", call_id="c1")), T0)
    r.apply("fs1", Registered(reg(ip="192.0.2.11", call_id="c1")), T0)
    assert set(r.bindings()) == {b(ip="192.0.2.10"), b(ip="192.0.2.11")}
    d = r.apply("fs1", Unregistered("internal", "c1", '"" <sip:1001@192.0.2.10:5060>', "1001",
                                    "pbx.example.com", "expire"), T0)
    assert d.removed == {b(ip="192.0.2.10")} and not d.added
    assert set(r.bindings()) == {b(ip="192.0.2.11")}


def test_unregister_of_a_contact_not_held_changes_nothing():
    """FreeSWITCH deletes by contact: an Expires: 0 from another port left
    the row in place (the fixture's smoke1 row), and so does the registry."""
    r = Registry()
    r.apply("fs1", Registered(reg(call_id="smoke1")), T0)
    d = r.apply("fs1", Unregistered("internal", "smoke1", '"" <sip:1001@192.0.2.10:9999>',
                                    "1001", "pbx.example.com", "unregister"), T0)
    assert not d and set(r.bindings()) == {b()}


def test_one_binding_held_by_two_rows_stays_until_the_last_goes():
    r = Registry(grace=0)
    r.apply("fs1", Registered(reg(call_id="a", contact="<sip:a>", expires=T0 + 100)), T0)
    d = r.apply("fs1", Registered(reg(call_id="b", contact="<sip:b>", expires=T0 + 200)), T0)
    assert d.added == {b(): T0 + 200}
    d = r.apply("fs1", Unregistered("internal", "b", "<sip:b>", "1001", "x", "unregister"), T0)
    assert d.added == {b(): T0 + 100} and not d.removed  # expiry falls back to row a's
    d = r.apply("fs1", Unregistered("internal", "a", "<sip:a>", "1001", "x", "unregister"), T0)
    assert d.removed == {b()}
    assert r.bindings() == {}


def test_socket_close_unregister_removes_the_rows_of_its_call_id_and_user():
    r = Registry()
    r.apply("fs1", Registered(reg(user="1004", ip="192.0.2.4", call_id="ws1")), T0)
    r.apply("fs1", Registered(reg(user="1004", ip="192.0.2.5", call_id="ws2")), T0)
    r.apply("fs1", Registered(reg(user="1005", ip="192.0.2.6", call_id="ws1")), T0)
    d = r.apply("fs1", Unregistered("internal", "ws1", None, "1004", "example.com",
                                    "socket-disconnection"), T0)
    assert d.removed == {b("1004", ip="192.0.2.4")}
    assert set(r.bindings()) == {b("1004", ip="192.0.2.5"), b("1005", ip="192.0.2.6")}


def test_nodes_are_merged_and_kept_apart():
    r = Registry(grace=0)
    r.apply("fs1", Registered(reg(node="fs1", expires=T0 + 100)), T0)
    d = r.apply("fs2", Registered(reg(node="fs2", expires=T0 + 200)), T0)
    assert d.added == {b(): T0 + 200}
    d = r.resync("fs2", [], T0)
    assert d.added == {b(): T0 + 100} and not d.removed  # fs1 still holds it
    assert r.rows("fs1") and not r.rows("fs2")


def test_resync_gives_the_minimal_diff():
    r = Registry(grace=0, resync_tolerance=5)
    keep, move, gone = reg("1"), reg("2"), reg("3")
    for x in (keep, move, gone):
        r.apply("fs1", Registered(x), T0)
    moved = reg("2", ip="192.0.2.99", call_id=move.call_id, contact=move.contact)
    new = reg("4")
    d = r.resync("fs1", Snapshot([reg("1", expires=keep.expires + 3), moved, new],
                                 "sofia xmlstatus", []), T0)
    assert d.removed == {b("2"), b("3")}
    assert d.added == {b("2", ip="192.0.2.99"): moved.expires, b("4"): new.expires}
    assert r.bindings()[b("1")] == keep.expires  # moved by 3 s: within tolerance


def test_resync_beyond_tolerance_moves_the_expiry():
    r = Registry(grace=0, resync_tolerance=5)
    r.apply("fs1", Registered(reg()), T0)
    d = r.resync("fs1", [reg(expires=T0 + 360 + 6)], T0)
    assert d.added == {b(): T0 + 366}


def test_resync_of_an_unchanged_table_is_empty():
    r = Registry()
    rows = [reg(str(i), ip=f"192.0.2.{i}") for i in range(50)]
    r.resync("fs1", rows, T0)
    assert not r.resync("fs1", list(reversed(rows)), T0 + 1)


def test_expire_drops_rows_after_expiry_plus_grace():
    r = Registry(grace=30)
    r.apply("fs1", Registered(reg(expires=T0 + 100)), T0)
    assert r.next_expiry() == T0 + 130
    assert not r.expire(T0 + 129)
    d = r.expire(T0 + 130)
    assert d.removed == {b()} and r.bindings() == {} and r.rows() == []


def test_expire_skips_rows_refreshed_since():
    r = Registry(grace=0)
    r.apply("fs1", Registered(reg(expires=T0 + 100)), T0)
    r.apply("fs1", Registered(reg(expires=T0 + 400)), T0 + 90)
    assert not r.expire(T0 + 200)
    assert r.expire(T0 + 400).removed == {b()}


def test_degraded_node_keeps_its_bindings_for_the_grace_then_drops_them():
    r = Registry(grace=0, degraded_grace=300)
    r.apply("fs1", Registered(reg(expires=T0 + 100)), T0)
    r.apply("fs2", Registered(reg("2002", node="fs2", expires=T0 + 100)), T0)
    d = r.node_down("fs1", T0 + 50)
    assert d.added == {b(): T0 + 350}  # the kernel keeps it as long
    assert not r.node_down("fs1", T0 + 60)  # already down: the first time counts
    d = r.expire(T0 + 120)
    assert d.removed == {b("2002")}  # fs2 is up: its row expires on time
    assert not r.expire(T0 + 349)
    assert r.expire(T0 + 350).removed == {b()}


def test_reconnect_resync_ends_the_degraded_state():
    r = Registry(grace=0, degraded_grace=300)
    r.apply("fs1", Registered(reg(expires=T0 + 100)), T0)
    r.node_down("fs1", T0 + 50)
    d = r.resync("fs1", [reg(expires=T0 + 100)], T0 + 60)
    assert d.added == {b(): T0 + 100}  # its own expiry again
    assert "fs1" not in r.down_since


def test_too_long_credentials_are_reported_not_stored():
    r = Registry()
    long_user = "u" * 65
    d = r.apply("fs1", Registered(reg(long_user)), T0)
    assert not d.added and len(d.rejected) == 1
    assert "user is 65 bytes, the limit is 64" in d.rejected[0][1]
    assert r.bindings() == {} and len(r.rejected) == 1
    d = r.apply("fs1", Registered(reg(realm="r" * 129)), T0)
    assert "realm is 129 bytes, the limit is 128" in d.rejected[0][1]
    # 64 and 128 bytes fit, multi-byte characters counted in bytes
    d = r.apply("fs1", Registered(reg("u" * 64, "r" * 128)), T0)
    assert d.added and not d.rejected
    d = r.apply("fs1", Registered(reg("é" * 33)), T0)
    assert d.rejected and "66 bytes" in d.rejected[0][1]


def test_rejected_row_is_forgotten_when_unregistered_or_resynced_away():
    r = Registry()
    long = reg("u" * 65)
    r.apply("fs1", Registered(long), T0)
    r.resync("fs1", [], T0)
    assert r.rejected == {}
    r.apply("fs1", Registered(long), T0)
    r.apply("fs1", Unregistered(long.profile, long.call_id, long.contact, long.user,
                                long.realm, "unregister"), T0)
    assert r.rejected == {}


def test_diffs_replayed_in_order_give_the_bindings():
    import random
    rng = random.Random(7)
    r = Registry(grace=5, degraded_grace=50)
    diffs, now = [], T0
    for _ in range(3000):
        now += rng.random() * 3
        node = rng.choice(["fs1", "fs2"])
        user, ip = str(rng.randrange(8)), f"192.0.2.{rng.randrange(4)}"
        call, contact = f"c{rng.randrange(6)}", f"<sip:{rng.randrange(3)}>"
        op = rng.random()
        if op < 0.5:
            diffs.append(r.apply(node, Registered(reg(user, ip=ip, call_id=call, contact=contact,
                                                      node=node, expires=now + rng.randrange(60))),
                                 now))
        elif op < 0.7:
            diffs.append(r.apply(node, Unregistered("internal", call, contact, user, "x",
                                                    "unregister"), now))
        elif op < 0.75:
            diffs.append(r.apply(node, Unregistered("internal", call, None, user, "x",
                                                    "socket-disconnection"), now))
        elif op < 0.9:
            diffs.append(r.expire(now))
        elif op < 0.95:
            diffs.append(r.node_down(node, now))
        else:
            rows = [reg(str(rng.randrange(8)), ip=f"192.0.2.{rng.randrange(4)}",
                        call_id=f"c{rng.randrange(6)}", node=node, expires=now + 30)
                    for _ in range(rng.randrange(5))]
            diffs.append(r.resync(node, rows, now))
        assert replay(diffs) == r.bindings()
        # every binding is held by a row, and every row's binding is there
        held = {Binding(kernel_case(x.user), kernel_case(x.realm), x.ip) for x in r.rows()}
        assert held == set(r.bindings())


def test_diff_then_combines_in_order():
    d = Diff(added={b("1"): 1.0}, removed={b("2")})
    d.then(Diff(added={b("2"): 2.0}, removed={b("1")}))
    assert d.added == {b("2"): 2.0} and d.removed == {b("1")}


def test_apply_refuses_what_is_not_an_event():
    with pytest.raises(TypeError):
        Registry().apply("fs1", object(), T0)
