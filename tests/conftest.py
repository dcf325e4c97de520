"""Shared fixtures. Kernel tests need root, BPF and kernel headers; where
they are missing they skip, except when NFGUARD_REQUIRE_KERNEL=1 (as in CI),
which turns every such skip into a failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REQUIRE_KERNEL = os.environ.get("NFGUARD_REQUIRE_KERNEL") == "1"
TOPO_PREFIX = "nfgt"  # namespaces of the topo fixture: nfgt<pid>-<n>-<role>


# Fixtures that need the kernel (their tests are marked `kernel` below).
KERNEL_FIXTURES = frozenset({"program", "prog", "map_program", "sock_program", "pin_dir",
                             "topo", "fs_topo", "freeswitch", "nfguard_fs"})


def pytest_collection_modifyitems(items):
    """Every test that needs the kernel carries the `kernel` mark, also
    where its module does not say so: it uses a kernel fixture (directly or
    through another fixture), or calls need_kernel() or need_freeswitch()
    itself. `pytest -m "kernel or netns"` then selects all of them: what
    .ci/run runs again under Debian 12's kernel (scripts/kernel-vm)."""
    for item in items:
        code = getattr(getattr(item, "function", None), "__code__", None)
        calls = set(code.co_names) if code else set()
        if (KERNEL_FIXTURES & set(getattr(item, "fixturenames", ()))
                or calls & {"need_kernel", "need_freeswitch"}):
            item.add_marker(pytest.mark.kernel)


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


def cannot_run(why: str | None) -> None:
    """Skip for why, or fail under NFGUARD_REQUIRE_KERNEL=1 (CI), where
    nothing that needs the kernel or FreeSWITCH may skip."""
    if why:
        if REQUIRE_KERNEL:
            pytest.fail(f"NFGUARD_REQUIRE_KERNEL=1 but {why}")
        pytest.skip(why)


def need_kernel() -> None:
    cannot_run(kernel_unavailable())


@pytest.fixture(scope="session")
def program():
    """One load of the classifier for the whole session; each test resets
    its state with the `prog` fixture."""
    need_kernel()
    import time

    from nfguard.kernel.program import Program
    from nfguard.lab.world import note_compile

    t0 = time.monotonic()
    p = Program()
    note_compile(time.monotonic() - t0)  # the lab's waits for a daemon scale with it
    yield p
    p.close()


@pytest.fixture(scope="session")
def map_program():
    """A load that hands reject verdicts to TC through the handoff map
    whatever the kernel allows: where it also allows XDP metadata (Debian
    12's 6.1), the session's `program` covers that way and this one the
    other."""
    need_kernel()
    from nfguard.kernel.program import Program

    p = Program(reject_handoff="map")
    yield p
    p.close()


@pytest.fixture(scope="session")
def sock_program():
    """A load with the socket stage (Program(socket_stage=True))."""
    need_kernel()
    from nfguard.kernel.program import Program

    p = Program(socket_stage=True)
    yield p
    p.close()


def default_state(program):
    """program with default state: enforce/drop, INVITE on 5060, no
    bindings, no trusted networks, no bans, empty rate buckets (no rate
    limits), counters zero."""
    program.configure(mode="enforce", action="drop")
    program.set_ports([5060])
    program.clear_bindings()
    program.clear_floods()
    for cidr in program.trusted():
        program.remove_trusted(cidr)
    program.reset_counters()
    return program


@pytest.fixture
def prog(program):
    """The session's program with default state (default_state())."""
    return default_state(program)


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


# -- the real FreeSWITCH (nfguard.lab.freeswitch) --------------------------------
def need_freeswitch() -> None:
    """Skip (fail under NFGUARD_REQUIRE_KERNEL=1) where the kernel tests
    cannot run, or the FreeSWITCH bundle or its runtime libraries are missing."""
    need_kernel()
    from nfguard.lab.freeswitch import unavailable

    cannot_run(unavailable())


@pytest.fixture(scope="module")
def fs_topo(request):
    """The lab's namespaces for one test module's FreeSWITCH (IPv4 only:
    FreeSWITCH binds 10.200.1.1)."""
    need_freeswitch()
    from nfguard.lab.topology import Topology

    t = Topology("nfgfs", ipv6=False)
    request.addfinalizer(t.close)
    t.up()
    return t


@pytest.fixture(scope="module")
def freeswitch(request, fs_topo):
    """One real FreeSWITCH per test module, in fs_topo's PBX namespace,
    started. Its SIP profiles are the module's FREESWITCH_PROFILES if it
    has one (see nfguard.lab.freeswitch.FreeSwitch), else vanilla's one
    registration per user on 5060."""
    from nfguard.lab.freeswitch import FreeSwitch

    fs = FreeSwitch(fs_topo, profiles=getattr(request.module, "FREESWITCH_PROFILES", None))
    request.addfinalizer(fs.close)  # before the topology's close: FreeSWITCH goes first
    fs.start()
    return fs


@pytest.fixture
def nfguard_fs(request, freeswitch):
    """An `nfguard run` following the module's FreeSWITCH, not yet started
    (call .start(**config)); stopped and uninstalled after the test."""
    from nfguard.lab.freeswitch import Nfguard

    d = Nfguard(freeswitch)
    request.addfinalizer(d.close)
    return d


def wait_for(pred, timeout: float, what: str):
    """pred()'s first true value within timeout seconds (polled every 50 ms),
    else an AssertionError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def until(pred, what: str, timeout: float = 5.0):
    """In a coroutine: wait (polling every 10 ms) until pred() is true, else
    an AssertionError naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
