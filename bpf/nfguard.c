/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: an INVITE that uses the credentials of user@realm may only come
 * from an address where user@realm is currently registered.
 *
 * nfguard_xdp applies the policy of docs/design.md §2 to every frame, as
 * docs/classifier.md states it byte by byte; a packet that gets the verdict
 * is dropped, marked for rejection, or only counted, by mode. The SIP
 * scanning goes on in nfguard_scan and nfguard_params, reached by tail
 * calls. nfguard_tc (clsact ingress) turns the XDP metadata mark of the
 * reject action into skb->mark, which an nftables rule rejects; it returns
 * TC_ACT_UNSPEC so that other tools' ingress filters still run. Built with
 * NFG_SOCKET_STAGE, nfguard_sock (cgroup_skb ingress, at the end of this
 * file) judges at the socket what XDP could not judge whole.
 *
 * The code by concern: nfguard_consts.h (limits, reasons, modes),
 * nfguard_structs.h (map keys and values, per-CPU state), nfguard_maps.h,
 * parsing_helpers.h (Ethernet to UDP), word_tricks.h (8 bytes at a time),
 * sip_parse.h (request line, header lines, parameters, values),
 * nfguard_cred.h (credential key and bindings lookup), and here the stages,
 * the verdict and the programs.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "nfguard_consts.h"
#include "nfguard_structs.h"
#include "nfguard_maps.h"
#include "parsing_helpers.h"
#include "sip_parse.h"
#include "nfguard_cred.h"

/* Is the credential of header cr bound to the source address? NFG_R_BOUND,
 * NFG_R_NOT_BOUND or NFG_R_EXPIRED; s->key holds the credentials after.
 * (Map calls stay in this file: bcc rewrites them in the main file only.) */
static __always_inline __u32 lookup_cred(struct nfg_scratch *s,
					 struct nfg_config *cfg,
					 struct nfg_cred *cr, __u8 *saddr)
{
	cred_key(s, cfg, cr, saddr);
	return cred_check(s, cr, bindings.lookup(&s->bkey));
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

/* After the copy of n payload bytes into s->buf, either program's: the
 * request line. A reason, or NFG_R_CONTINUE. */
static __always_inline __u32 request_line(struct nfg_scratch *s,
					  struct nfg_config *cfg, __u32 n)
{
	__u32 first;
	__u64 nl;

	/* Bytes past the payload are left from earlier packets: zero the
	 * 32 the method and name checks may read (four stores, not a loop:
	 * an unrolled loop compiles to other code). */
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
	s->rate_class = rate_class_at(s, first);
	if (!method_at(s, first, cfg->methods)) {
		if (s->more && n - first < NFG_METHOD_SPAN)
			return unfinished(s, cfg);
		return NFG_R_METHOD_NOT_GUARDED;
	}
	scan_lines_init(s, first);
	return NFG_R_CONTINUE;
}

/* Stage 0: copy the payload and check the request line. Returns a reason,
 * or NFG_R_CONTINUE when the header lines must be scanned. */
static __always_inline __u32 classify_start(struct xdp_md *ctx,
					    struct nfg_scratch *s,
					    struct nfg_config *cfg)
{
	struct l4_info *l4 = &s->l4;
	__u32 frame_len = bpf_xdp_get_buff_len(ctx);
	__u32 avail, n;

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
	return request_line(s, cfg, n);
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
				       __u32 action, __u32 would, __u8 stage)
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
	ev->stage = stage;
	if (s->last_has_key) {
		__builtin_memcpy(ev->user, s->key.user, NFG_USER_MAX);
		__builtin_memcpy(ev->realm, s->key.realm, NFG_REALM_MAX);
	} else {
		__builtin_memset(ev->user, 0, NFG_USER_MAX);
		__builtin_memset(ev->realm, 0, NFG_REALM_MAX);
	}
	events.ringbuf_submit(ev, 0);
}

/* The key of the datagram in this frame (struct nfg_dgram_key). Where no
 * UDP header was found (an IPv6 extension header chain too long to
 * follow), the source with a zero header: TC keys such a frame the same. */
