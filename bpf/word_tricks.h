/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: word tricks. The scanners look at 8 bytes of the payload per
 * operation (SWAR: SIMD within a register): a byte test over a whole word
 * leaves 0x80 in the bytes that match, and lowest_flag() finds the first.
 *
 * Two kinds of helper live here: pure ones on __u64 words, and 8-byte loads
 * from the per-CPU scratch buffer (struct nfg_scratch). Every index into the
 * buffer is masked with NFG_SCAN_MASK, and NFG_SCAN_PAD bytes of slack after
 * it make an 8-byte load at any masked index (plus a small constant) safe.
 */
#ifndef NFGUARD_WORD_TRICKS_H
#define NFGUARD_WORD_TRICKS_H

#include "nfguard_structs.h"

/* Little-endian 8-byte constant from characters, byte 0 first. */
#define C8(a, b, c, d, e, f, g, h)                                            \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48 |             \
	 (__u64)(h) << 56)
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define LOWS7 0x7f7f7f7f7f7f7f7fULL
/* OR-ing this lower-cases ASCII letters; only valid when compared against
 * letters, since it also maps other bytes (CR | 0x20 == '-'). */
#define CASE8 0x2020202020202020ULL

/* 0x80 in every byte of w below n (n <= 128). Exact for the lowest flagged
 * byte; higher ones may be flagged falsely, so only the lowest is used. */
static __always_inline __u64 bytes_below(__u64 w, __u64 n)
{
	return (w - ONES * n) & ~w & HIGHS;
}

/* Line stop bytes: 0x80 in the lowest byte of w that is below 0x0e or
 * from 0x8e up, and maybe in higher ones; zero when w has none. Exact for
 * the lowest flagged byte: a borrow only leaves a byte below 0x0e, which is
 * flagged itself. Two operations a word where an exact "below 0x0e" takes
 * three: bytes from 0x8e up (never in ASCII headers) only cost a step.
 * Without the final mask, to OR several words and mask once. */
static __always_inline __u64 line_stops_raw(__u64 w)
{
	return w - ONES * 0x0e;
}

/* 0x80 in exactly the bytes of w that are zero. */
static __always_inline __u64 zero_bytes(__u64 w)
{
	return ~(((w & LOWS7) + LOWS7) | w | LOWS7);
}

/* 0x80 in exactly the bytes of w that equal c. */
static __always_inline __u64 bytes_eq(__u64 w, __u8 c)
{
	return zero_bytes(w ^ (ONES * c));
}

/* Index (0-7) of the lowest byte flagged with 0x80 in m; m != 0. */
static __always_inline __u32 lowest_flag(__u64 m)
{
	return (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
}

/* All ones when a == b, else zero; a and b below 2^63. No branch. */
static __always_inline __u64 eq_mask(__u64 a, __u64 b)
{
	return -(((a ^ b) - 1) >> 63);
}

/* ASCII upper case to lower case in all 8 bytes at once. */
static __always_inline __u64 lower8(__u64 w)
{
	__u64 h = w & LOWS7;
	__u64 ge_a = h + ONES * (0x80 - 'A');
	__u64 gt_z = h + ONES * (0x7f - 'Z');

	return w | (((ge_a ^ gt_z) & ~w & HIGHS) >> 2);
}

/* Do the first len bytes of words a and b (zero padded) differ? */
static __always_inline __u64 words_differ(__u64 *a, __u64 *b, __u32 len,
					  const int words)
{
	__u64 diff = 0;

#pragma unroll
	for (int i = 0; i < words; i++)
		if (i * 8 < len)
			diff |= a[i] ^ b[i];
	return diff;
}

/* 8 bytes at a literal offset from a buffer pointer, in one instruction
 * (load8_off() computes the address first). Written in asm because clang
 * lowers a u64 load from a byte array to eight byte loads; the verifier and
 * the JIT accept unaligned map value access. */
#define LOAD8_AT(p, off)                                    \
	({                                                  \
		__u64 w_;                                   \
		asm volatile("%0 = *(u64 *)(%1 + " #off ")" \
			     : "=r"(w_)                     \
			     : "r"(p));                     \
		w_;                                         \
	})

/* An unaligned 8-byte load from the scratch buffer at index i. */
static __always_inline __u64 load8(struct nfg_scratch *s, __u32 i)
{
	__u8 *p = &s->buf[i & NFG_SCAN_MASK];
	__u64 w;

	asm volatile("%0 = *(u64 *)(%1 + 0)" : "=r"(w) : "r"(p));
	return w;
}

/* The 8 bytes `off` (a constant below NFG_SCAN_PAD - 8) after index i.
 * Only i is masked: past the end of the buffer the load reads the zeroed
 * slack, never bytes wrapped round from the start. */
static __always_inline __u64 load8_off(struct nfg_scratch *s, __u32 i,
				       const int off)
{
	__u8 *p = &s->buf[i & NFG_SCAN_MASK] + off;
	__u64 w;

	asm volatile("%0 = *(u64 *)(%1 + 0)" : "=r"(w) : "r"(p));
	return w;
}

static __always_inline __u8 byte_at(struct nfg_scratch *s, __u32 i)
{
	return s->buf[i & NFG_SCAN_MASK];
}

#endif
