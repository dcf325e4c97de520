"""`nfguard bench sync`: the controller's targets (docs/design.md section 7).

- snapshot: the 100,000 read as the daemon reads them at a first sync,
  `sofia xmlstatus profile internal reg` over the Event Socket from a
  stand-in FreeSWITCH in a process of its own (its memory is not ours),
  parsed as the body arrives: `snapshot_s`.
- sync: 100,000 registrations resynced into the registry and applied to
  the bindings map (batch syscalls) and the nft sets (batches of
  nftstate.CHUNK), through the daemon's own apply path; target <= 3 s.
  Then the daemon's first full sync (`first_sync_s`: each sink made to hold
  exactly the registry, the nft sets read back), as `nfguard run` does it
  once its endpoints have synced.
- event latency: registrations arrive over a real Event Socket at 1,000 a
  second (an in-process ESL server speaking FreeSWITCH's frames) while the
  registry already holds the 100,000; the latency of each is from the
  moment its frame is written to the moment its binding is in the map and
  the nft set; target p99 <= 10 ms.
- memory: `peak_rss_mb` is this process's ru_maxrss over all of it (the
  load, the snapshot, both syncs, the events); target <= 200 MB. The modules `nfguard
  run` imports are imported here too, the attach code's pyroute2 with them
  (~11 MB of the figure), though nothing is attached. `load_peak_mb` and
  `load_rss_mb`: the peak and the resident size right after the program's
  load (bcc compiles it in this process).

Needs root. Runs in a network namespace of its own (unshare), so the nft
table it builds never touches the host's ruleset; the BPF maps are a
private load's.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import subprocess
import sys
import time

from nfguard.bench.esl import event_headers, json_frame
from nfguard.errors import NfguardError
from nfguard.lab.fakeesl import FakeEsl

BINDINGS = 100_000
EVENT_RATE = 1000  # a second
EVENTS = 3000
CLONE_NEWNET = 0x40000000
# The node the 100,000 are resynced as: not the ESL endpoint's name, or the
# endpoint's own first resync (the fake Event Socket's table is empty)
# would remove them all before the events are measured.
PRELOADED = "bench"


def _own_netns() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise NfguardError(f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
                           " (bench sync needs root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _status_mb() -> dict[str, float]:
    """VmHWM and VmRSS of this process, in MB (reading them resets nothing)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


# A stand-in FreeSWITCH holding the 100,000 registrations, in a process of
# its own: it prints its port, and serves until its stdin closes.
_SNAPSHOT_SERVER = """
import asyncio, sys, time
from nfguard.bench.esl import registrations
from nfguard.lab.fakeesl import FakeEsl, Row

async def main():
    now = time.time()
    rows = [Row(r.user, r.realm, r.ip, r.port, r.call_id, r.contact, int(r.expires - now))
            for r in registrations(int(sys.argv[1]), now)]
    esl = FakeEsl(table=rows)
    print(await esl.start(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await esl.stop()

asyncio.run(main())
"""


