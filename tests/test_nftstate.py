"""nfguard/nftstate.py against the real nft, each test in a network namespace
of its own (created and deleted here), never the host's ruleset.

The test body runs on a thread that has entered the namespace, and the
NftState's libnftables context is created there (its netlink socket stays
bound to the namespace it was created in). Hand edits and assertions use
`ip netns exec NS nft ...`.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from nfguard.daemon import nftstate
from nfguard.daemon.nftstate import (
    COMMENT_MAX,
    TABLE,
    Element,
    NftError,
    NftState,
    element_comment,
)

from conftest import cannot_run

pytestmark = pytest.mark.netns

PREFIX = f"nfgt{os.getpid()}-"
_seq = itertools.count()
MARK = 0x4E46BEEF
REALM = "pbx.example.com"


def nft_unavailable() -> str | None:
    """Why these tests cannot run here, or None. Like conftest.need_kernel()
    but without its bcc and kernel-header requirements, which nft does not have."""
    if os.geteuid() != 0:
        return "nftables tests need root"
    try:
        import nftables  # noqa: F401
    except ImportError:
        return "python3-nftables is not importable (run with /usr/bin/python3)"
    for tool in ("nft", "ip"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


def need_nft() -> None:
    cannot_run(nft_unavailable())


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def nft_json(ns: str, *args: str) -> list[dict]:
    """`nft -j ARGS` in ns, without the metainfo object."""
    out = json.loads(sh("nft", "-j", *args, ns=ns))["nftables"]
    return [o for o in out if "metainfo" not in o]


def set_elems(ns: str, name: str) -> list:
    (s,) = [o["set"] for o in nft_json(ns, "list", "set", "inet", TABLE, name)]
    return s.get("elem", [])


def bindings(ns: str, name: str = "bindings_v4") -> dict[str, dict]:
    """{addr: {"comment", "expires"}} of a bindings set, read by the nft binary."""
    out = {}
    for e in set_elems(ns, name):
        e = e["elem"] if isinstance(e, dict) else {"val": e}
        out[e["val"]] = {"comment": e.get("comment"), "expires": e.get("expires")}
    return out


def our_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/var/run/netns") if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    """After the module: none of our namespaces, the host's ruleset unchanged."""
    if nft_unavailable():
        yield
        return
    before = sh("nft", "list", "ruleset")
    yield
    assert our_namespaces() == []
    assert sh("nft", "list", "ruleset") == before


@pytest.fixture
def ns():
    """A fresh network namespace, entered by this thread for the test's
    duration, and deleted afterwards whatever happens."""
    need_nft()
    from nfguard.kernel.attach import in_netns

    name = f"{PREFIX}{next(_seq)}"
    host = os.stat("/proc/thread-self/ns/net").st_ino
    sh("ip", "netns", "add", name)
    try:
        with in_netns(name):
            # never run an NftState in the host's namespace
            assert os.stat("/proc/thread-self/ns/net").st_ino != host
            yield name
    finally:
        sh("ip", "netns", "del", name)


@pytest.fixture
def st(ns):
    """An installed NftState in ns, no trusted networks."""
    s = NftState(MARK)
    s.install([])
    return s


def creds(*users: str) -> str:
    return element_comment(f"{u}@{REALM}" for u in users)


