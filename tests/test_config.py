"""The daemon's config file: the example, defaults, and every rule (pure logic)."""

import math
import os
import re

import pytest

from nfguard import consts
from nfguard.daemon.config import (
    DEFAULT_PATH,
    TOP_KEYS,
    Config,
    ConfigError,
    Interface,
    load_config,
    parse_config,
)
from nfguard.daemon.esl import Endpoint
from nfguard.errors import NfguardError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "config", "nfguard.yaml")
SRC = "nfguard.yaml"


def minimal(**top):
    """The smallest valid config, with top-level keys replaced or added."""
    data = {"interfaces": ["eth0"], "esl": [{"password": "pw"}]}
    data.update(top)
    return data


def esl(**endpoint):
    return minimal(esl=[endpoint])


def iface(**item):
    return minimal(interfaces=[item])


def error(data, source=SRC) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, source)
    msg = str(e.value)
    assert "\n" not in msg  # one line for the operator
    return msg


# -- the example -------------------------------------------------------------
def test_example_loads_with_the_documented_values():
    cfg = load_config(EXAMPLE)
    assert cfg.interfaces == (Interface("eth0", "auto", None),)
    assert cfg.esl == (Endpoint("fs1", "127.0.0.1", 8021, "ClueCon", None),)
    assert cfg.ports == (5060, 5080)
    assert cfg.methods == ("INVITE",)
    assert cfg.mode == "monitor"  # a new install must never cut phones off
    assert cfg.action == "drop"
    assert cfg.trusted == ()
    assert cfg.fragments == "verdict"
    assert (cfg.resync_interval, cfg.expiry_grace, cfg.degraded_grace, cfg.alert_interval) == \
        (300.0, 30.0, 300.0, 300.0)
    assert cfg.first_sync_timeout == 120.0
    assert cfg.events_per_sec == 100
    assert cfg.reject_mark == 0x4E460001 == consts.DEFAULT_REJECT_MARK
    assert cfg.metrics_listen is None
    assert cfg.on_stop == "keep"
    assert cfg.pin_dir == "/sys/fs/bpf/nfguard"
    assert cfg.socket == "/run/nfguard/nfguard.sock"


def test_example_documents_every_key():
    with open(EXAMPLE) as f:
        text = f.read()
    for key in TOP_KEYS + ("listen", "password_file", "xdp_mode", "netns"):
        assert re.search(rf"^[#\s]*-?\s*{key}:", text, re.MULTILINE), key
    assert "monitor" in text and "nfguard status" in text
    assert "TCP" in text and "TLS" in text


def test_example_is_in_monitor_mode_even_as_parsed_again():
    # the literal line, not just the default: a copy of the file must stay safe
    with open(EXAMPLE) as f:
        assert re.search(r"^mode: monitor\s*$", f.read(), re.MULTILINE)


# -- defaults and accepted values -------------------------------------------
def test_defaults():
    cfg = parse_config(minimal())
    assert cfg == Config(interfaces=(Interface("eth0"),),
                         esl=(Endpoint("127.0.0.1:8021", password="pw"),))
    assert cfg.interfaces[0].xdp_mode == "auto" and cfg.interfaces[0].netns is None
    assert cfg.esl[0].host == "127.0.0.1" and cfg.esl[0].port == 8021
    assert cfg.ports == (5060,)
    assert cfg.methods == ("INVITE",)
    assert (cfg.mode, cfg.action, cfg.fragments, cfg.on_stop) == \
        ("monitor", "drop", "verdict", "keep")
    assert cfg.trusted == ()
    assert (cfg.resync_interval, cfg.expiry_grace, cfg.degraded_grace, cfg.alert_interval) == \
        (300.0, 30.0, 300.0, 300.0)
    assert cfg.first_sync_timeout == 120.0
    assert cfg.events_per_sec == 100
    assert cfg.reject_mark == 0x4E460001
    assert cfg.metrics_listen is None
    assert cfg.pin_dir == "/sys/fs/bpf/nfguard"
    assert cfg.socket == "/run/nfguard/nfguard.sock"
    assert DEFAULT_PATH == "/etc/nfguard/nfguard.yaml"


def test_config_is_frozen():
    cfg = parse_config(minimal())
    with pytest.raises(AttributeError):
        cfg.mode = "enforce"


