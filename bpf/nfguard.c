/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: an INVITE that uses the credentials of user@realm may only come
 * from an address where user@realm is currently registered.
 *
 * nfguard_xdp applies the policy of DESIGN.md §2 to every frame; a packet
 * that gets the verdict is dropped, marked for rejection, or only counted,
 * by mode. nfguard_tc (clsact ingress) turns the XDP metadata mark of the
 * reject action into skb->mark, which an nftables rule rejects; it returns
 * TC_ACT_UNSPEC so that other tools' ingress filters still run.
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

/* One round of the credential hash; nfguard/program.py has its twin. */
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

/* Is the credential of header c bound to the source address? */
static __always_inline __u32 lookup_cred(struct nfg_scratch *s,
					 struct nfg_config *cfg,
					 struct nfg_cred *cr, __u8 *saddr)
{
	struct nfg_binding_val *val;
	__u64 h = cfg->cred_seed;

	copy_lower(s, (__u64 *)s->key.user, cr->user_off, cr->user_len,
		   NFG_USER_MAX / 8, &h);
	copy_lower(s, (__u64 *)s->key.realm, cr->realm_off, cr->realm_len,
		   NFG_REALM_MAX / 8, &h);
	s->bkey.cred_hash = h;
	__builtin_memcpy(s->bkey.addr, saddr, 16);
	s->last_has_key = 1;

	val = bindings.lookup(&s->bkey);
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

/* The header section did not end inside the inspected bytes. */
static __always_inline __u32 unfinished(struct nfg_scratch *s,
					struct nfg_config *cfg)
{
	if (s->l4.first_fragment)
		return cfg->fragments == NFG_FRAG_PASS ? NFG_R_FRAGMENT_PASSED
						       : NFG_R_FRAGMENTED;
	return NFG_R_HEADERS_TRUNCATED;
}

/* Stage 0: copy the payload and check the request line. Returns a reason,
 * or NFG_R_CONTINUE when the header lines must be scanned. */
static __always_inline __u32 classify_start(struct xdp_md *ctx,
					    struct nfg_scratch *s,
					    struct nfg_config *cfg)
{
	struct l4_info *l4 = &s->l4;
	__u32 frame_len = bpf_xdp_get_buff_len(ctx);
	__u32 avail, n, first;
	__u64 nl;

	/* Bytes of this datagram in the frame: up to the end of the IP
	 * packet, not of the frame (trailer bytes are no part of it). */
	if (l4->ip_end < frame_len)
		frame_len = l4->ip_end;
	avail = frame_len > l4->udp_off ? frame_len - l4->udp_off : 0;
	n = l4->payload_len < avail ? l4->payload_len : avail;
	s->more = l4->first_fragment || l4->payload_len > n || n > NFG_SCAN_MAX;
	if (n > NFG_SCAN_MAX)
		n = NFG_SCAN_MAX;
	if (n == 0)
		return s->more ? unfinished(s, cfg) : NFG_R_METHOD_NOT_GUARDED;
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
	*(__u64 *)&s->buf[n + 24] = 0;
	s->len = n;

	/* sofia-sip skips SP, HT, CR and LF before the request line. */
	first = NFG_LEADING_MAX;
#pragma unroll
	for (int i = 0; i < NFG_LEADING_MAX / 8; i++) {
		__u64 w = load8(s, i * 8);

		nl = ~(bytes_eq(w, '\r') | bytes_eq(w, '\n') |
		       bytes_eq(w, ' ') | bytes_eq(w, '\t')) &
		     HIGHS;
		if (nl) {
			first = i * 8 + lowest_flag(nl);
			break;
		}
	}
	first = launder(s, first);