# -- install ---------------------------------------------------------------
def test_install_creates_exactly_the_table(ns):
    s = NftState(MARK)
    assert not s.exists()
    s.install(["10.0.0.0/8", "192.168.1.1/32", "2001:db8::/32"])
    assert s.exists()

    ruleset = nft_json(ns, "list", "ruleset")
    assert [o["table"]["name"] for o in ruleset if "table" in o] == [TABLE]
    objs = nft_json(ns, "list", "table", "inet", TABLE)
    for o in objs:
        next(iter(o.values())).pop("handle", None)
    kinds = sorted(next(iter(o)) for o in objs)
    assert kinds == ["chain", "counter", "rule"] + ["set"] * 6 + ["table"]

    sets = {o["set"]["name"]: o["set"] for o in objs if "set" in o}
    assert {n: (s["type"], s["flags"]) for n, s in sets.items()} == {
        "bindings_v4": ("ipv4_addr", ["timeout"]),
        "bindings_v6": ("ipv6_addr", ["timeout"]),
        "trusted_v4": ("ipv4_addr", ["interval"]),
        "trusted_v6": ("ipv6_addr", ["interval"]),
        "banned4": ("ipv4_addr", ["timeout"]),
        "banned6": ("ipv6_addr", ["interval", "timeout"]),
    }
    assert "elem" not in sets["bindings_v4"] and "elem" not in sets["bindings_v6"]
    assert sets["trusted_v4"]["elem"] == [{"prefix": {"addr": "10.0.0.0", "len": 8}},
                                          "192.168.1.1"]
    assert sets["trusted_v6"]["elem"] == [{"prefix": {"addr": "2001:db8::", "len": 32}}]

    (counter,) = [o["counter"] for o in objs if "counter" in o]
    assert (counter["name"], counter["packets"], counter["bytes"]) == ("rejected", 0, 0)
    (chain,) = [o["chain"] for o in objs if "chain" in o]
    assert {k: chain[k] for k in ("name", "type", "hook", "prio", "policy")} == {
        "name": "input", "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}
    (rule,) = [o["rule"] for o in objs if "rule" in o]
    assert rule["chain"] == "input"
    assert rule["expr"] == [
        {"match": {"op": "==", "left": {"meta": {"key": "mark"}}, "right": MARK}},
        {"counter": "rejected"},
        {"reject": {"type": "icmpx", "expr": "admin-prohibited"}},
    ]
    text = sh("nft", "list", "chain", "inet", TABLE, "input", ns=ns)
    assert "type filter hook input priority filter - 10; policy accept;" in text
    assert (f'meta mark 0x{MARK:08x} counter name "rejected" '
            "reject with icmpx admin-prohibited") in text

    r = s.read()
    assert r == {"bindings": {}, "trusted": ["10.0.0.0/8", "192.168.1.1/32", "2001:db8::/32"],
                 "rejected": {"packets": 0, "bytes": 0}, "mark": MARK}
    # status's view: the same without the bindings, object by object
    now = time.time()
    s.apply({"192.0.2.1": Element(now + 600, creds("1001"))}, [], now)
    assert s.summary() == {k: v for k, v in r.items() if k != "bindings"}
    assert s.drift({"192.0.2.1": Element(now + 600, creds("1001"))}, now) == {
        "missing": [], "extra": [], "comment": []}
    assert s.held_count() == 1
    s.uninstall()
    assert s.summary() == {"trusted": [], "rejected": {}, "mark": None}


def test_install_twice_keeps_elements_and_replaces_mark(ns):
    now = time.time()
    s = NftState(MARK)
    s.install(["10.0.0.0/8"])
    s.apply({"192.0.2.1": Element(now + 600, creds("1001")),
             "2001:db8::7": Element(now + 600, creds("1002"))}, [], now)
    before = s.read()["bindings"]

    # a daemon restart with another mark and other trusted networks
    s2 = NftState(MARK + 1)
    s2.install(["172.16.0.0/12", "fd00::/8"])
    r = s2.read()
    assert r["mark"] == MARK + 1
    assert r["trusted"] == ["172.16.0.0/12", "fd00::/8"]
    assert {a: b["comment"] for a, b in r["bindings"].items()} == {
        a: b["comment"] for a, b in before.items()}
    assert all(590 <= b["expires_in"] <= 600 for b in r["bindings"].values())
    rules = [o["rule"] for o in nft_json(ns, "list", "chain", "inet", TABLE, "input")
             if "rule" in o]
    assert len(rules) == 1
    assert rules[0]["expr"][0]["match"]["right"] == MARK + 1

    # and the new instance's belief in the kept elements works: an update of one
    s2.apply({"192.0.2.1": Element(now + 300, creds("1001", "1003"))}, [], now)
    assert bindings(ns)["192.0.2.1"]["comment"] == creds("1001", "1003")


def test_install_repairs_a_hand_deleted_set_and_extra_rules(ns):
    s = NftState(MARK)
    s.install([])
    sh("nft", "delete", "set", "inet", TABLE, "bindings_v6", ns=ns)
    sh("nft", "add", "rule", "inet", TABLE, "input", "accept", ns=ns)
    s.install([])
    assert set_elems(ns, "bindings_v6") == []
    rules = [o for o in nft_json(ns, "list", "chain", "inet", TABLE, "input") if "rule" in o]
    assert len(rules) == 1


def test_install_over_a_foreign_definition_says_what_to_do(ns):
    sh("nft", "add table inet nfguard; add set inet nfguard bindings_v4 { type ipv4_addr; }",
       ns=ns)
    with pytest.raises(NftError, match=r"File exists.*defined otherwise"):
        NftState(MARK).install([])


def test_bad_mark_is_refused():
    for mark in (0, -1, 2**32, "1"):
        with pytest.raises(NftError):
            NftState(mark, nft=_NoNft())


class _NoNft:
    """Stands in for nftables.Nftables where no nft command may run."""

    def set_json_output(self, on):
        pass

    def json_cmd(self, cmds):  # pragma: no cover - reached only on a bug
        raise AssertionError(f"nft called: {cmds}")


# -- apply -----------------------------------------------------------------
def test_apply_add_update_remove(ns, st):
    now = time.time()
    st.apply({
        "192.0.2.1": Element(now + 300, creds("1001")),
        "192.0.2.2": Element(now + 3600, creds("1002", "1001")),
        "2001:DB8:0::1": Element(now + 120, creds("1003")),  # canonicalized
    }, [], now)
    v4 = bindings(ns)
    assert v4["192.0.2.1"]["comment"] == "1001@pbx.example.com"
    assert v4["192.0.2.2"]["comment"] == "1001@pbx.example.com, 1002@pbx.example.com"
    assert 298 <= v4["192.0.2.1"]["expires"] <= 300
    assert 3598 <= v4["192.0.2.2"]["expires"] <= 3600
    v6 = bindings(ns, "bindings_v6")
    assert list(v6) == ["2001:db8::1"] and 118 <= v6["2001:db8::1"]["expires"] <= 120

    # update: a shorter timeout and a new comment on an element that exists
    now = time.time()
    st.apply({"192.0.2.2": Element(now + 60, creds("1002"))}, [], now)
    v4 = bindings(ns)
    assert v4["192.0.2.2"]["comment"] == "1002@pbx.example.com"
    assert 58 <= v4["192.0.2.2"]["expires"] <= 60
    assert v4["192.0.2.1"]["comment"] == "1001@pbx.example.com"  # untouched

    # remove, including an address that was never there
    st.apply({}, ["192.0.2.1", "2001:db8::1", "198.51.100.1"], time.time())
    assert list(bindings(ns)) == ["192.0.2.2"]
    assert bindings(ns, "bindings_v6") == {}


def test_apply_expired_binding_is_removed(ns, st):
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 300, creds("1001"))}, [], now)
    # the binding expired meanwhile: the element goes, whatever is left of its timeout
    st.apply({"192.0.2.1": Element(now - 1, creds("1001")),
              "192.0.2.9": Element(now - 1, creds("1009"))}, [], now)  # never existed
    assert bindings(ns) == {}