@pytest.mark.parametrize("data, attr, expected", [
    (minimal(ports=[5080, 5060]), "ports", (5080, 5060)),
    (minimal(ports=[1, 65535]), "ports", (1, 65535)),
    (minimal(methods=["INVITE", "BYE", "PUBLISH"]), "methods", ("INVITE", "BYE", "PUBLISH")),
    (minimal(mode="enforce"), "mode", "enforce"),
    (minimal(action="reject"), "action", "reject"),
    (minimal(fragments="pass"), "fragments", "pass"),
    (minimal(on_stop="detach"), "on_stop", "detach"),
    (minimal(trusted=[]), "trusted", ()),
    (minimal(trusted=["10.0.0.0/8", "2001:db8::/32"]), "trusted", ("10.0.0.0/8", "2001:db8::/32")),
    (minimal(trusted=["192.0.2.1", "2001:DB8::1"]), "trusted", ("192.0.2.1/32", "2001:db8::1/128")),
    (minimal(trusted=["10.0.0.0/255.0.0.0"]), "trusted", ("10.0.0.0/8",)),
    (minimal(trusted=["10.0.0.0/8", "10.1.0.0/16"]), "trusted", ("10.0.0.0/8", "10.1.0.0/16")),
    # IPv4 written as IPv6 is the same trusted-map entry: kept as IPv4 (nfguard.policy)
    (minimal(trusted=["::ffff:10.0.0.0/104", "::/0"]), "trusted", ("10.0.0.0/8", "::/0")),
    (minimal(resync_interval=1), "resync_interval", 1.0),
    (minimal(resync_interval=0.25), "resync_interval", 0.25),
    (minimal(expiry_grace=0), "expiry_grace", 0.0),
    (minimal(degraded_grace=0), "degraded_grace", 0.0),
    (minimal(alert_interval=60), "alert_interval", 60.0),
    (minimal(events_per_sec=0), "events_per_sec", 0),
    (minimal(events_per_sec=1_000_000), "events_per_sec", 1_000_000),
    (minimal(reject_mark=1), "reject_mark", 1),
    (minimal(reject_mark=0xFFFFFFFF), "reject_mark", 0xFFFFFFFF),
    (minimal(metrics={}), "metrics_listen", None),
    (minimal(metrics={"listen": "127.0.0.1:9477"}), "metrics_listen", "127.0.0.1:9477"),
    (minimal(metrics={"listen": "[::1]:9477"}), "metrics_listen", "[::1]:9477"),
    (minimal(metrics={"listen": "localhost:9477"}), "metrics_listen", "localhost:9477"),
    (minimal(pin_dir="/sys/fs/bpf/other/"), "pin_dir", "/sys/fs/bpf/other"),
    (minimal(socket="/run/x//nfguard.sock"), "socket", "/run/x/nfguard.sock"),
    (iface(name="eth1", xdp_mode="native", netns="blue"), "interfaces",
     (Interface("eth1", "native", "blue"),)),
    (iface(name="eth1", xdp_mode="generic"), "interfaces", (Interface("eth1", "generic"),)),
    (minimal(interfaces=["eth0", {"name": "eth0", "netns": "blue"}]), "interfaces",
     (Interface("eth0"), Interface("eth0", netns="blue"))),  # two devices, two namespaces
    (minimal(interfaces=["a" * 15]), "interfaces", (Interface("a" * 15),)),
    (esl(name="fs2", host="pbx.example.com", port=8022, password="s3cret"), "esl",
     (Endpoint("fs2", "pbx.example.com", 8022, "s3cret", None),)),
    (esl(host="::1", password="pw"), "esl", (Endpoint("[::1]:8021", "::1", 8021, "pw"),)),
    (minimal(esl=[{"password": "a"}, {"port": 8022, "password": "b"}]), "esl",
     (Endpoint("127.0.0.1:8021", password="a"), Endpoint("127.0.0.1:8022", port=8022,
                                                         password="b"))),
])
def test_accepted_values(data, attr, expected):
    value = getattr(parse_config(data), attr)
    assert value == expected
    assert type(value) is type(expected)  # seconds are floats even when written 300


