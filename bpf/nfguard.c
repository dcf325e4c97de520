/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: an INVITE that uses the credentials of user@realm may only come
 * from an address where user@realm is currently registered.
 *
 * nfguard_xdp applies the policy of DESIGN.md §2 to every frame; a packet
 * that gets the verdict is dropped, marked for rejection, or only counted,
 * by mode. nfguard_tc (clsact ingress) turns the XDP metadata mark of the
 * reject action into skb->mark, which an nftables rule rejects.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "nfguard_consts.h"
#include "nfguard_structs.h"
#include "nfguard_maps.h"
#include "parsing_helpers.h"
#include "sip_parse.h"

/* ASCII upper case to lower case in all 8 bytes at once. */
static __always_inline __u64 lower8(__u64 w)
{
	__u64 h = w & LOWS7;
	__u64 ge_a = h + ONES * (0x80 - 'A');
	__u64 gt_z = h + ONES * (0x7f - 'Z');

	return w | (((ge_a ^ gt_z) & ~w & HIGHS) >> 2);
}

/* Copy len bytes from the buffer at off, lower-cased and zero padded, into
 * `words` 8-byte words at dst. */
static __always_inline void copy_lower(struct nfg_scratch *s, __u64 *dst,
				       __u32 off, __u32 len, const int words)
{
#pragma unroll
	for (int i = 0; i < words; i++) {
		__u64 w = 0;

		if (i * 8 < len) {
			w = lower8(load8(s, off + i * 8));
			if (len - i * 8 < 8)
				w &= (1ULL << ((len - i * 8) * 8)) - 1;
		}
		dst[i] = w;
	}
}

/* Is the credential of header c bound to the source address? */
static __always_inline __u32 lookup_cred(struct nfg_scratch *s,
					 struct nfg_cred *cr, __u8 *saddr)
{
	struct nfg_binding_val *val;

	copy_lower(s, (__u64 *)s->key.user, cr->user_off, cr->user_len,
		   NFG_USER_MAX / 8);
	copy_lower(s, (__u64 *)s->key.realm, cr->realm_off, cr->realm_len,
		   NFG_REALM_MAX / 8);
	__builtin_memcpy(s->key.addr, saddr, 16);
	s->last_has_key = 1;

	val = bindings.lookup(&s->key);
	if (!val)
		return NFG_R_NOT_BOUND;
	if (val->expires_ns <= bpf_ktime_get_boot_ns())
		return NFG_R_EXPIRED;
	return NFG_R_BOUND;
}

/* The header section did not end inside the inspected bytes. */
static __always_inline __u32 unfinished(struct nfg_scratch *s,
					struct nfg_config *cfg,
					struct l4_info *l4)
{
	if (l4->first_fragment)
		return cfg->fragments == NFG_FRAG_PASS ? NFG_R_FRAGMENT_PASSED
						       : NFG_R_FRAGMENTED;
	return NFG_R_HEADERS_TRUNCATED;
}

/* Rules 2-5 of DESIGN.md §2 on the UDP payload. */
static __always_inline __u32 classify_sip(struct xdp_md *ctx,
					  struct nfg_scratch *s,
					  struct nfg_config *cfg,
					  struct l4_info *l4)
{
	__u32 frame_len = bpf_xdp_get_buff_len(ctx);
	__u32 avail, n, first, reason;
	__u64 nl;

	avail = frame_len > l4->udp_off ? frame_len - l4->udp_off : 0;
	n = l4->payload_len < avail ? l4->payload_len : avail;
	s->more = l4->first_fragment || l4->payload_len > n ||
		  n > NFG_SCAN_MAX;
	if (n > NFG_SCAN_MAX)
		n = NFG_SCAN_MAX;
	if (n == 0)
		return NFG_R_METHOD_NOT_GUARDED;
	/* Equal to n for n in [1, NFG_SCAN_MAX], in a form whose bounds the
	 * verifier sees whatever the compiler does with the clamp above. */
	n = ((n - 1) & NFG_SCAN_MASK) + 1;
	if (bpf_xdp_load_bytes(ctx, l4->udp_off, s->buf, n) < 0)
		return NFG_R_HEADERS_TRUNCATED;
	/* Bytes past the payload are left from earlier packets: zero the
	 * ones the method and name checks may read. */
	*(__u64 *)&s->buf[n] = 0;
	*(__u64 *)&s->buf[n + 8] = 0;
	*(__u64 *)&s->buf[n + 16] = 0;
	s->len = n;

