/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: SIP request parsing over the per-CPU scratch buffer
 * (docs/classifier.md §3 to §7).
 *
 * The payload is copied into s->buf; every index into it is masked with
 * NFG_SCAN_MASK, and NFG_SCAN_PAD bytes of slack make 8-byte loads at any
 * masked index safe. Bytes at or past s->len are stale: each helper compares
 * positions against s->len (or a header end) before trusting a byte.
 *
 * Speed comes from looking at 8 bytes per operation (word_tricks.h) and
 * NFG_SCAN_STRIDE bytes per step: the line scanner skips words with no line
 * stop byte (below 0x0e, where CR, LF and HT are, or from 0x8e up); the
 * parameter scanner skips words with no 'u' or 'r'. Only the few places
 * those find are looked at byte by byte.
 *
 * The two scanning loops keep their state in the scratch map value, not in
 * registers: reloaded after a compiler barrier, it reaches the verifier as
 * unknown scalars, so each iteration converges to one state and the verifier
 * prunes instead of exploring every path through every iteration.
 */
#ifndef NFGUARD_SIP_PARSE_H
#define NFGUARD_SIP_PARSE_H

#include "nfguard_structs.h"
#include "word_tricks.h"

#define NFG_BARRIER() asm volatile("" ::: "memory")

/* Token characters of RFC 3261 §25.1 as a bitmap: bytes 0-63 and 64-127. */
#define TOKEN_LO 0x03ff6ca200000000ULL
#define TOKEN_HI 0x47ffffff87fffffeULL

static __always_inline __u32 is_token(__u8 c)
{
	__u64 map = (TOKEN_LO & eq_mask(c >> 6, 0)) |
		    (TOKEN_HI & eq_mask(c >> 6, 1));

	return (map >> (c & 63)) & 1;
}

