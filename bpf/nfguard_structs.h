/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: map keys and values. Layouts are mirrored with ctypes in
 * nfguard/maps.py; keep field order and sizes in step. */
#ifndef NFGUARD_STRUCTS_H
#define NFGUARD_STRUCTS_H

#include "nfguard_consts.h"

/* A binding: credentials lower-cased, zero padded; address as IPv6, IPv4
 * mapped into ::ffff:0:0/96. */
struct nfg_binding_key {
	char user[NFG_USER_MAX];
	char realm[NFG_REALM_MAX];
	__u8 addr[16];
} __attribute__((aligned(8)));

struct nfg_binding_val {
	__u64 expires_ns; /* CLOCK_BOOTTIME; checked by the program itself */
};

struct nfg_lpm_key {
	__u32 prefixlen; /* over the mapped IPv6 address: v4 /N is 96 + N */
	__u8 addr[16];
};

struct nfg_config {
	__u32 mode;        /* NFG_MODE_* */
	__u32 action;      /* NFG_ACTION_* */
	__u32 methods;     /* bitmask of NFG_M_* */
	__u32 fragments;   /* NFG_FRAG_* */
	__u32 reject_mark; /* skb->mark set by the TC program */
	__u32 events_per_sec; /* per CPU; 0 disables verdict events */
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
};

/* Per-CPU token bucket for verdict events. */
struct nfg_ratelimit {
	__u64 last_ns;
	__u64 tokens;
};

/* Where one credential header value lies in the scratch buffer, and what
 * the parameter scanner found in it. */
struct nfg_cred {
	__u32 start;     /* first byte after ':' */
	__u32 end;       /* the line terminator that ends the header */
	__u32 user_eq;   /* the '=' after the username parameter name */
	__u32 realm_eq;  /* the '=' after the realm parameter name */
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
	__u32 len;      /* inspected bytes in buf */
	__u32 more;     /* 1: the datagram goes on past buf */
	__u32 pos;      /* scanner position */
	__u32 done;     /* 0 scanning, 1 finished, 2 stopped with reason */
	__u32 reason;   /* reason when done == 2 */
	__u32 nlines;   /* candidate header lines found (first byte a or p) */
	__u32 open;     /* the current header is a candidate line */
	__u32 ncred;    /* credential headers found */
	__u32 cur;      /* line or credential header index of a loop */
	__u32 tmp;      /* a value laundered through memory */
	__u32 hdr_start[NFG_MAX_LINES];
	__u32 hdr_end[NFG_MAX_LINES]; /* terminator ending each line */
	struct nfg_cred cred[NFG_MAX_CRED_HDRS];
	struct nfg_binding_key key; /* last key looked up */
	/* The last verdict on this CPU, read back by test_run(). */
	__u32 last_reason;
	__u32 last_action;
	__u32 last_would;
	__u32 last_has_key;
	__u64 last_seq;
};

#endif
