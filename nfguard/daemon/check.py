"""`nfguard check USER@REALM IP`: what the kernel program would do with an
INVITE carrying USER@REALM's credentials from IP, and why.

The INVITE runs through a private load of the program (BPF_PROG_TEST_RUN)
that is given the live program's config, ports, trusted networks and this
credential's binding at IP, read from the pinned maps: the live counters and
events stay untouched, and the answer is the kernel's own."""

from __future__ import annotations

import ipaddress

from nfguard import packets
from nfguard.errors import NfguardError

EXPLAIN = {
    "bound": "{cred} is registered at {ip}: its INVITEs pass",
    "not_bound": "{cred} is not registered at {ip}: its INVITEs get the verdict",
    "expired": "{cred} was registered at {ip}, but the binding has expired",
    "trusted": "{ip} is in a trusted network: everything from it passes",
    "port_not_guarded": "no port is guarded",
    "method_not_guarded": "INVITE is not a guarded method",
}


def parse_credential(text: str) -> tuple[str, str]:
    user, sep, realm = text.rpartition("@")
    if not sep or not user or not realm:
        raise NfguardError(f"expected USER@REALM, not {text!r}")
    return user, realm


def check_with(checker, user: str, realm: str, ip: str, live) -> dict:
    """checker: a private Program; live: the Program on the pinned maps."""
    from nfguard.kernel.program import check_credential

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise NfguardError(f"not an IP address: {ip!r}") from None
    try:
        check_credential(user, realm)
    except ValueError as e:
        raise NfguardError(str(e)) from None
    checker.mirror(live, user, realm, str(addr))
    ports = live.ports()
    dst = "192.0.2.1" if addr.version == 4 else "2001:db8::1"
    frame = packets.udp_frame(packets.sip_request("INVITE", user, realm), src=str(addr),
                              dst=dst, dport=(ports or [5060])[0])
    v = checker.test_run(frame)
    cred = f"{user}@{realm}"
    mode = live.config()["mode"]
    return {
        "user": user, "realm": realm, "ip": str(addr), "mode": mode,
        "action": v.action, "would": v.would, "reason": v.reason,
        "explain": EXPLAIN.get(v.reason, v.reason).format(cred=cred, ip=addr),
    }