static __always_inline int xdp_dgram_key(struct xdp_md *ctx,
					 struct nfg_scratch *s,
					 struct nfg_dgram_key *key)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 off = s->l4.udp_off;
	void *udph;

	__builtin_memcpy(key->saddr, s->l4.saddr, 16);
	if (off == 0) {
		__builtin_memset(key->udp, 0, sizeof(key->udp));
		return 0;
	}
	if (off < sizeof(struct udphdr))
		return -1;
	/* Laundered, so that the compiler cannot fold the subtraction into
	 * a negative constant offset the verifier refuses. */
	off = launder(s, off - sizeof(struct udphdr));
	/* The verifier proves a range only below MAX_PACKET_OFF (0xffff)
	 * with the header's length added. */
	if (off > 0xffff - sizeof(struct udphdr))
		return -1;
	udph = data + off;
	if (udph + sizeof(struct udphdr) > data_end)
		return -1;
	__builtin_memcpy(key->udp, udph, sizeof(key->udp));
	return 0;
}

#ifndef NFG_NO_XDP_META
/* Hand the reject mark to the TC program as a metadata word. */
static __always_inline int hand_over_reject(struct xdp_md *ctx,
					    struct nfg_scratch *s)
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
#else
/* This kernel refuses bpf_xdp_adjust_meta (the loader asks it first), so
 * the mark goes by the handoff map: one more datagram of this key awaits
 * it, and nfguard_tc takes one for each datagram of the key it sees. A
 * flow's datagrams reach TC in the order XDP saw them, so the count marks
 * exactly those XDP meant; one lost on the way leaves a count that can
 * only mark the same bytes again. */
static __always_inline int hand_over_reject(struct xdp_md *ctx,
					    struct nfg_scratch *s)
{
	struct nfg_dgram_key key;
	__u64 one = 1, *pending;

	if (xdp_dgram_key(ctx, s, &key) < 0)
		return -1;
	if (handoff.insert(&key, &one) == 0)
		return 0;
	pending = handoff.lookup(&key);
	if (!pending)
		return -1;
	__sync_fetch_and_add(pending, 1);
	return 0;
}
#endif

#ifdef NFG_SOCKET_STAGE
/* XDP judged this datagram whole and passes it: one more of its key on the
 * way to a socket, which the socket stage then leaves alone. */
static __always_inline void note_seen(struct xdp_md *ctx, struct nfg_scratch *s)
{
	struct nfg_dgram_key key;
	__u64 one = 1, *pending;

	if (xdp_dgram_key(ctx, s, &key) < 0)
		return;
	if (seen.insert(&key, &one) == 0)
		return;
	pending = seen.lookup(&key);
	if (pending)
		__sync_fetch_and_add(pending, 1);
}
#endif

/* One more frame with this reason, in the per-CPU counters. By address, as
 * the lookup takes it: with a copy, clang lays out the scanner loops that
 * finish() follows differently. */
static __always_inline void count_reason(__u32 *reason)
{
	__u64 *count = counters.lookup(reason);

	if (count)
		(*count)++;
}

/* The key of the source in bans and buckets: an IPv6 address masked to the
 * configured prefix (a host holds a whole /64), an IPv4 address whole. */
static __always_inline void source_key(struct nfg_config *cfg,
				       struct l4_info *l4, __u8 *out)
{
	__u64 w[2];

	__builtin_memcpy(w, l4->saddr, 16);
	if (l4->ipv6) {
		w[0] &= cfg->v6_mask[0];
		w[1] &= cfg->v6_mask[1];
	}
	__builtin_memcpy(out, w, 16);
}

/* The ban entry of a source key, or NULL. */
static __always_inline struct nfg_ban *ban_of(struct nfg_addr_key *key)
{
	__u64 w[2], *bits;
	__u32 slot, word;

	/* The filter first: a hash map lookup costs every guarded packet
	 * 25 ns, an array load almost nothing. */
	__builtin_memcpy(w, key->addr, 16);
	slot = ((w[0] ^ w[1]) * 0x9e3779b97f4a7c15ULL) >>
	       (64 - NFG_BAN_FILTER_LOG2);
	word = slot / 64;
	bits = ban_filter.lookup(&word);
	if (!bits || !((*bits >> (slot % 64)) & 1))
		return NULL;
	return bans.lookup(key);
}

/* Is the source banned? The expiry is the kernel's to check: bans lapse on
 * time even while the controller is down. */