def test_apply_timeout_is_whole_seconds_and_at_least_one(ns, st):
    # nft silently drops a float or zero timeout: the element would never expire
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 0.2, creds("1001")),
              "192.0.2.2": Element(now + 10.5, creds("1002"))}, [], now)
    elems = {e["elem"]["val"]: e["elem"] for e in set_elems(ns, "bindings_v4")}
    assert elems["192.0.2.1"]["timeout"] == 1
    assert elems["192.0.2.2"]["timeout"] == 11


def test_apply_after_hand_delete_still_succeeds(ns, st, monkeypatch):
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 300, creds("1001")),
              "192.0.2.2": Element(now + 300, creds("1002"))}, [], now)
    sh("nft", "delete", "element", "inet", TABLE, "bindings_v4", "{ 192.0.2.1, 192.0.2.2 }",
       ns=ns)
    # st still believes both exist: its delete fails, it reads the set and retries
    reads = []
    real = st._read_bindings
    monkeypatch.setattr(st, "_read_bindings", lambda: reads.append(1) or real())
    st.apply({"192.0.2.1": Element(now + 200, creds("1001", "1004"))}, ["192.0.2.2"], now)
    assert reads == [1]
    v4 = bindings(ns)
    assert list(v4) == ["192.0.2.1"]
    assert v4["192.0.2.1"]["comment"] == creds("1001", "1004")
    assert 198 <= v4["192.0.2.1"]["expires"] <= 200


def test_apply_around_expiry_needs_no_retry(ns, st, monkeypatch):
    """Elements whose timeout runs out about now get add+delete(+add): right
    whether or not the kernel still has them, without a failed batch."""
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 1, creds("1001")),
              "192.0.2.2": Element(now + 1, creds("1002")),
              "192.0.2.3": Element(now + 1, creds("1003"))}, [], now)
    time.sleep(1.2)  # expired in the kernel, but within GRACE of what st believes
    assert bindings(ns) == {}
    reads = []
    monkeypatch.setattr(st, "_read_bindings", lambda: reads.append(1) or {})
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 100, creds("1001"))}, ["192.0.2.2"], now)
    assert reads == []
    assert list(bindings(ns)) == ["192.0.2.1"]

    now = time.time()
    st.apply({"192.0.2.4": Element(now + 1, creds("1004"))}, [], now)
    # still there: the same idioms remove and replace it
    st.apply({"192.0.2.4": Element(now + 50, creds("1005"))}, [], now)
    assert reads == []
    assert bindings(ns)["192.0.2.4"]["comment"] == creds("1005")


