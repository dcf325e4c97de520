"""`nfguard run`: follow FreeSWITCH and keep the kernel and nftables in step."""
