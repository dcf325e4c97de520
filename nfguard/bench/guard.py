"""`nfguard bench guard`: FreeSWITCH's CPU per call, without and with the
FreeSWITCH-side guard (freeswitch/nfguard_guard.lua), in one run.

One FreeSWITCH 1.10.12 (nfguard.lab.freeswitch, vanilla configuration,
UDP+TCP on 5060) in the lab's PBX namespace, with `nfguard run` following
it (enforcing, XDP on the veths, as tests/test_freeswitch.py runs it), so
that the guard reads nfguard's state from FreeSWITCH's hash store as in
production. The bound phone (1001@pbx.test, registered from 10.200.1.2)
places --calls authenticated calls to the echo extension 9196 over TCP,
one after another (INVITE, 407, INVITE with credentials, 200, ACK, BYE),
in each phase:

- without:   no guard in the dialplan;
- with:      the guard first in every context (nfguard.guard_install.
             install() and `reloadxml`), reading nfguard's state;
- fallback:  the guard with no state from nfguard (daemon stopped, the
             hash realm emptied): it parses `sofia xmlstatus profile
             internal reg` for every call.

Phases without and with alternate --rounds times (so that a drift of the
host's load hits both), fallback runs once at the end. Per phase it prints
FreeSWITCH's CPU time (utime + stime of the process, every thread, from
/proc/PID/stat, in clock ticks of 10 ms: over hundreds of calls the tick is
well below the figure) per call, the extra CPU per call against `without`
and the ratio, and the calls' median wall time. Outside the measured
windows, an attacker call with the phone's password over TCP checks that
the guard is really in (403) or out (200) of each phase.

Needs root, the kernel (as the tests do) and the FreeSWITCH bundle.
Everything it makes is removed when it ends, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from nfguard.bench.attack import cpu_seconds, run_lab_bench, standalone, whole_number
from nfguard.errors import NfguardError

DEFAULT_CALLS = 300
DEFAULT_ROUNDS = 2
REALM = "pbx.test"
USER = "1001"
TRANSPORT = "tcp"


class GuardLab:
    """Namespaces, FreeSWITCH with the phone registered, nfguard following
    it; install()/remove() put the guard in and out of the dialplan."""

    def __init__(self):
        from nfguard.lab.freeswitch import FreeSwitch, Nfguard
        from nfguard.lab.topology import ADDR, Topology

        self.topo = Topology("nfgbg", ipv6=False)
        self.fs = self.nfguard = None
        self.phone_ip, self.attacker_ip = ADDR["ipv4"]["phone"], ADDR["ipv4"]["attacker"]
        self.topo.up()
        try:
            self.fs = FreeSwitch(self.topo)
            self.fs.start()
            self.password = self.fs.users[REALM][USER]
            self.nfguard = Nfguard(self.fs)
            self.nfguard.start()
            self.register()
        except BaseException:
            self.close()
            raise

    def client(self, ip: str, transport: str = TRANSPORT):
        from nfguard.lab.sipclient import SipClient

        ns = self.topo.name("phone" if ip == self.phone_ip else "attacker")
        return SipClient(ns, ip, (self.fs.sip_ip, self.fs.port("internal")), transport)

    def register(self) -> None:
        code = self.client(self.phone_ip, "udp").register(USER, self.password, REALM,
                                                          expires=3600)
        if code != 200:
            raise NfguardError(f"the phone's REGISTER was answered {code}, not 200")
        key = f"b:{USER}@{REALM}"
        deadline = time.monotonic() + 10
        # nfguard has written the binding into FreeSWITCH's hash (or, with
        # a daemon that does not feed the guard, at least bound it)
        while self.phone_ip not in self.fs.api(f"hash select/nfguard/{key}"):
            if time.monotonic() > deadline:
                raise NfguardError(f"nfguard did not write {key} into FreeSWITCH's hash "
                                   "within 10 s: " + self.nfguard.log()[-2000:])
            time.sleep(0.05)

    def install(self) -> None:
        from nfguard.guard_install import install

        install(self.fs.conf)
        self._reloadxml()

    def remove(self) -> None:
        from nfguard.guard_install import remove

        remove(self.fs.conf)
        self._reloadxml()

    def _reloadxml(self) -> None:
        out = self.fs.api("reloadxml")
        if "+OK" not in out:
            raise NfguardError(f"reloadxml: {out.strip()}")

    def drop_state(self) -> None:
        """No state from nfguard: the daemon stopped, FreeSWITCH's hash
        realm emptied (the guard falls back to the registration table)."""
        self.nfguard.stop()
        self.fs.api("hash delete/nfguard/meta")  # its absence is what the guard reads
        if "v=" in self.fs.api("hash select/nfguard/meta"):  # absent: "-ERR no reply"
            raise NfguardError("hash delete/nfguard/meta left the key")

    def attacker_code(self) -> int | None:
        """The attacker's call with the phone's password over TCP."""
        try:
            return self.client(self.attacker_ip).invite(USER, self.password, REALM)
        except AssertionError:
            return 200

    def phase(self, calls: int) -> dict:
        """calls sequential calls from the phone; FreeSWITCH's CPU."""
        pid = self.fs.proc.pid
        phone = self.client(self.phone_ip)
        took, codes = [], {}
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        for _ in range(calls):
            t = time.monotonic()
            code = phone.invite(USER, self.password, REALM)
            took.append(time.monotonic() - t)
            codes[str(code)] = codes.get(str(code), 0) + 1
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        return {"calls": calls, "codes": codes, "cpu_s": cpu, "wall_s": wall,
                "call_ms_p50": statistics.median(took) * 1000}

    def close(self) -> None:
        try:
            if self.nfguard is not None:
                self.nfguard.close()
        finally:
            try:
                if self.fs is not None:
                    self.fs.close()
            finally:
                self.topo.close()