static __always_inline int banned(struct nfg_scratch *s, struct nfg_config *cfg,
				  struct l4_info *l4)
{
	struct nfg_addr_key key;
	struct nfg_ban *ban;

	source_key(cfg, l4, key.addr);
	ban = ban_of(&key);
	return ban && ban->expires_ns > boot_now(s);
}

/* Is this request over its source's rate? Only requests of a rate class,
 * from a source that holds no binding (trusted sources never get here).
 * The bucket is a GCRA: one time per (source, class), how far the source
 * has run ahead of its sustained rate; over the slack (burst - 1
 * intervals) it is limited and the time does not move. Two CPUs updating
 * one bucket at once may each let one request through: a bucket is a
 * bound on a flood, not an exact count. */
static __always_inline int over_rate(struct nfg_scratch *s,
				     struct nfg_config *cfg)
{
	struct nfg_bucket_key key;
	__u32 cls = s->rate_class;
	__u64 interval, now, t, *tat, *until;

	if (cls >= NFG_RC_COUNT)
		return 0;
	interval = cfg->rate_interval_ns[cls];
	if (!interval)
		return 0;
	now = boot_now(s);
	until = bound.lookup((struct nfg_addr_key *)s->l4.saddr);
	if (until && *until > now)
		return 0;
	source_key(cfg, &s->l4, key.addr);
	key.cls = cls;
	tat = buckets.lookup(&key);
	if (!tat) {
		t = now + interval;
		buckets.update(&key, &t);
		return 0;
	}
	t = *tat > now ? *tat : now;
	if (t - now > cfg->rate_slack_ns[cls])
		return 1;
	*tat = t + interval;
	return 0;
}

/* A request the policy passes may still be one of a flood: requests with
 * no credentials and those of methods nfguard does not guard (REGISTER,
 * OPTIONS, ...) go through their source's bucket. */
static __always_inline __u32 rate_limit(struct nfg_scratch *s,
					struct nfg_config *cfg, __u32 reason)
{
	if ((reason == NFG_R_NO_CREDENTIALS ||
	     reason == NFG_R_METHOD_NOT_GUARDED) &&
	    over_rate(s, cfg))
		return NFG_R_RATE_LIMITED;
	return reason;
}

/* Count the reason, apply the mode, send the event. */
static __always_inline int finish(struct xdp_md *ctx, struct nfg_scratch *s,
				  struct nfg_config *cfg, __u32 reason)
{
	__u32 action, would;

	reason = rate_limit(s, cfg, reason);
	count_reason(&reason);
	s->last_reason = reason;
	if (reason < NFG_R_FIRST_VERDICT) {
		s->last_action = NFG_ACT_PASS;
		s->last_would = NFG_ACT_PASS;
#ifdef NFG_SOCKET_STAGE
		/* A first fragment passed undecided is judged whole at the
		 * socket: not noted. */
		if (reason != NFG_R_FRAGMENT_PASSED)
			note_seen(ctx, s);
#endif
		return XDP_PASS;
	}
	/* A flood is dropped, never rejected: a reject answers every packet
	 * of it. Nor does it send events: it would crowd out the credential
	 * alerts (the counters count it). */
	would = cfg->action == NFG_ACTION_REJECT && reason < NFG_R_FIRST_FLOOD
			? NFG_ACT_MARK
			: NFG_ACT_DROP;
	action = cfg->mode == NFG_MODE_ENFORCE ? would : NFG_ACT_PASS;
	if (action == NFG_ACT_MARK && hand_over_reject(ctx, s) < 0)
		action = NFG_ACT_DROP; /* no way to mark it: fail closed */
	s->last_action = action;
	s->last_would = would;
	if (reason < NFG_R_FIRST_FLOOD)
		emit_event(s, cfg, reason, action, would, NFG_JUDGE_XDP);
#ifdef NFG_SOCKET_STAGE
	if (action == NFG_ACT_PASS) /* monitor: judged, and counted, here */
		note_seen(ctx, s);
#endif
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
	count_reason(&reason);
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

/* Is the UDP destination port at dest (in the frame) guarded? One bit of
 * the ports map. The port is read from the frame again after the lookup
 * rather than held in a register: on the fast path that every other packet
 * of the host takes, holding it in a register measured 1 ns slower.
 * The caller gives the key's stack slot: with one slot for both of its
 * tests, the verifier's states stay equal where the fast path falls through
 * to the full parse (16k instructions verified for nfguard_xdp, not 28k). */
static __always_inline int port_guarded(__u32 *word, __be16 *dest)
{
	__u64 *bits;

	*word = bpf_ntohs(*dest) / 64;
	bits = ports.lookup(word);
	return bits && ((*bits >> (bpf_ntohs(*dest) % 64)) & 1);
}

/* The fast path's ban check: an IPv4 source, read from the frame. */
static __always_inline int v4_banned(__be32 *saddr, struct nfg_config **cfg,
				     struct nfg_scratch **s)
{
	struct nfg_addr_key key = {};
	struct nfg_ban *ban;

	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	__builtin_memcpy(&key.addr[12], saddr, 4);
	ban = ban_of(&key);
	return ban && stage_state(cfg, s) && ban->expires_ns > boot_now(*s);
}

/* A banned source's packet: counted, dropped when enforcing. No event,
 * and the payload is never read. */
static __always_inline int banned_verdict(struct nfg_config *cfg,
					  struct nfg_scratch *s)
{
	__u32 reason = NFG_R_BANNED;

