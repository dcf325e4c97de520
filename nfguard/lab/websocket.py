"""A minimal WebSocket client (RFC 6455) for SIP over WebSocket (RFC 7118)
in the tests: the opening handshake with `Sec-WebSocket-Protocol: sip`,
masked text frames out, one SIP message per frame in; ping answered with
pong, close ends the stream. Enough for nfguard.lab.sipclient's ws and wss
transports against FreeSWITCH (sofia-sip's tport_ws); not a general client
(no extensions, no large-frame streaming).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class WebSocketError(ConnectionError):
    """The server refused the handshake or broke the framing."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One final frame, masked (a client's frames must be)."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


class WebSocket:
    """A client over a connected stream socket (plain or ssl-wrapped)."""

    def __init__(self, sock: socket.socket, host: str, path: str = "/",
                 protocol: str = "sip"):
        self.sock = sock
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n"
                      "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise WebSocketError("the server closed the connection during the handshake")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if lines[0].split()[1:2] != ["101"]:
            raise WebSocketError(f"handshake refused: {lines[0]}")
        if headers.get("sec-websocket-accept") != accept_key(key):
            raise WebSocketError(f"bad Sec-WebSocket-Accept in {headers}")
        self.protocol = headers.get("sec-websocket-protocol", "")

    def send(self, payload: bytes, opcode: int = TEXT) -> None:
        self.sock.sendall(frame(payload, opcode))

    def _frame(self) -> tuple[int, bytes] | None:
        """The first whole frame in the buffer, taken out of it: (first
        byte, unmasked payload); None while it is incomplete."""
        b = self.buf
        if len(b) < 2:
            return None
        n, at = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        mask = None
        if b[1] & 0x80:
            mask, at = b[at:at + 4], at + 4
        if len(b) < at + n:
            return None
        payload, self.buf = b[at:at + n], b[at + n:]
        if mask:
            payload = bytes(x ^ mask[i & 3] for i, x in enumerate(payload))
        return b[0], payload

    def recv(self) -> bytes | None:
        """The next message's payload (fragments joined); None when the
        server closed. A socket timeout propagates; what was read stays
        buffered for the next call."""
        message = b""
        while True:
            got = self._frame()
            if got is None:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return None
                self.buf += chunk
                continue
            b0, payload = got
            opcode = b0 & 0x0F
            if opcode == CLOSE:
                return None
            if opcode == PING:
                self.send(payload, PONG)
                continue
            if opcode == PONG:
                continue
            message += payload
            if b0 & 0x80:
                return message
