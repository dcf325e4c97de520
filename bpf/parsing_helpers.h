/* SPDX-License-Identifier: GPL-2.0 */
/* nfguard: Ethernet / VLAN / IPv4 / IPv6 / UDP parsing with a header cursor.
 * Each helper checks `hdr + 1 > data_end` before touching a header, in the
 * manner of xdp-tools' parsing_helpers.h. */
#ifndef NFGUARD_PARSING_HELPERS_H
#define NFGUARD_PARSING_HELPERS_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/in.h>

#include "nfguard_structs.h"

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* Outcome of L2-L4 parsing. */
#define L4_UDP 0     /* a UDP header is in this frame */
#define L4_PASS 1    /* not for us: reason set */
#define L4_VERDICT 2 /* cannot tell safely: reason set */
#define L4_TCP 3     /* a TCP header is in this frame: only bans apply */

static __always_inline int is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) ||
	       proto == bpf_htons(ETH_P_8021AD);
}

/* Ethernet plus up to NFG_MAX_VLAN tags; returns the inner EtherType. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					__be16 *proto)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlh;
	__be16 p;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	p = eth->h_proto;

#pragma unroll
	for (int i = 0; i < NFG_MAX_VLAN; i++) {
		if (!is_vlan(p))
			break;
		vlh = nh->pos;
		if ((void *)(vlh + 1) > data_end)
			return -1;
		p = vlh->encap_proto;
		nh->pos = vlh + 1;
	}
	*proto = p;
	return 0;
}

static __always_inline int parse_ipv4(struct hdr_cursor *nh, void *data_end,
				      struct l4_info *l4, __u32 *reason)
{
	struct iphdr *iph = nh->pos;
	__u32 hlen, tot_len;
	__u16 frag;

	if ((void *)(iph + 1) > data_end || iph->version != 4) {
		*reason = NFG_R_NOT_IP;
		return L4_PASS;
	}
	hlen = iph->ihl * 4;
	tot_len = bpf_ntohs(iph->tot_len);
	if (hlen < sizeof(*iph) || nh->pos + hlen > data_end ||
	    tot_len < hlen) {
		*reason = NFG_R_NOT_IP;
		return L4_PASS;
	}
	frag = bpf_ntohs(iph->frag_off);
	if (frag & 0x1fff) {
		/* No UDP header here; without its first fragment the kernel
		 * cannot reassemble the datagram. */
		*reason = NFG_R_LATER_FRAGMENT;
		return L4_PASS;
	}
	if (iph->protocol != IPPROTO_UDP && iph->protocol != IPPROTO_TCP) {
		*reason = NFG_R_NOT_UDP;
		return L4_PASS;
	}
	l4->first_fragment = !!(frag & 0x2000);
	nh->pos += hlen;
	return iph->protocol == IPPROTO_UDP ? L4_UDP : L4_TCP;
}

struct ipv6_opt_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr_min {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

static __always_inline int parse_ipv6(struct hdr_cursor *nh, void *data_end,
				      struct l4_info *l4, __u32 *reason)
{
	struct ipv6hdr *ip6h = nh->pos;
	__u8 next;

