"""The registry: rows, bindings, diffs (pure logic)."""

import dataclasses

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
    d = r.apply("fs1", Unregistered("internal", "b", "<sip:b>", "1001", "pbx.example.com",
                                    "unregister"), T0)
    assert d.added == {b(): T0 + 100} and not d.removed  # expiry falls back to row a's
    d = r.apply("fs1", Unregistered("internal", "a", "<sip:a>", "1001", "pbx.example.com",
                                    "unregister"), T0)
    assert d.removed == {b()}
    assert r.bindings() == {}


def test_socket_close_unregister_removes_the_rows_of_its_call_id_and_user():
    r = Registry()
    r.apply("fs1", Registered(reg(user="1004", ip="192.0.2.4", call_id="ws1")), T0)
    r.apply("fs1", Registered(reg(user="1004", ip="192.0.2.5", call_id="ws2")), T0)
    r.apply("fs1", Registered(reg(user="1005", ip="192.0.2.6", call_id="ws1")), T0)
    d = r.apply("fs1", Unregistered("internal", "ws1", None, "1004", "pbx.example.com",
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


def test_back_from_degraded_a_row_expires_at_its_own_expiry():
    """Its own expiry passed while the node was down (the row was kept);
    once the node is back, the row goes at its own expiry, not at the end
    of the degraded grace."""
    r = Registry(grace=0, degraded_grace=300)
    r.apply("fs1", Registered(reg(expires=T0 + 100)), T0)
    r.node_down("fs1", T0 + 50)
    assert not r.expire(T0 + 120)  # past its expiry, but kept: fs1 is down
    r.resync("fs1", [reg(expires=T0 + 100)], T0 + 130)  # the same row
    assert r.expire(T0 + 131).removed == {b()}  # not at T0 + 350


def test_expire_within_one_second_is_exact():
    """Rows due in the same second go each at its own time."""
    r = Registry(grace=0)
    r.apply("fs1", Registered(reg("1", expires=T0 + 100.2)), T0)
    r.apply("fs1", Registered(reg("2", expires=T0 + 100.7)), T0)
    assert r.next_expiry() <= T0 + 100.2
    assert r.expire(T0 + 100.5).removed == {b("1")}
    assert not r.expire(T0 + 100.6)
    assert r.expire(T0 + 100.7).removed == {b("2")}
    assert r.next_expiry() is None


def test_refreshes_do_not_grow_the_expiry_schedule():
    """A phone refreshing every minute with an hour's expiry: each refresh
    schedules its row again; the schedule stays within twice the rows (plus
    a constant) and still expires each row at its latest expiry."""
    r = Registry(grace=0)
    rows = [reg(str(i), ip=f"192.0.2.{i}") for i in range(100)]
    r.resync("fs1", [dataclasses.replace(x, expires=T0 + 3600) for x in rows], T0)
    for minute in range(1, 120):
        now = T0 + 60 * minute
        for x in rows:
            r.apply("fs1", Registered(dataclasses.replace(x, expires=now + 3600)), now)
        assert r._scheduled <= 2 * len(rows) + 1024
        assert not r.expire(now)
    last = T0 + 60 * 119 + 3600
    assert not r.expire(last - 1)
    assert r.expire(last).removed == {b(str(i), ip=f"192.0.2.{i}") for i in range(100)}


def test_a_text_in_another_role_is_not_shared():
    """The owner's user, the Call-ID and the contact are looked up in one
    index: a row whose contact is another row's Call-ID, or whose Call-ID
    is another's user, shares nothing with it (no re-read)."""
    r = Registry()
    a = reg("1001", ip="192.0.2.1", call_id="shared-text", contact="<sip:1001@192.0.2.1>")
    b_ = reg("1002", ip="192.0.2.2", call_id="1001", contact="shared-text")
    r.apply("fs1", Registered(a), T0)
    r.apply("fs1", Registered(b_), T0)
    again = r.apply("fs1", Registered(dataclasses.replace(a, expires=T0 + 400)), T0)
    assert not again.reread and not again.reread_late
    again = r.apply("fs1", Registered(dataclasses.replace(b_, expires=T0 + 400)), T0)
    assert not again.reread and not again.reread_late
    r.apply("fs1", unreg(a), T0)
    assert r.rows() == [dataclasses.replace(b_, expires=T0 + 400)]
    assert r._owner_keys("fs1", b_.owner) and not r._owner_keys("fs1", a.owner)


def test_a_schedule_compacted_during_a_bulk_insert_loses_no_row():
    """A row stored one by one inside a first resync's bulk insert (a
    non-ASCII user) may compact the schedule; the rows inserted after it
    still expire."""
    r = Registry(grace=0)
    rows = [reg(str(i), ip=f"192.0.2.{i % 250}", expires=T0 + 100) for i in range(600)]
    rows[300] = reg("\u00e9", ip="192.0.2.251", expires=T0 + 100)
    r._scheduled = 10_000  # as after many refreshes: the next schedule compacts
    r.resync("fs1", rows, T0)
    assert len(r.bindings()) == 600
    assert len(r.expire(T0 + 100).removed) == 600
    assert r.rows() == []


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


def test_a_resync_keeps_the_rows_it_rejects_in_rejected():
    """A too-long registration in a snapshot (a first resync too) is named
    in `rejected` as long as FreeSWITCH holds it, as one from an event is."""
    r = Registry()
    long = reg("u" * 65)
    d = r.resync("fs1", [long, reg("1001")], T0)
    assert len(d.rejected) == 1 and list(r.rejected.values()) == [d.rejected[0]]
    assert r.bindings().keys() == {b("1001")}
    assert not r.resync("fs1", [long, reg("1001")], T0 + 1).added
    assert len(r.rejected) == 1


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
            diffs.append(r.apply(node, Unregistered("internal", call, contact, user,
                                                    "pbx.example.com", "unregister"), now))
        elif op < 0.75:
            diffs.append(r.apply(node, Unregistered("internal", call, None, user, "pbx.example.com",
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


# -- every registration mode: what an event says, and what it asks ------------
def unreg(r: Registration, why="unregister", contact=None):
    return Unregistered(r.profile, r.call_id, r.contact if contact is None else contact,
                        r.user, r.realm, why)


def test_refresh_of_a_lone_row_is_exact_in_every_mode():
    r = Registry()
    one = reg(call_id="c1")
    assert not r.apply("fs1", Registered(one), T0).reread
    d = r.apply("fs1", Registered(reg(call_id="c1", ip="192.0.2.10", expires=T0 + 900)), T0)
    assert not d.reread and d.added
    assert not r.apply("fs1", Registered(reg("1002", call_id="c2")), T0).reread  # another user
    assert not r.apply("fs1", unreg(one), T0).reread
    assert set(r.bindings()) == {b("1002")}


def test_a_second_row_of_the_owner_asks_for_a_reread_and_replace_settles_it():
    """Vanilla (off) mode: a REGISTER from a new address replaces the
    owner's row without an event for the old one."""
    r = Registry(grace=0)
    old = reg(ip="192.0.2.10", call_id="c1")
    new = reg(ip="192.0.2.11", call_id="c2")
    r.apply("fs1", Registered(old), T0)
    d = r.apply("fs1", Registered(new), T0)
    assert d.reread == {("internal", "1001", "pbx.example.com")}
    assert set(d.added) == {b(ip="192.0.2.11")}  # the new address at once
    assert set(r.bindings()) == {b(ip="192.0.2.10"), b(ip="192.0.2.11")}
    # FreeSWITCH answers with the new row alone
    d = r.replace("fs1", new.owner, [new], T0)
    assert d.removed == {b(ip="192.0.2.10")} and not d.added
    assert set(r.bindings()) == {b(ip="192.0.2.11")}
    # contact mode would have kept both: the same answer settles that too
    r.apply("fs1", Registered(old), T0)
    assert not r.replace("fs1", old.owner, [old, new], T0)


def test_wildcard_or_foreign_contact_unregister_asks_for_a_reread():
    r = Registry()
    one = reg(call_id="c1")
    r.apply("fs1", Registered(one), T0)
    # what 1.10.12 sends for Contact: *
    d = r.apply("fs1", unreg(one, contact='"" <sip:(null)@(null)>'), T0)
    assert d.reread == {one.owner} and not d.removed
    assert not r.replace("fs1", one.owner, [one], T0)  # contact mode: nothing went
    assert r.replace("fs1", one.owner, [], T0).removed == {b()}  # off mode: all went


def test_expiry_is_exact_even_beside_other_rows():
    r = Registry()
    stale, current = reg(ip="192.0.2.10", call_id="c1"), reg(ip="192.0.2.11", call_id="c1")
    r.apply("fs1", Registered(stale), T0)
    r.apply("fs1", Registered(current), T0)
    d = r.apply("fs1", unreg(stale, why="expire"), T0)
    assert not d.reread and d.removed == {b(ip="192.0.2.10")}


def test_call_id_or_contact_shared_by_another_owner_rereads_both_owners():
    """A phone with two lines and one Call-ID (RFC 3261 recommends it):
    in call-id mode the second line's REGISTER deletes the first's row."""
    r = Registry()
    line1 = reg("1001", call_id="boot-1", contact="<sip:phone@192.0.2.10>")
    line2 = reg("1002", call_id="boot-1", contact="<sip:phone@192.0.2.10:5062>")
    r.apply("fs1", Registered(line1), T0)
    d = r.apply("fs1", Registered(line2), T0)
    # once FreeSWITCH's deferred delete (by Call-ID, or by contact) has run
    assert d.reread_late == {line1.owner, line2.owner} and not d.reread
    # one contact for two tenants' 1001: contact mode deletes the other
    t1 = reg("1001", "a.example", call_id="x1", contact="<sip:1001@192.0.2.20>")
    t2 = reg("1001", "b.example", call_id="x2", contact="<sip:1001@192.0.2.20>")
    r.apply("fs1", Registered(t1), T0)
    assert r.apply("fs1", Registered(t2), T0).reread_late == {t1.owner, t2.owner}
    # on another profile or node nothing is shared
    for other in (reg("1001", "a.example", call_id="x1", profile="ext",
                      contact="<sip:1001@192.0.2.20>"),
                  reg("1001", "a.example", call_id="x1", node="fs2",
                      contact="<sip:1001@192.0.2.20>")):
        d = r.apply(other.node, Registered(other), T0)
        assert not d.reread and not d.reread_late


def test_two_owners_with_one_call_id_and_contact_are_two_rows():
    r = Registry(grace=0)
    a = reg("1001", "a.example", call_id="c", contact="<sip:x>")
    bb = reg("1001", "b.example", call_id="c", contact="<sip:x>")
    r.apply("fs1", Registered(a), T0)
    r.apply("fs1", Registered(bb), T0)
    assert len(r.rows()) == 2
    r.replace("fs1", a.owner, [], T0)
    assert r.rows() == [bb]


def test_owner_is_freeswitchs_sip_user_and_host_not_the_credentials():
    """A REGISTER's To user (the owner) and its digest user may differ."""
    r = Registry()
    x = dataclasses.replace(reg("auth1", call_id="c1"), reg_user="1001")
    assert x.owner == ("internal", "1001", "pbx.example.com")
    r.apply("fs1", Registered(x), T0)
    assert r.owner_rows("fs1", x.owner) == [x]
    assert set(r.bindings()) == {b("auth1")}  # the kernel binds the credentials
    assert r.replace("fs1", x.owner, [], T0).removed == {b("auth1")}


def test_socket_close_with_two_rows_of_its_call_id_asks_for_a_reread():
    r = Registry()
    one, two = reg(ip="192.0.2.10", call_id="ws"), reg(ip="192.0.2.11", call_id="ws")
    r.apply("fs1", Registered(one), T0)
    r.apply("fs1", Registered(two), T0)
    d = r.apply("fs1", Unregistered("internal", "ws", None, "1001", "pbx.example.com",
                                    "socket-disconnection"), T0)
    # FreeSWITCH deletes the one at the socket's address, deferred
    assert d.reread_late == {one.owner} and not d.reread


def test_resync_names_what_appeared_from_the_second_resync_on():
    r = Registry(grace=0)
    d = r.resync("fs1", [reg("1")], T0)
    assert not d.appeared  # the first full sync is no drift
    r.apply("fs1", Registered(reg("2")), T0)
    d = r.resync("fs1", [reg("1", expires=T0 + 900), reg("2"), reg("3")], T0)
    assert d.appeared == {b("3")}  # 1 only moved; 2 came by its event
    assert r.resync("fs1", [reg("1", expires=T0 + 900)], T0).removed == {b("2"), b("3")}


# A model of FreeSWITCH 1.10.12's sip_registrations (sofia_reg.c,
# sofia_reg_handle_register_token) in each mode. Its deferred deletes (the
# SQL queue) run after the event: Diff.reread is answered before they do,
# Diff.reread_late after. An event with no re-read asked must leave the
# registry equal to it; with the re-reads answered, always.
class FreeSwitchModel:
    def __init__(self, mode):
        self.mode, self.rows, self.clock, self.deferred = mode, [], 0, []

    def register(self, user, host, call_id, contact, ip, qop=True, expires=300):
        self.clock += 1  # each REGISTER in another second: no equal expiries
        exp = self.clock + expires
        mode, rows = self.mode, self.rows
        same = [r for r in rows if r["owner"] == (user, host) and r["contact"] == contact]
        if mode is None or not qop:
            gone = (lambda r: r["owner"] == (user, host)) if mode is None else \
                (lambda r: r["owner"] == (user, host) and r["contact"] == contact) \
                if mode == "contact" else (lambda r: r["call_id"] == call_id)
            rows[:] = [r for r in rows if not gone(r)]
            same = []
        for r in same:  # the update path
            r.update(call_id=call_id, ip=ip, expires=exp)
        if not same:
            rows.append({"owner": (user, host), "call_id": call_id, "contact": contact,
                         "ip": ip, "expires": exp})
        if mode == "contact":  # deferred: this contact's other rows, any owner
            self.deferred.append(lambda r: r["contact"] == contact and r["expires"] != exp)
        elif mode == "call-id":
            self.deferred.append(lambda r: r["call_id"] == call_id and r["expires"] != exp)
        return Registered(self.reg(user, host, call_id, contact, ip, exp))

    def run_deferred(self):
        for gone in self.deferred:
            self.rows[:] = [r for r in self.rows if not gone(r)]
        self.deferred.clear()

    def unregister(self, user, host, call_id, contact, ip):
        gone = {None: lambda r: r["owner"] == (user, host),
                "contact": lambda r: r["owner"] == (user, host) and r["contact"] == contact,
                "call-id": lambda r: r["call_id"] == call_id}[self.mode]
        self.rows[:] = [r for r in self.rows if not gone(r)]
        return Unregistered("internal", call_id, contact, user, host, "unregister")

    def expire(self, row):
        # the sweep deletes every row whose time has come: the update path's
        # duplicates (one owner, contact and Call-ID) share their expiry
        self.rows[:] = [r for r in self.rows if r != row]
        u, h = row["owner"]
        return Unregistered("internal", row["call_id"], row["contact"], u, h, "expire")

    def reg(self, user, host, call_id, contact, ip, exp):
        return Registration(user, host, ip, 5060, T0 + exp, "internal", contact, call_id, "fs1")

    def owner_rows(self, owner):
        return [self.reg(*r["owner"], r["call_id"], r["contact"], r["ip"], r["expires"])
                for r in self.rows if ("internal",) + r["owner"] == owner]

    def table(self):
        return {(r["owner"], r["call_id"], r["contact"], r["ip"]) for r in self.rows}


def registry_table(r: Registry):
    return {((x.user, x.realm), x.call_id, x.contact, x.ip) for x in r.rows()}


@pytest.mark.parametrize("mode", [None, "contact", "call-id"])
def test_the_registry_follows_freeswitch_in_every_mode(mode):
    import random
    rng = random.Random(11)
    fs, r = FreeSwitchModel(mode), Registry(grace=0)
    owners = [("1001", "a.test"), ("1002", "a.test"), ("1001", "b.test")]
    exact = asked = 0
    for _ in range(3000):
        user, host = rng.choice(owners)
        ip = rng.choice(["192.0.2.1", "192.0.2.2", "192.0.2.3"])
        # a phone's contact is its address; some use one Call-ID for all lines
        contact = f"<sip:{user}@{ip}>" if rng.random() < 0.8 else f"<sip:dev@{ip}>"
        call_id = rng.choice([f"{user}-{ip}", f"boot-{ip}", f"c{rng.randrange(3)}"])
        op = rng.random()
        if op < 0.6:
            ev = fs.register(user, host, call_id, contact, ip, qop=rng.random() < 0.8)
        elif op < 0.85:
            if rng.random() < 0.2:
                contact = '"" <sip:(null)@(null)>'  # Contact: *
            ev = fs.unregister(user, host, call_id, contact, ip)
        elif fs.rows:
            ev = fs.expire(rng.choice(fs.rows))
        else:
            continue
        d = r.apply("fs1", ev, T0)
        for owner in d.reread:
            r.replace("fs1", owner, fs.owner_rows(owner), T0)
        fs.run_deferred()
        for owner in d.reread_late:
            r.replace("fs1", owner, fs.owner_rows(owner), T0)
        assert registry_table(r) == fs.table(), (mode, ev)
        exact += not (d.reread or d.reread_late)
        asked += bool(d.reread or d.reread_late)
    assert exact > 300 and asked > 300  # both paths were taken, many times


def test_rows_and_bindings_share_their_repeated_strings():
    # a large table is 100,000 rows of a few realms, profiles and one node:
    # one string each, and a binding holds its row's strings where lower-casing
    # changes nothing (bench esl's registry memory)
    made = [reg(user=f"{1000 + i}", realm="".join(["pbx.", "example.com"]),
                profile="".join(["inter", "nal"]), node="".join(["fs", "1"]),
                ip=f"192.0.2.{i}") for i in range(3)]
    for attr in ("realm", "profile", "node"):
        assert getattr(made[0], attr) is getattr(made[1], attr) is getattr(made[2], attr)
    r = Registry()
    r.resync("fs1", made, T0)
    held = {x.user: x for x in r.bindings()}
    assert held["1000"].user is made[0].user and held["1000"].realm is made[0].realm
    mixed = reg(user="Alice", realm="PBX.example.com")
    r.apply("fs1", Registered(mixed), T0)
    assert b("alice", "pbx.example.com") in r.bindings()  # lower-cased, as the kernel compares
