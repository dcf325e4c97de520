"""`nfguard bench sync`: the controller's two targets (docs/design.md section 7).

- sync: 100,000 registrations resynced into the registry and applied to
  the bindings map (batch syscalls) and the nft sets (one batch), through
  the daemon's own apply path; target <= 3 s.
- event latency: registrations arrive over a real Event Socket at 1,000 a
  second (an in-process ESL server speaking FreeSWITCH's frames) while the
  registry already holds the 100,000; the latency of each is from the
  moment its frame is written to the moment its binding is in the map and
  the nft set; target p99 <= 10 ms.

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
import time

from nfguard.bench.esl import event_headers, json_frame, registrations
from nfguard.errors import NfguardError
from nfguard.lab.fakeesl import FakeEsl

BINDINGS = 100_000
EVENT_RATE = 1000  # a second
EVENTS = 3000
CLONE_NEWNET = 0x40000000


def _own_netns() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise NfguardError(f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
                           " (bench sync needs root)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _frame_bytes(i: int) -> bytes:
    f = json_frame(event_headers(BINDINGS + i, False))
    return (b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(f.body)) + f.body


def bench_sync(repeat: int, rounds: int, loads: int = 1) -> dict:
    from nfguard.daemon.backend import KernelBackend
    from nfguard.daemon.config import parse_config
    from nfguard.daemon.core import Daemon
    from nfguard.daemon.nftstate import NftState
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
    nft = NftState(cfg.reject_mark)
    nft.install(())
    daemon = Daemon(cfg, backend=KernelBackend(prog, nft))
    try:
        # -- sync: 100,000 through registry, map and nft ----------------------
        now = time.time()
        regs = registrations(BINDINGS, now)
        t = time.perf_counter()
        diff = daemon.registry.resync("fs1", regs, now)
        daemon.apply(diff)
        sync_s = time.perf_counter() - t
        held = {b.ip for b in prog.bindings()}
        listed = nft.read()["bindings"]
        if len(held) != BINDINGS or len(listed) != BINDINGS:
            raise NfguardError(f"sync incomplete: map {len(held)}, nft {len(listed)}")

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
    finally:
        nft.uninstall()
        prog.close()
        await esl.stop()
    return {
        "bindings": BINDINGS,
        "sync_s": round(sync_s, 3),
        "event_rate_per_s": round(rate),
        "events": EVENTS,
        "event_latency_ms": {"p50": round(lat[len(lat) // 2], 2),
                             "p99": round(lat[int(len(lat) * 0.99) - 1], 2),
                             "max": round(lat[-1], 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def print_sync(result: dict, repeat: int, rounds: int, loads: int) -> None:
    lat = result["event_latency_ms"]
    print(f"controller: {result['bindings']:,} bindings into the map and nft in "
          f"{result['sync_s']:.2f} s (target 3 s)")
    print(f"registration to enforcement at {result['event_rate_per_s']}/s: p50 {lat['p50']} ms, "
          f"p99 {lat['p99']} ms, max {lat['max']} ms (target p99 10 ms)")
    print(f"peak RSS {result['peak_rss_mb']} MB")