	count_reason(&reason);
	s->last_reason = reason;
	s->last_would = NFG_ACT_DROP;
	s->last_action = cfg->mode == NFG_MODE_ENFORCE ? NFG_ACT_DROP
						       : NFG_ACT_PASS;
	return cfg->mode == NFG_MODE_ENFORCE ? XDP_DROP : XDP_PASS;
}

/* Stage 0, the program attached to the interface: L2-L4, ports, bans,
 * trusted networks, request line (docs/classifier.md §1 to §3). */
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
	__be16 proto;
	int r;

	/* Fast path for the commonest frames: untagged IPv4 without options,
	 * not fragmented, UDP or TCP to a port that is not guarded, or from a
	 * banned source (a flood: dropped without parsing the frame again). */
	if (data + ETH_HLEN + sizeof(struct iphdr) + sizeof(struct udphdr) <=
	    data_end) {
		struct ethhdr *eth = data;
		struct iphdr *iph = data + ETH_HLEN;
		struct udphdr *uh = data + ETH_HLEN + sizeof(struct iphdr);

		if (eth->h_proto == bpf_htons(ETH_P_IP) &&
		    *(__u8 *)iph == 0x45 &&
		    (iph->protocol == IPPROTO_UDP ||
		     iph->protocol == IPPROTO_TCP) &&
		    !(iph->frag_off & bpf_htons(0x3fff)) &&
		    bpf_ntohs(iph->tot_len) >= sizeof(struct iphdr)) {
			if (!port_guarded(&port_word, &uh->dest))
				return pass_through(NFG_R_PORT_NOT_GUARDED);
			if (v4_banned(&iph->saddr, &cfg, &s))
				return banned_verdict(cfg, s);
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
	if (r == L4_UDP || r == L4_TCP) {
		udph = nh.pos; /* a TCP header starts with the same ports */
		if (parse_udp(&nh, data_end, &l4, &reason) != L4_UDP)
			return pass_through(reason);
		if (!port_guarded(&port_word, &udph->dest))
			return pass_through(NFG_R_PORT_NOT_GUARDED);
	}
	if (l4_details(l3, r == L4_UDP ? udph : NULL, data, data_end, &l4) < 0)
		return pass_through(NFG_R_NOT_IP);

	/* From here on the packet is for a guarded port (or behind an unsafe
	 * extension header chain): the stages share its state per CPU. */
	if (!stage_state(&cfg, &s))
		return XDP_PASS;
	s->last_has_key = 0;
	/* A banned source loses every packet to a guarded port, UDP or TCP,
	 * before its payload is read. Before the trusted networks, so that a
	 * flood costs one lookup less: the controller never lets a ban
	 * overlap a trusted network (it spares, refuses and lifts them). */
	if (r != L4_VERDICT && banned(s, cfg, &l4))
		return banned_verdict(cfg, s);
	if (r != L4_VERDICT) {
		__builtin_memcpy(lpm.addr, l4.saddr, 16);
		if (trusted.lookup(&lpm))
			return count_pass(NFG_R_TRUSTED);
	}
	/* TCP is judged by its stream, not here (docs/design.md §2.1). */
	if (r == L4_TCP)
		return pass_through(NFG_R_NOT_UDP);
	s->l4 = l4;
	s->rate_class = NFG_RC_NONE;
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
 * credential headers (docs/classifier.md §4, §5). */
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
 * values and bindings (docs/classifier.md §6, §7). */
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

#ifndef NFG_NO_XDP_META
/* Whether XDP marked this datagram for rejection: its metadata word. The
 * config is looked up only then: most packets carry no metadata. */
static __always_inline int reject_handed_over(struct __sk_buff *skb,
					      struct nfg_config **cfg)
{
	void *data = (void *)(long)skb->data;
	__u32 *word = (void *)(long)skb->data_meta;
	__u32 zero = 0;

	if ((void *)(word + 1) > data || *word != NFG_META_MAGIC)
		return 0;
	*cfg = config.lookup(&zero);
	return *cfg != NULL;
}
#else
/* Whether XDP marked this datagram for rejection: a count waiting under
 * its key in the handoff map (hand_over_reject()). The same parsing
 * helpers as XDP's find the same source and UDP header; by here the stack
 * has taken off one VLAN tag, and parse_ethhdr() reads either form. */
static __always_inline int reject_handed_over(struct __sk_buff *skb,
					      struct nfg_config **cfg)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct nfg_dgram_key key;
	struct l4_info l4;
	__u64 *pending;
	__u32 reason, zero = 0;
	__be16 proto;
	void *l3;
	int r;

	/* Only enforce/reject hands anything over: other modes parse nothing. */
	*cfg = config.lookup(&zero);
	if (!*cfg || (*cfg)->mode != NFG_MODE_ENFORCE ||
	    (*cfg)->action != NFG_ACTION_REJECT)
		return 0;
	l4.first_fragment = 0;
	l4.ipv6 = 0;
	if (parse_ethhdr(&nh, data_end, &proto) < 0)
		return 0;
	l3 = nh.pos;
	if (proto == bpf_htons(ETH_P_IP))
		r = parse_ipv4(&nh, data_end, &l4, &reason);
	else if (proto == bpf_htons(ETH_P_IPV6))
		r = parse_ipv6(&nh, data_end, &l4, &reason);
	else
		return 0;
	if (r == L4_UDP && nh.pos + sizeof(struct udphdr) <= data_end)
		__builtin_memcpy(key.udp, nh.pos, sizeof(key.udp));
	else if (r == L4_VERDICT) /* no UDP header found: as XDP keys it */
		__builtin_memset(key.udp, 0, sizeof(key.udp));
	else
		return 0;
	if (l4_details(l3, NULL, data, data_end, &l4) < 0)
		return 0;
	__builtin_memcpy(key.saddr, l4.saddr, 16);
	pending = handoff.lookup(&key);
	if (!pending || *pending == 0)
		return 0;
	__sync_fetch_and_add(pending, -1);
	return 1;
}
#endif

/* The TC ingress program: a datagram XDP marked for rejection gets the
 * reject mark, which the nftables rule rejects. */
int nfguard_tc(struct __sk_buff *skb)
{
	struct nfg_config *cfg = NULL;

	if (!reject_handed_over(skb, &cfg))
		return TC_ACT_UNSPEC;
	skb->mark = cfg->reject_mark ? cfg->reject_mark
				     : NFG_DEFAULT_REJECT_MARK;
	return TC_ACT_UNSPEC;
}

#ifdef NFG_SOCKET_STAGE
/* The socket stage: nfguard_sock at cgroup_skb ingress sees each datagram
 * as a socket receives it, after IP reassembly and after GSO segmentation,
 * from its IP header on. It judges, with the same scanner, maps, reasons,
 * counters and events, the datagrams to a guarded port that XDP did not
 * judge whole: the reassembly of a first fragment XDP passed undecided
 * (fragments: pass), and each segment of a GSO super-packet that generic
 * XDP saw as one frame. A datagram XDP judged whole and passed is in
 * `seen`: taken off, and left alone, so that none is counted or reported
 * twice. Only datagrams that came in on an interface in sock_ifaces (those
 * nfguard guards) are judged: loopback and other interfaces stay as
 * untouched as XDP leaves them. A verdict drops the datagram: a socket
 * program cannot answer with ICMP, so reject mode drops here too. */

static __always_inline int sock_state(struct nfg_config **cfg,
				      struct nfg_scratch **s)
{
	__u32 zero = 0;

	*cfg = config.lookup(&zero);
	*s = sock_scratch.lookup(&zero);
	return *cfg && *s;
}

/* The IPv6 extension headers before UDP, by bpf_skb_load_bytes() (a
 * reassembled datagram is rarely linear). The offset of the UDP header, or
 * -1. Reassembly removes the Fragment header; the stack keeps that of an
 * atomic fragment (offset 0, no more), which is a whole datagram. */
static __always_inline int sock_ipv6_udp_off(struct __sk_buff *skb, __u8 next)
{
	__u32 off = sizeof(struct ipv6hdr);
	__u8 oh[4];

#pragma unroll
	for (int i = 0; i < NFG_MAX_EXT_HDRS; i++) {
		if (next == IPPROTO_UDP)
			return off;
		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
		    next != IPPROTO_DSTOPTS && next != IPPROTO_AH &&
		    next != IPPROTO_FRAGMENT)
			return -1;
		if (bpf_skb_load_bytes(skb, off, oh, sizeof(oh)) < 0)
			return -1;
		if (next == IPPROTO_FRAGMENT) {
			if (oh[2] ||
			    (oh[3] & 0xf9)) /* offset or more: a piece */
				return -1;
			off += 8;
		} else if (next == IPPROTO_AH) {
			off += (oh[1] + 2) * 4;
		} else {
			off += (oh[1] + 1) * 8;
		}
		next = oh[0];
	}
	return next == IPPROTO_UDP ? off : -1;
}

/* The datagram's source, UDP header and payload bounds (offsets from the
 * IP header); 0, or -1 when it is not UDP over IP. */
static __always_inline int sock_parse(struct __sk_buff *skb, struct l4_info *l4,
				      struct nfg_dgram_key *key)
{
	struct udphdr uh;
	__u32 len;
	int off;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) < 0 ||
		    iph.version != 4 || iph.protocol != IPPROTO_UDP ||
		    iph.ihl < 5 || (iph.frag_off & bpf_htons(0x3fff)))
			return -1;
		off = iph.ihl * 4;
		__builtin_memset(l4->saddr, 0, 10);
		l4->saddr[10] = 0xff;
		l4->saddr[11] = 0xff;
		__builtin_memcpy(&l4->saddr[12], &iph.saddr, 4);
		l4->ipv6 = 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h;

		if (bpf_skb_load_bytes(skb, 0, &ip6h, sizeof(ip6h)) < 0 ||
		    ip6h.version != 6)
			return -1;
		off = sock_ipv6_udp_off(skb, ip6h.nexthdr);
		if (off < 0)
			return -1;
		__builtin_memcpy(l4->saddr, &ip6h.saddr, 16);
		l4->ipv6 = 1;
	} else {
		return -1;
	}
	if (off > 0xffff || bpf_skb_load_bytes(skb, off, &uh, sizeof(uh)) < 0)
		return -1;
	l4->udp_off = off + sizeof(uh);
	l4->ip_end = skb->len;
	l4->sport = bpf_ntohs(uh.source);
	l4->dport = bpf_ntohs(uh.dest);
	l4->first_fragment = 0;
	len = bpf_ntohs(uh.len);
	if (len == 0 && l4->ipv6) /* a jumbogram: the rest of the packet */
		l4->payload_len =
			skb->len > l4->udp_off ? skb->len - l4->udp_off : 0;
	else
		l4->payload_len = len >= sizeof(uh) ? len - sizeof(uh) : 0;
	__builtin_memcpy(key->saddr, l4->saddr, 16);
	__builtin_memcpy(key->udp, &uh, sizeof(key->udp));
	return 0;
}

