"""The daemon's configuration: /etc/nfguard/nfguard.yaml, loaded and checked.

Everything is checked here, before anything is attached, so that a mistake
stops the daemon with one line naming the file, the key and the problem
rather than guarding the wrong thing. Unknown keys are errors (with the
closest known key suggested): a misspelt `mdoe: enforce` must not silently
leave the default in place. A key present with no value is an error too;
to get a default, leave the key out.

No side effects and no look-ups of the system (interfaces, namespaces): the
daemon checks those when it attaches. The one exception is password_file,
which must be readable now rather than fail on the first connect.
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field

import yaml

from nfguard import consts, defaults, policy
from nfguard.daemon.bans import BanPolicy, parse_duration
from nfguard.daemon.esl import Endpoint
from nfguard.errors import NfguardError
from nfguard.policy import show as _show
from nfguard.policy import suggest as _suggest

DEFAULT_PATH = defaults.CONFIG_PATH

XDP_MODES = ("auto", "native", "generic")
MODES = policy.MODES
ACTIONS = policy.ACTIONS
FRAGMENTS = policy.FRAGMENTS
ON_STOP = ("keep", "detach")

IFNAMSIZ = 16  # the kernel's limit, with the terminating NUL
UNIX_PATH_MAX = 108  # sun_path, with the terminating NUL
BPF_FS = "/sys/fs/bpf"


# freeswitch_guard.transports: what the Lua guard judges in monitor mode
# (fsguard.py; in enforce mode it judges every authenticated call)
GUARD_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
GUARD_DEFAULT_TRANSPORTS = ("tcp", "tls", "ws", "wss")


class ConfigError(NfguardError):
    """The configuration cannot be used; the message names file, key and problem."""


@dataclass(frozen=True)
class Interface:
    name: str
    xdp_mode: str = "auto"
    netns: str | None = None


@dataclass(frozen=True)
class Config:
    interfaces: tuple[Interface, ...]
    esl: tuple[Endpoint, ...]
    ports: tuple[int, ...] = (5060,)
    methods: tuple[str, ...] = ("INVITE",)
    mode: str = "monitor"
    action: str = "drop"
    trusted: tuple[str, ...] = ()
    fragments: str = "verdict"
    resync_interval: float = 300.0
    expiry_grace: float = 30.0
    degraded_grace: float = 300.0
    first_sync_timeout: float = 120.0
    alert_interval: float = 300.0
    events_per_sec: int = 100
    reject_mark: int = consts.DEFAULT_REJECT_MARK
    metrics_listen: str | None = None
    on_stop: str = "keep"
    pin_dir: str = defaults.PIN_DIR
    socket: str = defaults.SOCKET
    bans: BanPolicy = field(default_factory=BanPolicy)
    # {class: (requests a second, burst)}, every class (policy.rate_limits)
    rate_limits: dict = field(default_factory=lambda: dict(policy.DEFAULT_RATE_LIMITS))
    # freeswitch_guard: the state the Lua guard in FreeSWITCH reads (fsguard.py)
    guard_enabled: bool = True
    guard_transports: tuple[str, ...] | str = GUARD_DEFAULT_TRANSPORTS  # or "all"


TOP_KEYS = ("interfaces", "esl", "ports", "methods", "mode", "action", "trusted", "fragments",
            "resync_interval", "expiry_grace", "degraded_grace", "first_sync_timeout",
            "alert_interval",
            "events_per_sec", "reject_mark", "metrics", "on_stop", "pin_dir", "socket",
            "bans", "rate_limits", "freeswitch_guard")
GUARD_KEYS = ("enabled", "transports")
BANS_KEYS = ("enabled", "failures", "window", "ban_time", "increment", "max_ban_time",
             "ipv6_prefix")
RATE_CLASS_KEYS = tuple(consts.RATE_CLASSES)
RATE_KEYS = ("rate", "burst")
FAILURES_MAX = 1_000_000
INCREMENT_MAX = 1000.0
INTERFACE_KEYS = ("name", "xdp_mode", "netns")
ESL_KEYS = ("name", "host", "port", "password", "password_file")
METRICS_KEYS = ("listen",)


# -- loading ---------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error:
    plain YAML keeps the last one silently, which hides a stale line."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice in one mapping",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str = DEFAULT_PATH) -> Config:
    """Read, parse and check the file at `path`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (an annotated example is config/nfguard.yaml "
                          "in the source)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects
    except yaml.MarkedYAMLError as e:
        where = ""
        if e.problem_mark is not None:
            where = f"line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}: "
        problem = " ".join(str(e.problem or e).split())  # one line
        raise ConfigError(f"{path}: not valid YAML: {where}{problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return parse_config(data, source=path)


# -- checking --------------------------------------------------------------
def parse_config(data, source: str = "config") -> Config:
    """Check what yaml.safe_load returned and build the Config. The first
    problem found raises ConfigError."""
    c = _Checker(source)
    if data is None:
        c.fail("", "is empty: it needs at least 'interfaces' and 'esl'")
    top = c.mapping("", data, TOP_KEYS, "with keys such as 'interfaces:' and 'esl:'")
    for key in ("interfaces", "esl"):
        if key not in top:
            c.fail(key, "is required")  # after the unknown-key check: 'els' says so first

    kw = {}
    kw["interfaces"] = c.interfaces(top["interfaces"])
    kw["esl"] = c.endpoints(top["esl"])
    if "ports" in top:
        kw["ports"] = c.ports(top["ports"])
    if "methods" in top:
        kw["methods"] = c.methods(top["methods"])
    for key, check in (("mode", policy.mode), ("action", policy.action),
                       ("fragments", policy.fragments)):
        if key in top:
            kw[key] = c.apply(check, top[key])
    if "on_stop" in top:
        kw["on_stop"] = c.choice("on_stop", top["on_stop"], ON_STOP)
    if "trusted" in top:
        kw["trusted"] = c.trusted(top["trusted"])
    for key, positive in (("resync_interval", True), ("expiry_grace", False),
                          ("degraded_grace", False), ("first_sync_timeout", True),
                          ("alert_interval", True)):
        if key in top:
            kw[key] = c.seconds(key, top[key], positive)
    if "events_per_sec" in top:
        kw["events_per_sec"] = c.apply(policy.events_per_sec, top["events_per_sec"])
    if "reject_mark" in top:
        kw["reject_mark"] = c.apply(policy.reject_mark, top["reject_mark"])
    if "metrics" in top:
        metrics = c.mapping("metrics", top["metrics"], METRICS_KEYS,
                            "such as {listen: 127.0.0.1:9477}")
        if "listen" in metrics:
            kw["metrics_listen"] = c.listen("metrics.listen", metrics["listen"])
    if "pin_dir" in top:
        kw["pin_dir"] = c.pin_dir(top["pin_dir"])
    if "socket" in top:
        kw["socket"] = c.socket(top["socket"])
    if "bans" in top:
        kw["bans"] = c.bans(top["bans"])
    if "rate_limits" in top:
        kw["rate_limits"] = c.rate_limits(top["rate_limits"])
    if "freeswitch_guard" in top:
        kw["guard_enabled"], kw["guard_transports"] = c.freeswitch_guard(top["freeswitch_guard"])
    return Config(**kw)


def _join(path: str, key) -> str:
    key = key if isinstance(key, str) and key.isprintable() else _show(key)
    return f"{path}.{key}" if path else key


def _bad_name(name: str) -> bool:
    return any(ch.isspace() or not ch.isprintable() for ch in name)


class _Checker:
    """Checks values; `path` is the key path shown in messages (esl[0].port)."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, problem: str):
        where = f"{self.source}: {path}: " if path else f"{self.source}: "
        raise ConfigError(where + problem)

    def apply(self, check, value):
        """check(value), a check of nfguard.policy; its refusal named by file
        and key (the policy's keys are the config's: methods[1])."""
        try:
            return check(value)
        except policy.PolicyError as e:
            self.fail(e.where, e.problem)

    # -- shapes
    def mapping(self, path, value, known, example) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping {example}, not {_show(value)}")
        for key in value:
            if not isinstance(key, str):
                hint = " (YAML reads a bare yes/no/on/off as true/false)" \
                    if isinstance(key, bool) else ""
                self.fail(_join(path, key), f"unknown key{hint}")
            if key not in known:
                hint = _suggest(key, known) or f" (known keys: {', '.join(known)})"
                self.fail(_join(path, key), f"unknown key{hint}")
        for key, item in value.items():
            if item is None:
                self.fail(_join(path, key), "has no value (to use the default, remove the key)")
        return value

    def seq(self, path, value, example) -> list:
        if not isinstance(value, list):
            self.fail(path, f"must be a list, e.g. {example}, not {_show(value)}")
        for i, item in enumerate(value):
            if item is None:
                self.fail(f"{path}[{i}]", "is empty")
        return value

    def string(self, path, value, what) -> str:
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, (bool, int, float)):
                hint = " (YAML read it as a number or boolean: put it in quotes)"
            self.fail(path, f"must be {what}, not {_show(value)}{hint}")
        if not value:
            self.fail(path, f"must be {what}, not empty")
        return value

    # -- scalars
    def whole(self, path, value, lo, hi) -> int:
        # bool is an int in Python; `port: yes` is not a port
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(path, f"must be a whole number from {lo} to {hi}, not {_show(value)}")
        return value

    def seconds(self, path, value, positive: bool) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (value > 0 if positive else value >= 0))
        if not ok:
            rng = "greater than 0" if positive else "0 or more"
            self.fail(path, f"must be a number of seconds {rng}, not {_show(value)}")
        return float(value)

    def duration(self, path, value, positive: bool = True) -> float:
        """Seconds, or a duration such as '10m', '1h', '7d' (bans.parse_duration)."""
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            self.fail(path, str(e))
        if positive and seconds <= 0:
            self.fail(path, f"must be more than 0 seconds, not {_show(value)}")
        return seconds

    def choice(self, path, value, choices) -> str:
        try:
            return policy.choice(path, value, choices)  # the policy's wording
        except policy.PolicyError as e:
            self.fail(path, e.problem)

    def absolute_path(self, path, value) -> str:
        text = self.string(path, value, "an absolute path")
        if not text.startswith("/") or "\0" in text:
            self.fail(path, f"must be an absolute path, not {_show(value)}")
        return os.path.normpath(text)

    def pin_dir(self, value) -> str:
        # maps pinned elsewhere would not survive (or would not be on bpffs at all)
        norm = self.absolute_path("pin_dir", value)
        if not norm.startswith(BPF_FS + "/"):
            self.fail("pin_dir", f"must be a directory under {BPF_FS}/ (the BPF filesystem), "
                      f"not {_show(value)}")
        return norm

    def socket(self, value) -> str:
        norm = self.absolute_path("socket", value)
        if len(norm.encode()) >= UNIX_PATH_MAX:
            self.fail("socket", f"is too long for a Unix socket path "
                      f"(at most {UNIX_PATH_MAX - 1} bytes)")
        return norm

    def listen(self, path, value) -> str:
        text = self.string(path, value, "'host:port', e.g. 127.0.0.1:9477 or [::1]:9477")
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                sep = ""
        else:
            host, sep, port = text.rpartition(":")
            if ":" in host:
                self.fail(path, f"put an IPv6 address in brackets, e.g. [::1]:9477, "
                          f"not {_show(value)}")
        if not sep or not host or _bad_name(host):
            self.fail(path, f"must be 'host:port', e.g. 127.0.0.1:9477 or [::1]:9477, "
                      f"not {_show(value)}")
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            self.fail(path, f"the port must be a whole number from 1 to 65535, not {port!r}")
        return text

    # -- bans and rate limits
    def bans(self, value) -> BanPolicy:
        items = self.mapping("bans", value, BANS_KEYS,
                             "such as {failures: 5, window: 10m, ban_time: 10m}")
        kw = {}
        if "enabled" in items:
            if not isinstance(items["enabled"], bool):
                self.fail("bans.enabled", f"must be true or false, not {_show(items['enabled'])}")
            kw["enabled"] = items["enabled"]
        if "failures" in items:
            kw["failures"] = self.whole("bans.failures", items["failures"], 1, FAILURES_MAX)
        for key in ("window", "ban_time", "max_ban_time"):
            if key in items:
                kw[key] = self.duration(f"bans.{key}", items[key])
        if "increment" in items:
            inc = items["increment"]
            if isinstance(inc, bool) or not isinstance(inc, (int, float)) or \
                    not 1 <= inc <= INCREMENT_MAX:
                self.fail("bans.increment", f"must be a number from 1 (every ban as long) to "
                          f"{INCREMENT_MAX:.0f}, not {_show(inc)}")
            kw["increment"] = float(inc)
        if "ipv6_prefix" in items:
            try:
                kw["ipv6_prefix"] = policy.ipv6_prefix(items["ipv6_prefix"])
            except policy.PolicyError as e:
                self.fail("bans.ipv6_prefix", e.problem)
        out = BanPolicy(**kw)
        if out.max_ban_time < out.ban_time:
            self.fail("bans.max_ban_time", f"({out.max_ban_time:g} s) must not be shorter than "
                      f"bans.ban_time ({out.ban_time:g} s)")
        return out

    def rate_limits(self, value) -> dict:
        items = self.mapping("rate_limits", value, RATE_CLASS_KEYS,
                             "such as {invite: {rate: 5, burst: 20}}")
        for cls, limit in items.items():
            self.mapping(f"rate_limits.{cls}", limit, RATE_KEYS,
                         "such as {rate: 5, burst: 20} (rate 0: unlimited)")
            for key in RATE_KEYS:
                if key not in limit:
                    self.fail(f"rate_limits.{cls}.{key}", "is required")
        return self.apply(policy.rate_limits, items)

    def freeswitch_guard(self, value) -> tuple[bool, tuple[str, ...] | str]:
        items = self.mapping("freeswitch_guard", value, GUARD_KEYS,
                             "such as {enabled: true, transports: default}")
        enabled, transports = True, GUARD_DEFAULT_TRANSPORTS
        if "enabled" in items:
            if not isinstance(items["enabled"], bool):
                self.fail("freeswitch_guard.enabled",
                          f"must be true or false, not {_show(items['enabled'])}")
            enabled = items["enabled"]
        if "transports" in items:
            transports = self.guard_transports("freeswitch_guard.transports",
                                               items["transports"])
        return enabled, transports

    def guard_transports(self, path, value) -> tuple[str, ...] | str:
        example = f"default, all, or a list such as [{', '.join(GUARD_DEFAULT_TRANSPORTS)}]"
        if isinstance(value, str):
            if value == "default":
                return GUARD_DEFAULT_TRANSPORTS
            if value == "all":
                return "all"
            hint = _suggest(value, ("default", "all", *GUARD_TRANSPORTS))
            if value in GUARD_TRANSPORTS:
                hint = f" (a list of one: [{value}])"
            self.fail(path, f"must be {example}, not {_show(value)}{hint}")
        if not isinstance(value, list):
            self.fail(path, f"must be {example}, not {_show(value)}")
        if not value:
            self.fail(path, "must not be empty (to judge no transport, set "
                      "freeswitch_guard.enabled: false)")
        seen: list[str] = []
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if not isinstance(item, str) or item.lower() not in GUARD_TRANSPORTS:
                hint = _suggest(item.lower(), GUARD_TRANSPORTS) if isinstance(item, str) else ""
                self.fail(where, f"must be one of {', '.join(GUARD_TRANSPORTS)}, "
                          f"not {_show(item)}{hint}")
            name = item.lower()
            if name in seen:
                self.fail(where, f"{name} is listed twice")
            seen.append(name)
        return tuple(t for t in GUARD_TRANSPORTS if t in seen)  # canonical order

    # -- lists (the policy values: nfguard.policy checks them)
    def ports(self, value) -> tuple[int, ...]:
        return self.apply(policy.ports, self.seq("ports", value, "[5060, 5080]"))

    def methods(self, value) -> tuple[str, ...]:
        items = self.seq("methods", value, "[INVITE]")
        for i, m in enumerate(items):  # first, for the YAML hint on a number
            self.string(f"methods[{i}]", m, "a SIP method name such as INVITE")
        return self.apply(policy.methods, items)

    def trusted(self, value) -> tuple[str, ...]:
        items = self.seq("trusted", value, "[10.0.0.0/8, '2001:db8::/32']")
        for i, item in enumerate(items):
            self.string(f"trusted[{i}]", item, "a network such as 10.0.0.0/8 or 2001:db8::/32")
        return self.apply(policy.trusted, items)

    def interfaces(self, value) -> tuple[Interface, ...]:
        items = self.seq("interfaces", value, "[eth0]")
        if not items:
            self.fail("interfaces", "must not be empty (nfguard would guard nothing)")
        out: list[Interface] = []
        for i, item in enumerate(items):
            path = f"interfaces[{i}]"
            if not isinstance(item, (dict, list)):  # a bare name (a number gets "quote it")
                item = {"name": item}
                name_path = path
            else:
                self.mapping(path, item, INTERFACE_KEYS, "such as {name: eth0}, or a name")
                if "name" not in item:
                    self.fail(f"{path}.name", "is required (the device name, e.g. eth0)")
                name_path = f"{path}.name"
            name = self.ifname(name_path, item["name"])
            xdp_mode = "auto"
            if "xdp_mode" in item:
                xdp_mode = self.choice(f"{path}.xdp_mode", item["xdp_mode"], XDP_MODES)
            netns = None
            if "netns" in item:
                netns = self.netns(f"{path}.netns", item["netns"])
            iface = Interface(name, xdp_mode, netns)
            # the same name in two namespaces is two devices; in one, a copy-paste slip
            for j, other in enumerate(out):
                if (other.name, other.netns) == (name, netns):
                    where = f" in netns {netns}" if netns else ""
                    self.fail(name_path, f"{name}{where} is listed twice "
                              f"(also interfaces[{j}])")
            out.append(iface)
        return tuple(out)

    def ifname(self, path, value) -> str:
        # the kernel's dev_valid_name(): < IFNAMSIZ bytes, no '/', ':' or space
        name = self.string(path, value, "an interface name such as eth0")
        if len(name.encode()) >= IFNAMSIZ:
            self.fail(path, f"{name!r} is longer than {IFNAMSIZ - 1} bytes, "
                      "the kernel's limit for interface names")
        if name in (".", "..") or "/" in name or ":" in name or _bad_name(name):
            self.fail(path, f"{name!r} is not a valid interface name "
                      "(no '/', ':' or white space)")
        return name

    def netns(self, path, value) -> str:
        name = self.string(path, value, "a network namespace name (under /var/run/netns)")
        if name in (".", "..") or "/" in name or _bad_name(name):
            self.fail(path, f"{name!r} is not a namespace name (a file name under "
                      "/var/run/netns, as `ip netns` shows it)")
        return name

    def endpoints(self, value) -> tuple[Endpoint, ...]:
        items = self.seq("esl", value, "[{host: 127.0.0.1, port: 8021, password: ...}]")
        if not items:
            self.fail("esl", "must not be empty (nfguard learns registrations from "
                      "FreeSWITCH's Event Socket)")
        out: list[Endpoint] = []
        for i, item in enumerate(items):
            ep = self.endpoint(f"esl[{i}]", item)
            for j, other in enumerate(out):
                if other.name == ep.name:
                    what = "name" if "name" in item else "name (host:port, the default)"
                    self.fail(f"esl[{i}].name", f"{what} {ep.name!r} is already used by "
                              f"esl[{j}]: names must be unique")
            out.append(ep)
        return tuple(out)

    def endpoint(self, path, item) -> Endpoint:
        self.mapping(path, item, ESL_KEYS, "such as {host: 127.0.0.1, port: 8021, password: ...}")
        host = "127.0.0.1"
        if "host" in item:
            host = self.string(f"{path}.host", item["host"], "a host name or address")
            if _bad_name(host):
                self.fail(f"{path}.host", f"{host!r} is not a host name or address")
        port = 8021
        if "port" in item:
            port = self.whole(f"{path}.port", item["port"], 1, 65535)
        if "name" in item:
            name = self.string(f"{path}.name", item["name"], "a name for this FreeSWITCH node")
            if _bad_name(name) or len(name) > 64:
                self.fail(f"{path}.name", f"{name!r}: a node name is at most 64 characters, "
                          "without white space (it is shown in logs and metrics)")
        else:
            name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if ("password" in item) == ("password_file" in item):
            self.fail(path, "give exactly one of password and password_file")
        password = password_file = None
        if "password" in item:
            password = self.string(f"{path}.password", item["password"], "text")
            if "\n" in password or "\r" in password:  # `auth` is one line on the wire
                self.fail(f"{path}.password", "must be on one line")
        else:
            password_file = self.password_file(f"{path}.password_file", item["password_file"])
        return Endpoint(name, host, port, password, password_file)

    def password_file(self, path, value) -> str:
        # read now, so that a wrong path stops the start, not the first connect
        file = self.absolute_path(path, value)
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            self.fail(path, f"cannot read {file}: {e.strerror}")
        except UnicodeDecodeError:
            self.fail(path, f"{file} is not UTF-8 text")
        if not text.strip():
            self.fail(path, f"{file} is empty")
        return file