	/* Empty lines may precede the request line. */
	first = NFG_LEADING_MAX;
#pragma unroll
	for (int i = 0; i < NFG_LEADING_MAX / 8; i++) {
		__u64 w = load8(s, i * 8);

		nl = ~(bytes_eq(w, '\r') | bytes_eq(w, '\n')) & HIGHS;
		if (nl) {
			first = i * 8 + lowest_flag(nl);
			break;
		}
	}
	/* Forget which iteration broke out, so the verifier does not walk
	 * the rest of the program once per exit. */
	s->pos = first;
	NFG_BARRIER();
	first = s->pos;

	if (first >= n)
		return s->more ? unfinished(s, cfg, l4)
			       : NFG_R_METHOD_NOT_GUARDED;
	if (first >= NFG_LEADING_MAX)
		return NFG_R_TOO_MANY_EMPTY_LINES;
	if (!method_at(s, first, cfg->methods)) {
		if (s->more && n - first < NFG_METHOD_SPAN)
			return unfinished(s, cfg, l4);
		return NFG_R_METHOD_NOT_GUARDED;
	}

	scan_lines(s, first);
	if (s->done == 2)
		return s->reason == NFG_R_HEADERS_TRUNCATED
			       ? unfinished(s, cfg, l4)
			       : s->reason;
#ifdef PROF0
	return NFG_R_BOUND;
#endif
	find_credentials(s);
	if (s->done == 2)
		return s->reason;
	if (s->ncred == 0)
		return NFG_R_NO_CREDENTIALS;
#ifdef PROF1
	return NFG_R_BOUND;
#endif
	find_params(s);
	if (s->done == 2)
		return s->reason;
#ifdef PROF2
	return NFG_R_BOUND;
#endif

	reason = NFG_R_BOUND;
#pragma clang loop unroll(disable)
	for (int i = 0; i < NFG_MAX_CRED_HDRS; i++) {
		struct nfg_cred *cr;
		__u32 c;

		NFG_BARRIER();
		c = s->cur = i;
		if (c >= s->ncred)
			break;
		cr = &s->cred[c & (NFG_MAX_CRED_HDRS - 1)];
		if (cr->user_count > 1 || cr->realm_count > 1)
			return NFG_R_CREDENTIAL_AMBIGUOUS;
		if (cr->user_count == 0 || cr->realm_count == 0)
			return NFG_R_CREDENTIAL_UNPARSABLE;
		read_value(s, cr, cr->user_eq, NFG_USER_MAX, &cr->user_off,
			   &cr->user_len);
		if (s->done == 2)
			return s->reason;
		read_value(s, cr, cr->realm_eq, NFG_REALM_MAX, &cr->realm_off,
			   &cr->realm_len);
		if (s->done == 2)
			return s->reason;
#ifdef PROF3
		continue;
#endif
		reason = lookup_cred(s, cr, l4->saddr);
		if (reason != NFG_R_BOUND)
			return reason;
	}
	return reason;
}

/* Per-CPU token bucket: at most cfg->events_per_sec events a second. */
static __always_inline int event_allowed(struct nfg_config *cfg)
{
	__u32 zero = 0;
	struct nfg_ratelimit *rl = ratelimit.lookup(&zero);
	__u64 now, add;

	if (!rl || !cfg->events_per_sec)
		return 0;
	now = bpf_ktime_get_boot_ns();
	add = (now - rl->last_ns) / (1000000000ULL / cfg->events_per_sec + 1);
	if (add) {
		rl->tokens += add;
		if (rl->tokens > cfg->events_per_sec)
			rl->tokens = cfg->events_per_sec;
		rl->last_ns = now;
	}
	if (!rl->tokens)
		return 0;
	rl->tokens--;
	return 1;
}

