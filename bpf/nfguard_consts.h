/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: limits, reasons and modes shared by the XDP and TC programs.
 *
 * Every limit of the C programs lives here, the overridable ones (tests
 * build other sizes with -D) under #ifndef. nfguard/consts.py mirrors every
 * number the Python side must agree on, and tests/test_consts.py checks the
 * two stay equal. Section numbers are those of docs/design.md and
 * docs/classifier.md.
 */
#ifndef NFGUARD_CONSTS_H
#define NFGUARD_CONSTS_H

/* The layout of the pinned maps (their key and value structs, types and
 * sizes), stored in the config map. Bump it with any change to a pinned
 * map's key, value or size: the loader then does not reuse the pins of an
 * older build blindly (nfguard/kernel/pins.py). Tests build other layouts. */
#ifndef NFG_LAYOUT_VERSION
#define NFG_LAYOUT_VERSION 2
#endif

/* Sizes of the maps (nfguard_maps.h). */
#ifndef NFG_BINDINGS_MAX
#define NFG_BINDINGS_MAX 131072
#endif
#define NFG_TRUSTED_MAX 4096
/* Banned addresses (IPv6: prefixes), active and remembered (docs/design.md
 * §2.2): written by the controller only, never by a packet. */
#ifndef NFG_BANS_MAX
#define NFG_BANS_MAX 65536
#endif
/* The bans' filter: a bit per slot, set for every slot a ban key hashes
 * to (ban_slot() in nfguard.c, ban_slot() in nfguard/kernel/program.py).
 * A clear bit proves a source unbanned with one array load; the bans map
 * is looked up only on a set bit (with 1,000 bans, 0.4 % of other
 * sources). 2^NFG_BAN_FILTER_LOG2 bits. */
#define NFG_BAN_FILTER_LOG2 18
#define NFG_BAN_FILTER_WORDS ((1 << NFG_BAN_FILTER_LOG2) / 64)
/* Token buckets of the rate limits, one per (source key, method class): an
 * LRU map, so that a flood of spoofed sources evicts old buckets instead
 * of filling the map. */
#ifndef NFG_BUCKETS_MAX
#define NFG_BUCKETS_MAX 65536
#endif
/* Reject verdicts in flight from XDP to the TC program where the kernel
 * refuses bpf_xdp_adjust_meta (NFG_NO_XDP_META, nfguard.c): an LRU map.
 * A verdict waits there for microseconds (XDP and TC ingress run in the
 * same softirq, a NAPI budget of frames apart), so it is never evicted
 * before TC takes it. */
#define NFG_HANDOFF_MAX 8192
/* Datagrams XDP judged whole and passed, on their way to the socket stage
 * (NFG_SOCKET_STAGE), which leaves them alone: an LRU map, like the
 * handoff. One evicted early is judged twice, to the same verdict. */
#define NFG_SEEN_MAX 16384
/* Interfaces whose datagrams the socket stage judges. */
#define NFG_SOCK_IFACES_MAX 256
/* The guarded UDP ports as a bitmap: 64 ports a word. */
#define NFG_PORT_WORDS (65536 / 64)
/* Pages of the verdict event ring buffer. */
#define NFG_EVENTS_PAGES 16

/* Bytes of UDP payload copied into the scratch buffer and inspected. A
 * guarded request whose header section does not end inside them gets the
 * verdict (docs/design.md §2 rule 5). Must be a power of two: indexes are
 * masked. */
#ifndef NFG_SCAN_MAX
#define NFG_SCAN_MAX 4096
#endif
#define NFG_SCAN_MASK (NFG_SCAN_MAX - 1)
/* Slack after the buffer so that 8-byte loads and 128-byte value copies
 * starting at any masked index stay inside the map value. */
#define NFG_SCAN_PAD 256
/* Bytes the line and parameter scanners look at in one step: four 8-byte
 * words (the loops are written for exactly four). */
#define NFG_SCAN_STRIDE 32
#if NFG_SCAN_STRIDE != 32
#error "the scanners load four 8-byte words a step"
#endif

/* Steps of the line scanner: one per NFG_SCAN_STRIDE bytes without a
 * control byte plus one per control byte (CR, LF, HT) found. A header
 * section needing more gets the verdict (scan_limit): 4 KiB of headers in
 * 100 lines take about 350. */
#ifndef NFG_LINE_STEPS
#define NFG_LINE_STEPS 640
#endif
/* Header lines starting "au" or "pr" in any case (those that may be
 * Authorization or Proxy-Authorization) remembered; more: scan_limit. A
 * power of two: indexes are masked. */
#define NFG_MAX_LINES 64
/* Steps of the parameter scanner over all credential header values: one
 * per NFG_SCAN_STRIDE bytes plus one per 'u' or 'r' found. */
#ifndef NFG_PARAM_STEPS
#define NFG_PARAM_STEPS 384
#endif
/* Scanner steps one program runs before it tail-calls itself to go on:
 * small enough that each program verifies quickly. */
#define NFG_STEPS_PER_CALL 64
/* Tail-call slots of the stages prog array. */
#define NFG_STAGE_SCAN 0
#define NFG_STAGE_PARAMS 1
#define NFG_STAGES 2
/* The program that judged a datagram (struct nfg_event's stage): XDP, on
 * the frame as it arrived, or the socket stage (cgroup_skb ingress), on
 * the datagram a socket receives: reassembled, or one segment of a GSO
 * super-packet. */