/* Stage 0 at the socket: copy the payload, check the request line. */
static __always_inline __u32 sock_classify_start(struct __sk_buff *skb,
						 struct nfg_scratch *s,
						 struct nfg_config *cfg)
{
	struct l4_info *l4 = &s->l4;
	__u32 avail, n;

	avail = skb->len > l4->udp_off ? skb->len - l4->udp_off : 0;
	n = l4->payload_len < avail ? l4->payload_len : avail;
	s->more = l4->payload_len > n || n > NFG_SCAN_MAX;
	if (n > NFG_SCAN_MAX)
		n = NFG_SCAN_MAX;
	if (n == 0)
		return s->more ? unfinished(s, cfg) : NFG_R_METHOD_NOT_GUARDED;
	n = ((n - 1) & NFG_SCAN_MASK) + 1; /* as in classify_start() */
	if (bpf_skb_load_bytes(skb, l4->udp_off, s->buf, n) < 0)
		return NFG_R_HEADERS_TRUNCATED;
	return request_line(s, cfg, n);
}

/* Count the reason, apply the mode (a verdict drops, whatever the
 * action), send the event. 1: the socket gets the datagram. */
static __always_inline int sock_finish(struct nfg_scratch *s,
				       struct nfg_config *cfg, __u32 reason)
{
	__u32 action, would;

