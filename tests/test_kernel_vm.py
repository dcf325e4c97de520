"""scripts/kernel-vm without booting anything: its arguments and which
kernel it picks, with apt-cache and apt-get replaced by fakes on PATH.
(.ci/run boots it: a status through the guest, then the kernel tests.)"""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "kernel-vm")

# What `apt-cache search --names-only '^linux-image-...'` could print: other
# flavours, debug and unsigned packages, and 6.10 beside 6.1.
ARCHIVE = """\
linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-10-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-11-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-11-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.1.0-11-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-11-amd64-dbg - Debug symbols for linux-image-6.1.0-11-amd64
linux-image-6.10.0-1-amd64 - Linux 6.10 for 64-bit PCs (signed)
"""


@pytest.fixture
def fake_apt(tmp_path):
    """A PATH whose apt-cache prints ARCHIVE (or whatever is in the file
    `archive`) and whose apt-get only records how it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "archive").write_text(ARCHIVE)
    (bin_dir / "apt-cache").write_text(
        f'#!/bin/sh\necho "$@" >> {tmp_path}/apt-cache.calls\ncat {tmp_path}/archive\n')
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt-get.calls\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env,
                              timeout=30)
    run.tmp = tmp_path
    return run


def test_default_is_the_newest_6_1_amd64_image(fake_apt):
    r = fake_apt("--print-kernel")
    assert (r.returncode, r.stdout, r.stderr) == (0, "6.1.0-10-amd64\n", "")
    assert "--names-only" in (fake_apt.tmp / "apt-cache.calls").read_text()


def test_a_series_picks_its_newest(fake_apt):
    assert fake_apt("--kernel", "6.10", "--print-kernel").stdout == "6.10.0-1-amd64\n"
    assert fake_apt("--kernel=6.1", "--print-kernel").stdout == "6.1.0-10-amd64\n"


@pytest.mark.parametrize("given", ["6.1.0-57-amd64", "6.1.0-57", "linux-image-6.1.0-57-amd64"])
def test_one_version_is_taken_as_given(fake_apt, given):
    r = fake_apt("--kernel", given, "--print-kernel")
    assert (r.returncode, r.stdout) == (0, "6.1.0-57-amd64\n")
    assert not (fake_apt.tmp / "apt-cache.calls").exists()


def test_a_series_not_in_the_archive_is_an_error(fake_apt):
    r = fake_apt("--kernel", "5.10", "--print-kernel")
    assert r.returncode == 2 and r.stdout == ""
    assert "no linux-image-5.10.*-amd64 in the archive" in r.stderr
    if os.geteuid() == 0:  # as root it refreshes the package lists once first
        assert (fake_apt.tmp / "apt-get.calls").read_text().split() == ["update", "-q"]


@pytest.mark.parametrize("args, says", [
    (["--kernel", "6", "--print-kernel"], "give a series (6.1) or a version"),
    (["--kernel", "6.1.0-57-cloud-amd64", "--print-kernel"], "give a series (6.1) or a version"),
    (["--timeout", "0", "--", "true"], "'0' is not a positive whole number"),
    (["--mem", "4G", "--", "true"], "'4G' is not a positive whole number"),
    (["--bogus", "--", "true"], "unknown argument '--bogus'"),
    (["uname", "-r"], "unknown argument 'uname'"),
    ([], "no command"),
    (["--"], "no command"),
])
def test_bad_arguments_exit_2_saying_why(fake_apt, args, says):
    r = fake_apt(*args)
    assert r.returncode == 2, r
    assert says in r.stderr
    assert not (fake_apt.tmp / "apt-get.calls").exists()  # nothing installed