# -- every rule: the message names the key and the problem -------------------
@pytest.mark.parametrize("data, key, problem", [
    # the top level
    (None, None, "is empty: it needs at least 'interfaces' and 'esl'"),
    ([1, 2], None, "must be a mapping with keys such as 'interfaces:' and 'esl:', not a list"),
    ("mode: enforce", None, "must be a mapping"),
    ({"esl": [{"password": "pw"}]}, "interfaces", "is required"),
    ({"interfaces": ["eth0"]}, "esl", "is required"),
    # unknown keys, with the closest known one
    (minimal(mdoe="enforce"), "mdoe", "unknown key (did you mean 'mode'?)"),
    ({"interfaces": ["eth0"], "els": []}, "els", "unknown key (did you mean 'esl'?)"),
    (minimal(trusetd=[]), "trusetd", "unknown key (did you mean 'trusted'?)"),
    (minimal(zzzz=1), "zzzz", "unknown key (known keys: interfaces, esl, ports,"),
    (minimal(Mode="enforce"), "Mode", "unknown key (did you mean 'mode'?)"),
    ({**minimal(), True: "keep"}, "true", "unknown key (YAML reads a bare yes/no/on/off"),
    (minimal(metrics={"lisen": "127.0.0.1:9477"}), "metrics.lisen",
     "unknown key (did you mean 'listen'?)"),
    (iface(name="eth0", xdp="native"), "interfaces[0].xdp",
     "unknown key (did you mean 'xdp_mode'?)"),
    (esl(password="a", pasword_file="/x"), "esl[0].pasword_file",
     "unknown key (did you mean 'password_file'?)"),
    (esl(password="a", prot=8021), "esl[0].prot", "unknown key (did you mean 'port'?)"),
    # a key with no value
    (minimal(mode=None), "mode", "has no value (to use the default, remove the key)"),
    (minimal(trusted=None), "trusted", "has no value"),
    (esl(password=None), "esl[0].password", "has no value"),
    (minimal(ports=[5060, None]), "ports[1]", "is empty"),
    # ports
    (minimal(ports="5060"), "ports", "must be a list, e.g. [5060, 5080], not '5060'"),
    (minimal(ports=5060), "ports", "must be a list, e.g. [5060, 5080], not 5060"),
    (minimal(ports=[]), "ports", "must not be empty"),
    (minimal(ports=["abc"]), "ports[0]", "must be a whole number from 1 to 65535, not 'abc'"),
    (minimal(ports=[0]), "ports[0]", "must be a whole number from 1 to 65535, not 0"),
    (minimal(ports=[65536]), "ports[0]", "must be a whole number from 1 to 65535, not 65536"),
    (minimal(ports=[True]), "ports[0]", "must be a whole number from 1 to 65535, not true"),
    (minimal(ports=[5060.0]), "ports[0]", "must be a whole number from 1 to 65535, not 5060.0"),
    (minimal(ports=[5060, 5080, 5060]), "ports[2]", "5060 is listed twice"),
    # methods
    (minimal(methods="INVITE"), "methods", "must be a list, e.g. [INVITE], not 'INVITE'"),
    (minimal(methods=[]), "methods", "must not be empty"),
    (minimal(methods=["INVITE", "REGISTER"]), "methods[1]",
     "REGISTER cannot be guarded: it is how bindings are made"),
    (minimal(methods=["invite"]), "methods[0]",
     "unknown SIP method 'invite' (method names are upper case: 'INVITE')"),
    (minimal(methods=["register"]), "methods[0]", "method names are upper case: 'REGISTER'"),
    (minimal(methods=["INVIET"]), "methods[0]",
     "unknown SIP method 'INVIET' (did you mean 'INVITE'?)"),
    (minimal(methods=["XYZZY"]), "methods[0]", "unknown SIP method 'XYZZY' (known: INVITE, ACK,"),
    (minimal(methods=[7]), "methods[0]", "must be a SIP method name such as INVITE, not 7"),
    (minimal(methods=["INVITE", "INVITE"]), "methods[1]", "INVITE is listed twice"),
    # choices
    (minimal(mode="enforced"), "mode",
     "must be 'monitor' or 'enforce', not 'enforced' (did you mean 'enforce'?)"),
    (minimal(mode="Monitor"), "mode", "not 'Monitor' (did you mean 'monitor'?)"),
    (minimal(mode=True), "mode", "must be 'monitor' or 'enforce', not true"),
    (minimal(action="block"), "action", "must be 'drop' or 'reject', not 'block'"),
    (minimal(fragments="drop"), "fragments", "must be 'verdict' or 'pass', not 'drop'"),
    (minimal(on_stop="stop"), "on_stop", "must be 'keep' or 'detach', not 'stop'"),
    (minimal(on_stop=["keep"]), "on_stop", "must be 'keep' or 'detach', not a list"),
    (iface(name="eth0", xdp_mode="fast"), "interfaces[0].xdp_mode",
     "must be 'auto', 'native' or 'generic', not 'fast'"),
    (iface(name="eth0", xdp_mode="Native"), "interfaces[0].xdp_mode", "(did you mean 'native'?)"),
    # trusted networks
    (minimal(trusted="10.0.0.0/8"), "trusted", "must be a list"),
    (minimal(trusted=["10.0.0.1/8"]), "trusted[0]",
     "10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?"),
    (minimal(trusted=["10.0.0.0/8", "2001:db8::1/32"]), "trusted[1]",
     "2001:db8::1/32 has host bits set: did you mean 2001:db8::/32?"),
    (minimal(trusted=["10.0.0.0/33"]), "trusted[0]",
     "'10.0.0.0/33' is not a network such as 10.0.0.0/8 or 2001:db8::/32"),
    (minimal(trusted=["carrier.example.com"]), "trusted[0]", "is not a network"),
    (minimal(trusted=[10]), "trusted[0]", "must be a network such as 10.0.0.0/8"),
    (minimal(trusted=["10.0.0.0/8", "10.0.0.0/255.0.0.0"]), "trusted[1]",
     "10.0.0.0/8 is listed twice"),
    (minimal(trusted=["fe80::1%eth0"]), "trusted[0]", "a zone (%...) cannot be part"),
    (minimal(trusted=["10.0.0.0/8", "::ffff:10.0.0.0/104"]), "trusted[1]",
     "10.0.0.0/8 is listed twice"),
    (minimal(trusted=[""]), "trusted[0]", "must be a network such as 10.0.0.0/8"),
    # seconds
    *[(minimal(**{key: bad}), key, f"must be a number of seconds greater than 0, not {shown}")
      for key in ("resync_interval", "first_sync_timeout", "alert_interval")
      for bad, shown in ((0, "0"), (-1, "-1"), ("300", "'300'"), ("5m", "'5m'"),
                         (True, "true"), (math.inf, "inf"), (math.nan, "nan"))],
    *[(minimal(**{key: bad}), key, f"must be a number of seconds 0 or more, not {shown}")
      for key in ("expiry_grace", "degraded_grace")
      for bad, shown in ((-1, "-1"), (-0.5, "-0.5"), ("30", "'30'"), (False, "false"))],
    # events_per_sec and reject_mark
    *[(minimal(events_per_sec=bad), "events_per_sec",
       f"must be a whole number from 0 to 1000000, not {shown}")
      for bad, shown in ((-1, "-1"), (1_000_001, "1000001"), (1.5, "1.5"), (True, "true"),
                         ("100", "'100'"))],
    *[(minimal(reject_mark=bad), "reject_mark",
       f"must be a non-zero 32-bit number (1 to 0xffffffff), not {shown}")
      for bad, shown in ((0, "0"), (1 << 32, str(1 << 32)), (-1, "-1"), (True, "true"),
                         ("0x4e460001", "'0x4e460001'"))],
    # metrics
    (minimal(metrics="127.0.0.1:9477"), "metrics",
     "must be a mapping such as {listen: 127.0.0.1:9477}, not '127.0.0.1:9477'"),
    (minimal(metrics={"listen": 9477}), "metrics.listen",
     "must be 'host:port', e.g. 127.0.0.1:9477 or [::1]:9477, not 9477 (YAML read it as"),
    (minimal(metrics={"listen": "127.0.0.1"}), "metrics.listen", "must be 'host:port'"),
    (minimal(metrics={"listen": ":9477"}), "metrics.listen", "must be 'host:port'"),
    (minimal(metrics={"listen": "::1:9477"}), "metrics.listen",
     "put an IPv6 address in brackets, e.g. [::1]:9477"),
    (minimal(metrics={"listen": "[::1]9477"}), "metrics.listen", "must be 'host:port'"),
    (minimal(metrics={"listen": "[localhost]:9477"}), "metrics.listen", "must be 'host:port'"),
    (minimal(metrics={"listen": "127.0.0.1:0"}), "metrics.listen",
     "the port must be a whole number from 1 to 65535, not '0'"),
    (minimal(metrics={"listen": "127.0.0.1:65536"}), "metrics.listen", "not '65536'"),
    (minimal(metrics={"listen": "127.0.0.1:http"}), "metrics.listen", "not 'http'"),
    # paths
    (minimal(pin_dir="bpf/nfguard"), "pin_dir", "must be an absolute path, not 'bpf/nfguard'"),
    (minimal(pin_dir="/tmp/nfguard"), "pin_dir",
     "must be a directory under /sys/fs/bpf/ (the BPF filesystem), not '/tmp/nfguard'"),
    (minimal(pin_dir="/sys/fs/bpf"), "pin_dir", "must be a directory under /sys/fs/bpf/"),
    (minimal(pin_dir="/sys/fs/bpf/../nfguard"), "pin_dir",
     "must be a directory under /sys/fs/bpf/"),
    (minimal(pin_dir="/sys/fs/bpfx"), "pin_dir", "must be a directory under /sys/fs/bpf/"),
    (minimal(socket="nfguard.sock"), "socket", "must be an absolute path, not 'nfguard.sock'"),
    (minimal(socket=5), "socket", "must be an absolute path, not 5"),
    (minimal(socket="/run/" + "s" * 110), "socket", "is too long for a Unix socket path"),
    # interfaces
    (minimal(interfaces="eth0"), "interfaces", "must be a list, e.g. [eth0], not 'eth0'"),
    (minimal(interfaces=[]), "interfaces", "must not be empty"),
    (minimal(interfaces=[""]), "interfaces[0]",
     "must be an interface name such as eth0, not empty"),
    (minimal(interfaces=[0]), "interfaces[0]",
     "must be an interface name such as eth0, not 0 (YAML read it as a number or boolean"),
    (minimal(interfaces=["a" * 16]), "interfaces[0]", "is longer than 15 bytes"),
    (minimal(interfaces=["abcdefghijklmn\u00e9"]), "interfaces[0]", "is longer than 15 bytes"),
    (minimal(interfaces=["eth/0"]), "interfaces[0]", "'eth/0' is not a valid interface name"),
    (minimal(interfaces=["eth 0"]), "interfaces[0]", "'eth 0' is not a valid interface name"),
    (minimal(interfaces=["eth0\t"]), "interfaces[0]", "is not a valid interface name"),
    (minimal(interfaces=["eth0:1"]), "interfaces[0]", "is not a valid interface name"),
    (minimal(interfaces=[".."]), "interfaces[0]", "is not a valid interface name"),
    (minimal(interfaces=[["eth0"]]), "interfaces[0]", "must be a mapping such as {name: eth0}"),
    (iface(xdp_mode="native"), "interfaces[0].name", "is required"),
    (iface(name="eth 0"), "interfaces[0].name", "is not a valid interface name"),
    (minimal(interfaces=["eth0", "eth1", "eth0"]), "interfaces[2]",
     "eth0 is listed twice (also interfaces[0])"),
    (minimal(interfaces=["eth0", {"name": "eth0", "xdp_mode": "native"}]), "interfaces[1].name",
     "eth0 is listed twice"),
    (minimal(interfaces=[{"name": "veth0", "netns": "a"}, {"name": "veth0", "netns": "a"}]),
     "interfaces[1].name", "veth0 in netns a is listed twice"),
    (iface(name="eth0", netns="a/b"), "interfaces[0].netns", "'a/b' is not a namespace name"),
    (iface(name="eth0", netns=".."), "interfaces[0].netns", "is not a namespace name"),
    (iface(name="eth0", netns=""), "interfaces[0].netns", "must be a network namespace name"),
    # esl
    (minimal(esl={"password": "pw"}), "esl", "must be a list"),
    (minimal(esl=[]), "esl", "must not be empty"),
    (minimal(esl=["127.0.0.1:8021"]), "esl[0]", "must be a mapping such as {host: 127.0.0.1"),
    (esl(), "esl[0]", "give exactly one of password and password_file"),
    (esl(host="10.0.0.5"), "esl[0]", "give exactly one of password and password_file"),
    (esl(password="a", password_file="/etc/hostname"), "esl[0]", "give exactly one of"),
    (esl(password=1234), "esl[0].password", "must be text, not 1234 (YAML read it as a number"),
    (esl(password=""), "esl[0].password", "must be text, not empty"),
    (esl(password="a\nb"), "esl[0].password", "must be on one line"),
    (esl(password="pw", port="abc"), "esl[0].port",
     "must be a whole number from 1 to 65535, not 'abc'"),
    (esl(password="pw", port=0), "esl[0].port", "must be a whole number from 1 to 65535, not 0"),
    (esl(password="pw", port=True), "esl[0].port", "not true"),
    (esl(password="pw", port=70000), "esl[0].port", "not 70000"),
    (esl(password="pw", host=""), "esl[0].host", "must be a host name or address, not empty"),
    (esl(password="pw", host="fs 1"), "esl[0].host", "'fs 1' is not a host name or address"),
    (esl(password="pw", name=""), "esl[0].name", "must be a name for this FreeSWITCH node"),
    (esl(password="pw", name="fs 1"), "esl[0].name", "at most 64 characters, without white space"),
    (esl(password="pw", name="f" * 65), "esl[0].name", "at most 64 characters"),
    (esl(password="pw", password_file="relative/pw"), "esl[0]", "give exactly one of"),
    (esl(password_file="relative/pw"), "esl[0].password_file",
     "must be an absolute path, not 'relative/pw'"),
    (minimal(esl=[{"name": "fs", "password": "a"}, {"name": "fs", "host": "h", "password": "b"}]),
     "esl[1].name", "name 'fs' is already used by esl[0]: names must be unique"),
    (minimal(esl=[{"password": "a"}, {"password": "b"}]), "esl[1].name",
     "name (host:port, the default) '127.0.0.1:8021' is already used by esl[0]"),
])
def test_rejected(data, key, problem):
    msg = error(data)
    prefix = f"{SRC}: {key}: " if key else f"{SRC}: "
    assert msg.startswith(prefix), msg
    assert problem in msg, msg
    assert isinstance(ConfigError(msg), NfguardError)


