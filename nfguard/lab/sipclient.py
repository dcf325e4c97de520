"""A small SIP user agent for the tests, for what SIPp's scenarios cannot
say: REGISTER with a chosen Call-ID, Contact and source port, unregister
(`Expires: 0`) from another contact, the wildcard `Contact: *`, and a call
whose outcome is a status code or None (no answer: dropped).

Over UDP (retransmitting as RFC 3261's timers A/E, T1 = 0.5 s, capped at
4 s), TCP, TLS (Python's ssl, the server's certificate not verified: the
lab's is self-signed), WS or WSS (SIP over WebSocket, RFC 7118, with
nfguard.lab.websocket); a stream transport opens one connection per
transaction or call. Digest auth as RFC
2617: MD5, with qop=auth when the challenge offers it. Each request or call
uses a socket of its own, made inside the client's namespace and bound to
src; nothing is shared between calls, so a test reads as a list of what
the phones did.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import socket
import ssl
import time
import uuid

from nfguard.kernel.attach import in_netns
from nfguard.lab.websocket import WebSocket

TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")

T1, T2 = 0.5, 4.0
# A G.711 offer: FreeSWITCH answers the echo test only with media agreed.
SDP = ("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Message:
    """A parsed SIP message: first line, headers (lower-cased names, values
    in order), body."""

    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first = lines[0]
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    @property
    def status(self) -> int | None:
        """The status code of a response; None for a request."""
        if not self.first.startswith("SIP/2.0 "):
            return None
        return int(self.first.split()[1])

    def get(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]

    def cseq(self) -> tuple[int, str]:
        num, method = self.get("cseq").split()
        return int(num), method


def digest(method: str, uri: str, user: str, password: str, challenge: str) -> str:
    """The credentials answering a WWW-/Proxy-Authenticate challenge."""
    params = dict((k.lower(), v1 or v2) for k, v1, v2 in
                  re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))', challenge))
    realm, nonce = params["realm"], params["nonce"]
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{user}:{realm}:{password}")
    ha2 = md5(f"{method}:{uri}")
    out = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce, nc = os.urandom(8).hex(), "00000001"
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        out += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    out += f', response="{response}", algorithm=MD5'
    if "opaque" in params:
        out += f', opaque="{params["opaque"]}"'
    return out


def tls_context() -> ssl.SSLContext:
    """A client context that accepts any certificate (the lab's is
    self-signed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Channel:
    """One socket to the server: send a message, receive the next one."""

    def __init__(self, ns: str | None, transport: str, src: tuple[str, int],
                 dst: tuple[str, int], udp_too: bool = False):
        """udp_too: over a stream, also receive datagrams at the same local
        address (where a server answers a Via that names UDP)."""
        self.transport, self.dst = transport, dst
        self.side: socket.socket | None = None
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_INET, kind)
        self.ws: WebSocket | None = None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(src)
            if transport != "udp":
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock.settimeout(5)
                self.sock.connect(dst)
                if transport in ("tls", "wss"):
                    self.sock = tls_context().wrap_socket(self.sock)
                if transport in ("ws", "wss"):
                    self.ws = WebSocket(self.sock, f"{dst[0]}:{dst[1]}")
        except BaseException:
            self.sock.close()
            raise
        self.local = self.sock.getsockname()
        self.buf = b""
        if udp_too and transport != "udp":
            with in_netns(ns):
                self.side = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.side.bind(self.local)

    def send(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.dst)
        elif self.ws is not None:
            self.ws.send(data)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float) -> Message | None:
        """The next message within timeout, or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            if self.transport == "udp":
                return Message(self.sock.recv(65535))
            if self.ws is not None:
                raw = self.ws.recv()
                return Message(raw) if raw is not None else None
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", self.buf[:end])
                    total = end + 4 + (int(m.group(1)) if m else 0)
                    if len(self.buf) >= total:
                        raw, self.buf = self.buf[:total], self.buf[total:]
                        return Message(raw)
                if self.side is not None and not (
                        isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                    ready, _, _ = select.select([self.sock, self.side], [], [],
                                                max(timeout, 0.001))
                    if self.side in ready:
                        return Message(self.side.recv(65535))
                    if not ready:
                        return None
                chunk = self.sock.recv(65535)
                if not chunk:
                    return None
                self.buf += chunk
        except (TimeoutError, ConnectionError, ssl.SSLError):
            return None

    def close(self) -> None:
        self.sock.close()
        if self.side is not None:
            self.side.close()


class SipClient:
    """A UA in namespace ns (a name under /var/run/netns, or None for this
    one) at address ip, talking to server (ip, port) over transport."""

    def __init__(self, ns: str | None, ip: str, server: tuple[str, int],
                 transport: str = "udp", timeout: float = 4.0, via: str | None = None):
        """via: the transport the Via header names, when it is to lie about
        the real one (a caller writes its own Via)."""
        for t in (transport, via or transport):
            if t not in TRANSPORTS:
                raise ValueError(f"transport {t!r}: one of {', '.join(TRANSPORTS)}")
        self.ns, self.ip, self.server = ns, ip, server
        self.transport, self.timeout = transport, timeout
        self.via = via or transport
        self.last: Message | None = None  # the last final response, for a test to look at

    # -- the requests --------------------------------------------------------
    def register(self, user: str, password: str, realm: str, expires: int = 300,
                 call_id: str | None = None, contact: str | None = None,
                 src: tuple[str, int] | None = None) -> int | None:
        """REGISTER user@realm; the final status (None: no answer). contact
        is the Contact header's value ('*' for a wildcard), by default
        <sip:user@src ip:src port>."""
        ch = self._channel(src)
        try:
            contact = contact or self._contact(user, ch)
            headers = [f"Contact: {contact}", f"Expires: {expires}"]
            return self._transaction(ch, "REGISTER", f"sip:{realm}", user, password, realm,
                                     call_id or self._call_id(), headers)
        finally:
            ch.close()

    def unregister(self, user: str, password: str, realm: str, call_id: str | None = None,
                   contact: str | None = None, src: tuple[str, int] | None = None) -> int | None:
        """REGISTER with Expires: 0 for contact (default: this source's)."""
        return self.register(user, password, realm, 0, call_id, contact, src)

    def unregister_all(self, user: str, password: str, realm: str, call_id: str | None = None,
                       src: tuple[str, int] | None = None) -> int | None:
        """The wildcard: Contact: *, Expires: 0."""
        return self.register(user, password, realm, 0, call_id, "*", src)

    def invite(self, user: str, password: str, realm: str, callee: str = "9196",
               src: tuple[str, int] | None = None, hold: float = 0.0) -> int | None:
        """Call callee@realm as user@realm; the final status, or None when
        no final answer came (the INVITE was dropped). A 200 is followed by
        ACK, hold seconds of call, and BYE (whose answer must be 200)."""
        ch = self._channel(src)
        try:
            call_id = self._call_id()
            tag = uuid.uuid4().hex[:10]
            uri = f"sip:{callee}@{realm}"
            sdp = SDP.format(ip=ch.local[0], port=ch.local[1] + 2)
            headers = [f"Contact: {self._contact(user, ch)}", "Content-Type: application/sdp"]
            code = self._transaction(ch, "INVITE", uri, user, password, realm, call_id, headers,
                                     body=sdp, from_tag=tag, to=f"<{uri}>")
            if code != 200:
                return code
            ok = self.last
            to = ok.get("to")
            target = re.search(r"<([^>]+)>", ok.get("contact")).group(1)
            cseq = ok.cseq()[0]
            ch.send(self._request(ch, "ACK", target, user, realm, call_id, cseq,
                                  from_tag=tag, to=to))
            time.sleep(hold)
            bye = self._request(ch, "BYE", target, user, realm, call_id, cseq + 1,
                                from_tag=tag, to=to)
            if self._send_until_final(ch, bye, "BYE", cseq + 1) != 200:
                raise AssertionError(f"BYE answered {self.last.first if self.last else None}")
            return code
        finally:
            ch.close()

    # -- the machinery --------------------------------------------------------
    def _channel(self, src: tuple[str, int] | None) -> _Channel:
        return _Channel(self.ns, self.transport, src or (self.ip, 0), self.server,
                        udp_too=self.via == "udp")

    def _contact(self, user: str, ch: _Channel) -> str:
        tp = f";transport={self.transport}" if self.transport != "udp" else ""
        return f"<sip:{user}@{ch.local[0]}:{ch.local[1]}{tp}>"

    @staticmethod
    def _call_id() -> str:
        return uuid.uuid4().hex

    def _request(self, ch: _Channel, method: str, uri: str, user: str, realm: str,
                 call_id: str, cseq: int, headers: list[str] = (), body: str = "",
                 from_tag: str | None = None, to: str | None = None,
                 branch: str | None = None) -> bytes:
        ip, port = ch.local
        branch = branch or "z9hG4bK" + uuid.uuid4().hex
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/{self.via.upper()} {ip}:{port};branch={branch};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{user}@{realm}>;tag={from_tag or uuid.uuid4().hex[:10]}",
                 f"To: {to or f'<sip:{user}@{realm}>'}",
                 f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {method}",
                 *headers,
                 "User-Agent: nfguard-sipclient",
                 f"Content-Length: {len(body.encode())}"]
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def _transaction(self, ch: _Channel, method: str, uri: str, user: str, password: str,
                     realm: str, call_id: str, headers: list[str], body: str = "",
                     from_tag: str | None = None, to: str | None = None) -> int | None:
        """Send the request, answer one 401/407 with credentials; the final
        status (None: none within the timeout)."""
        from_tag = from_tag or uuid.uuid4().hex[:10]
        auth: list[str] = []
        for cseq in (1, 2):
            branch = "z9hG4bK" + uuid.uuid4().hex
            req = self._request(ch, method, uri, user, realm, call_id, cseq, headers + auth,
                                body, from_tag, to, branch)
            code = self._send_until_final(ch, req, method, cseq)
            if code is None:
                return None
            if method == "INVITE" and code >= 300:  # a non-2xx final is ACKed in its transaction
                ch.send(self._request(ch, "ACK", uri, user, realm, call_id, cseq,
                                      from_tag=from_tag, to=self.last.get("to"), branch=branch))
            if code not in (401, 407) or auth:
                return code
            name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
            header = "Authorization" if code == 401 else "Proxy-Authorization"
            auth = [f"{header}: " + digest(method, uri, user, password, self.last.get(name))]
        return code

    def _send_until_final(self, ch: _Channel, req: bytes, method: str, cseq: int) -> int | None:
        """Send req (retransmitted over UDP) until its final response; its
        status, the response in self.last (None: none in time)."""
        deadline = time.monotonic() + self.timeout
        interval = T1
        ch.send(req)
        resend = time.monotonic() + interval
        provisional = False
        while (now := time.monotonic()) < deadline:
            msg = ch.recv(min(deadline, resend) - now)
            if msg is None:
                # over UDP resend until a provisional answer (INVITE) or a final one
                if ch.transport == "udp" and time.monotonic() >= resend and not (
                        provisional and method == "INVITE"):
                    ch.send(req)
                    interval = min(interval * 2, T2)
                    resend = time.monotonic() + interval
                elif time.monotonic() >= resend:
                    resend = time.monotonic() + interval
                continue
            if msg.status is None or msg.cseq() != (cseq, method):
                continue  # a request from the server, or a late answer to another one
            if msg.status < 200:
                provisional = True
                continue
            self.last = msg
            return msg.status
        return None