def test_apply_refuses_a_bad_address_before_touching_nft(ns, st):
    with pytest.raises(NftError, match="not an IP address"):
        st.apply({"192.0.2.300": Element(time.time() + 60, "x")}, [], time.time())
    assert bindings(ns) == {}


def test_apply_without_table_says_so(ns):
    s = NftState(MARK)
    with pytest.raises(NftError, match="missing"):
        s.apply({"192.0.2.1": Element(time.time() + 60, "x")}, [], time.time())


def test_overlong_comment_is_cut_not_fatal(ns, st):
    # libnftables abort()s the process on a comment of ~250 bytes: never pass one
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 60, "é" * 300)}, [], now)
    c = bindings(ns)["192.0.2.1"]["comment"]
    assert len(c.encode()) <= COMMENT_MAX and c.endswith("…")


# -- sync and drift ----------------------------------------------------------
def _hand_edit(ns: str) -> None:
    """Delete .1, add .9, change .2's comment and .3's timeout, by hand."""
    sh("nft", "delete", "element", "inet", TABLE, "bindings_v4", "{ 192.0.2.1 }", ns=ns)
    sh("nft", "add", "element", "inet", TABLE, "bindings_v4",
       '{ 192.0.2.9 timeout 1h comment "intruder" }', ns=ns)
    sh("nft", "delete", "element", "inet", TABLE, "bindings_v4", "{ 192.0.2.2 }", ns=ns)
    sh("nft", "add", "element", "inet", TABLE, "bindings_v4",
       '{ 192.0.2.2 timeout 5m comment "edited" }', ns=ns)
    sh("nft", "delete", "element", "inet", TABLE, "bindings_v4", "{ 192.0.2.3 }", ns=ns)
    sh("nft", "add", "element", "inet", TABLE, "bindings_v4",
       f'{{ 192.0.2.3 timeout 2h comment "{creds("1003")}" }}', ns=ns)


def _three(now: float) -> dict[str, Element]:
    return {f"192.0.2.{i}": Element(now + 300, creds(f"100{i}")) for i in (1, 2, 3)}


def test_sync_fixes_hand_edits_and_counts(ns, st):
    now = time.time()
    want = _three(now)
    want["2001:db8::5"] = Element(now + 300, creds("1005"))
    st.apply(want, [], now)
    _hand_edit(ns)
    # and a v6 element nobody asked for, without timeout or comment
    sh("nft", "add", "element", "inet", TABLE, "bindings_v6", "{ 2001:db8::66 }", ns=ns)

    assert st.sync(want, time.time()) == {"added": 1, "removed": 2, "updated": 2}
    v4 = bindings(ns)
    assert {a: b["comment"] for a, b in v4.items()} == {
        a: e.comment for a, e in want.items() if "." in a}
    assert all(295 <= b["expires"] <= 300 for b in v4.values())
    assert list(bindings(ns, "bindings_v6")) == ["2001:db8::5"]
    assert st.sync(want, time.time()) == {"added": 0, "removed": 0, "updated": 0}

    # a binding that expired in the daemon's view goes too
    want["192.0.2.1"] = Element(now - 1, creds("1001"))
    assert st.sync(want, time.time()) == {"added": 0, "removed": 1, "updated": 0}
    assert "192.0.2.1" not in bindings(ns)


def test_drift_detects_hand_edits(ns, st):
    now = time.time()
    want = _three(now)
    st.apply(want, [], now)
    assert st.drift(want, now) == {"missing": [], "extra": [], "comment": []}
    _hand_edit(ns)
    # .3's timeout changed too, but timeouts are not drift
    assert st.drift(want, now) == {
        "missing": ["192.0.2.1"], "extra": ["192.0.2.9"], "comment": ["192.0.2.2"]}
    # drift does not change anything
    assert "192.0.2.9" in bindings(ns)


def test_drift_without_table_is_all_missing(ns):
    want = _three(time.time())
    assert NftState(MARK).drift(want, time.time()) == {
        "missing": sorted(want), "extra": [], "comment": []}


# -- trusted networks ----------------------------------------------------------
def test_set_trusted_replaces_both_sets(ns):
    s = NftState(MARK)
    s.install(["10.0.0.0/8", "fd00::/8"])
    s.set_trusted(["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/48", "::1/128"])
    assert s.read()["trusted"] == ["192.0.2.0/24", "198.51.100.7/32", "::1/128",
                                   "2001:db8::/48"]
    assert set_elems(ns, "trusted_v4") == [{"prefix": {"addr": "192.0.2.0", "len": 24}},
                                           "198.51.100.7"]

    # overlapping and adjacent networks are collapsed (nft refuses overlaps)
    s.set_trusted(["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "2001:db8::/32",
                   "2001:db8:1::/48"])
    assert s.read()["trusted"] == ["10.0.0.0/7", "2001:db8::/32"]

    # v6 only: the v4 set is emptied
    s.set_trusted(["::/0"])
    assert s.read()["trusted"] == ["::/0"]
    assert set_elems(ns, "trusted_v4") == []

    # a bad network changes nothing
    for bad in ("10.0.0.1/8", "example.com", "10.0.0.0/33"):
        with pytest.raises(NftError, match="bad trusted network"):
            s.set_trusted(["192.0.2.0/24", bad])
    assert s.read()["trusted"] == ["::/0"]
    s.set_trusted([])
    assert s.read()["trusted"] == []