	if ((void *)(ip6h + 1) > data_end || ip6h->version != 6) {
		*reason = NFG_R_NOT_IP;
		return L4_PASS;
	}
	l4->ipv6 = 1;
	next = ip6h->nexthdr;
	nh->pos = ip6h + 1;

#pragma unroll
	for (int i = 0; i < NFG_MAX_EXT_HDRS; i++) {
		struct ipv6_opt_hdr_min *oh = nh->pos;
		struct ipv6_frag_hdr_min *fh = nh->pos;

		switch (next) {
		case IPPROTO_UDP:
			return L4_UDP;
		case IPPROTO_TCP:
			return L4_TCP;
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(oh + 1) > data_end) {
				*reason = NFG_R_NOT_IP;
				return L4_PASS;
			}
			next = oh->nexthdr;
			nh->pos += (oh->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			if ((void *)(oh + 1) > data_end) {
				*reason = NFG_R_NOT_IP;
				return L4_PASS;
			}
			next = oh->nexthdr;
			nh->pos += (oh->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if ((void *)(fh + 1) > data_end) {
				*reason = NFG_R_NOT_IP;
				return L4_PASS;
			}
			if (bpf_ntohs(fh->frag_off) & 0xfff8) {
				*reason = NFG_R_LATER_FRAGMENT;
				return L4_PASS;
			}
			/* Any Fragment header with M set: more follows. */
			l4->first_fragment |= bpf_ntohs(fh->frag_off) & 1;
			next = fh->nexthdr;
			nh->pos = fh + 1;
			break;
		default:
			*reason = NFG_R_NOT_UDP;
			return L4_PASS;
		}
	}
	if (next == IPPROTO_UDP)
		return L4_UDP;
	if (next == IPPROTO_TCP)
		return L4_TCP;
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
	    next == IPPROTO_DSTOPTS || next == IPPROTO_AH ||
	    next == IPPROTO_FRAGMENT) {
		/* The chain goes on past what we walk: it may end in UDP. */
		*reason = NFG_R_EXT_HEADER_LIMIT;
		return L4_VERDICT;
	}
	*reason = NFG_R_NOT_UDP;
	return L4_PASS;
}

/* The ports of a UDP header, or of a TCP one: both start with source and
 * destination port, and a TCP header is longer than a UDP one. */
static __always_inline int parse_udp(struct hdr_cursor *nh, void *data_end,
				     struct l4_info *l4, __u32 *reason)
{
	struct udphdr *udph = nh->pos;

	if ((void *)(udph + 1) > data_end) {
		*reason = NFG_R_NOT_UDP;
		return L4_PASS;
	}
	l4->dport = bpf_ntohs(udph->dest);
	return L4_UDP;
}

/* The rest of what the stages need, read only once the datagram turned out
 * to be for a guarded port (most traffic never needs it): the source
 * address, where the IP packet ends, and (udph not NULL) the UDP header. */
static __always_inline int l4_details(void *l3, struct udphdr *udph, void *data,
				      void *data_end, struct l4_info *l4)
{
	__u32 len;

	if (l4->ipv6) {
		struct ipv6hdr *ip6h = l3;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		__builtin_memcpy(l4->saddr, &ip6h->saddr, 16);
		/* Payload length 0 is a jumbogram: its length is in a
		 * hop-by-hop option; the frame's end is the bound then. */
		len = bpf_ntohs(ip6h->payload_len);
		l4->ip_end = len ? ((void *)(ip6h + 1) - data) + len
				 : data_end - data;
	} else {
		struct iphdr *iph = l3;

		if ((void *)(iph + 1) > data_end)
			return -1;
		__builtin_memset(l4->saddr, 0, 10);
		l4->saddr[10] = 0xff;
		l4->saddr[11] = 0xff;
		__builtin_memcpy(&l4->saddr[12], &iph->saddr, 4);
		/* The packet ends where its length says, not where the frame
		 * does (Ethernet pads short frames). Reassembly drops the
		 * last 1-7 bytes of a non-last fragment: they never reach the
		 * socket. parse_ipv4() checked tot_len >= ihl * 4. */
		len = bpf_ntohs(iph->tot_len) - iph->ihl * 4;
		if (l4->first_fragment)
			len &= ~7u;
		l4->ip_end = ((void *)iph - data) + iph->ihl * 4 + len;
	}
	if (!udph) {
		l4->sport = l4->dport = 0;
		l4->udp_off = l4->payload_len = 0;
		return 0;
	}
	if ((void *)(udph + 1) > data_end)
		return -1;
	len = bpf_ntohs(udph->len);
	l4->sport = bpf_ntohs(udph->source);
	l4->udp_off = (void *)(udph + 1) - data;
	if (len == 0 && l4->ipv6)
		/* Linux takes UDP length 0 over IPv6 as "the rest of the
		 * packet" (a jumbogram), and delivers it. */
		l4->payload_len =
			l4->ip_end > l4->udp_off ? l4->ip_end - l4->udp_off : 0;
	else
		/* A length below the header's own is malformed; the stack
		 * drops it. */
		l4->payload_len = len >= sizeof(*udph) ? len - sizeof(*udph)
						       : 0;
	return 0;
}

#endif
