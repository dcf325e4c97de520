"""Stand-ins for FreeSWITCH, for the tests and `nfguard demo`: its Event
Socket (fakeesl) and a SIP registrar/proxy with digest auth (pbx)."""
