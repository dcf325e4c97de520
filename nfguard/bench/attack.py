"""`nfguard bench attack`: the real FreeSWITCH under attack, without and
with nfguard, in one run.

A bound phone (registered as 1001@pbx.test) places --calls calls in
--seconds seconds, one in each of --calls equal slots at a random moment
of it, to the echo extension (answered = 200 OK to its INVITE; the call is
hung up at once) while, in turn:

- invite_150:   an attacker floods INVITEs without credentials at 150/s;
- invite_1000:  the same at 1,000/s;
- register_50:  another address brute-forces REGISTER (1002@pbx.test) at
                50 wrong passwords a second.

Each scenario runs first without nfguard, then (one daemon, enforcing, XDP
on the PBX namespace's veths, as tests/test_freeswitch.py runs it) with
nfguard; one FreeSWITCH serves all six. Per scenario it prints the calls
answered, the attacker's packets sent and those that reached FreeSWITCH
(an nft counter in the PBX namespace's input hook, after nfguard's own
chains: XDP drops never get there; some of those may still be lost to
FreeSWITCH's full socket buffer, counted in the JSON as fs_socket_drops
from the namespace's UDP RcvbufErrors), FreeSWITCH's CPU seconds during
the scenario (/proc/PID/stat utime + stime, all its threads) and as % of
one core, and how long the answered calls took (first INVITE to the BYE's
200 OK, median and max).

Between scenarios the bench waits until FreeSWITCH has no channel left
(the flood's challenged INVITEs hold sessions for a while), at most
SETTLE_MAX seconds. Everything (the flood's process, the daemon, FreeSWITCH,
the namespaces) is removed when it ends, also on Ctrl-C or SIGTERM.

Needs root, the kernel (as the tests do) and the FreeSWITCH bundle
(nfguard.lab.freeswitch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import sys
import threading
import time

from nfguard.errors import NfguardError

DEFAULT_CALLS = 60
DEFAULT_SECONDS = 60
CALL_TIMEOUT = 4.0  # per SIP transaction of a call (sipclient retransmits within it)
SETTLE_MAX = 40.0  # seconds to wait for FreeSWITCH to drop the flood's sessions
REALM = "pbx.test"
PHONE_USER = "1001"
BRUTE_USER = "1002"
FLOOD_IP = "10.200.2.2"  # the topology's attacker address
BRUTE_IP = "10.200.2.3"  # another address in the attacker namespace
# name -> (kind, rate a second)
SCENARIOS = {"invite_150": ("invite", 150), "invite_1000": ("invite", 1000),
             "register_50": ("register", 50)}
COUNTER_TABLE = "nfgbench-attack"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # after the command: state is field 3, utime 14, stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AttackLab:
    """The namespaces, FreeSWITCH with the phone registered, the packet
    counter, and (start_nfguard) the daemon. With fs (a started
    nfguard.lab.freeswitch.FreeSwitch, such as a test module's) the lab
    uses it and its namespaces and leaves them running; without, it makes
    its own. close() removes what the lab made."""

    def __init__(self, fs=None):
        from nfguard.lab.freeswitch import FreeSwitch
        from nfguard.lab.topology import Topology

        self.own = fs is None
        self.topo = Topology("nfgba", ipv6=False) if self.own else fs.topo
        self.fs = fs
        self.nfguard = None
        self.counter = False
        if self.own:
            self.topo.up()
        try:
            if f" {BRUTE_IP}/" not in self.topo.exec("attacker", "ip", "-4", "-o", "addr", "show"):
                self.topo.add_address("attacker", "eth0", f"{BRUTE_IP}/24")
            if self.own:
                self.fs = FreeSwitch(self.topo)
                self.fs.start()
            self.dst = (self.fs.sip_ip, self.fs.port("internal"))
            # after nfguard's chains (priority 0): what was accepted reaches the socket
            self.topo.exec("pbx", "nft", "-f", "-", input=(
                f"table inet {COUNTER_TABLE} {{\n chain input {{\n"
                "  type filter hook input priority 300;\n"
                f"  ip saddr {{ {FLOOD_IP}, {BRUTE_IP} }} udp dport {self.dst[1]} "
                "counter\n }\n}\n"))
            self.counter = True
            self.register_phone()
        except BaseException:
            self.close()
            raise

    def phone(self, timeout: float = CALL_TIMEOUT):
        from nfguard.lab.sipclient import SipClient
        from nfguard.lab.topology import ADDR

        return SipClient(self.topo.name("phone"), ADDR["ipv4"]["phone"], self.dst,
                         timeout=timeout)

    def register_phone(self) -> None:
        pw = self.fs.users[REALM][PHONE_USER]
        code = self.phone().register(PHONE_USER, pw, REALM, expires=3600)
        if code != 200:
            raise NfguardError(f"the phone's REGISTER was answered {code}, not 200")
        deadline = time.monotonic() + 5
        while not self.fs.registrations():  # the table fills a moment after the 200
            if time.monotonic() > deadline:
                raise NfguardError("the phone's registration is not in FreeSWITCH's table")
            time.sleep(0.05)

    def start_nfguard(self, **config) -> None:
        from nfguard.lab.freeswitch import Nfguard

        self.nfguard = Nfguard(self.fs)
        self.nfguard.start(**config)

    def reached(self) -> int:
        """Attacker packets accepted into the PBX namespace so far."""
        out = json.loads(self.topo.exec("pbx", "nft", "-j", "list", "table", "inet",
                                        COUNTER_TABLE))
        return sum(item["rule"]["expr"][-1]["counter"]["packets"]
                   for item in out["nftables"] if "rule" in item)

    def socket_drops(self) -> int:
        """UDP datagrams the PBX namespace's kernel dropped for a full
        socket receive buffer (FreeSWITCH not reading fast enough)."""
        lines = [line.split() for line in self.topo.exec("pbx", "cat", "/proc/net/snmp")
                 .splitlines() if line.startswith("Udp:")]
        return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))["RcvbufErrors"])

    def channels(self) -> int:
        out = self.fs.api("show channels count")
        m = re.search(r"(\d+) total", out)
        return int(m.group(1)) if m else -1

    def settle(self) -> float:
        """Seconds until FreeSWITCH holds no channel (at most SETTLE_MAX)."""
        t0 = time.monotonic()
        while self.channels() != 0 and time.monotonic() - t0 < SETTLE_MAX:
            time.sleep(0.5)
        return time.monotonic() - t0

    def close(self) -> None:
        try:
            if self.nfguard is not None:
                self.nfguard.close()
                self.nfguard = None
        finally:
            if self.own:
                try:
                    if self.fs is not None:
                        self.fs.close()
                finally:
                    self.topo.close()  # the counter goes with the namespace
            elif self.counter:
                self.topo.exec("pbx", "nft", "delete", "table", "inet", COUNTER_TABLE,
                               check=False)
                self.counter = False

    # -- one scenario --------------------------------------------------------------
    def scenario(self, kind: str, rate: float, calls: int, seconds: float) -> dict:
        """The phone's calls while the attack runs; the figures."""
        from nfguard.lab import flood

        settle_s = self.settle()
        pid = self.fs.proc.pid
        reached0, drops0 = self.reached(), self.socket_drops()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        attack_s = seconds + 1  # the last call starts under attack too
        if kind == "invite":
            attacker = flood.spawn("invite", self.topo.name("attacker"), (FLOOD_IP, 0), self.dst,
                                   rate, attack_s, realm=REALM)
        else:
            attacker = flood.spawn("register", self.topo.name("attacker"), (BRUTE_IP, 0),
                                   self.dst, rate, attack_s, user=BRUTE_USER, realm=REALM)
        try:
            outcomes = self.calls(calls, seconds)
            attack = attacker.result()
        finally:
            attacker.kill()
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        took = sorted(s for code, s in outcomes if code == 200)
        return {"answered": len(took), "placed": calls,
                "codes": _count(str(code) for code, _ in outcomes),
                "call_ms_p50": round(statistics.median(took) * 1000, 1) if took else None,
                "call_ms_max": round(took[-1] * 1000, 1) if took else None,
                "attacker_sent": attack["packets"],
                "attacker_reached": self.reached() - reached0,
                "fs_socket_drops": self.socket_drops() - drops0,
                "attacker_answers": sum(attack["responses"].values()),
                "attack": {k: attack[k] for k in ("rate_achieved", "sent", "responses")},
                "fs_cpu_s": round(cpu, 2), "fs_cpu_pct": round(100 * cpu / wall, 1),
                "wall_s": round(wall, 1), "settle_s": round(settle_s, 1)}

    def calls(self, n: int, seconds: float) -> list[tuple[int | None, float]]:
        """n calls from the phone, one in each slot of seconds/n at a random
        moment of it, each in its own thread; (final status or None, seconds
        to it) per call. Random, not on the slot's edge: FreeSWITCH grants
        its sessions-per-second budget (30) anew at each of its seconds and a
        150/s flood spends it within 0.2 s, so calls locked to one phase of
        that second would all be answered or all refused."""
        pw = self.fs.users[REALM][PHONE_USER]
        out: list[tuple[int | None, float]] = [(None, 0.0)] * n

        def call(i: int) -> None:
            t = time.monotonic()
            try:
                code = self.phone().invite(PHONE_USER, pw, REALM)
            except AssertionError:  # the BYE went unanswered: the call itself was answered
                code = 200
            except OSError:
                code = None
            out[i] = (code, time.monotonic() - t)

        threads = []
        t0 = time.monotonic()
        slot = seconds / n
        for i in range(n):
            at = t0 + (i + random.random()) * slot
            time.sleep(max(0.0, at - time.monotonic()))
            th = threading.Thread(target=call, args=(i,), daemon=True)
            th.start()
            threads.append(th)
        # a call is over within INVITE x2 + BYE transactions
        deadline = time.monotonic() + 3 * CALL_TIMEOUT + 5
        for th in threads:
            th.join(max(0.0, deadline - time.monotonic()))
        return out


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def bench_attack(calls: int = DEFAULT_CALLS, seconds: float = DEFAULT_SECONDS,
                 scenarios: dict[str, tuple[str, float]] | None = None,
                 nfguard_config: dict | None = None, progress=None, fs=None) -> dict:
    """Every scenario without nfguard, then with it (nfguard_config over the
    lab's defaults, nfguard.lab.freeswitch.Nfguard); the figures. fs: a
    running FreeSWITCH to use (AttackLab)."""
    scenarios = scenarios or SCENARIOS
    say = progress or (lambda _msg: None)
    result: dict = {"calls": calls, "seconds": seconds, "scenarios": {}}
    lab = AttackLab(fs)
    try:
        for phase in ("without", "with"):
            if phase == "with":
                say("starting nfguard")
                lab.start_nfguard(**(nfguard_config or {}))
            for name, (kind, rate) in scenarios.items():
                say(f"{name} {phase} nfguard ...")
                r = lab.scenario(kind, rate, calls, seconds)
                result["scenarios"].setdefault(name, {})[phase] = r
                say(f"  {r['answered']}/{r['placed']} answered, attacker {r['attacker_sent']} "
                    f"sent / {r['attacker_reached']} reached FreeSWITCH, FreeSWITCH "
                    f"{r['fs_cpu_s']} s CPU ({r['fs_cpu_pct']}% of a core)")
        if lab.nfguard is not None:
            result["nfguard_counters"] = lab.nfguard.status().get("counters", {})
    finally:
        lab.close()
    return result


def print_attack(result: dict) -> None:
    print(f"The PBX under attack: a bound phone places {result['calls']} calls in "
          f"{result['seconds']:g} s (real FreeSWITCH 1.10.12)")
    print(f"  {'scenario':<12} {'nfguard':<8} {'answered':>9} {'call ms p50/max':>16} "
          f"{'attacker sent':>14} {'reached FS':>11} {'FS CPU s':>9} {'% core':>7}")
    for name, phases in result["scenarios"].items():
        for phase, r in phases.items():
            took = (f"{r['call_ms_p50']:.0f}/{r['call_ms_max']:.0f}"
                    if r["call_ms_p50"] is not None else "-")
            print(f"  {name:<12} {phase:<8} {r['answered']:>4}/{r['placed']:<4} {took:>16} "
                  f"{r['attacker_sent']:>14} {r['attacker_reached']:>11} "
                  f"{r['fs_cpu_s']:>9.2f} {r['fs_cpu_pct']:>6.1f}%")
    counters = result.get("nfguard_counters") or {}
    if counters:
        shown = ", ".join(f"{k} {counters.get(k, 0)}" for k in ("rate_limited", "banned"))
        print(f"  nfguard's XDP verdicts over the with-nfguard scenarios: {shown}")


# -- the command ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`nfguard bench attack`'s own options (the bench parser adds --json)."""
    parser.add_argument("--calls", default=str(DEFAULT_CALLS), metavar="N",
                        help=f"attack: calls the phone places per scenario "
                             f"(default: {DEFAULT_CALLS})")
    parser.add_argument("--seconds", default=str(DEFAULT_SECONDS), metavar="S",
                        help=f"attack: seconds per scenario (default: {DEFAULT_SECONDS})")


def whole_number(option: str, value: str, top: int) -> int:
    if not str(value).isdigit() or not 1 <= int(value) <= top:
        raise NfguardError(f"{option} must be a whole number from 1 to {top}, not {value!r}")
    return int(value)


def _sigterm(_signo, _frame):
    raise KeyboardInterrupt  # the finally blocks clean up as on Ctrl-C


def run_lab_bench(what: str, measure, printer, as_json: bool) -> int:
    """A bench on the real FreeSWITCH of the lab: measure(progress) -> the
    result, printed by printer() or as one JSON object; SIGTERM cleans up
    (namespaces, processes) as Ctrl-C does."""
    from nfguard.lab.freeswitch import unavailable

    why = unavailable()
    if why:
        raise NfguardError(f"bench {what}: {why}")
    old = signal.signal(signal.SIGTERM, _sigterm)
    try:
        result = measure(None if as_json else lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        signal.signal(signal.SIGTERM, old)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        printer(result)
    return 0


def run(args: argparse.Namespace) -> int:
    calls = whole_number("--calls", args.calls, 10_000)
    seconds = whole_number("--seconds", args.seconds, 3600)
    return run_lab_bench("attack", lambda progress: bench_attack(calls, seconds,
                                                                 progress=progress),
                         print_attack, args.json)


def standalone(prog: str, add_args, run_args, argv: list[str] | None) -> int:
    """A lab bench run as its own module (`python3 -m nfguard.bench.X`):
    its options and --json, without the other benches'."""
    parser = argparse.ArgumentParser(prog=prog)
    add_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    try:
        return run_args(parser.parse_args(argv))
    except NfguardError as e:
        print(f"nfguard: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python3 -m nfguard.bench.attack`."""
    return standalone("nfguard bench attack", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
