/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: map keys and values. bcc gives the Python side these layouts;
 * nfguard/kernel/program.py mirrors struct nfg_event with ctypes and
 * nfguard/kernel/pins.py the sizes of the pinned maps' keys and values: keep
 * field order and sizes in step, and bump NFG_LAYOUT_VERSION with any change
 * to a pinned map's key or value. */
#ifndef NFGUARD_STRUCTS_H
#define NFGUARD_STRUCTS_H

#include "nfguard_consts.h"

/* Credentials lower-cased and zero padded: the logical key of a binding. */
struct nfg_cred_id {
	char user[NFG_USER_MAX];
	char realm[NFG_REALM_MAX];
} __attribute__((aligned(8)));

/* A binding is keyed by a seeded 64-bit hash of its credentials (the words
 * holding bytes of each, then its length: copy_lower() in nfguard_cred.h,
 * cred_hash() in nfguard/kernel/program.py) and the address (IPv6, or IPv4
 * mapped into ::ffff:0:0/96); the value holds the credentials themselves,
 * compared in full after the lookup. A 24-byte key hashes in a fraction of
 * the time of a 208-byte one, and the full compare keeps the match exact
 * whatever the hash does. */
struct nfg_binding_key {
	__u64 cred_hash;
	__u8 addr[16];
};

struct nfg_binding_val {
	__u64 expires_ns; /* CLOCK_BOOTTIME; checked by the program itself */
	__u32 user_len;
	__u32 realm_len;
	struct nfg_cred_id cred;
#ifdef NFG_TEST_BINDING_PAD
	/* Tests only: a build with another binding value layout. */
	__u8 test_pad[NFG_TEST_BINDING_PAD];
#endif
};

struct nfg_lpm_key {
	__u32 prefixlen; /* over the mapped IPv6 address: v4 /N is 96 + N */
	__u8 addr[16];
};

struct nfg_config {
	/* NFG_LAYOUT_VERSION of the build that made the pins */
	__u32 layout;
	__u32 mode;	      /* NFG_MODE_* */
	__u32 action;	      /* NFG_ACTION_* */
	__u32 methods;	      /* bitmask of NFG_M_* */
	__u32 fragments;      /* NFG_FRAG_* */
	__u32 reject_mark;    /* skb->mark set by the TC program */
	__u32 events_per_sec; /* per CPU; 0 disables verdict events */
	__u32 ipv6_prefix; /* bits of an IPv6 source that key bans, buckets */
	__u64 cred_seed;   /* seed of the credential hash, random per pin */
	/* ipv6_prefix as a mask over the two words of an IPv6 address */
	__u64 v6_mask[2];
	/* Per rate class (NFG_RC_*), as a GCRA (a token bucket kept as one
	 * time): ns between requests at the sustained rate (0: unlimited), and
	 * how far ahead of now a source may run: (burst - 1) intervals. */
	__u64 rate_interval_ns[NFG_RC_COUNT];
	__u64 rate_slack_ns[NFG_RC_COUNT];
};

/* A source as bans, bound addresses and buckets key it: the IPv6 address
 * (masked to ipv6_prefix for bans and buckets), or IPv4 mapped into
 * ::ffff:0:0/96, whole. */
struct nfg_addr_key {
	__u8 addr[16];
};

/* One datagram, as XDP and the later programs both find it: its source
 * address and whole UDP header. The checksum covers the payload, so two
 * datagrams of one flow share a key only when they are the same bytes (or,
 * over IPv4, carry no checksum and are of one length). Keys the reject
 * handoff to TC (NFG_NO_XDP_META) and what XDP judged for the socket stage
 * (NFG_SOCKET_STAGE). */
struct nfg_dgram_key {
	__u8 saddr[16]; /* IPv6, or IPv4 mapped, as in struct l4_info */
	__u8 udp[8];	/* ports, length, checksum: as on the wire */
};

struct nfg_ban {
	__u64 expires_ns; /* CLOCK_BOOTTIME; checked by the program itself */
	__u32 offenses;	  /* bans of this source so far (the controller's) */
	__u32 flags;	  /* NFG_BAN_* */
};