def test_message_names_the_file_given_and_defaults_to_config():
    msg = error(esl(password="pw", port="abc"), source="/etc/nfguard/nfguard.yaml")
    assert msg == ("/etc/nfguard/nfguard.yaml: esl[0].port: must be a whole number from 1 "
                   "to 65535, not 'abc'")
    with pytest.raises(ConfigError, match=r"^config: mode: "):
        parse_config(minimal(mode="x"))


def test_unknown_key_is_reported_before_a_missing_required_one():
    # `els:` is a typo for esl: saying "esl is required" would hide it
    assert error({"interfaces": ["eth0"], "els": [{"password": "x"}]}).startswith(
        f"{SRC}: els: unknown key")


def test_first_error_in_file_order_of_keys():
    # interfaces are checked before esl, esl before the rest
    msg = error(minimal(interfaces=[], esl=[], mode="x"))
    assert msg.startswith(f"{SRC}: interfaces: ")


def test_long_values_are_shortened_in_messages():
    msg = error(minimal(mode="x" * 500))
    assert len(msg) < 200 and "..." in msg


# -- password_file -------------------------------------------------------------
def test_password_file_that_exists(tmp_path):
    pw = tmp_path / "esl-password"
    pw.write_text("s3cret\n")
    cfg = parse_config(esl(name="fs1", password_file=str(pw)))
    assert cfg.esl == (Endpoint("fs1", password_file=str(pw)),)
    assert cfg.esl[0].password is None
    assert cfg.esl[0].read_password() == "s3cret"