# -- uninstall -------------------------------------------------------------------
def test_uninstall_removes_only_our_table(ns):
    sh("nft", "add table inet other; add set inet other s { type ipv4_addr; }; "
       "add element inet other s { 192.0.2.1 }; "
       "add chain inet other c { type filter hook input priority 0; policy accept; }; "
       "add rule inet other c counter", ns=ns)
    other = sh("nft", "-j", "list", "table", "inet", "other", ns=ns)
    s = NftState(MARK)
    s.install(["10.0.0.0/8"])
    now = time.time()
    s.apply({"192.0.2.1": Element(now + 60, "x")}, [], now)
    assert s.uninstall() is True
    assert not s.exists()
    assert sh("nft", "list", "tables", ns=ns) == "table inet other\n"
    assert sh("nft", "-j", "list", "table", "inet", "other", ns=ns) == other
    assert s.uninstall() is False
    assert s.read() == {"bindings": {}, "trusted": [], "rejected": {}, "mark": None}


# -- the reject path ------------------------------------------------------------
def test_rejected_counter_and_the_rule_rejects(ns, st):
    """A marked packet is rejected with an ICMP error and counted; an unmarked
    one passes. Over loopback in the one namespace: another table marks
    UDP to port 9999 at input priority -20, before our chain at -10. (Across
    a veth pair with the XDP/TC programs setting the mark: the daemon tests.)"""
    sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("nft", "add table inet marker; "
       "add chain inet marker c { type filter hook input priority -20; }; "
       f"add rule inet marker c udp dport 9999 meta mark set {MARK}", ns=ns)
    assert st.read()["rejected"] == {"packets": 0, "bytes": 0}
    refused = {socket.AF_INET: errno.EHOSTUNREACH, socket.AF_INET6: errno.EACCES}
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(fam, socket.SOCK_DGRAM) as rx_marked, \
             socket.socket(fam, socket.SOCK_DGRAM) as rx_plain, \
             socket.socket(fam, socket.SOCK_DGRAM) as tx:
            rx_marked.bind((host, 9999))
            rx_plain.bind((host, 9998))
            rx_marked.settimeout(0.3)
            rx_plain.settimeout(2)
            tx.settimeout(2)
            tx.connect((host, 9999))
            tx.send(b"marked")
            with pytest.raises(OSError) as e:  # the ICMP admin-prohibited error
                tx.recv(100)
            assert e.value.errno == refused[fam]
            with pytest.raises(TimeoutError):
                rx_marked.recv(100)
            tx.sendto(b"plain", (host, 9998))
            assert rx_plain.recv(100) == b"plain"
    rejected = st.read()["rejected"]
    assert rejected["packets"] == 2 and rejected["bytes"] > 0
    # a restart keeps the count
    NftState(MARK).install([])
    assert st.read()["rejected"] == rejected


# -- element_comment (no root) ---------------------------------------------------
def test_element_comment_sorted_and_joined():
    assert element_comment(["1002@b", "1001@b", "1001@a"]) == "1001@a, 1001@b, 1002@b"
    assert element_comment([]) == ""


def test_element_comment_truncates_on_a_multibyte_boundary():
    # "ü" is 2 bytes and "€" 3: the cut at 125 bytes falls inside a character
    for ch in ("ü", "€"):
        full = ", ".join(sorted(f"{ch * 10}{i}@{REALM}" for i in range(10)))
        c = element_comment(f"{ch * 10}{i}@{REALM}" for i in range(10))
        raw = c.encode("utf-8")
        assert len(full.encode()) > COMMENT_MAX
        assert len(raw) <= COMMENT_MAX and len(raw) >= COMMENT_MAX - 5
        assert c.endswith("…") and full.startswith(c[:-1])
    exact = "a" * (COMMENT_MAX - 2) + "ü"  # exactly COMMENT_MAX bytes: kept whole
    assert element_comment([exact]) == exact


