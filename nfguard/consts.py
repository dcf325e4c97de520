"""Numbers shared with the BPF program (bpf/nfguard_consts.h).

tests/test_consts.py parses the C header and checks every value here.
"""

# Layout version of the pinned maps (nfguard/kernel/pins.py).
LAYOUT_VERSION = 2
BINDINGS_MAX = 131072
TRUSTED_MAX = 4096
BANS_MAX = 65536
BAN_FILTER_LOG2 = 18  # the bans' filter: 2^18 bits
BAN_FILTER_WORDS = (1 << BAN_FILTER_LOG2) // 64
BUCKETS_MAX = 65536
HANDOFF_MAX = 8192  # reject verdicts in flight from XDP to TC without XDP metadata
PORT_WORDS = 65536 // 64  # the guarded ports bitmap: 64 ports a word

SCAN_MAX = 4096
USER_MAX = 64
REALM_MAX = 128
MAX_CRED_HDRS = 4
MAX_VLAN = 2
MAX_EXT_HDRS = 6
LEADING_MAX = 64
LWS_MAX = 16
QUOTES_MAX = 8
MAX_LINES = 64
LINE_STEPS = 640
PARAM_STEPS = 384
SCAN_STRIDE = 32  # bytes the line and parameter scanners look at a step
METHOD_SPAN = 10  # the longest guarded method (SUBSCRIBE) and its separator

STEPS_PER_CALL = 64
STAGE_SCAN = 0
STAGE_PARAMS = 1
STAGES = 2

# Rate limit classes (index of the config's rate arrays); RC_NONE: not limited.
RATE_CLASSES = {"invite": 0, "register": 1, "other": 2}
RC_COUNT = 3
RC_NONE = 3
BAN_MANUAL = 1

MODE_MONITOR = 0
MODE_ENFORCE = 1
ACTION_DROP = 0
ACTION_REJECT = 1
FRAG_VERDICT = 0
FRAG_PASS = 1

ACT_PASS = 0
ACT_DROP = 1
ACT_MARK = 2
ACT_NAMES = {ACT_PASS: "pass", ACT_DROP: "drop", ACT_MARK: "mark"}
# The program that judged a datagram (struct nfg_event's stage, NFG_JUDGE_*).
JUDGE_XDP, JUDGE_SOCKET = 0, 1
JUDGE_NAMES = {JUDGE_XDP: "xdp", JUDGE_SOCKET: "socket"}
SEEN_MAX = 16384  # datagrams XDP judged whole, on their way to the socket stage
SOCK_IFACES_MAX = 256  # interfaces whose datagrams the socket stage judges


META_MAGIC = 0x4E464721
DEFAULT_REJECT_MARK = 0x4E460001

# Guarded methods: name -> bit of the config methods mask. REGISTER has no
# bit: it is how bindings are made and can never be guarded.
METHOD_BITS = {
    "INVITE": 0,
    "ACK": 1,
    "BYE": 2,
    "CANCEL": 3,
    "OPTIONS": 4,
    "MESSAGE": 5,
    "REFER": 6,
    "SUBSCRIBE": 7,
    "NOTIFY": 8,
    "INFO": 9,
    "UPDATE": 10,
    "PRACK": 11,
    "PUBLISH": 12,
}

# Reasons, in the order of enum nfg_reason. Those from FIRST_VERDICT on get
# the verdict of the mode.
REASONS = [
    "not_ip",
    "not_udp",
    "port_not_guarded",
    "later_fragment",
    "trusted",
    "method_not_guarded",
    "no_credentials",
    "bound",
    "fragment_passed",
    "not_bound",
    "expired",
    "credential_unparsable",
    "credential_ambiguous",
    "credential_too_long",
    "too_many_credentials",
    "headers_truncated",
    "fragmented",
    "ext_header_limit",
    "scan_limit",
    "too_many_empty_lines",
    "tail_call_failed",
    "banned",
    "rate_limited",
]
FIRST_VERDICT = REASONS.index("not_bound")
# Flood reasons: dropped when enforcing, whatever the action, without events.
FIRST_FLOOD = REASONS.index("banned")
REASON_IDS = {name: i for i, name in enumerate(REASONS)}


def is_verdict(reason: str) -> bool:
    return REASON_IDS[reason] >= FIRST_VERDICT


def is_flood(reason: str) -> bool:
    return REASON_IDS[reason] >= FIRST_FLOOD


def methods_mask(methods) -> int:
    """Bitmask for method names; ValueError names an unknown or REGISTER."""
    mask = 0
    for m in methods:
        if m == "REGISTER":
            raise ValueError("REGISTER cannot be guarded: it is how bindings are made")
        if m not in METHOD_BITS:
            raise ValueError(f"unknown SIP method {m!r} (known: {', '.join(METHOD_BITS)})")
        mask |= 1 << METHOD_BITS[m]
    return mask