	if (first >= n)
		return s->more ? unfinished(s, cfg) : NFG_R_METHOD_NOT_GUARDED;
	if (first >= NFG_LEADING_MAX)
		return NFG_R_TOO_MANY_EMPTY_LINES;
	if (!method_at(s, first, cfg->methods)) {
		if (s->more && n - first < NFG_METHOD_SPAN)
			return unfinished(s, cfg);
		return NFG_R_METHOD_NOT_GUARDED;
	}
	scan_lines_init(s, first);
	return NFG_R_CONTINUE;
}

/* Stage 1 (after the line scan): find the credential headers. */
static __always_inline __u32 after_lines(struct nfg_scratch *s,
					 struct nfg_config *cfg)
{
	if (s->done == 2)
		return s->reason == NFG_R_HEADERS_TRUNCATED ? unfinished(s, cfg)
							    : s->reason;
	find_credentials(s);
	if (s->done == 2)
		return s->reason;
	if (s->ncred == 0)
		return NFG_R_NO_CREDENTIALS;
	find_params_init(s);
	return NFG_R_CONTINUE;
}

/* Stage 2 (after the parameter scan): read the values, look them up. */
static __always_inline __u32 after_params(struct nfg_scratch *s,
					  struct nfg_config *cfg)
{
	__u32 reason = NFG_R_BOUND;

