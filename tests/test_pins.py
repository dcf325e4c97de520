"""Pinned maps carry their layout: a build never reuses the pins of a
build with another map layout blindly (nfguard/kernel/pins.py)."""

from __future__ import annotations

import ctypes
import os

import pytest

from nfguard import consts
from nfguard import packets as P
from nfguard.kernel import pins

from conftest import need_kernel

INVITE = P.sip_request("INVITE", "1001", "pbx.example.com")
OLD_BINDING_LAYOUT = ["-DNFG_TEST_BINDING_PAD=8", "-DNFG_LAYOUT_VERSION=0"]


def _layout_of(prog, name):
    t = prog.bpf[name.encode()]
    leaf = t.sLeaf if hasattr(t, "sLeaf") else t.Leaf  # per-CPU: one CPU's value
    return pins.MapLayout(t.ttype, ctypes.sizeof(t.Key), ctypes.sizeof(leaf), t.max_entries)


@pytest.mark.parametrize("cflags", [[], OLD_BINDING_LAYOUT], ids=["this build", "padded"])
def test_expected_layout_is_what_bcc_compiles(cflags):
    """pins.expected() predicts the compiled maps; the layout version is the
    one written into fresh config maps."""
    need_kernel()
    from nfguard.kernel.program import Program

    prog = Program(cflags=cflags)
    try:
        version, maps = pins.expected(cflags)
        assert {name: _layout_of(prog, name) for name in maps} == maps
        assert prog._config[prog._config.Key(0)].layout == version
    finally:
        prog.close()


def _old_build(pin_dir, cflags=OLD_BINDING_LAYOUT):
    from nfguard.kernel.program import Program

    old = Program(pin_dir=pin_dir, cflags=cflags)
    old.configure(mode="enforce")
    old.add_binding("1001", "pbx.example.com", "192.0.2.10")
    return old


def test_pins_of_the_same_build_are_reused(pin_dir):
    from nfguard.kernel.program import Program

    first = Program(pin_dir=pin_dir)
    assert first.fresh and not first.migrating
    first.add_binding("1001", "pbx.example.com", "192.0.2.10")
    first.close()
    assert pins.differences(pin_dir) == []
    second = Program(pin_dir=pin_dir)
    try:
        assert not second.fresh and not second.migrating
        assert [b.ip for b in second.bindings()] == ["192.0.2.10"]
    finally:
        second.close()


def test_a_load_rebuilds_the_ban_filter_from_the_pinned_bans(pin_dir):
    """A writer that died between a ban and its filter bit: the next load
    sets the bit again, so the ban is not hidden."""
    from nfguard.kernel.program import NO_EXPIRY, Program

    first = Program(pin_dir=pin_dir)
    first.set_ban("203.0.113.9", NO_EXPIRY)
    first._ban_filter.clear()  # the bit lost, the entry kept
    assert first.test_run(P.udp_frame(INVITE, src="203.0.113.9")).reason != "banned"
    first.close()
    second = Program(pin_dir=pin_dir, count_all=True)
    try:
        assert second.test_run(P.udp_frame(INVITE, src="203.0.113.9")).reason == "banned"
    finally:
        second.close()


@pytest.mark.parametrize("cflags,differs", [
    (OLD_BINDING_LAYOUT, "bindings: hash, key 24 B, value 216 B, 131072 entries, "
                         "this build has hash, key 24 B, value 208 B"),
    (["-DNFG_LAYOUT_VERSION=0"],
     f"config: layout version 0, this build has {consts.LAYOUT_VERSION}"),
], ids=["binding value", "layout version"])
def test_other_layout_is_refused_with_the_fix(pin_dir, cflags, differs):
    from nfguard.kernel.program import Program

    old = _old_build(pin_dir, cflags)
    before = sorted(os.listdir(pin_dir))
    with pytest.raises(pins.PinLayoutError) as e:
        Program(pin_dir=pin_dir)
    msg = str(e.value)
    assert differs in msg
    assert "'nfguard run' moves them aside" in msg and "'nfguard uninstall'" in msg
    assert sorted(os.listdir(pin_dir)) == before  # nothing touched
    assert old.test_run(P.udp_frame(INVITE)).reason == "bound"  # the old one still works
    old.close()


def test_retire_keeps_the_old_maps_alive_until_removed(pin_dir):
    """The daemon's path: old pins move to retired/, the old program keeps
    its bindings (it is what stays attached), the new load starts fresh."""
    from nfguard.kernel.program import Program

    old = _old_build(pin_dir)
    new = Program(pin_dir=pin_dir, other_layout="retire")
    try:
        assert new.fresh and new.migrating
        assert new.bindings() == [] and new.config()["mode"] == "monitor"
        assert pins.differences(pin_dir) == []
        (stamp,) = os.listdir(os.path.join(pin_dir, pins.RETIRED))
        kept = os.path.join(pin_dir, pins.RETIRED, stamp)
        assert {"bindings", "config", "trusted", "ports", "counters"} <= set(os.listdir(kept))
        assert old.test_run(P.udp_frame(INVITE)).reason == "bound"
        pins.remove_retired(pin_dir)
        assert not pins.retired(pin_dir)
    finally:
        new.close()
        old.close()
    again = Program(pin_dir=pin_dir)
    try:
        assert not again.fresh and not again.migrating
    finally:
        again.close()
