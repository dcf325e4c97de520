"""The namespace topology of the lab (nfguard.lab.world), the netns tests
and the daemon tests: a PBX namespace joined to a phone and an attacker
namespace by veth pairs.

    phone ns     eth0 10.200.1.2 fd00:1::2 --- pbx1 10.200.1.1 fd00:1::1   pbx ns
    attacker ns  eth0 10.200.2.2 fd00:2::2 --- pbx2 10.200.2.1 fd00:2::1

Names are prefix + pid + a counter, so that parallel runs and several
topologies in one process never collide. close() removes every namespace
that up() made, also after a half-done up(): call it from a finally or a
test finalizer (the with statement does). Nothing touches the host's
interfaces.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess

from nfguard.errors import NfguardError
from nfguard.kernel.attach import NETNS_RUN_DIR, in_netns

ADDR = {
    "ipv4": {"phone": "10.200.1.2", "attacker": "10.200.2.2",
             "pbx1": "10.200.1.1", "pbx2": "10.200.2.1", "any": "0.0.0.0"},
    "ipv6": {"phone": "fd00:1::2", "attacker": "fd00:2::2",
             "pbx1": "fd00:1::1", "pbx2": "fd00:2::1", "any": "::"},
}
FAMILY = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
# (peer role, the PBX's interface to it, subnet number)
LINKS = (("phone", "pbx1", 1), ("attacker", "pbx2", 2))

_seq = itertools.count()


def run(*argv: str, ns: str | None = None, input: str | None = None, check: bool = True,
        timeout: float = 30) -> str:
    """Run a command (in namespace ns, by name); its stdout."""
    argv = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NfguardError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


class Topology:
    """The three namespaces and two veth pairs. Methods that take a
    namespace take a role ("pbx", "phone", "attacker") or its name."""

    def __init__(self, prefix: str = "nfg", ipv6: bool = True):
        self.tag = f"{prefix}{os.getpid()}-{next(_seq)}"
        self.ns = {"pbx": f"{self.tag}-pbx", "phone": f"{self.tag}-phone",
                   "attacker": f"{self.tag}-att"}
        self.pbx, self.phone, self.attacker = self.ns["pbx"], self.ns["phone"], self.ns["attacker"]
        self.ipv6 = ipv6
        self.created: list[str] = []
        self.socks: list[socket.socket] = []

    def name(self, ns: str) -> str:
        return self.ns.get(ns, ns)

    def up(self) -> None:
        for ns in self.ns.values():
            run("ip", "netns", "add", ns)
            self.created.append(ns)  # at once: close() removes a half-built topology
            run("ip", "-n", ns, "link", "set", "lo", "up")
        for peer, ifname, i in LINKS:
            run("ip", "-n", self.pbx, "link", "add", ifname, "type", "veth", "peer", "name",
                "eth0", "netns", self.ns[peer])
            self.add_address("pbx", ifname, f"10.200.{i}.1/24")
            self.add_address(peer, "eth0", f"10.200.{i}.2/24")
            if self.ipv6:
                self.add_address("pbx", ifname, f"fd00:{i}::1/64")
                self.add_address(peer, "eth0", f"fd00:{i}::2/64")
            run("ip", "-n", self.pbx, "link", "set", ifname, "up")
            run("ip", "-n", self.ns[peer], "link", "set", "eth0", "up")

    def add_address(self, ns: str, ifname: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []  # usable at once, no duplicate detection wait
        run("ip", "-n", self.name(ns), "addr", "add", cidr, "dev", ifname, *extra)

    def exec(self, ns: str, *argv: str, input: str | None = None, check: bool = True) -> str:
        """Run a command inside namespace ns; its stdout."""
        return run(*argv, ns=self.name(ns), input=input, check=check)

    def nsenter(self, ns: str) -> list[str]:
        """The argv prefix that runs a command in namespace ns's network only
        (its /sys/fs/bpf stays the host's, where the pins live)."""
        return ["nsenter", f"--net={NETNS_RUN_DIR}/{self.name(ns)}"]

    def in_netns(self, ns: str):
        """Context manager: this thread inside namespace ns; sockets made
        there stay in it."""
        return in_netns(self.name(ns))

    def udp(self, ns: str, family: str = "ipv4") -> socket.socket:
        """A UDP socket that lives in namespace ns, closed by close()."""
        with self.in_netns(ns):
            s = socket.socket(FAMILY[family], socket.SOCK_DGRAM)
        self.socks.append(s)
        return s

    def close(self) -> None:
        # Sockets hold their namespace (and its veths) alive: close first.
        for s in self.socks:
            s.close()
        self.socks = []
        errors = []
        for ns in self.created:
            try:
                run("ip", "netns", "del", ns)
            except NfguardError as e:
                errors.append(str(e))
        self.created = []
        if errors:
            raise NfguardError("removing the namespaces: " + "; ".join(errors))

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()