#define NFG_JUDGE_XDP 0
#define NFG_JUDGE_SOCKET 1
#if NFG_LINE_STEPS % NFG_STEPS_PER_CALL || NFG_PARAM_STEPS % NFG_STEPS_PER_CALL
#error "step limits must be multiples of NFG_STEPS_PER_CALL"
#endif

/* SP, HT, CR and LF bytes skipped before the request line; as many or
 * more: too_many_empty_lines. A multiple of 8. */
#define NFG_LEADING_MAX 64
/* Whitespace (SP, HT, CR, LF) skipped around ':' '=' ',' inside headers. */
#define NFG_LWS_MAX 16
/* Leading '"' skipped at the start of a parameter value. */
#define NFG_QUOTES_MAX 8
/* Request line bytes that decide whether a guarded method is there: the
 * longest method name (SUBSCRIBE) and its separator. Fewer inspected while
 * the datagram goes on: the request is unfinished. */
#define NFG_METHOD_SPAN 10

/* Longest username and realm a binding holds, in bytes (multiples of 8);
 * a longer value is credential_too_long. */
#define NFG_USER_MAX 64
#define NFG_REALM_MAX 128
/* Credential headers of one request; more: too_many_credentials. A power of
 * two: indexes are masked. */
#define NFG_MAX_CRED_HDRS 4
/* VLAN tags and IPv6 extension headers walked. */
#define NFG_MAX_VLAN 2
#define NFG_MAX_EXT_HDRS 6

/* Rate limit classes of SIP requests (docs/design.md §2.2): the index of
 * the config's rate arrays. NFG_RC_NONE: not limited (a response, a
 * keep-alive, not SIP). */
#define NFG_RC_INVITE 0
#define NFG_RC_REGISTER 1
#define NFG_RC_OTHER 2
#define NFG_RC_COUNT 3
#define NFG_RC_NONE 3

/* Ban entry flags. */
#define NFG_BAN_MANUAL 1

/* Modes and actions (config map). */
#define NFG_MODE_MONITOR 0
#define NFG_MODE_ENFORCE 1
#define NFG_ACTION_DROP 0
#define NFG_ACTION_REJECT 1
#define NFG_FRAG_VERDICT 0
#define NFG_FRAG_PASS 1

/* What the packet got, as recorded in the last-verdict slot and events. */
#define NFG_ACT_PASS 0
#define NFG_ACT_DROP 1
#define NFG_ACT_MARK 2

/* XDP -> TC handover for the reject action: a 4-byte metadata word. */
#define NFG_META_MAGIC 0x4e464721u /* "NFG!" */
#define NFG_DEFAULT_REJECT_MARK 0x4e460001u

/* Guarded SIP methods: bit numbers of the config methods mask. REGISTER has
 * no bit: it can never be guarded, it is how bindings are made. */
#define NFG_M_INVITE 0
#define NFG_M_ACK 1
#define NFG_M_BYE 2
#define NFG_M_CANCEL 3
#define NFG_M_OPTIONS 4
#define NFG_M_MESSAGE 5
#define NFG_M_REFER 6
#define NFG_M_SUBSCRIBE 7
#define NFG_M_NOTIFY 8
#define NFG_M_INFO 9
#define NFG_M_UPDATE 10
#define NFG_M_PRACK 11
#define NFG_M_PUBLISH 12

/* Reasons. Below NFG_R_FIRST_VERDICT the packet is fine; from it on the
 * packet gets the verdict of the mode. Names in nfguard/consts.py. */
enum nfg_reason {
	NFG_R_NOT_IP = 0,
	NFG_R_NOT_UDP,
	NFG_R_PORT_NOT_GUARDED,
	NFG_R_LATER_FRAGMENT,
	NFG_R_TRUSTED,
	NFG_R_METHOD_NOT_GUARDED,
	NFG_R_NO_CREDENTIALS,
	NFG_R_BOUND,
	NFG_R_FRAGMENT_PASSED,
	NFG_R_FIRST_VERDICT,
	NFG_R_NOT_BOUND = NFG_R_FIRST_VERDICT,
	NFG_R_EXPIRED,
	NFG_R_CREDENTIAL_UNPARSABLE,
	NFG_R_CREDENTIAL_AMBIGUOUS,
	NFG_R_CREDENTIAL_TOO_LONG,
	NFG_R_TOO_MANY_CREDENTIALS,
	NFG_R_HEADERS_TRUNCATED,
	NFG_R_FRAGMENTED,
	NFG_R_EXT_HEADER_LIMIT,
	NFG_R_SCAN_LIMIT,
	NFG_R_TOO_MANY_EMPTY_LINES,
	NFG_R_TAIL_CALL_FAILED,
	/* Flood reasons: dropped when enforcing whatever the action (a reject
	 * would answer every packet of a flood). */
	NFG_R_BANNED,
	NFG_R_FIRST_FLOOD = NFG_R_BANNED,
	NFG_R_RATE_LIMITED,
	NFG_R_COUNT,
	/* Not a reason: classification goes on in the next stage. */
	NFG_R_CONTINUE = 255,
};

#endif