	count_reason(&reason);
	s->last_reason = reason;
	if (reason < NFG_R_FIRST_VERDICT) {
		s->last_action = NFG_ACT_PASS;
		s->last_would = NFG_ACT_PASS;
		return 1;
	}
	would = cfg->action == NFG_ACTION_REJECT && reason < NFG_R_FIRST_FLOOD
			? NFG_ACT_MARK
			: NFG_ACT_DROP;
	action = cfg->mode == NFG_MODE_ENFORCE ? NFG_ACT_DROP : NFG_ACT_PASS;
	s->last_action = action;
	s->last_would = would;
	if (reason < NFG_R_FIRST_FLOOD)
		emit_event(s, cfg, reason, action, would, NFG_JUDGE_SOCKET);
	return action == NFG_ACT_DROP ? 0 : 1;
}

int nfguard_sock(struct __sk_buff *skb)
{
	struct nfg_lpm_key lpm = { .prefixlen = 128 };
	struct nfg_dgram_key key;
	struct nfg_config *cfg;
	struct nfg_scratch *s;
	struct l4_info l4;
	__u32 ifindex = skb->ifindex, port_word, reason;
	__u64 *pending;
	__be16 dport;

	if (!sock_ifaces.lookup(&ifindex))
		return 1;
	if (sock_parse(skb, &l4, &key) < 0)
		return 1;
	dport = bpf_htons(l4.dport);
	if (!port_guarded(&port_word, &dport))
		return 1;
	pending = seen.lookup(&key);
	if (pending && *pending) {
		__sync_fetch_and_add(pending, -1);
		return 1; /* XDP judged it whole */
	}
	if (!sock_state(&cfg, &s))
		return 1;
	s->last_has_key = 0;
	__builtin_memcpy(lpm.addr, l4.saddr, 16);
	if (trusted.lookup(&lpm))
		return sock_finish(s, cfg, NFG_R_TRUSTED);
	s->l4 = l4;
	s->rate_class = NFG_RC_NONE;
	s->last_seq++;
	reason = sock_classify_start(skb, s, cfg);
	if (reason == NFG_R_CONTINUE) {
		sock_stages.call(skb, NFG_STAGE_SCAN);
		reason = NFG_R_TAIL_CALL_FAILED;
	}
	return sock_finish(s, cfg, reason);
}

int nfguard_sock_scan(struct __sk_buff *skb)
{
	struct nfg_config *cfg;
	struct nfg_scratch *s;
	__u32 reason;

	if (!sock_state(&cfg, &s))
		return 1;
	scan_lines_run(s);
	if (s->done == 0) {
		sock_stages.call(skb, NFG_STAGE_SCAN);
		return sock_finish(s, cfg, NFG_R_TAIL_CALL_FAILED);
	}
	reason = after_lines(s, cfg);
	if (reason == NFG_R_CONTINUE) {
		sock_stages.call(skb, NFG_STAGE_PARAMS);
		reason = NFG_R_TAIL_CALL_FAILED;
	}
	return sock_finish(s, cfg, reason);
}

int nfguard_sock_params(struct __sk_buff *skb)
{
	struct nfg_config *cfg;
	struct nfg_scratch *s;

	if (!sock_state(&cfg, &s))
		return 1;
	find_params_run(s);
	if (s->done == 0) {
		sock_stages.call(skb, NFG_STAGE_PARAMS);
		return sock_finish(s, cfg, NFG_R_TAIL_CALL_FAILED);
	}
	return sock_finish(s, cfg, after_params(s, cfg));
}
#endif
