"""`nfguard bench mirror`: what keeping the mirror exact costs FreeSWITCH.

An Event Socket runner and a registry (the daemon's own code) follow the
fake Event Socket of nfguard.lab, which holds 10,000 users and is sent
1,000 sofia::register events a second for a few seconds. Every api
command the runner sends is counted: a user re-read is one indexed SELECT
in FreeSWITCH (`sofia xmlstatus profile P user U@H`), a full read is the
whole table. Traffic mixes, as on a PBX:

- refreshes of users with one row (nothing to re-read);
- 20 % of users with two devices in contact mode, refreshing;
- 10 % of events a move in FreeSWITCH's vanilla mode (one row per user:
  the old row goes with no event of its own);
- every event such a move (the worst case).

After each run the registry must equal the table. Then the lag of a move
(until its old address is no longer bound) under 1,000 refreshes a second.
No root needed.
"""

from __future__ import annotations

import asyncio
import random
import time

from nfguard.daemon.esl import Backoff, Endpoint
from nfguard.daemon.fsevents import follow
from nfguard.daemon.registry import Binding, Registry
from nfguard.errors import NfguardError
from nfguard.lab.fakeesl import FakeEsl, Row, reg_xml, register_frame

USERS, RATE, REALM, PROFILE = 10_000, 1_000, "pbx", "internal"
MIXES = {  # name -> (share of users with two devices, share of events that are moves)
    "lone_refreshes": (0.0, 0.0),
    "two_devices_refreshes": (0.2, 0.0),
    "moves_10pct": (0.0, 0.1),
    "moves_all": (0.0, 1.0),
}
LAG_PROBES_PER_ROUND = 40  # moves timed per second of each mix


class _Table:
    """FreeSWITCH's registration table, by user."""

    def __init__(self):
        self.by_user: dict[str, list[Row]] = {}

    def __iter__(self):
        for rows in self.by_user.values():
            yield from rows


class _IndexedEsl(FakeEsl):
    """The fake, answering one user's rows from an index, as FreeSWITCH's
    SQL does (the stock fake scans its whole table per re-read, which
    would measure the fake rather than nfguard)."""

    def _api_body(self, cmd: str) -> bytes:
        prefix = f"sofia xmlstatus profile {PROFILE} user "
        if cmd.startswith(prefix):
            user, _, _host = cmd[len(prefix):].partition("@")
            return reg_xml(self.table.by_user.get(user, [])).encode()
        return super()._api_body(cmd)


def _ip(i: int, device: int = 0) -> str:
    return f"10.{device}.{i >> 8 & 255}.{i & 255}"


async def _follow(table: _Table):
    """A running runner and its registry, in sync with table."""
    server = _IndexedEsl(table=table)
    port = await server.start()
    registry = Registry(grace=0)
    runner = follow(Endpoint("fs1", "127.0.0.1", port, password="ClueCon"), registry,
                    backoff=Backoff(0.01, 0.05))
    task = asyncio.get_running_loop().create_task(runner.run())
    deadline = time.monotonic() + 30
    while runner.last_sync is None:
        if time.monotonic() > deadline:
            raise NfguardError("bench mirror: the runner did not sync with the fake ESL")
        await asyncio.sleep(0.01)
    return server, registry, task


