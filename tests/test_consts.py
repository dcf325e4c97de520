"""nfguard/consts.py mirrors bpf/nfguard_consts.h: check every number."""

import os
import re

from nfguard import consts

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "bpf", "nfguard_consts.h")


def _header():
    with open(HEADER) as f:
        return f.read()


def _define(name):
    """The value of #define NFG_<name>: a number, or a parenthesised
    quotient of two numbers such as (65536 / 64)."""
    m = re.search(rf"#define NFG_{name} (0x[0-9a-fA-F]+|\d+)u?\b", _header())
    if m:
        return int(m.group(1), 0)
    m = re.search(rf"#define NFG_{name} \((\d+) / (\d+)\)", _header())
    assert m, f"NFG_{name} not defined in {HEADER}"
    return int(m.group(1)) // int(m.group(2))


def test_limits_match():
    for name in ["SCAN_MAX", "USER_MAX", "REALM_MAX", "MAX_CRED_HDRS", "MAX_VLAN",
                 "MAX_EXT_HDRS", "LEADING_MAX", "LWS_MAX", "QUOTES_MAX", "MAX_LINES",
                 "LINE_STEPS", "PARAM_STEPS", "STEPS_PER_CALL", "STAGE_SCAN",
                 "STAGE_PARAMS", "STAGES", "SCAN_STRIDE", "METHOD_SPAN"]:
        assert getattr(consts, name) == _define(name), name


def test_map_sizes_and_layout_version_match():
    for name in ["LAYOUT_VERSION", "BINDINGS_MAX", "TRUSTED_MAX", "BANS_MAX", "BUCKETS_MAX",
                 "HANDOFF_MAX", "SEEN_MAX", "SOCK_IFACES_MAX", "PORT_WORDS",
                 "BAN_FILTER_LOG2"]:
        assert getattr(consts, name) == _define(name), name


def test_no_bare_limits_in_the_c():
    """Every limit of the C is named in nfguard_consts.h: the other files
    define none of their own."""
    bpf = os.path.dirname(HEADER)
    for f in sorted(os.listdir(bpf)):
        if f.endswith((".c", ".h")) and f != "nfguard_consts.h":
            with open(os.path.join(bpf, f)) as fh:
                found = re.findall(r"#define NFG_\w*(?:MAX|STEPS|SPAN|LIMIT)\b", fh.read())
            assert not found, f"{f}: {found} belong in nfguard_consts.h"


def test_modes_actions_and_marks_match():
    for name in ["MODE_MONITOR", "MODE_ENFORCE", "ACTION_DROP", "ACTION_REJECT",
                 "FRAG_VERDICT", "FRAG_PASS", "ACT_PASS", "ACT_DROP", "ACT_MARK",
                 "META_MAGIC", "DEFAULT_REJECT_MARK", "RC_COUNT", "RC_NONE", "BAN_MANUAL",
                 "JUDGE_XDP", "JUDGE_SOCKET"]:
        assert getattr(consts, name) == _define(name), name


def test_rate_classes_match():
    for cls, index in consts.RATE_CLASSES.items():
        assert _define(f"RC_{cls.upper()}") == index, cls
    assert len(consts.RATE_CLASSES) == consts.RC_COUNT


def test_method_bits_match():
    for method, bit in consts.METHOD_BITS.items():
        assert _define(f"M_{method}") == bit, method
    assert "REGISTER" not in consts.METHOD_BITS


def _enum_values():
    """name -> value of enum nfg_reason, computed as C does."""
    body = re.search(r"enum nfg_reason \{(.*?)\};", _header(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    values, nxt = {}, 0
    for item in filter(None, (i.strip() for i in body.split(","))):
        name, _, expr = (x.strip() for x in item.partition("="))
        if expr:
            nxt = values[expr[len("NFG_R_"):]] if expr.startswith("NFG_R_") else int(expr, 0)
        values[name[len("NFG_R_"):]] = nxt
        nxt += 1
    return values


def test_reasons_match_enum_values():
    values = _enum_values()
    for i, name in enumerate(consts.REASONS):
        assert values[name.upper()] == i, name
    assert values["COUNT"] == len(consts.REASONS)
    assert values["FIRST_VERDICT"] == consts.FIRST_VERDICT == consts.REASON_IDS["not_bound"]
    assert values["FIRST_FLOOD"] == consts.FIRST_FLOOD == consts.REASON_IDS["banned"]


def test_methods_mask():
    assert consts.methods_mask(["INVITE", "MESSAGE"]) == 1 | 1 << 5
    for bad in (["REGISTER"], ["invite"], ["FOO"]):
        try:
            consts.methods_mask(bad)
        except ValueError as e:
            assert bad[0] in str(e) or "REGISTER" in str(e)
        else:
            raise AssertionError(f"{bad} accepted")
