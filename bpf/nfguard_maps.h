/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: maps. With NFG_PIN_DIR defined (the loader passes it) the state
 * maps are pinned there and reused when they already exist, so enforcement
 * survives a controller restart; without it (tests, replay) they are
 * private to this load. The pinned maps' layout is NFG_LAYOUT_VERSION
 * (nfguard_consts.h); their sizes are in nfguard_consts.h too.
 */
#ifndef NFGUARD_MAPS_H
#define NFGUARD_MAPS_H

#include "nfguard_structs.h"

#ifdef NFG_PIN_DIR
#define NFG_MAP(type, k, v, name, n, flags) \
	BPF_TABLE_PINNED(type, k, v, name, n, NFG_PIN_DIR "/" #name, flags)
#else
#define NFG_MAP(type, k, v, name, n, flags) \
	BPF_F_TABLE(type, k, v, name, n, flags)
#endif

/* The pinned state (docs/design.md §3). */
NFG_MAP("hash", struct nfg_binding_key, struct nfg_binding_val, bindings,
	NFG_BINDINGS_MAX, BPF_F_NO_PREALLOC);
NFG_MAP("lpm_trie", struct nfg_lpm_key, __u8, trusted, NFG_TRUSTED_MAX,
	BPF_F_NO_PREALLOC);
/* Guarded UDP ports as a bitmap: word port / 64, bit port % 64. An array
 * lookup is inlined by the verifier, far cheaper than a hash lookup on the
 * path every non-SIP packet takes. */
NFG_MAP("array", __u32, __u64, ports, NFG_PORT_WORDS, 0);
NFG_MAP("array", __u32, struct nfg_config, config, 1, 0);
NFG_MAP("percpu_array", __u32, __u64, counters, NFG_R_COUNT, 0);
/* Bans: the source key -> its expiry (docs/design.md §2.2). */
NFG_MAP("hash", struct nfg_addr_key, struct nfg_ban, bans, NFG_BANS_MAX,
	BPF_F_NO_PREALLOC);
/* The bans' filter (nfguard_consts.h): written with the bans. */
NFG_MAP("array", __u32, __u64, ban_filter, NFG_BAN_FILTER_WORDS, 0);
/* Addresses holding a binding -> the latest expiry among them: such a
 * source is never rate limited. */
NFG_MAP("hash", struct nfg_addr_key, __u64, bound, NFG_BINDINGS_MAX,
	BPF_F_NO_PREALLOC);

/* Private to each load (the loader pins each load's stages array under a
 * name of its own). */
BPF_PERCPU_ARRAY(scratch, struct nfg_scratch, 1);
BPF_PERCPU_ARRAY(ratelimit, struct nfg_ratelimit, 1);
/* The rate limits' buckets: a time each (GCRA). Private: a restart only
 * forgets how far each source has run ahead. */
BPF_TABLE("lru_hash", struct nfg_bucket_key, __u64, buckets, NFG_BUCKETS_MAX);
BPF_RINGBUF_OUTPUT(events, NFG_EVENTS_PAGES);
#ifdef NFG_NO_XDP_META
/* Reject marks on their way from XDP to TC (nfguard.c): a datagram's key
 * -> how many such datagrams still await their mark. Private: XDP and TC
 * of one load share it. */
BPF_TABLE("lru_hash", struct nfg_dgram_key, __u64, handoff, NFG_HANDOFF_MAX);
#endif
#ifdef NFG_SOCKET_STAGE
/* The socket stage (nfguard.c): datagrams XDP judged whole and passed ->
 * how many of them are still on their way to a socket; its own per-CPU
 * state and stages (a socket program runs in other contexts than XDP, and
 * a prog array holds programs of one type); and the interfaces, by
 * ifindex, whose datagrams it judges. */
BPF_TABLE("lru_hash", struct nfg_dgram_key, __u64, seen, NFG_SEEN_MAX);
BPF_PERCPU_ARRAY(sock_scratch, struct nfg_scratch, 1);
BPF_PROG_ARRAY(sock_stages, NFG_STAGES);
BPF_HASH(sock_ifaces, __u32, __u8, NFG_SOCK_IFACES_MAX);
#endif
/* The later stages, reached by tail calls (see nfguard.c). */
BPF_PROG_ARRAY(stages, NFG_STAGES);

#endif