def test_password_file_missing(tmp_path):
    missing = tmp_path / "nope"
    msg = error(esl(password_file=str(missing)))
    assert msg == f"{SRC}: esl[0].password_file: cannot read {missing}: No such file or directory"


def test_password_file_is_a_directory(tmp_path):
    msg = error(esl(password_file=str(tmp_path)))
    assert msg == f"{SRC}: esl[0].password_file: cannot read {tmp_path}: Is a directory"


def test_password_file_empty(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(" \n")
    assert error(esl(password_file=str(pw))) == f"{SRC}: esl[0].password_file: {pw} is empty"


# -- load_config --------------------------------------------------------------
def write(tmp_path, text, name="nfguard.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD = """\
interfaces: [eth0]
esl:
  - password: pw
"""


def test_load_config_reads_yaml(tmp_path):
    path = write(tmp_path, GOOD + "reject_mark: 0x10\nmode: enforce\n"
                 "trusted: [10.0.0.0/8, '2001:db8::/32']\nmetrics:\n  listen: 127.0.0.1:9477\n")
    cfg = load_config(path)
    assert cfg.reject_mark == 16  # YAML hex
    assert cfg.mode == "enforce"
    assert cfg.trusted == ("10.0.0.0/8", "2001:db8::/32")
    assert cfg.metrics_listen == "127.0.0.1:9477"


def test_load_config_names_the_path_in_parse_errors(tmp_path):
    path = write(tmp_path, GOOD + "mdoe: enforce\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: mdoe: unknown key (did you mean 'mode'?)"


@pytest.mark.parametrize("text, key, problem", [
    (GOOD + "mode: on\n", "mode", "not true"),  # YAML 1.1: on is a boolean
    ("interfaces: [eth0]\nesl:\n  - password: 0123\n", "esl[0].password",
     "not 83 (YAML read it as a number or boolean: put it in quotes)"),  # octal
    (GOOD + "ports: 5060\n", "ports", "must be a list"),
    (GOOD + "trusted:\n", "trusted", "has no value"),
])
def test_load_config_yaml_pitfalls(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: {key}: ") and problem in str(e.value), str(e.value)


def test_load_config_missing_file(tmp_path):
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: no such file")):
        load_config(path)


def test_load_config_directory(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: cannot read: Is a directory"


@pytest.mark.parametrize("text, problem", [
    ("mode: [monitor\n", "not valid YAML: line 2, column 1: "),
    ("interfaces: [eth0]\n  mode: x: y\n", "not valid YAML: line 2"),
    ("interfaces:\n\t- eth0\n", "not valid YAML: line 2, column 1: "),
    ("mode: monitor\nmode: enforce\n",
     "not valid YAML: line 2, column 1: key 'mode' appears twice"),
    ("esl:\n  - password: a\n    password: b\n", "key 'password' appears twice"),
    ("mode: !!python/object:os.system x\n", "not valid YAML"),  # safe: no object tags
])
def test_load_config_invalid_yaml(tmp_path, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and problem in msg and "\n" not in msg, msg


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n# mode: enforce\n", "---\n"])
def test_load_config_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: is empty: it needs at least 'interfaces' and 'esl'"


@pytest.mark.parametrize("text, shown", [("- eth0\n", "a list"), ("eth0\n", "'eth0'"),
                                         ("42\n", "42")])
def test_load_config_top_level_not_a_mapping(tmp_path, text, shown):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: must be a mapping with keys such as 'interfaces:' and "
                            f"'esl:', not {shown}")


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "nfguard.yaml"
    path.write_bytes(b"mode: \xff\xfe\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not UTF-8 text")):
        load_config(str(path))


def test_merge_keys_are_not_duplicates(tmp_path):
    # YAML anchors and merges are legitimate and must still load
    path = write(tmp_path, "interfaces: [eth0]\nesl:\n  - &fs {host: 10.0.0.1, password: pw}\n"
                 "  - {<<: *fs, host: 10.0.0.2}\n")
    cfg = load_config(path)
    assert [e.host for e in cfg.esl] == ["10.0.0.1", "10.0.0.2"]
    assert [e.password for e in cfg.esl] == ["pw", "pw"]


# -- bans and rate limits --------------------------------------------------------
def test_bans_and_rate_limits_default_to_the_documented_values():
    from nfguard import policy
    from nfguard.daemon.bans import BanPolicy

    cfg = parse_config(minimal())
    assert cfg.bans == BanPolicy(enabled=True, failures=5, window=600.0, ban_time=600.0,
                                 increment=2.0, max_ban_time=7 * 86400.0, ipv6_prefix=64)
    assert cfg.rate_limits == policy.DEFAULT_RATE_LIMITS
    # the example says the same
    ex = load_config(EXAMPLE)
    assert ex.bans == cfg.bans and ex.rate_limits == cfg.rate_limits


def test_bans_take_durations_with_units_and_rate_limits_per_class():
    cfg = parse_config(minimal(
        bans={"enabled": False, "failures": 3, "window": "5m", "ban_time": 3600,
              "increment": 1.5, "max_ban_time": "2d", "ipv6_prefix": 56},
        rate_limits={"invite": {"rate": 0, "burst": 1}, "other": {"rate": 2.5, "burst": 10}}))
    b = cfg.bans
    assert (b.enabled, b.failures, b.window, b.ban_time, b.increment, b.max_ban_time,
            b.ipv6_prefix) == (False, 3, 300.0, 3600.0, 1.5, 172800.0, 56)
    assert cfg.rate_limits["invite"] == (0.0, 1) and cfg.rate_limits["other"] == (2.5, 10)
    assert cfg.rate_limits["register"] == (5.0, 40)  # the default of a class not given


@pytest.mark.parametrize("top, key, words", [
    ({"bans": {"failures": 0}}, "bans.failures", "whole number from 1"),
    ({"bans": {"failures": True}}, "bans.failures", "whole number"),
    ({"bans": {"window": "10 minutes"}}, "bans.window", "duration such as"),
    ({"bans": {"ban_time": 0}}, "bans.ban_time", "more than 0"),
    ({"bans": {"ban_time": "-5m"}}, "bans.ban_time", "duration"),
    ({"bans": {"increment": 0.5}}, "bans.increment", "from 1"),
    ({"bans": {"ipv6_prefix": 129}}, "bans.ipv6_prefix", "from 1 to 128"),
    ({"bans": {"max_ban_time": "5m"}}, "bans.max_ban_time", "shorter than bans.ban_time"),
    ({"bans": {"enabled": "yes"}}, "bans.enabled", "true or false"),
    ({"bans": {"ban_tiem": 5}}, "bans.ban_tiem", "did you mean 'ban_time'"),
    ({"bans": [5]}, "bans", "must be a mapping"),
    ({"rate_limits": {"invites": {"rate": 1, "burst": 1}}}, "rate_limits.invites",
     "did you mean 'invite'"),
    ({"rate_limits": {"invite": {"rate": 1}}}, "rate_limits.invite.burst", "is required"),
    ({"rate_limits": {"invite": {"rate": -1, "burst": 1}}}, "rate_limits.invite", "rate must"),
    ({"rate_limits": {"register": {"rate": 1, "burst": 0}}}, "rate_limits.register",
     "burst must"),
    ({"rate_limits": {"other": 5}}, "rate_limits.other", "must be a mapping"),
])
def test_bad_bans_and_rate_limits_name_the_key(top, key, words):
    msg = error(minimal(**top))
    assert msg.startswith(f"{SRC}: {key}: "), msg
    assert words in msg, msg


# -- freeswitch_guard --------------------------------------------------------------
def test_freeswitch_guard_defaults_and_the_example():
    cfg = parse_config(minimal())
    assert cfg.guard_enabled is True and cfg.guard_transports == ("tcp", "tls", "ws", "wss")
    ex = load_config(EXAMPLE)
    assert (ex.guard_enabled, ex.guard_transports) == (cfg.guard_enabled, cfg.guard_transports)


@pytest.mark.parametrize("value, enabled, transports", [
    ({}, True, ("tcp", "tls", "ws", "wss")),
    ({"enabled": False}, False, ("tcp", "tls", "ws", "wss")),
    ({"transports": "default"}, True, ("tcp", "tls", "ws", "wss")),
    ({"transports": "all"}, True, "all"),
    ({"transports": ["WSS", "udp", "tls"]}, True, ("udp", "tls", "wss")),  # canonical order
    ({"transports": ["udp", "tcp", "tls", "ws", "wss"]}, True,
     ("udp", "tcp", "tls", "ws", "wss")),
])
def test_freeswitch_guard_accepted(value, enabled, transports):
    cfg = parse_config(minimal(freeswitch_guard=value))
    assert (cfg.guard_enabled, cfg.guard_transports) == (enabled, transports)


@pytest.mark.parametrize("value, key, words", [
    ([True], "freeswitch_guard", "must be a mapping"),
    ({"enabled": "yes"}, "freeswitch_guard.enabled", "true or false, not 'yes'"),
    ({"enabled": None}, "freeswitch_guard.enabled", "has no value"),
    ({"enable": True}, "freeswitch_guard.enable", "did you mean 'enabled'"),
    ({"transports": "everything"}, "freeswitch_guard.transports",
     "must be default, all, or a list"),
    ({"transports": "tls"}, "freeswitch_guard.transports", "a list of one: [tls]"),
    ({"transports": "defualt"}, "freeswitch_guard.transports", "did you mean 'default'"),
    ({"transports": []}, "freeswitch_guard.transports", "must not be empty"),
    ({"transports": ["tls", "tsl"]}, "freeswitch_guard.transports[1]",
     "one of udp, tcp, tls, ws, wss, not 'tsl' (did you mean 'tls'?)"),
    ({"transports": ["tls", 5]}, "freeswitch_guard.transports[1]", "not 5"),
    ({"transports": ["tls", "TLS"]}, "freeswitch_guard.transports[1]", "tls is listed twice"),
    ({"transports": 5}, "freeswitch_guard.transports", "not 5"),
])
def test_freeswitch_guard_rejected(value, key, words):
    msg = error(minimal(freeswitch_guard=value))
    assert msg.startswith(f"{SRC}: {key}: "), msg
    assert words in msg, msg


def test_freeswitch_guard_misspelt_top_key():
    assert "did you mean 'freeswitch_guard'" in error(minimal(freeswitch_gaurd={}))