static __always_inline int is_lws(__u8 c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Offset (0..NFG_LWS_MAX) of the first byte at or after `at` that is not
 * SP, HT, CR or LF; NFG_LWS_MAX when the first NFG_LWS_MAX bytes all are. */
static __always_inline __u32 skip_lws(struct nfg_scratch *s, __u32 at)
{
	__u64 w0 = load8(s, at), w1 = load8_off(s, at, 8);
	__u64 l0 = bytes_eq(w0, ' ') | bytes_eq(w0, '\t') | bytes_eq(w0, '\r') |
		   bytes_eq(w0, '\n');
	__u64 l1 = bytes_eq(w1, ' ') | bytes_eq(w1, '\t') | bytes_eq(w1, '\r') |
		   bytes_eq(w1, '\n');
	__u64 n0 = ~l0 & HIGHS, n1 = ~l1 & HIGHS;

	if (n0)
		return lowest_flag(n0);
	if (n1)
		return 8 + lowest_flag(n1);
	return NFG_LWS_MAX;
}

/* Offset (0..NFG_LWS_MAX) of the first byte at or after `at` that is not
 * SP or HT; NFG_LWS_MAX when the first NFG_LWS_MAX bytes all are. */
static __always_inline __u32 skip_ws(struct nfg_scratch *s, __u32 at)
{
	__u64 w0 = load8(s, at), w1 = load8_off(s, at, 8);
	__u64 n0 = ~(bytes_eq(w0, ' ') | bytes_eq(w0, '\t')) & HIGHS;
	__u64 n1 = ~(bytes_eq(w1, ' ') | bytes_eq(w1, '\t')) & HIGHS;

	if (n0)
		return lowest_flag(n0);
	if (n1)
		return 8 + lowest_flag(n1);
	return NFG_LWS_MAX;
}

/* Offset (0..NFG_QUOTES_MAX) of the first byte that is not '"'. */
static __always_inline __u32 skip_quotes(struct nfg_scratch *s, __u32 at)
{
	__u64 nq = ~bytes_eq(load8(s, at), '"') & HIGHS;

	return nq ? lowest_flag(nq) : NFG_QUOTES_MAX;
}

static __always_inline void stop(struct nfg_scratch *s, __u32 reason)
{
	s->reason = reason;
	s->done = 2;
}

/* Steps are counted a call at a time: the limits are multiples of
 * NFG_STEPS_PER_CALL, so this allows exactly `limit` steps. 0 (and the
 * scan_limit verdict) when none are left. */
static __always_inline int take_steps(struct nfg_scratch *s, __u32 limit)
{
	if (s->steps >= limit) {
		stop(s, NFG_R_SCAN_LIMIT);
		return 0;
	}
	s->steps += NFG_STEPS_PER_CALL;
	return 1;
}

/* Pass v through the scratch map: the compiler cannot specialise the code
 * after it for each path that computed v, and the verifier sees one
 * unknown scalar, so paths that differ only in v converge here. Used in the
 * loops of the line scanner, whose iterations must converge; elsewhere the
 * store-to-load round trip costs more time than the verifier saves. */
static __always_inline __u32 launder(struct nfg_scratch *s, __u32 v)
{
	s->tmp = v;
	NFG_BARRIER();
	return s->tmp;
}

/* The rate limit class of the message at `at` (docs/design.md §2.2):
 * INVITE or REGISTER exactly (case-sensitive, as sofia-sip reads methods)
 * followed by SP or HT, NFG_RC_NONE for a response ("SIP/" in any case:
 * answers to the PBX's own requests), else NFG_RC_OTHER: any other
 * request, and anything that is not SIP at all. */
static __always_inline __u32 rate_class_at(struct nfg_scratch *s, __u32 at)
{
	__u64 w = load8(s, at), w2 = load8_off(s, at, 8);
	__u8 sep;

	if ((w & 0xffffffffffffULL) == C8('I', 'N', 'V', 'I', 'T', 'E', 0, 0)) {
		sep = (w >> 48) & 0xff;
		if (sep == ' ' || sep == '\t')
			return NFG_RC_INVITE;
	}
	if (w == C8('R', 'E', 'G', 'I', 'S', 'T', 'E', 'R')) {
		sep = w2 & 0xff;
		if (sep == ' ' || sep == '\t')
			return NFG_RC_REGISTER;
	}
	/* the case bit of S, I and P only: '/' has it clear */
	if (((w & 0xffffffffULL) | 0x202020ULL) ==
	    C8('s', 'i', 'p', '/', 0, 0, 0, 0))
		return NFG_RC_NONE;
	return NFG_RC_OTHER;
}

/* A SIP method: its name as a word, for method_at(). */
struct nfg_method {
	__u64 word; /* method name, little-endian, zero padded */
	__u64 mask; /* bytes of word that hold the name */
	__u32 len;
	__u32 bit;
};

/* Request line (docs/classifier.md §3): 1 when the bytes at `at` are exactly
 * a method guarded in `methods` (case-sensitive) followed by SP or HT, else
 * 0. The caller has skipped the leading SP, HT, CR and LF. */
static __always_inline int method_at(struct nfg_scratch *s, __u32 at,
				     __u32 methods)
{
	__u64 w = load8(s, at), w2 = load8_off(s, at, 8);
	/* Up to 9 name bytes + 1 separator: the first NFG_METHOD_SPAN bytes. */
	// clang-format off
	const struct nfg_method table[] = {
		{ C8('I', 'N', 'V', 'I', 'T', 'E', 0, 0), 0xffffffffffffULL, 6, NFG_M_INVITE },
		{ C8('A', 'C', 'K', 0, 0, 0, 0, 0), 0xffffffULL, 3, NFG_M_ACK },
		{ C8('B', 'Y', 'E', 0, 0, 0, 0, 0), 0xffffffULL, 3, NFG_M_BYE },
		{ C8('C', 'A', 'N', 'C', 'E', 'L', 0, 0), 0xffffffffffffULL, 6, NFG_M_CANCEL },
		{ C8('O', 'P', 'T', 'I', 'O', 'N', 'S', 0), 0xffffffffffffffULL, 7, NFG_M_OPTIONS },
		{ C8('M', 'E', 'S', 'S', 'A', 'G', 'E', 0), 0xffffffffffffffULL, 7, NFG_M_MESSAGE },
		{ C8('R', 'E', 'F', 'E', 'R', 0, 0, 0), 0xffffffffffULL, 5, NFG_M_REFER },
		{ C8('N', 'O', 'T', 'I', 'F', 'Y', 0, 0), 0xffffffffffffULL, 6, NFG_M_NOTIFY },
		{ C8('I', 'N', 'F', 'O', 0, 0, 0, 0), 0xffffffffULL, 4, NFG_M_INFO },
		{ C8('U', 'P', 'D', 'A', 'T', 'E', 0, 0), 0xffffffffffffULL, 6, NFG_M_UPDATE },
		{ C8('P', 'R', 'A', 'C', 'K', 0, 0, 0), 0xffffffffffULL, 5, NFG_M_PRACK },
		{ C8('P', 'U', 'B', 'L', 'I', 'S', 'H', 0), 0xffffffffffffffULL, 7, NFG_M_PUBLISH },
	};
	// clang-format on

#pragma unroll
	for (int i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		__u8 sep;

		if (!(methods & (1u << table[i].bit)))
			continue;
		if ((w & table[i].mask) != table[i].word)
			continue;
		sep = (w >> (8 * table[i].len)) & 0xff;
		if (sep == ' ' || sep == '\t')
			return 1;
	}
	/* SUBSCRIBE: 9 bytes, the separator in the second word. */
	if ((methods & (1u << NFG_M_SUBSCRIBE)) &&
	    w == C8('S', 'U', 'B', 'S', 'C', 'R', 'I', 'B') &&
	    ((w2 & 0xff) == 'E') &&
	    (((w2 >> 8) & 0xff) == ' ' || ((w2 >> 8) & 0xff) == '\t'))
		return 1;
	return 0;
}

/* Phase 1 (docs/classifier.md §4): find the header lines, from `first` (the
 * request line) to the empty line that ends the header section. Folded lines
 * (starting with SP or HT) continue the header before them. Only header
 * lines that may be Authorization or Proxy-Authorization (starting "au" or
 * "pr" in any case) are remembered, with the terminator of their last line. Sets s->done to 1
 * when the end was found, to 2 with s->reason otherwise. */
static __always_inline void scan_lines_init(struct nfg_scratch *s, __u32 first)
{
	s->pos = first;
	s->done = 0;
	s->nlines = 0;
	s->open = 0;
	s->req_line = 1;
	s->steps = 0;
}

/* Run up to NFG_STEPS_PER_CALL steps; s->done stays 0 when more are due
 * (the caller tail-calls to go on, which keeps each program's verification
 * small). */
static __always_inline void scan_lines_run(struct nfg_scratch *s)
{
	__u32 n = s->len;

	if (!take_steps(s, NFG_LINE_STEPS))
		return;
#pragma clang loop unroll(disable)
	for (int i = 0; i < NFG_STEPS_PER_CALL; i++) {
		__u32 pos, t, nx, nl, k;
		__u64 m0, m1, m2, m3, w, ab;
		__u8 c, c2, d, d2, *p;

		NFG_BARRIER();
		pos = s->pos;
		if (pos >= n) {
			stop(s, NFG_R_HEADERS_TRUNCATED);
			return;
		}
		/* NFG_SCAN_STRIDE bytes (four words) a step while none is a
		 * line stop byte. */
		p = &s->buf[pos & NFG_SCAN_MASK];
		m0 = line_stops_raw(LOAD8_AT(p, 0));
		m1 = line_stops_raw(LOAD8_AT(p, 8));
		m2 = line_stops_raw(LOAD8_AT(p, 16));
		m3 = line_stops_raw(LOAD8_AT(p, 24));
		if (!((m0 | m1 | m2 | m3) & HIGHS)) {
			s->pos = pos + NFG_SCAN_STRIDE;
			continue;
		}
		m0 &= HIGHS;
		m1 &= HIGHS;
		m2 &= HIGHS;
		m3 &= HIGHS;
		if (m0)
			t = pos + lowest_flag(m0);
		else if (m1)
			t = pos + 8 + lowest_flag(m1);
		else if (m2)
			t = pos + 16 + lowest_flag(m2);
		else
			t = pos + 24 + lowest_flag(m3);
		t = launder(s, t);
		if (t >= n) {
			stop(s, NFG_R_HEADERS_TRUNCATED);
			return;
		}
		/* The commonest line end by far: CRLF, then neither the end
		 * of the headers nor a line starting "au" or "pr", while no
		 * credential header is open and the request line is behind.
		 * Everything below would then only move pos past the CRLF
		 * (a fold or any other line start alike). */
		w = load8(s, t);
		c2 = (w >> 16) & 0xff;
		/* The next line's first two bytes, lower-cased. */
		ab = (w >> 16 | 0x2020) & 0xffff;
		if ((w & 0xffff) == 0x0a0d && t + 2 < n &&
		    !(s->open | s->req_line) && c2 != '\r' && c2 != '\n' &&
		    ab != ('a' | 'u' << 8) && ab != ('p' | 'r' << 8)) {
			s->pos = t + 2;
			continue;
		}
		c = w & 0xff;
		if (c != '\r' && c != '\n') {
			/* HT, another control byte, or >= 0x8e */
			s->pos = t + 1;
			continue;
		}
		/* A line ends with CRLF, LF or a bare CR. */
		nx = launder(s,
			     t + 1 + (c == '\r' && byte_at(s, t + 1) == '\n'));
		if (nx >= n) {
			stop(s, NFG_R_HEADERS_TRUNCATED);
			return;
		}
		nl = s->nlines;
		/* Until a later line turns out to be its fold, this line
		 * ends the header. */
		if (s->open)
			s->hdr_end[(nl - 1) & (NFG_MAX_LINES - 1)] = t;
		d = byte_at(s, nx);
		if (s->req_line) {
			/* sofia-sip skips SP and HT after the request line:
			 * the line after it is a header, never a fold. */
			s->req_line = 0;
			if (d == ' ' || d == '\t') {
				k = skip_ws(s, nx);
				if (k >= NFG_LWS_MAX) {
					stop(s, NFG_R_SCAN_LIMIT);
					return;
				}
				nx += k;
				if (nx >= n) {
					stop(s, NFG_R_HEADERS_TRUNCATED);
					return;
				}
				d = byte_at(s, nx);
			}
		}
		s->pos = nx;
		if (d == '\r' || d == '\n') {
			/* An empty line: the header section ends. */
			s->done = 1;
			return;
		}
		if (d == ' ' || d == '\t')
			continue; /* a fold: the header goes on */
		/* Only Authorization and Proxy-Authorization matter: a line
		 * is a candidate when its first two bytes are "au" or "pr" in
		 * any case (Allow, Accept and P- headers are not). */
		d2 = byte_at(s, nx + 1) | 0x20;
		d |= 0x20;
		s->open = (d == 'a' && d2 == 'u') || (d == 'p' && d2 == 'r');
		if (!s->open)
			continue;
		if (nl >= NFG_MAX_LINES) {
			stop(s, NFG_R_SCAN_LIMIT);
			return;
		}
		s->hdr_start[nl & (NFG_MAX_LINES - 1)] = nx;
		s->nlines = nl + 1;
	}
}

/* Length of the credential header name (Authorization or
 * Proxy-Authorization, any case) at `at`, or 0. */
static __always_inline __u32 credential_name(struct nfg_scratch *s, __u32 at)
{
	__u64 w0 = load8(s, at), w1 = load8_off(s, at, 8) | CASE8;

	if ((w0 | CASE8) == C8('a', 'u', 't', 'h', 'o', 'r', 'i', 'z') &&
	    (w1 & 0xffffffffffULL) == C8('a', 't', 'i', 'o', 'n', 0, 0, 0))
		return 13;
	/* '-' is compared exactly: CR | 0x20 is '-' too. */
	if ((w0 | 0x2020002020202020ULL) ==
		    C8('p', 'r', 'o', 'x', 'y', '-', 'a', 'u') &&
	    w1 == C8('t', 'h', 'o', 'r', 'i', 'z', 'a', 't') &&
	    ((load8_off(s, at, 16) | CASE8) & 0xffffffULL) ==
		    C8('i', 'o', 'n', 0, 0, 0, 0, 0))
		return 19;
	return 0;
}

/* Phase 2 (docs/classifier.md §5): which header lines are credential
 * headers. The name must be followed by a non-token byte (Authorization-Info
 * is another header), then LWS (folds included) and ':'. */
static __always_inline void find_credentials(struct nfg_scratch *s)
{
	s->ncred = 0;
	s->cur = 0;

#pragma clang loop unroll(disable)
	for (int i = 0; i < NFG_MAX_LINES; i++) {
		__u32 j, at, end, name_end, k, colon, nc;

		NFG_BARRIER();
		j = s->cur;
		if (j >= s->nlines)
			return;
		s->cur = j + 1;
		at = s->hdr_start[j & (NFG_MAX_LINES - 1)];
		end = s->hdr_end[j & (NFG_MAX_LINES - 1)];
		k = launder(s, credential_name(s, at));
		if (!k)
			continue;
		name_end = at + k;
		if (name_end < end && is_token(byte_at(s, name_end)))
			continue; /* a longer name */
		k = launder(s, skip_lws(s, name_end));
		colon = name_end + k;
		if (k >= NFG_LWS_MAX || colon >= end ||
		    byte_at(s, colon) != ':') {
			stop(s, NFG_R_CREDENTIAL_UNPARSABLE);
			return;
		}
		nc = s->ncred;
		if (nc >= NFG_MAX_CRED_HDRS) {
			stop(s, NFG_R_TOO_MANY_CREDENTIALS);
			return;
		}
		s->cred[nc & (NFG_MAX_CRED_HDRS - 1)].start = colon + 1;
		s->cred[nc & (NFG_MAX_CRED_HDRS - 1)].end = end;
		s->cred[nc & (NFG_MAX_CRED_HDRS - 1)].user_count = 0;
		s->cred[nc & (NFG_MAX_CRED_HDRS - 1)].realm_count = 0;
		s->ncred = nc + 1;
	}
}

/* A word-start "username" or "realm" (any case) at p followed by LWS and
 * '=' is a parameter: count it and remember its '='. Every parameter
 * sofia-sip sees starts at such a place, so the count is never lower than
 * sofia-sip's; more than one of a kind is ambiguous. */
static __always_inline void param_candidate(struct nfg_scratch *s,
					    struct nfg_cred *cr, __u32 p)
{
	__u64 lw = load8(s, p) | CASE8;
	__u32 q, k, is_user;
	__u8 c;

	/* Cheapest test first: most 'u' and 'r' start no such name. */
	if (lw == C8('u', 's', 'e', 'r', 'n', 'a', 'm', 'e'))
		is_user = 1;
	else if ((lw & 0xffffffffffULL) == C8('r', 'e', 'a', 'l', 'm', 0, 0, 0))
		is_user = 0;
	else
		return;
	if (is_token(byte_at(s, p - 1)))
		return;
	q = p + 5 + 3 * is_user;
	if (q >= cr->end)
		return;
	c = byte_at(s, q);
	if (c != '=') {
		/* A token byte makes a longer name; any other byte but LWS
		 * means no '=' follows. */
		if (!is_lws(c))
			return;
		k = skip_lws(s, q);
		if (k >= NFG_LWS_MAX) {
			stop(s, NFG_R_CREDENTIAL_AMBIGUOUS);
			return;
		}
		q += k;
		if (q >= cr->end || byte_at(s, q) != '=')
			return; /* the word inside some value, not a parameter */
	}
	if (is_user) {
		cr->user_count++;
		cr->user_eq = q;
	} else {
		cr->realm_count++;
		cr->realm_eq = q;
	}
}

/* Phase 3 (docs/classifier.md §6): count the username and realm parameters
 * of every credential header. */
static __always_inline void find_params_init(struct nfg_scratch *s)
{
	s->cur = 0;
	s->pos = s->cred[0].start;
	s->steps = 0;
	s->done = 0;
}

/* Run up to NFG_STEPS_PER_CALL steps; s->done becomes 1 when every header
 * was scanned, 2 with a reason on a verdict, and stays 0 when more steps
 * are due (the caller tail-calls to go on). */
static __always_inline void find_params_run(struct nfg_scratch *s)
{
	if (!take_steps(s, NFG_PARAM_STEPS))
		return;
#pragma clang loop unroll(disable)
	for (int i = 0; i < NFG_STEPS_PER_CALL; i++) {
		struct nfg_cred *cr;
		__u32 cur, pos, t;
		__u64 w, m, m1, m2, m3;
		__u8 *p;

		NFG_BARRIER();
		cur = s->cur;
		if (cur >= s->ncred) {
			s->done = 1;
			return;
		}
		cr = &s->cred[cur & (NFG_MAX_CRED_HDRS - 1)];
		pos = s->pos;
		if (pos >= cr->end) {
			s->cur = cur + 1;
			if (cur + 1 >= s->ncred) {
				s->done = 1;
				return;
			}
			s->pos = s->cred[(cur + 1) & (NFG_MAX_CRED_HDRS - 1)]
					 .start;
			continue;
		}
		p = &s->buf[pos & NFG_SCAN_MASK];
		w = LOAD8_AT(p, 0) | CASE8;
		m = bytes_eq(w, 'u') | bytes_eq(w, 'r');
		w = LOAD8_AT(p, 8) | CASE8;
		m1 = bytes_eq(w, 'u') | bytes_eq(w, 'r');
		w = LOAD8_AT(p, 16) | CASE8;
		m2 = bytes_eq(w, 'u') | bytes_eq(w, 'r');
		w = LOAD8_AT(p, 24) | CASE8;
		m3 = bytes_eq(w, 'u') | bytes_eq(w, 'r');
		if (!(m | m1 | m2 | m3)) {
			s->pos = pos + NFG_SCAN_STRIDE;
			continue;
		}
		if (m)
			t = pos + lowest_flag(m);
		else if (m1)
			t = pos + 8 + lowest_flag(m1);
		else if (m2)
			t = pos + 16 + lowest_flag(m2);
		else
			t = pos + 24 + lowest_flag(m3);
		s->pos = t + 1;
		if (t < cr->end)
			param_candidate(s, cr, t);
		if (s->done == 2)
			return;
	}
}

/* 0x80 in the bytes of w that end a value. Inside quotes (to sofia-sip)
 * only '"' and line breaks do; outside quotes ',', SP and HT too, since
 * sofia-sip splits parameters at commas and compacts whitespace there. */
static __always_inline __u64 value_stops(__u64 w, int in_quotes)
{
	__u64 m = bytes_eq(w, '"') | bytes_eq(w, '\r') | bytes_eq(w, '\n');

	if (!in_quotes)
		m |= bytes_eq(w, ',') | bytes_eq(w, ' ') | bytes_eq(w, '\t');
	return m;
}

/* Phase 4 (docs/classifier.md §7): read the value after the '=' at eq, the
 * way FreeSWITCH does: skip every leading '"', stop at the next '"' (no
 * unescaping); unquoted, stop at ',' or LWS. sofia-sip tokenizes first: an
 * odd number of leading quotes leaves the value inside a quoted string, an
 * even number (""x"") outside one, where it would split at commas and
 * compact whitespace. So the quotes around a value must balance, an
 * unquoted-to-sofia value must hold no ',' SP or HT, no value may hold a
 * line break, and only a ',' or the end of the header may follow: anything
 * else is ambiguous. */
static __always_inline void read_value(struct nfg_scratch *s,
				       struct nfg_cred *cr, __u32 eq, __u32 max,
				       __u32 *off, __u32 *len)
{
	__u32 v, k, quoted, lead, t = 0, found = 0, after;
	__u8 c;

	v = eq + 1;
	if (is_lws(byte_at(s, v))) {
		k = skip_lws(s, v);
		if (k >= NFG_LWS_MAX)
			goto ambiguous;
		v += k;
	}
	k = skip_quotes(s, v);
	if (k >= NFG_QUOTES_MAX)
		goto ambiguous;
	v += k;
	quoted = k != 0;
	lead = k;
	if (v >= cr->end) {
		stop(s, NFG_R_CREDENTIAL_UNPARSABLE);
		return;
	}

#pragma unroll
	for (int i = 0; i <= NFG_REALM_MAX / 8; i++) {
		__u64 w = load8_off(s, v, i * 8), m;

		/* Every stop byte is below '-': most words have none. */
		if (!bytes_below(w, '-'))
			continue;
		m = value_stops(w, lead & 1);
		if (m) {
			t = v + i * 8 + lowest_flag(m);
			found = 1;
			break;
		}
	}
	/* Forget which word it was: one state for the verifier below. */
	s->pos = t;
	s->tmp = found;
	NFG_BARRIER();
	t = s->pos;
	found = s->tmp;

	if (!found || t > cr->end)
		t = cr->end;
	if (t - v > max) {
		stop(s, NFG_R_CREDENTIAL_TOO_LONG);
		return;
	}
	if (t == v) {
		stop(s, NFG_R_CREDENTIAL_UNPARSABLE);
		return;
	}
	c = t < cr->end ? byte_at(s, t) : '\n';
	if (quoted) {
		if (c != '"')
			goto ambiguous; /* a line break, ',' or LWS */
		k = skip_quotes(s, t);
		if (k >= NFG_QUOTES_MAX || ((lead + k) & 1))
			goto ambiguous; /* unbalanced: sofia-sip's quoting differs */
		after = t + k;
	} else {
		if (c == '"')
			goto ambiguous;
		after = t;
	}
	if (after < cr->end && byte_at(s, after) != ',') {
		k = skip_lws(s, after);
		if (k >= NFG_LWS_MAX)
			goto ambiguous;
		after += k;
		if (after < cr->end && byte_at(s, after) != ',')
			goto ambiguous;
	}
	*off = v;
	*len = t - v;
	return;
ambiguous:
	stop(s, NFG_R_CREDENTIAL_AMBIGUOUS);
}

#endif