async def _stop(server, task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await server.stop()


def _equal(registry: Registry, table: _Table) -> bool:
    return {(b.user, b.ip) for b in registry.bindings()} == {(r.user, r.ip) for r in table}


async def _mix(devices: float, moves: float, seconds: float) -> dict:
    rng = random.Random(1)
    two = set(rng.sample(range(USERS), int(USERS * devices)))
    table = _Table()
    for i in range(USERS):
        rows = [Row(f"u{i}", REALM, _ip(i), 5060, f"c{i}")]
        if i in two:
            rows.append(Row(f"u{i}", REALM, _ip(i, 1), 5060, f"d{i}"))
        table.by_user[f"u{i}"] = rows
    server, registry, task = await _follow(table)
    try:
        base = len(server.commands)
        events = int(RATE * seconds)
        t0 = time.monotonic()
        for n in range(events):
            delay = t0 + n / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user = f"u{rng.randrange(USERS)}"
            if rng.random() < moves:  # vanilla mode: the new row replaces the old
                ip = f"10.9.{n >> 8 & 255}.{n & 255}"
                table.by_user[user] = [Row(user, REALM, ip, 5060, f"m{n}")]
                await server.push(register_frame(user, REALM, ip, call_id=f"m{n}"))
            else:
                row = rng.choice(table.by_user[user])
                await server.push(register_frame(user, REALM, row.ip, call_id=row.call_id))
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 10
        while not _equal(registry, table):
            if time.monotonic() > deadline:
                raise NfguardError("bench mirror: the registry never equalled the table")
            await asyncio.sleep(0.05)
        cmds = server.commands[base:]
    finally:
        await _stop(server, task)
    rereads = sum(" user " in c for c in cmds)
    full = sum(c.endswith(" reg") for c in cmds)
    return {"events_per_s": round(events / elapsed), "rereads_per_s": round(rereads / elapsed),
            "full_reads": full}


async def _lag(probes: int) -> dict:
    """A vanilla move while 1,000 refreshes a second of other users run: ms
    until the old address is no longer bound."""
    table = _Table()
    for i in range(USERS):
        table.by_user[f"u{i}"] = [Row(f"u{i}", REALM, _ip(i), 5060, f"c{i}")]
    server, registry, task = await _follow(table)
    rng = random.Random(2)

    async def refreshes():
        start, n = time.monotonic(), 0
        while True:
            n += 1
            delay = start + n / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            row = table.by_user[f"u{rng.randrange(USERS)}"][0]
            await server.push(register_frame(row.user, REALM, row.ip, call_id=row.call_id))

    background = asyncio.get_running_loop().create_task(refreshes())
    lags = []
    try:
        for k in range(probes):
            user = f"u{rng.randrange(USERS)}"
            old = table.by_user[user][0]
            ip = f"10.8.{k >> 8 & 255}.{k & 255}"
            table.by_user[user] = [Row(user, REALM, ip, 5060, f"p{k}")]
            pushed = time.monotonic()
            await server.push(register_frame(user, REALM, ip, call_id=f"p{k}"))
            gone = Binding(user, REALM, old.ip)
            owner = (PROFILE, user, REALM)
            while any(r.ip == gone.ip for r in registry.owner_rows("fs1", owner)):
                if time.monotonic() - pushed > 5:
                    raise NfguardError(f"bench mirror: {user}'s old address stayed bound")
                await asyncio.sleep(0.002)
            lags.append((time.monotonic() - pushed) * 1000)
            await asyncio.sleep(0.02)
    finally:
        background.cancel()
        try:
            await background
        except asyncio.CancelledError:
            pass
        await _stop(server, task)
    lags.sort()
    return {"p50": round(lags[len(lags) // 2], 1), "p99": round(lags[int(len(lags) * 0.99)], 1),
            "max": round(lags[-1], 1)}


def bench_mirror(repeat: int, rounds: int, loads: int = 1) -> dict:
    """rounds: seconds of events per traffic mix."""
    async def measure():
        mixes = {name: await _mix(devices, moves, rounds) for name, (devices, moves)
                 in MIXES.items()}
        return {"users": USERS, "rate": RATE, "seconds": rounds, "mixes": mixes,
                "move_lag_ms": await _lag(LAG_PROBES_PER_ROUND * rounds)}
    return asyncio.run(measure())


def print_mirror(result: dict, repeat: int, rounds: int, loads: int) -> None:
    print(f"the exact mirror: {result['users']:,} users, {result['rate']:,} registrations a "
          f"second for {result['seconds']} s per mix (fake Event Socket)")
    for name, m in result["mixes"].items():
        print(f"  {name:<24} {m['events_per_s']:>6,} events/s  {m['rereads_per_s']:>5,} user "
              f"re-reads/s  {m['full_reads']} full reads  (registry equal to the table)")
    lag = result["move_lag_ms"]
    print(f"  a vanilla move under 1,000 refreshes/s: old address unbound after p50 "
          f"{lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms")