async def _read_snapshot(n: int):
    """The registrations of a stand-in FreeSWITCH holding n, read over the
    Event Socket as the daemon's first sync reads them; and the seconds."""
    import nfguard
    from nfguard.daemon.esl import EslConnection
    from nfguard.daemon.fsevents import read_snapshot

    root = os.path.dirname(os.path.dirname(os.path.abspath(nfguard.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}  # this nfguard, however run
    server = subprocess.Popen([sys.executable, "-c", _SNAPSHOT_SERVER, str(n)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline() or 0)
        if not port:
            raise NfguardError("the stand-in FreeSWITCH for the snapshot did not start")
        conn = await EslConnection.open("127.0.0.1", port, "ClueCon", on_event=lambda f: None)
        t = time.perf_counter()
        snapshot = await read_snapshot(conn, PRELOADED, time.time)
        took = time.perf_counter() - t
        await conn.close()
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    if len(snapshot.registrations) != n:
        raise NfguardError(f"the snapshot held {len(snapshot.registrations)} registrations, "
                           f"not {n}")
    return snapshot.registrations, took


def _frame_bytes(i: int) -> bytes:
    f = json_frame(event_headers(BINDINGS + i, False))
    return (b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(f.body)) + f.body


def bench_sync(repeat: int, rounds: int, loads: int = 1) -> dict:
    from nfguard.daemon.backend import KernelBackend
    from nfguard.daemon.config import parse_config
    from nfguard.daemon.core import Daemon
    from nfguard.daemon.nftstate import NftState
    from nfguard.kernel import attach  # noqa: F401 - held as nfguard run holds it (pyroute2)
    from nfguard.kernel.host import require_bpf_runtime
    from nfguard.kernel.program import Program

    require_bpf_runtime("bench sync")
    _own_netns()
    return asyncio.run(_measure(Daemon, KernelBackend, parse_config, NftState, Program))


async def _measure(Daemon, KernelBackend, parse_config, NftState, Program) -> dict:
    esl = FakeEsl()  # an empty registration table, then the stream of events
    port = await esl.start()
    cfg = parse_config({"interfaces": ["lo"], "mode": "enforce", "expiry_grace": 30,
                        "esl": [{"name": "fs1", "port": port, "password": "ClueCon"}]},
                       "bench")
    prog = Program(count_all=False)
    load = _status_mb()
    nft = NftState(cfg.reject_mark)
    nft.install(())
    daemon = Daemon(cfg, backend=KernelBackend(prog, nft))
    try:
        # -- snapshot, then sync: 100,000 through registry, map and nft --------
        regs, snapshot_s = await _read_snapshot(BINDINGS)
        now = time.time()
        t = time.perf_counter()
        diff = daemon.registry.resync(PRELOADED, regs, now)
        daemon.apply(diff)
        sync_s = time.perf_counter() - t
        del regs  # the daemon's snapshot is gone once its diff is applied

        # -- latency: events at 1,000/s over the socket -------------------------
        done: dict[str, float] = {}
        apply = daemon.apply

        def timed_apply(d):
            apply(d)
            t_done = time.perf_counter()
            for b in d.added:
                done.setdefault(b.user, t_done)
        daemon.apply = timed_apply
        daemon.follow(cfg.esl[0])
        flusher = asyncio.get_running_loop().create_task(daemon.flush_forever())
        await esl.wait_subscribed(timeout=10)
        await esl.wait_commands("api sofia xmlstatus profile", timeout=10)
        await asyncio.sleep(0.2)  # the runner is past its (empty) resync
        # The first full sync, woken as the daemon's ticker wakes it (an
        # empty resync gives no diff to wake on). The 100,000's diff is still
        # alive, as in the daemon, where one flush applies it and then syncs.
        t = time.perf_counter()
        while not daemon.synced and time.perf_counter() - t < 60:
            daemon._wake.set()
            await asyncio.sleep(0.01)
        first_sync_s = time.perf_counter() - t
        if not daemon.synced:
            raise NfguardError("the first full sync did not happen within 60 s")
        del diff
        frames = [_frame_bytes(i) for i in range(EVENTS)]
        sent: dict[str, float] = {}
        start = time.perf_counter()
        for i, frame in enumerate(frames):
            due = start + i / EVENT_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[str(10000 + BINDINGS + i)] = time.perf_counter()
            await esl.push(frame)
        deadline = time.perf_counter() + 10
        while len(done) < EVENTS and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        rate = EVENTS / (max(sent.values()) - start)
        lat = sorted((done[u] - t0) * 1000 for u, t0 in sent.items() if u in done)
        if len(lat) < EVENTS:
            raise NfguardError(f"only {len(lat)} of {EVENTS} registrations took effect")
        flusher.cancel()
        for name in list(daemon.runners):
            await daemon.unfollow(name)
        # the peak before the check: reading everything back is the check's cost
        peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        held, listed = len(prog.bindings()), len(nft.read()["bindings"])
        if held != BINDINGS + EVENTS or listed != BINDINGS + EVENTS:
            raise NfguardError(f"sync incomplete: map {held}, nft {listed}, "
                               f"not {BINDINGS + EVENTS}")
    finally:
        nft.uninstall()
        prog.close()
        await esl.stop()
    return {
        "bindings": BINDINGS,
        "snapshot_s": round(snapshot_s, 2),
        "sync_s": round(sync_s, 3),
        "first_sync_s": round(first_sync_s, 2),
        "event_rate_per_s": round(rate),
        "events": EVENTS,
        "event_latency_ms": {"p50": round(lat[len(lat) // 2], 2),
                             "p99": round(lat[int(len(lat) * 0.99) - 1], 2),
                             "max": round(lat[-1], 2)},
        "peak_rss_mb": peak_rss_mb,
        "load_peak_mb": load["VmHWM"],
        "load_rss_mb": load["VmRSS"],
    }


def print_sync(result: dict, repeat: int, rounds: int, loads: int) -> None:
    lat = result["event_latency_ms"]
    print(f"snapshot: {result['bindings']:,} registrations read over the Event Socket in "
          f"{result['snapshot_s']:.2f} s")
    print(f"controller: {result['bindings']:,} bindings into the map and nft in "
          f"{result['sync_s']:.2f} s (target 3 s); first full sync "
          f"{result['first_sync_s']:.2f} s")
    print(f"registration to enforcement at {result['event_rate_per_s']}/s: p50 {lat['p50']} ms, "
          f"p99 {lat['p99']} ms, max {lat['max']} ms (target p99 10 ms)")
    print(f"peak RSS {result['peak_rss_mb']} MB (target 200 MB); after the program's load "
          f"{result['load_rss_mb']} MB, {result['load_peak_mb']} MB at its peak")