def test_a_listing_with_an_element_twice_is_inconsistent():
    from nfguard.daemon.nftstate import _consistent

    def listing(*elems):
        return [{"table": {"name": TABLE}}, {"set": {"name": "bindings_v4", "elem": list(elems)}}]

    one = {"elem": {"val": "192.0.2.1", "timeout": 60, "expires": 59, "comment": "a"}}
    two = {"elem": {"val": "192.0.2.2", "timeout": 60, "expires": 59, "comment": "b"}}
    assert _consistent(listing(one, two, "192.0.2.3"))
    assert not _consistent(listing(one, two, one))
    prefix = {"prefix": {"addr": "10.0.0.0", "len": 8}}
    assert not _consistent(listing(prefix, dict(prefix)))
    assert _consistent(listing())


# -- chunks ----------------------------------------------------------------------
class _Writes:
    """Wraps st.nft.json_cmd: records every write batch (an add or delete of
    elements) and fails those whose numbers (from 1) are in `fail`."""

    def __init__(self, st, fail=()):
        self.batches: list[list[dict]] = []
        self.fail = set(fail)
        self._real = st.nft.json_cmd
        st.nft.json_cmd = self

    def __call__(self, cmds):
        if any("add" in c or "delete" in c for c in cmds["nftables"]):
            self.batches.append(cmds["nftables"])
            if len(self.batches) in self.fail:
                return 1, "", "Error: failed on purpose (test)"
        return self._real(cmds)

    def addresses(self, batch: list[dict], verb: str) -> list[str]:
        return [e if isinstance(e, str) else e["elem"]["val"]
                for c in batch if verb in c and "element" in c[verb]
                for e in c[verb]["element"]["elem"]]


def _many(now: float, n: int, ttl: float = 300) -> dict[str, Element]:
    return {f"192.0.2.{i}": Element(now + ttl, creds(str(1000 + i))) for i in range(1, n + 1)}


def test_a_change_larger_than_a_chunk_is_several_batches_and_ends_exact(ns, st, monkeypatch):
    monkeypatch.setattr(nftstate, "CHUNK", 3)
    writes = _Writes(st)
    now = time.time()
    want = _many(now, 10)
    want["2001:db8::1"] = Element(now + 300, creds("2001"))
    st.apply(want, [], now)
    assert [len(writes.addresses(b, "add")) for b in writes.batches] == [3, 3, 3, 2]
    assert {a: b["comment"] for a, b in bindings(ns).items()} == {
        a: e.comment for a, e in want.items() if "." in a}
    assert list(bindings(ns, "bindings_v6")) == ["2001:db8::1"]

    # a sync that replaces some, removes some and adds some, over 4 batches
    writes.batches.clear()
    now = time.time()
    want = _many(now, 12, ttl=200)
    for i in (1, 2, 3):
        del want[f"192.0.2.{i}"]
    assert st.sync(want, now) == {"added": 2, "removed": 4, "updated": 7}
    assert len(writes.batches) == 5  # 13 addresses: 3 + 3 + 3 + 3 + 1
    for batch in writes.batches:
        # a replaced element's delete and add are in the same batch: it is never missing
        assert set(writes.addresses(batch, "delete")) - set(writes.addresses(batch, "add")) <= {
            "192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1"}
    held = bindings(ns)
    assert {a: b["comment"] for a, b in held.items()} == {a: e.comment for a, e in want.items()}
    assert all(195 <= b["expires"] <= 200 for b in held.values())
    assert bindings(ns, "bindings_v6") == {}
    # the removals come last, after every add and replace
    removals = [i for i, b in enumerate(writes.batches)
                if set(writes.addresses(b, "delete")) - set(writes.addresses(b, "add"))]
    assert removals == [3, 4]


def test_a_failing_later_chunk_is_reported_and_the_next_sync_repairs_it(ns, st, monkeypatch):
    monkeypatch.setattr(nftstate, "CHUNK", 3)
    now = time.time()
    before = _many(now, 6)
    st.apply(before, [], now)
    writes = _Writes(st, fail={3, 4})  # the third batch, and its one retry
    now = time.time()
    want = {a: Element(now + 100, creds("9" + e.comment)) for a, e in _many(now, 9).items()}
    with pytest.raises(NftError, match=r"failed on purpose.*the 6 addresses before it are "
                                       r"applied"):
        st.apply(want, [], now)
    held = bindings(ns)
    # the first two batches are applied, the third changed nothing, and none of
    # the elements that were there went missing
    assert sorted(held) == sorted(want)[:6]
    assert all(held[a]["comment"] == want[a].comment for a in sorted(want)[:6])
    assert writes.batches[2] == writes.batches[3]  # the retry, after reading the sets

    assert st.sync(want, time.time()) == {"added": 3, "removed": 0, "updated": 0}
    assert {a: b["comment"] for a, b in bindings(ns).items()} == {
        a: e.comment for a, e in want.items()}


