"""A stand-in for FreeSWITCH's Event Socket: the fake ESL server the tests
use and `nfguard demo` runs, byte-faithful to frames captured from
FreeSWITCH 1.10.12 (tests/fixtures/freeswitch-real/).

Its own frames (auth/request, command replies, api responses, the
disconnect notice) are the bytes FreeSWITCH sent there; `register_frame()`
builds a sofia::register/unregister/expire event from the captured register
event of 1001 (REGISTER_TEMPLATE) with other values put in. `sofia
xmlstatus` answers are rendered from `table` the way mod_sofia's
cmd_xml_status() writes them, or served verbatim from `api`.

mod_hash (the `hash` and `hash_dump` api commands, answered as FreeSWITCH
1.10.12's module does) over `hashes`: {realm: {key: value}}, kept across
connections (a FreeSWITCH restart empties it: `hashes.clear()`); `mod_hash
= False` answers as FreeSWITCH without the module.

Faults on demand: a refused password, a connection dropped in the middle
of a frame, writes cut into small pieces with pauses between them.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from dataclasses import dataclass, field

AUTH_REQUEST = b"Content-Type: auth/request\n\n"
ACCEPTED = b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
INVALID = b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n"
BYE = b"Content-Type: command/reply\nReply-Text: +OK bye\n\n"
DISCONNECT = (b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
              b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")


# The captured sofia::register of 1001 (esl_json_register.bin), values as sent.
REGISTER_TEMPLATE: dict[str, str] = {
    "Event-Subclass": "sofia::register",
    "Event-Name": "CUSTOM",
    "Core-UUID": "66280cef-cc18-430f-a087-998ba51d3b4a",
    "FreeSWITCH-Hostname": "vm",
    "FreeSWITCH-Switchname": "vm",
    "FreeSWITCH-IPv4": "127.0.0.1",
    "FreeSWITCH-IPv6": "::1",
    "Event-Date-Local": "2026-11-27 13:44:53",
    "Event-Date-GMT": "Fri, 27 Nov 2026 13:44:53 GMT",
    "Event-Date-Timestamp": "1795787093862138",
    "Event-Calling-File": "sofia_reg.c",
    "Event-Calling-Function": "sofia_reg_handle_register_token",
    "Event-Calling-Line-Number": "2059",
    "Event-Sequence": "439",
    "profile-name": "internal",
    "from-user": "1001",
    "from-host": "127.0.0.1",
    "presence-hosts": "127.0.0.1,127.0.0.1",
    "contact": "\"\" <sip:1001@127.0.0.2:5062>",
    "call-id": "reg-1001-a@127.0.0.2",
    "rpid": "unknown",
    "status": "Registered(UDP)",
    "expires": "300",
    "to-user": "1001",
    "to-host": "127.0.0.1",
    "network-ip": "127.0.0.2",
    "network-port": "5062",
    "username": "1001",
    "realm": "127.0.0.1",
    "user-agent": "sipc-test/1.0",
    "sip_number_alias": "1001",
    "sip_auth_username": "1001",
    "sip_auth_realm": "127.0.0.1",
    "number_alias": "1001",
    "user_name": "1001",
    "domain_name": "127.0.0.1",
    "record_stereo": "true",
    "default_gateway": "example.com",
    "default_areacode": "918",
    "transfer_fallback_extension": "operator",
    "toll_allow": "domestic,international,local",
    "accountcode": "1001",
    "user_context": "default",
    "effective_caller_id_name": "Extension 1001",
    "effective_caller_id_number": "1001",
    "outbound_caller_id_name": "FreeSWITCH",
    "outbound_caller_id_number": "0000000000",
    "callgroup": "techsupport"
}


def register_frame(user: str, realm: str, ip: str, port: int = 5060, call_id: str = "",
                   expires: int = 300, subclass: str = "sofia::register",
                   contact: str = "", fired: float | None = None) -> bytes:
    """A sofia::register (or unregister/expire) JSON event frame: the
    captured register of 1001 with these values put in, made (its
    Event-Date-Timestamp) now or at `fired`."""
    body = dict(REGISTER_TEMPLATE)
    stamp = time.time() if fired is None else fired
    body.update({"Event-Subclass": subclass, "username": user, "realm": realm,
                 "Event-Date-Timestamp": str(int(stamp * 1e6)),
                 "from-user": user, "from-host": realm, "to-user": user, "to-host": realm,
                 "network-ip": ip, "network-port": str(port),
                 "contact": contact or f'"" <sip:{user}@{ip}:{port}>',
                 "call-id": call_id or f"{user}-{ip}", "expires": str(expires)})
    if subclass == "sofia::expire":
        body.update({"user": user, "host": realm})
    data = json.dumps(body, separators=(",", ":")).encode()
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(data) + data


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def api_response(body: bytes) -> bytes:
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body


# -- sofia xmlstatus, the way mod_sofia writes it ---------------------------
HEADER = '<?xml version="1.0" encoding="ISO-8859-1"?>\n'


def profiles_xml(profiles: list[str], aliases: dict[str, str] | None = None) -> str:
    out = [HEADER, "<profiles>\n"]
    for alias, target in (aliases or {}).items():
        out.append(f"<alias>\n<name>{alias}</name>\n<type>alias</type>\n<data>{target}</data>\n"
                   f"<state>ALIASED</state>\n</alias>\n")
    for name in profiles:
        out.append(f"<profile>\n<name>{name}</name>\n<type>profile</type>\n"
                   f"<data>sip:mod_sofia@127.0.0.1:5060</data>\n<state>RUNNING (0)</state>\n"
                   f"</profile>\n")
    out.append("</profiles>\n")
    return "".join(out)


@dataclass
class Row:
    """One row of sofia_registrations."""
    user: str
    realm: str
    ip: str
    port: int
    call_id: str
    contact: str = ""
    expires_in: int = 300
    profile: str = "internal"
    agent: str = "sipc-test/1.0"

    def xml(self, now: float) -> str:
        contact = self.contact or f'"" <sip:{self.user}@{self.ip}:{self.port}>'
        exp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now + self.expires_in))
        e = html.escape
        return (
            "    <registration>\n"
            f"        <call-id>{e(self.call_id)}</call-id>\n"
            f"        <user>{e(self.user)}@{e(self.realm)}</user>\n"
            f"        <contact>{e(contact)}</contact>\n"
            f"        <agent>{e(self.agent)}</agent>\n"
            f"        <status>Registered(UDP)(unknown) exp({exp}) expsecs({self.expires_in})"
            "</status>\n"
            "        <ping-status>Reachable</ping-status>\n"
            "        <ping-time>0.00</ping-time>\n"
            "        <host>vm</host>\n"
            f"        <network-ip>{self.ip}</network-ip>\n"
            f"        <network-port>{self.port}</network-port>\n"
            f"        <sip-auth-user>{e(self.user)}</sip-auth-user>\n"
            f"        <sip-auth-realm>{e(self.realm)}</sip-auth-realm>\n"
            f"        <mwi-account>{e(self.user)}@{e(self.realm)}</mwi-account>\n"
            "    </registration>\n"
        )


def reg_xml(rows: list[Row], now: float | None = None) -> str:
    now = time.time() if now is None else now
    return (HEADER + "<profile>\n  <registrations>\n" + "".join(r.xml(now) for r in rows)
            + "  </registrations>\n</profile>\n")


# -- the server --------------------------------------------------------------
@dataclass
class FakeEsl:
    password: str = "ClueCon"
    table: list[Row] = field(default_factory=list)
    profiles: list[str] = field(default_factory=lambda: ["internal"])
    api: dict[str, bytes | str] = field(default_factory=dict)  # overrides
    chunk: int | None = None  # write in pieces of this many bytes ...
    pause: float = 0.0  # ... with this pause between them
    commands: list[str] = field(default_factory=list)
    api_delay: float = 0.0  # before answering an api command
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # mod_hash's db hash
    mod_hash: bool = True  # False: FreeSWITCH without mod_hash
    hash_log: list[str] = field(default_factory=list)  # hash commands that changed something

    def __post_init__(self):
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._subscribed: list[asyncio.StreamWriter] = []
        self._changed = asyncio.Condition()
        self.port = 0
        self.connections = 0

    async def start(self, port: int = 0, sock=None) -> int:
        """Listen on 127.0.0.1:port, or on a bound socket (one made inside
        another network namespace, for a daemon running there)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection (FreeSWITCH gone)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self.drop()

    async def drop(self, partial: bytes = b"") -> None:
        """Cut every connection, after writing `partial` (e.g. half a frame)."""
        for w in list(self._writers):
            if partial:
                w.write(partial)
                try:
                    await w.drain()
                except ConnectionError:
                    pass
            w.transport.abort()
        self._writers.clear()
        self._subscribed.clear()

    async def wait_subscribed(self, count: int = 1, timeout: float = 5.0) -> None:
        async def wait():
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._subscribed) >= count)
        await asyncio.wait_for(wait(), timeout)

    async def wait_commands(self, prefix: str, count: int = 1, timeout: float = 5.0) -> None:
        async def wait():
            async with self._changed:
                await self._changed.wait_for(
                    lambda: sum(c.startswith(prefix) for c in self.commands) >= count)
        await asyncio.wait_for(wait(), timeout)

    async def push(self, *frames: bytes) -> None:
        """Send frames (events, or any bytes) to every subscribed client."""
        for w in list(self._subscribed):
            for f in frames:
                await self._write(w, f)

    async def _write(self, w: asyncio.StreamWriter, data: bytes) -> None:
        if not self.chunk:
            w.write(data)
        else:
            for i in range(0, len(data), self.chunk):
                w.write(data[i:i + self.chunk])
                await w.drain()
                if self.pause:
                    await asyncio.sleep(self.pause)
        await w.drain()

    def _hash(self, args: str) -> str:
        """mod_hash's `hash` api (mod_hash.c: the arguments split at '/',
        at most 4 fields)."""
        usage = ("-ERR Usage: hash insert|insert_ifempty|select|delete|delete_ifmatch"
                 "/realm/key[/value]\n")
        argv = args.split("/", 3)
        if len(argv) < 3 or not argv[1] or not argv[2]:
            return usage
        op, realm, key = argv[0], argv[1], argv[2]
        value = argv[3] if len(argv) > 3 else None
        db = self.hashes.setdefault(realm, {})
        if op in ("insert", "insert_ifempty"):
            if not value:
                return usage
            if op == "insert_ifempty" and key in db:
                return "-ERR key already exists\n"
            db[key] = value
            self.hash_log.append(f"insert {key}")
            return "+OK\n"
        if op == "delete":
            if key not in db:
                return "-ERR Not found\n"
            del db[key]
            self.hash_log.append(f"delete {key}")
            return "+OK\n"
        if op == "select":
            return db.get(key, "-ERR no reply\n")
        return usage

    def _hash_dump(self, args: str) -> str:
        """`hash_dump db [realm]`: `D/<realm>_<key>/<value>` lines, the realm
        matched as a substring (as mod_hash does)."""
        what, _, realm = args.partition(" ")
        if what not in ("all", "db", "limit"):
            return "-USAGE: all|limit|db [<realm>]\n"
        if what == "limit":
            return ""
        return "".join(f"D/{r}_{k}/{v}\n" for r, db in self.hashes.items() if realm in r
                       for k, v in db.items())

    def _api_body(self, cmd: str) -> bytes:
        if cmd in self.api:
            body = self.api[cmd]
            return body.encode() if isinstance(body, str) else body
        if self.mod_hash and cmd.startswith("hash "):
            return self._hash(cmd[5:]).encode()
        if self.mod_hash and cmd.startswith("hash_dump "):
            return self._hash_dump(cmd[10:].strip()).encode()
        if cmd == "sofia xmlstatus":
            return profiles_xml(self.profiles).encode()
        for profile in self.profiles:
            if cmd == f"sofia xmlstatus profile {profile} reg":
                return reg_xml([r for r in self.table if r.profile == profile]).encode()
            prefix = f"sofia xmlstatus profile {profile} user "
            if cmd.startswith(prefix):
                # mod_sofia: sip_user and sip_host, split at the first '@'
                user, _, host = cmd[len(prefix):].partition("@")
                return reg_xml([r for r in self.table if r.profile == profile
                                and r.user == user and r.realm == host]).encode()
        name = cmd.split()[0] if cmd.split() else ""
        return f"-ERR {name} Command not found!\n".encode()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        authed = False
        try:
            await self._write(writer, AUTH_REQUEST)
            while True:
                raw = await reader.readuntil(b"\n\n")
                cmd = raw.decode().strip().replace("\r", "")
                self.commands.append(cmd)
                await self._notify()
                if cmd.startswith("auth "):
                    if cmd[5:] == self.password:
                        authed = True
                        await self._write(writer, ACCEPTED)
                    else:
                        await self._write(writer, INVALID + DISCONNECT)
                        break
                elif not authed:
                    await self._write(writer, reply("-ERR command not found"))
                elif cmd.startswith("event json "):
                    await self._write(writer, reply("+OK event listener enabled json"))
                    self._subscribed.append(writer)
                    await self._notify()
                elif cmd.startswith("event plain "):
                    await self._write(writer, reply("+OK event listener enabled plain"))
                    self._subscribed.append(writer)
                    await self._notify()
                elif cmd.startswith("api "):
                    if self.api_delay:
                        await asyncio.sleep(self.api_delay)
                    await self._write(writer, api_response(self._api_body(cmd[4:])))
                elif cmd == "exit":
                    await self._write(writer, BYE + DISCONNECT)
                    break
                else:
                    await self._write(writer, reply("-ERR command not found"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self._subscribed:
                self._subscribed.remove(writer)
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()
