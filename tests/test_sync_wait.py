"""How long the lab waits for a starting daemon (nfguard.lab.world):
NFGUARD_SYNC_WAIT or a bound scaled by this host's compile time, and a
give-up that says what it waited for. No kernel needed."""

from __future__ import annotations

import subprocess

import pytest

from nfguard.errors import NfguardError
from nfguard.lab import world


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(world.SYNC_WAIT_ENV, raising=False)


def test_the_bound_scales_with_the_measured_compile(monkeypatch, no_env):
    monkeypatch.setattr(world, "_compile_s", 2.0)
    wait, why = world.sync_wait()
    assert wait == 36.0
    assert "2.0 s compile" in why and world.SYNC_WAIT_ENV in why
    monkeypatch.setattr(world, "_compile_s", 25.0)  # qemu's emulation
    assert world.sync_wait()[0] == 105.0
    assert world.sync_wait(60)[0] == 135.0


def test_the_longest_compile_counts(monkeypatch, no_env):
    monkeypatch.setattr(world, "_compile_s", None)
    world.note_compile(3.0)
    world.note_compile(1.0)
    assert world.compile_seconds() == 3.0


def test_the_environment_sets_it(monkeypatch):
    monkeypatch.setattr(world, "_compile_s", 2.0)
    monkeypatch.setenv(world.SYNC_WAIT_ENV, "240")
    assert world.sync_wait() == (240.0, "NFGUARD_SYNC_WAIT=240")


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "nan"])
def test_a_bad_environment_value_is_named(monkeypatch, raw):
    monkeypatch.setenv(world.SYNC_WAIT_ENV, raw)
    with pytest.raises(NfguardError, match=f"NFGUARD_SYNC_WAIT='{raw}'"):
        world.sync_wait()


def test_giving_up_says_what_it_waited_for_how_long_and_why(tmp_path):
    log = tmp_path / "daemon.log"
    log.write_text("compiling the classifier\n")
    with pytest.raises(NfguardError) as err:
        world.wait_status(str(tmp_path / "nfguard.sock"), lambda st: True, 0.2,
                          "the daemon's first sync", None, str(log), "30 s + 3 x 2.0 s")
    msg = str(err.value)
    assert msg.startswith("timed out after 0.2 s waiting for the daemon's first sync "
                          "(bound: 30 s + 3 x 2.0 s)")
    assert "never answered on " + str(tmp_path / "nfguard.sock") in msg
    assert msg.endswith("compiling the classifier\n")


def test_a_daemon_that_exits_is_reported_at_once(tmp_path):
    log = tmp_path / "daemon.log"
    log.write_text("error: interfaces: no such interface\n")
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    proc.wait()
    with pytest.raises(NfguardError) as err:
        world.wait_status(str(tmp_path / "s"), lambda st: True, 60, "the first sync",
                          proc, str(log))
    assert str(err.value).startswith("the daemon exited (3) while waiting for the first sync")
    assert "no such interface" in str(err.value)