def test_the_kernel_dump_reads_what_nft_lists(ns, st):
    """The sets as _held() reads them (a netlink dump), against the
    nft binary's own listing: addresses, comments, time left, and elements
    added by hand with neither timeout nor comment."""
    now = time.time()
    st.apply({"192.0.2.1": Element(now + 300, creds("1001")),
              "192.0.2.2": Element(now + 30, "é" * 300),
              "2001:db8::1": Element(now + 3600, creds("1003", "1004"))}, [], now)
    sh("nft", "add", "element", "inet", TABLE, "bindings_v4", "{ 192.0.2.9 }", ns=ns)
    sh("nft", "add", "element", "inet", TABLE, "bindings_v6",
       '{ 2001:db8::9 comment "by hand" }', ns=ns)
    held = st._held()
    listed = {**bindings(ns), **bindings(ns, "bindings_v6")}
    assert sorted(held) == sorted(listed)
    for a, (comment, left) in held.items():
        assert comment == (listed[a]["comment"] or ""), a
        if listed[a]["expires"] is None:
            assert left is None, a
        else:  # nft rounds down to whole seconds
            assert listed[a]["expires"] <= left < listed[a]["expires"] + 2, a
    assert held["192.0.2.9"] == ("", None)
    assert held["2001:db8::9"] == ("by hand", None)


def test_reading_without_table_says_so(ns):
    s = NftState(MARK)
    assert s._held() is None
    with pytest.raises(NftError, match="missing"):
        s._read_bindings()


# -- size ------------------------------------------------------------------------
def test_100000_elements_in_chunks(ns, st, capsys):
    writes = _Writes(st)
    now = time.time()
    elems = {f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}":
             Element(now + 3600, creds(str(100000 + i))) for i in range(100_000)}
    t0 = time.perf_counter()
    st.apply(elems, [], now)
    took = time.perf_counter() - t0
    assert [len(writes.addresses(b, "add")) for b in writes.batches] == [nftstate.CHUNK] * (
        100_000 // nftstate.CHUNK)

    t0 = time.perf_counter()
    got = st.read()["bindings"]
    read_took = time.perf_counter() - t0
    assert len(got) == 100_000
    assert got["10.1.134.159"]["comment"] == creds("199999")
    assert 3590 <= got["10.1.134.159"]["expires_in"] <= 3600
    t0 = time.perf_counter()
    held = st._held()
    dump_took = time.perf_counter() - t0
    assert held.keys() == got.keys()
    assert held["10.1.134.159"][0] == creds("199999")

    # update every element (delete + add of 100,000)
    now = time.time()
    t0 = time.perf_counter()
    st.apply({a: Element(now + 60, e.comment) for a, e in elems.items()}, [], now)
    update_took = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n100,000 elements: add {took:.2f} s, read (nft's listing) {read_took:.2f} s, "
              f"read (netlink dump) {dump_took:.2f} s, update {update_took:.2f} s")
    assert st.sync({}, time.time()) == {"added": 0, "removed": 100_000, "updated": 0}
    assert set_elems(ns, "bindings_v4") == []


# -- the daemon's nft sink ------------------------------------------------------------
class _RecordingNft:
    """Stands in for NftState under NftSink: what apply and sync were given."""

    def __init__(self):
        self.calls = []

    def apply(self, changed, removed, now):
        self.calls.append(("apply", dict(changed.items()), sorted(removed)))

    def sync(self, elements, now):
        self.calls.append(("sync", dict(elements.items())))
        return {}


def test_nft_sink_one_element_per_address():
    from nfguard.daemon.backend import NftSink
    from nfguard.daemon.registry import Binding, Diff

    nft = _RecordingNft()
    sink = NftSink(nft)
    a1, a2 = Binding("1001", REALM, "192.0.2.1"), Binding("1002", REALM, "192.0.2.1")
    b = Binding("1003", REALM, "192.0.2.2")
    sink.apply(Diff(added={a1: 100.0, b: 50.0}), 0)
    sink.apply(Diff(added={a2: 200.0}), 0)
    assert nft.calls[-1] == ("apply", {"192.0.2.1": Element(200.0, creds("1001", "1002"))}, [])
    sink.apply(Diff(added={a2: 150.0}), 0)  # the expiry moved: the latest one counts
    assert nft.calls[-1][1]["192.0.2.1"].expires == 150.0
    sink.apply(Diff(removed={a2, Binding("1009", REALM, "192.0.2.9")}), 0)
    assert nft.calls[-1] == ("apply", {"192.0.2.1": Element(100.0, creds("1001"))},
                             ["192.0.2.9"])
    sink.apply(Diff(removed={a1}), 0)
    assert nft.calls[-1] == ("apply", {}, ["192.0.2.1"])
    assert dict(sink.elements().items()) == {"192.0.2.2": Element(50.0, creds("1003"))}
    assert "192.0.2.1" not in sink.elements() and len(sink.elements()) == 1

    sink.sync({a1: 10.0, a2: 20.0}, 0)
    assert nft.calls[-1] == ("sync", {"192.0.2.1": Element(20.0, creds("1001", "1002"))})
    with pytest.raises(KeyError):
        sink.elements()["192.0.2.2"]


# -- bans ----------------------------------------------------------------------
def bans_of(ns: str) -> dict[str, dict]:
    """{key: {"comment", "timeout"}} of both ban sets, read by the nft binary."""
    out = {}
    for name in ("banned4", "banned6"):
        for e in set_elems(ns, name):
            e = e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e}
            val = e["val"]
            if isinstance(val, dict):
                val = f"{val['prefix']['addr']}/{val['prefix']['len']}"
            out[val] = {"comment": e.get("comment"), "timeout": e.get("timeout")}
    return out