def _merge(runs: list[dict]) -> dict:
    calls = sum(r["calls"] for r in runs)
    codes: dict[str, int] = {}
    for r in runs:
        for k, v in r["codes"].items():
            codes[k] = codes.get(k, 0) + v
    cpu = sum(r["cpu_s"] for r in runs)
    return {"calls": calls, "codes": codes, "cpu_s": round(cpu, 2),
            "cpu_ms_per_call": round(1000 * cpu / calls, 3),
            "call_ms_p50": round(statistics.median(r["call_ms_p50"] for r in runs), 1),
            "rounds_cpu_ms_per_call": [round(1000 * r["cpu_s"] / r["calls"], 3) for r in runs],
            "wall_s": round(sum(r["wall_s"] for r in runs), 1)}


def bench_guard(calls: int = DEFAULT_CALLS, rounds: int = DEFAULT_ROUNDS,
                progress=None) -> dict:
    """The three phases (see the module doc); the figures."""
    say = progress or (lambda _msg: None)
    lab = GuardLab()
    runs: dict[str, list[dict]] = {"without": [], "with": [], "fallback": []}
    checks: dict[str, list] = {"without": [], "with": [], "fallback": []}
    try:
        for i in range(rounds):
            for name in ("without", "with"):
                if name == "with":
                    lab.install()
                say(f"round {i + 1}/{rounds}: {calls} calls {name} the guard ...")
                runs[name].append(lab.phase(calls))
                checks[name].append(lab.attacker_code())
                if name == "with":
                    lab.remove()
        lab.drop_state()
        lab.install()
        say(f"{calls} calls with the guard falling back to the registration table ...")
        runs["fallback"].append(lab.phase(calls))
        checks["fallback"].append(lab.attacker_code())
    finally:
        lab.close()
    result: dict = {"calls": calls, "rounds": rounds, "transport": TRANSPORT, "phases": {}}
    for name, rs in runs.items():
        result["phases"][name] = {**_merge(rs), "attacker_codes": checks[name]}
    base = result["phases"]["without"]["cpu_ms_per_call"]
    for r in result["phases"].values():
        r["extra_ms_per_call"] = round(r["cpu_ms_per_call"] - base, 3)
        r["ratio"] = round(r["cpu_ms_per_call"] / base, 3) if base else None
    for name, want in (("without", 200), ("with", 403), ("fallback", 403)):
        got = result["phases"][name]
        if got["attacker_codes"] != [want] * len(got["attacker_codes"]):
            raise NfguardError(f"bench guard: the attacker's check call {name} the guard was "
                               f"answered {got['attacker_codes']}, not {want}: the phase did "
                               "not measure what it is named for")
        if got["codes"] != {"200": got["calls"]}:
            raise NfguardError(f"bench guard: the phone's calls {name} the guard were "
                               f"answered {got['codes']}")
    return result


def print_guard(result: dict) -> None:
    print(f"FreeSWITCH's CPU per call, without and with the guard: the bound phone's "
          f"{result['calls']} calls over {result['transport'].upper()} a phase "
          f"(x{result['rounds']} rounds for without/with; real FreeSWITCH 1.10.12)")
    print(f"  {'phase':<10} {'calls':>6} {'CPU s':>7} {'CPU ms/call':>12} {'extra ms':>9} "
          f"{'ratio':>6} {'call ms p50':>12}")
    for name, r in result["phases"].items():
        print(f"  {name:<10} {r['calls']:>6} {r['cpu_s']:>7.2f} {r['cpu_ms_per_call']:>12.3f} "
              f"{r['extra_ms_per_call']:>+9.3f} {r['ratio']:>6.2f} {r['call_ms_p50']:>12.1f}")


# -- the command ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`nfguard bench guard`'s own options (the bench parser adds --json)."""
    parser.add_argument("--guard-calls", default=str(DEFAULT_CALLS), metavar="N",
                        help=f"guard: calls per phase and round (default: {DEFAULT_CALLS})")
    parser.add_argument("--guard-rounds", default=str(DEFAULT_ROUNDS), metavar="N",
                        help=f"guard: rounds of without/with (default: {DEFAULT_ROUNDS})")


def run(args: argparse.Namespace) -> int:
    calls = whole_number("--guard-calls", args.guard_calls, 100_000)
    rounds = whole_number("--guard-rounds", args.guard_rounds, 100)
    return run_lab_bench("guard", lambda progress: bench_guard(calls, rounds, progress=progress),
                         print_guard, args.json)


def main(argv: list[str] | None = None) -> int:
    """`python3 -m nfguard.bench.guard`."""
    return standalone("nfguard bench guard", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
