"""Shared fixtures. Kernel tests need root, BPF and kernel headers; where
they are missing they skip, except when NFGUARD_REQUIRE_KERNEL=1 (as in CI),
which turns every such skip into a failure."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REQUIRE_KERNEL = os.environ.get("NFGUARD_REQUIRE_KERNEL") == "1"
TOPO_PREFIX = "nfgt"  # namespaces of the topo fixture: nfgt<pid>-<n>-<role>


def kernel_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "kernel tests need root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc (python3-bpfcc) is not importable"
    from nfguard.kernel.host import headers_dir

    if not headers_dir():
        return "kernel headers are missing"
    return None


def need_kernel() -> None:
    why = kernel_unavailable()
    if why:
        if REQUIRE_KERNEL:
            pytest.fail(f"NFGUARD_REQUIRE_KERNEL=1 but {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def program():
    """One load of the classifier for the whole session; each test resets
    its state with the `prog` fixture."""
    need_kernel()
    from nfguard.kernel.program import Program

    p = Program()
    yield p
    p.close()


@pytest.fixture
def prog(program):
    """The session's program with default state: enforce/drop, INVITE on
    5060, no bindings, no trusted networks, counters zero."""
    program.configure(mode="enforce", action="drop")
    program.set_ports([5060])
    program.clear_bindings()
    for cidr in program.trusted():
        program.remove_trusted(cidr)
    program.reset_counters()
    return program


@pytest.fixture
def pin_dir():
    """A pin directory of this test's own on the host's bpffs, removed after."""
    need_kernel()
    path = f"/sys/fs/bpf/nfguard-test-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def topo(request):
    """The lab's namespaces and veth pairs (nfguard.lab.topology), removed
    after the test whatever happens."""
    need_kernel()
    from nfguard.lab.topology import Topology

    t = Topology(TOPO_PREFIX)
    request.addfinalizer(t.close)  # before up(): a half-built topology goes too
    t.up()
    return t