def test_bans_are_elements_with_a_timeout_and_their_reason(ns, st):
    st.set_ban("203.0.113.9", 600, "5 failures in 10m, last 1001@pbx (REGISTER)")
    st.set_ban("2001:db8:1:2::/64", 1200, "manual")
    st.set_ban("2001:db8::5", 30, "a /128")
    assert bans_of(ns) == {
        "203.0.113.9": {"comment": "5 failures in 10m, last 1001@pbx (REGISTER)",
                        "timeout": 600},
        "2001:db8:1:2::/64": {"comment": "manual", "timeout": 1200},
        "2001:db8::5": {"comment": "a /128", "timeout": 30},
    }
    got = st.bans()
    assert set(got) == {"203.0.113.9", "2001:db8:1:2::/64", "2001:db8::5"}
    assert got["2001:db8:1:2::/64"]["comment"] == "manual"
    assert 1190 <= got["2001:db8:1:2::/64"]["expires_in"] <= 1200
    # a ban again replaces the element: its new timeout and reason
    st.set_ban("2001:db8:1:2::/64", 60, "manual, again")
    assert bans_of(ns)["2001:db8:1:2::/64"] == {"comment": "manual, again", "timeout": 60}
    # removal works whether or not the element is there
    st.remove_ban("203.0.113.9")
    st.remove_ban("203.0.113.9")
    st.remove_ban("2001:db8:7::/64")
    assert set(bans_of(ns)) == {"2001:db8:1:2::/64", "2001:db8::5"}
    # the bindings sets are untouched by all of it
    assert bindings(ns) == {} and bindings(ns, "bindings_v6") == {}


def test_sync_bans_makes_the_sets_exactly_the_wanted_in_one_batch(ns, st):
    st.set_ban("192.0.2.1", 600, "stale")
    st.set_ban("2001:db8:9::/64", 600, "stale")
    st.set_ban("192.0.2.2", 600, "kept")
    assert st.sync_bans({"192.0.2.2": (300, "kept, shorter"),
                         "2001:db8:1::/64": (None, "manual")}) == {"set": 2, "removed": 2}
    got = bans_of(ns)
    assert got == {"192.0.2.2": {"comment": "kept, shorter", "timeout": 300},
                   "2001:db8:1::/64": {"comment": "manual", "timeout": None}}
    assert st.bans()["2001:db8:1::/64"]["expires_in"] is None  # until lifted
    assert st.sync_bans({}) == {"set": 0, "removed": 2} and bans_of(ns) == {}


def test_ban_sets_expire_their_elements(ns, st):
    st.set_ban("198.51.100.1", 1, "short")
    st.set_ban("2001:db8:2::/64", 1, "short")
    deadline = time.monotonic() + 10
    while bans_of(ns) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert bans_of(ns) == {} and st.bans() == {}


def test_a_table_of_an_older_build_gains_the_ban_sets_and_keeps_its_elements(ns):
    old = NftState(MARK)
    old.install([])
    old.apply({"192.0.2.7": Element(time.time() + 300, creds("1001"))}, (), time.time())
    sh("nft", "delete", "set", "inet", TABLE, "banned4", ns=ns)
    sh("nft", "delete", "set", "inet", TABLE, "banned6", ns=ns)
    new = NftState(MARK)
    assert new.bans() == {}  # no sets yet: nothing banned, no error
    new.install([])
    new.set_ban("192.0.2.66", 60, "manual")
    assert set(bans_of(ns)) == {"192.0.2.66"} and set(bindings(ns)) == {"192.0.2.7"}