	if (s->done == 2)
		return s->reason;
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
		reason = lookup_cred(s, cfg, cr, s->l4.saddr);
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
	/* The coarse clock is enough for a rate and far cheaper: under a
	 * flood every dropped packet passes here. */
	now = bpf_ktime_get_coarse_ns();
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
				       struct nfg_config *cfg, __u32 reason,
				       __u32 action, __u32 would)
{
	struct nfg_event *ev;

	if (!event_allowed(cfg))
		return;
	ev = events.ringbuf_reserve(sizeof(*ev));
	if (!ev)
		return;
	ev->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memcpy(ev->addr, s->l4.saddr, 16);
	ev->reason = reason;
	ev->action = action;
	ev->would = would;
	ev->sport = s->l4.sport;
	ev->dport = s->l4.dport;
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

/* Count the reason, apply the mode, send the event. */
static __always_inline int finish(struct xdp_md *ctx, struct nfg_scratch *s,
				  struct nfg_config *cfg, __u32 reason)
{
	__u32 action, would;
	__u64 *count;

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
	emit_event(s, cfg, reason, action, would);
	return action == NFG_ACT_DROP ? XDP_DROP : XDP_PASS;
}

/* The config and per-CPU state every stage starts from. */
static __always_inline int stage_state(struct nfg_config **cfg,
				       struct nfg_scratch **s)
{
	__u32 zero = 0;

	*cfg = config.lookup(&zero);
	*s = scratch.lookup(&zero);
	return *cfg && *s;
}

/* A packet that passes before any SIP parsing: only counted. */
static __always_inline int count_pass(__u32 reason)
{
	__u64 *count = counters.lookup(&reason);

	if (count)
		(*count)++;
	return XDP_PASS;
}

/* Traffic that is not UDP to a guarded port is none of nfguard's business
 * and passes untouched: counting it would cost every packet of the host a
 * map update. Loads for tests and replay (NFG_COUNT_ALL) count it too, so
 * that every reason can be observed. */
static __always_inline int pass_through(__u32 reason)
{
#ifdef NFG_COUNT_ALL
	return count_pass(reason);
#else
	return XDP_PASS;
#endif
}

/* Stage 0, the program attached to the interface: L2-L4, ports, trusted
 * networks, request line. */
int nfguard_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct nfg_lpm_key lpm = { .prefixlen = 128 };
	struct nfg_config *cfg;
	struct nfg_scratch *s;
	struct l4_info l4;
	struct udphdr *udph = NULL;
	void *l3;
	__u32 reason, port_word;
	__u64 *port_bits;
	__be16 proto;
	int r;

	/* Fast path for the commonest frame: untagged IPv4 without options,
	 * not fragmented, UDP to a port that is not guarded. */
	if (data + ETH_HLEN + sizeof(struct iphdr) + sizeof(struct udphdr) <=
	    data_end) {
		struct ethhdr *eth = data;
		struct iphdr *iph = data + ETH_HLEN;
		struct udphdr *uh = data + ETH_HLEN + sizeof(struct iphdr);

		if (eth->h_proto == bpf_htons(ETH_P_IP) &&
		    *(__u8 *)iph == 0x45 && iph->protocol == IPPROTO_UDP &&
		    !(iph->frag_off & bpf_htons(0x3fff)) &&
		    bpf_ntohs(iph->tot_len) >= sizeof(struct iphdr)) {
			port_word = bpf_ntohs(uh->dest) / 64;
			port_bits = ports.lookup(&port_word);
			if (!port_bits ||
			    !((*port_bits >> (bpf_ntohs(uh->dest) % 64)) & 1))
				return pass_through(NFG_R_PORT_NOT_GUARDED);
		}
	}

	l4.first_fragment = 0;
	l4.ipv6 = 0;
	if (parse_ethhdr(&nh, data_end, &proto) < 0)
		return pass_through(NFG_R_NOT_IP);
	l3 = nh.pos;
	if (proto == bpf_htons(ETH_P_IP))
		r = parse_ipv4(&nh, data_end, &l4, &reason);
	else if (proto == bpf_htons(ETH_P_IPV6))
		r = parse_ipv6(&nh, data_end, &l4, &reason);
	else
		return pass_through(NFG_R_NOT_IP);
	if (r == L4_PASS)
		return reason == NFG_R_LATER_FRAGMENT ? count_pass(reason)
						      : pass_through(reason);
	if (r == L4_UDP) {
		udph = nh.pos;
		if (parse_udp(&nh, data_end, &l4, &reason) != L4_UDP)
			return pass_through(reason);
		port_word = l4.dport / 64;
		port_bits = ports.lookup(&port_word);
		if (!port_bits || !((*port_bits >> (l4.dport % 64)) & 1))
			return pass_through(NFG_R_PORT_NOT_GUARDED);
	}
	if (l4_details(l3, udph, data, data_end, &l4) < 0)
		return pass_through(NFG_R_NOT_IP);
	if (r == L4_UDP) {
		__builtin_memcpy(lpm.addr, l4.saddr, 16);
		if (trusted.lookup(&lpm))
			return count_pass(NFG_R_TRUSTED);
	}

	/* From here on the packet is a guarded datagram (or an unsafe
	 * extension header chain): the stages share its state per CPU. */
	if (!stage_state(&cfg, &s))
		return XDP_PASS;
	s->l4 = l4;
	s->last_has_key = 0;
	s->last_seq++;
	if (r == L4_UDP) {
		reason = classify_start(ctx, s, cfg);
		if (reason == NFG_R_CONTINUE) {
			stages.call(ctx, NFG_STAGE_SCAN);
			reason = NFG_R_TAIL_CALL_FAILED;
		}
	}
	return finish(ctx, s, cfg, reason);
}

/* Stage 1: the line scanner, NFG_STEPS_PER_CALL steps a call, then the
 * credential headers. */
int nfguard_scan(struct xdp_md *ctx)
{
	struct nfg_config *cfg;
	struct nfg_scratch *s;
	__u32 reason;

	if (!stage_state(&cfg, &s))
		return XDP_PASS;
	scan_lines_run(s);
	if (s->done == 0) {
		stages.call(ctx, NFG_STAGE_SCAN);
		return finish(ctx, s, cfg, NFG_R_TAIL_CALL_FAILED);
	}
	reason = after_lines(s, cfg);
	if (reason == NFG_R_CONTINUE) {
		stages.call(ctx, NFG_STAGE_PARAMS);
		reason = NFG_R_TAIL_CALL_FAILED;
	}
	return finish(ctx, s, cfg, reason);
}

/* Stage 2: the parameter scanner, NFG_STEPS_PER_CALL steps a call, then
 * values and bindings. */
int nfguard_params(struct xdp_md *ctx)
{
	struct nfg_config *cfg;
	struct nfg_scratch *s;

	if (!stage_state(&cfg, &s))
		return XDP_PASS;
	find_params_run(s);
	if (s->done == 0) {
		stages.call(ctx, NFG_STAGE_PARAMS);
		return finish(ctx, s, cfg, NFG_R_TAIL_CALL_FAILED);
	}
	return finish(ctx, s, cfg, after_params(s, cfg));
}

int nfguard_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *meta = (void *)(long)skb->data_meta;
	struct nfg_config *cfg;
	__u32 *word = meta;
	__u32 zero = 0;

	if ((void *)(word + 1) > data)
		return TC_ACT_UNSPEC;
	if (*word != NFG_META_MAGIC)
		return TC_ACT_UNSPEC;
	cfg = config.lookup(&zero);
	skb->mark = cfg && cfg->reject_mark ? cfg->reject_mark
					    : NFG_DEFAULT_REJECT_MARK;
	return TC_ACT_UNSPEC;
}
