/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: the credential key and the bindings lookup (docs/design.md §2
 * rule 4, docs/classifier.md §7 step 3).
 *
 * The username and realm the SIP parser found are copied lower-cased and
 * zero padded into s->key, hashed with the per-pin seed on the way, and
 * looked up as (hash, source address) in the bindings map. The hash only
 * picks the entry: the credentials stored in it are compared in full, and
 * the program itself checks the entry's expiry. The lookup itself is
 * lookup_cred() in nfguard.c: bcc rewrites map calls (bindings.lookup())
 * in the main source file only.
 */
#ifndef NFGUARD_CRED_H
#define NFGUARD_CRED_H

#include "nfguard_structs.h"
#include "word_tricks.h"

/* One round of the credential hash; cred_hash() in nfguard/kernel/program.py
 * is its twin. */
static __always_inline __u64 cred_hash_step(__u64 h, __u64 w)
{
	h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 29);
}

/* Copy len bytes from the buffer at off, lower-cased and zero padded, into
 * `words` 8-byte words at dst, hashing the words that hold bytes, then the
 * length, into *h. */
static __always_inline void copy_lower(struct nfg_scratch *s, __u64 *dst,
				       __u32 off, __u32 len, const int words,
				       __u64 *h)
{
#pragma unroll
	for (int i = 0; i < words; i++) {
		__u64 w = 0;

		if (i * 8 < len) {
			w = lower8(load8_off(s, off, i * 8));
			if (len - i * 8 < 8)
				w &= (1ULL << ((len - i * 8) * 8)) - 1;
			*h = cred_hash_step(*h, w);
		}
		dst[i] = w;
	}
	*h = cred_hash_step(*h, len);
}

/* CLOCK_BOOTTIME now, to within a jiffy. Reading the boot clock costs tens
 * of ns on some hosts (a virtualised TSC), and even the coarse clock is a
 * helper call; the verifier inlines bpf_jiffies64() into one load. Each CPU
 * reads the boot clock when jiffies have moved since its last read and uses
 * that reading until they move again: at most HZ reads a second, and "now"
 * is never ahead of the truth and at most a jiffy behind it. */
static __always_inline __u64 boot_now(struct nfg_scratch *s)
{
	__u64 j = bpf_jiffies64();

	if (j != s->clock_jiffies) {
		s->clock_boot_ns = bpf_ktime_get_boot_ns();
		s->clock_jiffies = j;
	}
	return s->clock_boot_ns;
}

/* Build the bindings map key of the credential of header cr from the
 * packet's source address: s->key holds the credentials, lower-cased and
 * zero padded, s->bkey their hash and the address. */
static __always_inline void cred_key(struct nfg_scratch *s,
				     struct nfg_config *cfg,
				     struct nfg_cred *cr, __u8 *saddr)
{
	__u64 h = cfg->cred_seed;

	copy_lower(s, (__u64 *)s->key.user, cr->user_off, cr->user_len,
		   NFG_USER_MAX / 8, &h);
	copy_lower(s, (__u64 *)s->key.realm, cr->realm_off, cr->realm_len,
		   NFG_REALM_MAX / 8, &h);
	s->bkey.cred_hash = h;
	__builtin_memcpy(s->bkey.addr, saddr, 16);
	s->last_has_key = 1;
}

/* What the bindings entry val found for s->bkey (NULL: none) says of the
 * credential of header cr: NFG_R_BOUND, NFG_R_NOT_BOUND or NFG_R_EXPIRED. */
static __always_inline __u32 cred_check(struct nfg_scratch *s,
					struct nfg_cred *cr,
					struct nfg_binding_val *val)
{
	if (!val)
		return NFG_R_NOT_BOUND;
	/* The hash picked the entry; the credentials decide. */
	if (val->user_len != cr->user_len || val->realm_len != cr->realm_len ||
	    words_differ((__u64 *)val->cred.user, (__u64 *)s->key.user,
			 cr->user_len, NFG_USER_MAX / 8) ||
	    words_differ((__u64 *)val->cred.realm, (__u64 *)s->key.realm,
			 cr->realm_len, NFG_REALM_MAX / 8))
		return NFG_R_NOT_BOUND;
	if (val->expires_ns <= boot_now(s))
		return NFG_R_EXPIRED;
	return NFG_R_BOUND;
}

#endif