static __always_inline void emit_event(struct nfg_scratch *s,
				       struct nfg_config *cfg,
				       struct l4_info *l4, __u32 reason,
				       __u32 action, __u32 would)
{
	struct nfg_event *ev;

	if (!event_allowed(cfg))
		return;
	ev = events.ringbuf_reserve(sizeof(*ev));
	if (!ev)
		return;
	ev->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memcpy(ev->addr, l4->saddr, 16);
	ev->reason = reason;
	ev->action = action;
	ev->would = would;
	ev->sport = l4->sport;
	ev->dport = l4->dport;
	if (s->last_has_key) {
		__builtin_memcpy(ev->user, s->key.user, NFG_USER_MAX);
		__builtin_memcpy(ev->realm, s->key.realm, NFG_REALM_MAX);
	} else {
		__builtin_memset(ev->user, 0, NFG_USER_MAX);
		__builtin_memset(ev->realm, 0, NFG_REALM_MAX);
	}
	events.ringbuf_submit(ev, 0);
}

/* Hand the reject mark to the TC program as a metadata word. */
static __always_inline int set_reject_meta(struct xdp_md *ctx)
{
	void *data, *meta;
	__u32 *word;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(__u32)) < 0)
		return -1;
	data = (void *)(long)ctx->data;
	meta = (void *)(long)ctx->data_meta;
	word = meta;
	if ((void *)(word + 1) > data)
		return -1;
	*word = NFG_META_MAGIC;
	return 0;
}

int nfguard_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct l4_info l4 = {};
	struct nfg_lpm_key lpm = { .prefixlen = 128 };
	struct nfg_config *cfg;
	struct nfg_scratch *s;
	__u32 zero = 0, reason, action, would;
	__u64 *count;
	__be16 proto;
	int r;

	cfg = config.lookup(&zero);
	s = scratch.lookup(&zero);
	if (!cfg || !s)
		return XDP_PASS;
	s->last_has_key = 0;
	s->last_seq++;

	if (parse_ethhdr(&nh, data_end, &proto) < 0) {
		reason = NFG_R_NOT_IP;
		goto out;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		r = parse_ipv4(&nh, data_end, &l4, &reason);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		r = parse_ipv6(&nh, data_end, &l4, &reason);
	} else {
		reason = NFG_R_NOT_IP;
		goto out;
	}
	if (r != L4_UDP)
		goto out;
	if (parse_udp(&nh, data, data_end, &l4, &reason) != L4_UDP)
		goto out;
	if (!ports.lookup(&l4.dport)) {
		reason = NFG_R_PORT_NOT_GUARDED;
		goto out;
	}
	__builtin_memcpy(lpm.addr, l4.saddr, 16);
	if (trusted.lookup(&lpm)) {
		reason = NFG_R_TRUSTED;
		goto out;
	}
	reason = classify_sip(ctx, s, cfg, &l4);

out:
	count = counters.lookup(&reason);
	if (count)
		(*count)++;
	s->last_reason = reason;
	if (reason < NFG_R_FIRST_VERDICT) {
		s->last_action = NFG_ACT_PASS;
		s->last_would = NFG_ACT_PASS;
		return XDP_PASS;
	}
	would = cfg->action == NFG_ACTION_REJECT ? NFG_ACT_MARK : NFG_ACT_DROP;
	action = cfg->mode == NFG_MODE_ENFORCE ? would : NFG_ACT_PASS;
	if (action == NFG_ACT_MARK && set_reject_meta(ctx) < 0)
		action = NFG_ACT_DROP; /* no metadata room: fail closed */
	s->last_action = action;
	s->last_would = would;
	emit_event(s, cfg, &l4, reason, action, would);
	return action == NFG_ACT_DROP ? XDP_DROP : XDP_PASS;
}

int nfguard_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *meta = (void *)(long)skb->data_meta;
	struct nfg_config *cfg;
	__u32 *word = meta;
	__u32 zero = 0;

	if ((void *)(word + 1) > data)
		return TC_ACT_OK;
	if (*word != NFG_META_MAGIC)
		return TC_ACT_OK;
	cfg = config.lookup(&zero);
	skb->mark = cfg && cfg->reject_mark ? cfg->reject_mark
					    : NFG_DEFAULT_REJECT_MARK;
	return TC_ACT_OK;
}
