"""nfguard.policy: every policy value accepted or refused, with its message;
and the config file, `nfguard replay` and the kernel program refusing
exactly the same values with exactly the same message."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from nfguard import consts, policy
from nfguard.cli import build_parser, replay
from nfguard.daemon.config import ConfigError, parse_config
from nfguard.errors import NfguardError
from nfguard.policy import PolicyError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = "nfguard.yaml"


# -- accepted: the canonical form ---------------------------------------------------
@pytest.mark.parametrize("check, value, expected", [
    (policy.mode, "monitor", "monitor"),
    (policy.mode, "enforce", "enforce"),
    (policy.action, "drop", "drop"),
    (policy.action, "reject", "reject"),
    (policy.fragments, "verdict", "verdict"),
    (policy.fragments, "pass", "pass"),
    (policy.reject_mark, 1, 1),
    (policy.reject_mark, 0xFFFFFFFF, 0xFFFFFFFF),
    (policy.events_per_sec, 0, 0),
    (policy.events_per_sec, 1_000_000, 1_000_000),
    (policy.ports, [5060], (5060,)),
    (policy.ports, (65535, 1), (65535, 1)),
    (policy.ports, iter([5080, 5060]), (5080, 5060)),
    (policy.methods, ["INVITE"], ("INVITE",)),
    (policy.methods, ("MESSAGE", "INVITE", "PUBLISH"), ("MESSAGE", "INVITE", "PUBLISH")),
    (policy.trusted, [], ()),
    (policy.trusted, ["10.0.0.0/8", "2001:db8::/32"], ("10.0.0.0/8", "2001:db8::/32")),
    (policy.trusted, ["192.0.2.1", "2001:DB8::1"], ("192.0.2.1/32", "2001:db8::1/128")),
    (policy.trusted, ["10.0.0.0/255.0.0.0"], ("10.0.0.0/8",)),
    (policy.trusted, ["10.0.0.0/8", "10.1.0.0/16"], ("10.0.0.0/8", "10.1.0.0/16")),
    (policy.trusted, ["0.0.0.0/0"], ("0.0.0.0/0",)),
    # IPv4 is looked up as ::ffff:a.b.c.d: written so, it is the IPv4 network
    # (one map entry, listed by Program.trusted() as IPv4)
    (policy.trusted, ["::ffff:10.0.0.0/104"], ("10.0.0.0/8",)),
    (policy.trusted, ["::ffff:0:0/96"], ("0.0.0.0/0",)),
    (policy.trusted, ["::FFFF:192.0.2.7"], ("192.0.2.7/32",)),
    (policy.trusted, ["::/0"], ("::/0",)),  # covers IPv4 too (tests/cases.py)
    (policy.trusted, ["::/81"], ("::/81",)),
    (policy.network, "198.51.100.0/24", "198.51.100.0/24"),
])
def test_accepted(check, value, expected):
    got = check(value)
    assert got == expected and type(got) is type(expected)


# -- refused: where and the problem ---------------------------------------------------
REFUSED = [
    # (check, value, where, problem)
    (policy.mode, "enforcing", "mode",
     "must be 'monitor' or 'enforce', not 'enforcing' (did you mean 'enforce'?)"),
    (policy.mode, "Monitor", "mode",
     "must be 'monitor' or 'enforce', not 'Monitor' (did you mean 'monitor'?)"),
    (policy.mode, True, "mode", "must be 'monitor' or 'enforce', not true"),
    (policy.mode, None, "mode", "must be 'monitor' or 'enforce', not None"),
    (policy.action, "block", "action", "must be 'drop' or 'reject', not 'block'"),
    (policy.fragments, "drop", "fragments", "must be 'verdict' or 'pass', not 'drop'"),
    (policy.reject_mark, 0, "reject_mark",
     "must be a non-zero 32-bit number (1 to 0xffffffff), not 0"),
    (policy.reject_mark, 1 << 32, "reject_mark",
     f"must be a non-zero 32-bit number (1 to 0xffffffff), not {1 << 32}"),
    (policy.reject_mark, True, "reject_mark",
     "must be a non-zero 32-bit number (1 to 0xffffffff), not true"),
    (policy.reject_mark, "0x10", "reject_mark",
     "must be a non-zero 32-bit number (1 to 0xffffffff), not '0x10'"),
    (policy.events_per_sec, -1, "events_per_sec",
     "must be a whole number from 0 to 1000000, not -1"),
    (policy.events_per_sec, 1.5, "events_per_sec",
     "must be a whole number from 0 to 1000000, not 1.5"),
    # ports
    (policy.ports, "5060", "ports", "must be a list, e.g. [5060, 5080], not '5060'"),
    (policy.ports, 5060, "ports", "must be a list, e.g. [5060, 5080], not 5060"),
    (policy.ports, [], "ports", "must not be empty (nothing would be guarded)"),
    (policy.ports, [0], "ports[0]", "must be a whole number from 1 to 65535, not 0"),
    (policy.ports, [5060, 65536], "ports[1]",
     "must be a whole number from 1 to 65535, not 65536"),
    (policy.ports, ["5060"], "ports[0]", "must be a whole number from 1 to 65535, not '5060'"),
    (policy.ports, [True], "ports[0]", "must be a whole number from 1 to 65535, not true"),
    (policy.ports, [5060.0], "ports[0]", "must be a whole number from 1 to 65535, not 5060.0"),
    (policy.ports, [5060, 5080, 5060], "ports[2]", "5060 is listed twice"),
    # methods
    (policy.methods, "INVITE", "methods", "must be a list, e.g. [INVITE], not 'INVITE'"),
    (policy.methods, [], "methods", "must not be empty (nothing would be guarded)"),
    (policy.methods, ["INVITE", "REGISTER"], "methods[1]",
     "REGISTER cannot be guarded: it is how bindings are made "
     "(a phone must be able to register from a new address)"),
    (policy.methods, ["invite"], "methods[0]",
     "unknown SIP method 'invite' (method names are upper case: 'INVITE')"),
    (policy.methods, ["register"], "methods[0]",
     "unknown SIP method 'register' (method names are upper case: 'REGISTER')"),
    (policy.methods, ["INVIET"], "methods[0]",
     "unknown SIP method 'INVIET' (did you mean 'INVITE'?)"),
    (policy.methods, ["XYZZY"], "methods[0]",
     f"unknown SIP method 'XYZZY' (known: {', '.join(consts.METHOD_BITS)})"),
    (policy.methods, [7], "methods[0]", "must be a SIP method name such as INVITE, not 7"),
    (policy.methods, [""], "methods[0]", "must be a SIP method name such as INVITE, not empty"),
    (policy.methods, ["INVITE", "INVITE"], "methods[1]", "INVITE is listed twice"),
    # trusted networks
    (policy.trusted, "10.0.0.0/8", "trusted",
     "must be a list, e.g. [10.0.0.0/8, '2001:db8::/32'], not '10.0.0.0/8'"),
    (policy.trusted, ["10.0.0.1/8"], "trusted[0]",
     "10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?"),
    (policy.trusted, ["10.0.0.0/8", "2001:db8::1/32"], "trusted[1]",
     "2001:db8::1/32 has host bits set: did you mean 2001:db8::/32?"),
    (policy.trusted, ["10.0.0.0/33"], "trusted[0]",
     "'10.0.0.0/33' is not a network such as 10.0.0.0/8 or 2001:db8::/32"),
    (policy.trusted, ["carrier.example.com"], "trusted[0]",
     "'carrier.example.com' is not a network such as 10.0.0.0/8 or 2001:db8::/32"),
    (policy.trusted, [" 10.0.0.0/8"], "trusted[0]",
     "' 10.0.0.0/8' is not a network such as 10.0.0.0/8 or 2001:db8::/32"),
    (policy.trusted, [10], "trusted[0]",
     "must be a network such as 10.0.0.0/8 or 2001:db8::/32, not 10"),
    (policy.trusted, [""], "trusted[0]",
     "must be a network such as 10.0.0.0/8 or 2001:db8::/32, not empty"),
    (policy.trusted, ["10.0.0.0/8", "10.0.0.0/255.0.0.0"], "trusted[1]",
     "10.0.0.0/8 is listed twice"),
    (policy.trusted, ["fe80::1%eth0"], "trusted[0]",
     "fe80::1%eth0: a zone (%...) cannot be part of a trusted network"),
    (policy.trusted, ["10.0.0.0/8", "::ffff:10.0.0.0/104"], "trusted[1]",
     "10.0.0.0/8 is listed twice"),
    (policy.network, "10.0.0.1/8", "trusted",
     "10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?"),
]


@pytest.mark.parametrize("check, value, where, problem", REFUSED)
def test_refused(check, value, where, problem):
    with pytest.raises(PolicyError) as e:
        check(value)
    assert e.value.where == where
    assert e.value.problem.startswith(problem), e.value.problem
    assert str(e.value) == f"{where}: {e.value.problem}"
    assert "\n" not in str(e.value)
    # one line for the operator (NfguardError), and what the program's callers catch
    assert isinstance(e.value, NfguardError) and isinstance(e.value, ValueError)


def test_policy_is_a_base_module():
    """It imports nfguard.consts, nfguard.errors and the standard library only."""
    with open(os.path.join(ROOT, "nfguard", "policy.py")) as f:
        tree = ast.parse(f.read())
    nfguard_imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nfguard"):
            nfguard_imports |= {f"{node.module}.{a.name}" if node.module == "nfguard"
                                else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("nfguard") for a in node.names)
    assert nfguard_imports == {"nfguard.consts", "nfguard.errors"}
    out = subprocess.run(
        [sys.executable, "-c", "import sys, nfguard.policy; "
         "print(sorted(m for m in sys.modules if m.startswith('nfguard')))"],
        cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['nfguard', 'nfguard.consts', 'nfguard.errors', " \
        "'nfguard.policy']"


# -- the same refusals from the config file, replay and the program ----------------
# (key, value): one bad value of one setting, as each of the three takes it.
# replay takes what a command line can say: no reject_mark, no events_per_sec.
SAME = [
    ("mode", "enforcing"), ("mode", "Monitor"), ("action", "block"),
    ("fragments", "drop"),
    ("methods", ["invite"]), ("methods", ["INVITE", "REGISTER"]), ("methods", ["INVIET"]),
    ("methods", ["XYZZY"]), ("methods", ["INVITE", "INVITE"]), ("methods", []),
    ("ports", [0]), ("ports", [5060, 65536]), ("ports", ["sip"]), ("ports", [5060, 5060]),
    ("ports", []),
    ("trusted", ["10.0.0.1/8"]), ("trusted", ["2001:db8::1/32"]), ("trusted", ["10.0.0.0/33"]),
    ("trusted", ["lan"]), ("trusted", ["fe80::1%eth0"]), ("trusted", ["::ffff:10.0.0.1/104"]),
    ("reject_mark", 0), ("reject_mark", 1 << 32), ("events_per_sec", -1),
    ("events_per_sec", 1_000_001),
]
CHECKS = {"mode": policy.mode, "action": policy.action, "fragments": policy.fragments,
          "methods": policy.methods, "ports": policy.ports, "trusted": policy.trusted,
          "reject_mark": policy.reject_mark, "events_per_sec": policy.events_per_sec}


def policy_refusal(key, value) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        CHECKS[key](value)
    return e.value


def config_message(key, value) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config({"interfaces": ["eth0"], "esl": [{"password": "pw"}], key: value}, SRC)
    return str(e.value)


def replay_message(key, value) -> str | None:
    """What `nfguard replay` says (in process, before it compiles anything)."""
    if key in ("reject_mark", "events_per_sec"):
        return None
    if isinstance(value, list):
        argv = [f"--{key}", *value] if key == "trusted" else \
            [f"--{key}", ",".join(str(v) for v in value) or ","]
    else:
        argv = [f"--{key}", value]
    args = build_parser().parse_args(["replay", "--pcap", "/nonexistent.pcap", *argv])
    with pytest.raises(NfguardError) as e:
        replay.run(args)
    return str(e.value)


def program_refusal(prog, key, value) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        if key == "ports":
            prog.set_ports(value)
        elif key == "trusted":
            for cidr in value:
                prog.add_trusted(cidr)
        else:
            prog.configure(**{key: value})
    return e.value


@pytest.mark.parametrize("key, value", SAME)
def test_config_and_replay_refuse_alike(key, value):
    want = policy_refusal(key, value)
    assert config_message(key, value) == f"{SRC}: {want.where}: {want.problem}"
    said = replay_message(key, value)
    assert said is None or said == f"--{key}: {want.problem}"


@pytest.mark.parametrize("key, value", SAME)
def test_program_refuses_alike_and_changes_nothing(prog, key, value):
    want = policy_refusal(key, value)
    before = (prog.config(), prog.ports(), prog.trusted())
    got = program_refusal(prog, key, value)
    assert got.problem == want.problem
    assert str(got) == f"{got.where}: {want.problem}"
    assert (prog.config(), prog.ports(), prog.trusted()) == before


def test_program_takes_what_the_policy_accepts(prog):
    prog.configure(mode="monitor", action="reject", methods=("INVITE", "MESSAGE"),
                   fragments="pass", reject_mark=0xFFFFFFFF, events_per_sec=1_000_000)
    assert prog.config() == {"mode": "monitor", "action": "reject",
                             "methods": ["INVITE", "MESSAGE"], "fragments": "pass",
                             "reject_mark": 0xFFFFFFFF, "events_per_sec": 1_000_000,
                             "ipv6_prefix": 64,
                             "rate_limits": dict.fromkeys(consts.RATE_CLASSES, (0.0, 1))}
    prog.set_ports(iter([5080, 1]))
    assert prog.ports() == [1, 5080]
    for cidr in ("10.0.0.0/255.0.0.0", "192.0.2.7", "2001:DB8::/32", "::/81",
                 "::ffff:203.0.113.0/120"):
        prog.add_trusted(cidr)
    # canonical, as the config stores them: the daemon's set difference with
    # trusted() converges
    assert prog.trusted() == ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "203.0.113.0/24",
                              "::/81"]
    assert prog.trusted() == sorted(policy.trusted(prog.trusted()))
    # removal takes every network trusted() lists
    for cidr in prog.trusted():
        prog.remove_trusted(cidr)
    assert prog.trusted() == []