/* One token bucket: the source and the method class. */
struct nfg_bucket_key {
	__u8 addr[16];
	__u32 cls;
};

/* One verdict event, sent through the ring buffer. */
struct nfg_event {
	__u64 ts_ns;
	__u8 addr[16];
	__u32 reason;
	__u32 action; /* NFG_ACT_* taken (monitor: pass) */
	__u32 would;  /* NFG_ACT_* enforce would take */
	__u16 sport;
	__u16 dport;
	char user[NFG_USER_MAX];
	char realm[NFG_REALM_MAX];
	/* NFG_JUDGE_*: the program that decided. Last: before user it put the
	 * names' copies off 8-byte alignment, and the classifier's code
	 * around them measured ~30 ns slower an INVITE (`nfguard bench xdp`). */
	__u8 stage;
};

/* What L3/L4 parsing learned about the datagram. */
struct l4_info {
	__u8 saddr[16];	   /* IPv6, or IPv4 mapped into ::ffff:0:0/96 */
	__u32 udp_off;	   /* offset of the UDP header from the frame start */
	__u32 payload_len; /* UDP payload length claimed by the UDP header */
	__u32 ip_end;	   /* where the IP packet ends, by its own length */
	__u16 sport;
	__u16 dport;
	__u8 first_fragment; /* more fragments follow this one */
	__u8 ipv6;
};

/* Per-CPU token bucket for verdict events. */
struct nfg_ratelimit {
	__u64 last_ns;
	__u64 tokens;
};

/* Where one credential header value lies in the scratch buffer, and what
 * the parameter scanner found in it. */
struct nfg_cred {
	__u32 start;	/* first byte after ':' */
	__u32 end;	/* the line terminator that ends the header */
	__u32 user_eq;	/* the '=' after the username parameter name */
	__u32 realm_eq; /* the '=' after the realm parameter name */
	__u32 user_count;
	__u32 realm_count;
	__u32 user_off;
	__u32 user_len;
	__u32 realm_off;
	__u32 realm_len;
};

/* Per-CPU scratch: the inspected payload and the parser state. State kept
 * here (not in registers) reaches the verifier as unknown scalars, so every
 * iteration of a scanning loop converges to one state and is pruned. */
struct nfg_scratch {
	__u8 buf[NFG_SCAN_MAX + NFG_SCAN_PAD];
	struct l4_info l4; /* the datagram, for the later stages */
	__u32 len;	   /* inspected bytes in buf */
	__u32 more;	   /* 1: the datagram goes on past buf */
	__u32 pos;	   /* scanner position */
	__u32 done;	   /* 0 scanning, 1 finished, 2 stopped with reason */
	__u32 reason;	   /* reason when done == 2 */
	__u32 nlines;	   /* candidate header lines found (au or pr) */
	__u32 open;	   /* the current header is a candidate line */
	__u32 req_line;	   /* the line being scanned is the request line */
	__u32 ncred;	   /* credential headers found */
	__u32 cur;	   /* line or credential header index of a loop */
	__u32 steps;	   /* scanner steps taken, over all tail calls */
	__u32 tmp;	   /* a value laundered through memory */
	__u32 rate_class;  /* NFG_RC_* of the request line */
	__u32 hdr_start[NFG_MAX_LINES];
	__u32 hdr_end[NFG_MAX_LINES]; /* terminator ending each line */
	struct nfg_cred cred[NFG_MAX_CRED_HDRS];
	struct nfg_cred_id key;	     /* last credentials looked up */
	struct nfg_binding_key bkey; /* their map key */
	__u64 clock_jiffies; /* boot_now(): jiffies at the last boot clock read */
	__u64 clock_boot_ns; /* boot_now(): that read */
	/* The last guarded datagram's verdict on this CPU, for a look with
	 * `bpftool map dump name scratch`; last_has_key: key holds its
	 * credentials (test_run() and events read key). */
	__u32 last_reason;
	__u32 last_action;
	__u32 last_would;
	__u32 last_has_key;
	__u64 last_seq; /* guarded datagrams seen on this CPU */
};

#endif
