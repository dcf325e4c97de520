"""A stand-in PBX: a UDP SIP registrar and call endpoint with digest auth,
for the end-to-end tests and `nfguard demo` where no FreeSWITCH runs.

It behaves the way FreeSWITCH does where nfguard cares:
- REGISTER without credentials gets 401 (WWW-Authenticate), with valid ones
  200, and the registration goes to the fake Event Socket as FreeSWITCH's
  sofia::register event (Expires: 0: sofia::unregister), and into its
  `sofia xmlstatus` table;
- INVITE without credentials gets 407 (Proxy-Authenticate); with valid
  `Proxy-Authorization` it is accepted (100, 200) whatever the source
  address: digest auth alone ties nothing to where the phone registered,
  which is the hole nfguard closes;
- ACK is absorbed, BYE gets 200.
One registration per user@realm (like multiple-registrations=false): a
REGISTER from a new address replaces the old one, and the old is
unregistered on the Event Socket. (FreeSWITCH's default contact mode keeps
the old row until it expires instead.)

Everything it receives is kept in `received`, so a test can assert what
reached the PBX socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

REALM = "pbx.example.com"


@dataclass
class Received:
    method: str  # request method, or "" for what is not a request
    src: str
    port: int
    authorized: bool  # carried credentials that checked out
    user: str | None
    time: float


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


_PARAM = re.compile(r'([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def digest_params(value: str) -> dict[str, str]:
    _, _, rest = value.strip().partition(" ")
    return {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in _PARAM.finditer(rest)}


def digest_ok(params: dict[str, str], method: str, password: str) -> bool:
    ha1 = _md5(f"{params.get('username')}:{params.get('realm')}:{password}")
    ha2 = _md5(f"{method}:{params.get('uri')}")
    if params.get("qop"):
        want = _md5(f"{ha1}:{params.get('nonce')}:{params.get('nc')}:{params.get('cnonce')}:"
                    f"{params.get('qop')}:{ha2}")
    else:
        want = _md5(f"{ha1}:{params.get('nonce')}:{ha2}")
    return secrets.compare_digest(want, params.get("response", ""))


def parse_request(data: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, request-uri, headers with lower-case names), or None."""
    try:
        text = data.decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return None
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    parts = head[0].split()
    if len(parts) != 3 or not parts[2].startswith("SIP/"):
        return None
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    return parts[0], parts[1], headers


@dataclass
class Registration:
    user: str
    ip: str
    port: int
    call_id: str
    contact: str
    expires: int
    at: float


class StandInPbx(asyncio.DatagramProtocol):
    """users: {user: password}; on_register(reg) and on_unregister(reg) tell
    the Event Socket."""

    def __init__(self, users: dict[str, str], realm: str = REALM, *,
                 on_register: Callable[[Registration], None] | None = None,
                 on_unregister: Callable[[Registration], None] | None = None):
        self.users = users
        self.realm = realm
        self.on_register = on_register or (lambda reg: None)
        self.on_unregister = on_unregister or (lambda reg: None)
        self.registrations: dict[str, Registration] = {}
        self.received: list[Received] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._nonce = secrets.token_hex(16)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def invites(self, authorized: bool | None = None, src: str | None = None) -> list[Received]:
        return [r for r in self.received if r.method == "INVITE"
                and (authorized is None or r.authorized == authorized)
                and (src is None or r.src == src)]

    def _reply(self, addr, headers: dict[str, str], status: str, extra: str = "") -> None:
        to = headers.get("to", "")
        if not status.startswith("100") and ";tag=" not in to:
            to += ";tag=standin"
        msg = (f"SIP/2.0 {status}\r\n"
               f"Via: {headers.get('via', '')}\r\n"
               f"From: {headers.get('from', '')}\r\n"
               f"To: {to}\r\n"
               f"Call-ID: {headers.get('call-id', '')}\r\n"
               f"CSeq: {headers.get('cseq', '')}\r\n"
               f"{extra}"
               "Server: nfguard-standin\r\n"
               "Content-Length: 0\r\n\r\n")
        self.transport.sendto(msg.encode(), addr)

    def _challenge(self, kind: str) -> str:
        return (f'{kind}: Digest realm="{self.realm}", nonce="{self._nonce}", '
                'algorithm=MD5\r\n')

    def _credentials(self, method: str, header: str | None) -> str | None:
        """The user whose valid digest the header carries, or None."""
        if not header:
            return None
        p = digest_params(header)
        user = p.get("username")
        if (user in self.users and p.get("realm") == self.realm
                and p.get("nonce") == self._nonce and digest_ok(p, method, self.users[user])):
            return user
        return None

    def datagram_received(self, data: bytes, addr) -> None:
        src, port = addr[0], addr[1]
        req = parse_request(data)
        if req is None:
            self.received.append(Received("", src, port, False, None, time.time()))
            return
        method, _, h = req
        if method == "REGISTER":
            user = self._credentials(method, h.get("authorization"))
        elif method == "INVITE":
            user = self._credentials(method, h.get("proxy-authorization"))
        else:
            user = None
        self.received.append(Received(method, src, port, user is not None, user, time.time()))
        if method == "REGISTER":
            if user is None:
                self._reply(addr, h, "401 Unauthorized", self._challenge("WWW-Authenticate"))
                return
            expires = int(h.get("expires", "3600") or 3600)
            self._register(user, src, port, h, expires)
            contact = h.get("contact", "")
            self._reply(addr, h, "200 OK",
                        f"Contact: {contact};expires={expires}\r\n" if expires else "")
        elif method == "INVITE":
            if user is None:
                self._reply(addr, h, "407 Proxy Authentication Required",
                            self._challenge("Proxy-Authenticate"))
                return
            self._reply(addr, h, "100 Trying")
            self._reply(addr, h, "200 OK", f"Contact: <sip:standin@{src}>\r\n")
        elif method == "BYE":
            self._reply(addr, h, "200 OK")
        elif method not in ("ACK",):
            self._reply(addr, h, "501 Not Implemented")

    def _register(self, user: str, ip: str, port: int, h: dict[str, str], expires: int) -> None:
        old = self.registrations.pop(user, None)
        if old is not None:
            self.on_unregister(old)
        if expires == 0:
            return
        m = re.search(r"<([^>]*)>", h.get("contact", ""))
        reg = Registration(user, ip, port, h.get("call-id", ""),
                           f'"" <{m.group(1) if m else h.get("contact", "")}>', expires,
                           time.time())
        self.registrations[user] = reg
        self.on_register(reg)


async def serve(host: str, port: int, pbx: StandInPbx, sock=None):
    """Bind the stand-in (on a given socket: one made in another namespace)."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        transport, _ = await loop.create_datagram_endpoint(lambda: pbx, sock=sock)
    else:
        transport, _ = await loop.create_datagram_endpoint(lambda: pbx,
                                                           local_addr=(host, port))
    return transport
