"""Stand-ins for FreeSWITCH and a SIP world in network namespaces, for the
tests, `nfguard demo` and `nfguard selftest`: its Event Socket (fakeesl), a
SIP registrar/proxy with digest auth (pbx), SIPp scenarios, and the
namespace lab (world)."""
