"""`nfguard bench esl`: the FreeSWITCH side of the controller.

- events parsed per second: sofia::register/unregister frames as FreeSWITCH
  1.10.12 sends them (the header set of the captures in
  tests/fixtures/freeswitch-real/), JSON and plain, through parse_event();
  and parsed plus applied to a registry holding 100,000 bindings;
- resync of 100,000 registrations into an empty registry (the first sync of
  a large PBX), the same table again (the periodic resync: no diff), and
  parsing the `sofia xmlstatus profile NAME reg` answer of that size;
- memory: what the registry holds after the resync, and the peak while it
  runs (tracemalloc, in a separate pass: tracing slows everything).

No root needed. Times are the best of --rounds.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from urllib.parse import quote

from nfguard.daemon.esl import Frame
from nfguard.daemon.fsevents import Registration, parse_event, parse_xmlstatus_reg
from nfguard.daemon.registry import Registry

REGISTRATIONS = 100_000
EVENTS = 20_000
NODE = "fs1"


def _core_headers(subclass: str, seq: int) -> dict[str, str]:
    return {
        "Event-Subclass": subclass, "Event-Name": "CUSTOM",
        "Core-UUID": "66280cef-cc18-430f-a087-998ba51d3b4a", "FreeSWITCH-Hostname": "vm",
        "FreeSWITCH-Switchname": "vm", "FreeSWITCH-IPv4": "127.0.0.1",
        "FreeSWITCH-IPv6": "::1", "Event-Date-Local": "2026-11-27 13:44:53",
        "Event-Date-GMT": "Fri, 27 Nov 2026 13:44:53 GMT",
        "Event-Date-Timestamp": "1795787093862138", "Event-Calling-File": "sofia_reg.c",
        "Event-Calling-Function": "sofia_reg_handle_register_token",
        "Event-Calling-Line-Number": "2070", "Event-Sequence": str(seq),
    }


def _address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def event_headers(i: int, unregister: bool) -> dict[str, str]:
    """A sofia::register (or unregister) of user i, with the headers a
    vanilla FreeSWITCH adds (user variables included)."""
    user, realm, ip = str(10000 + i), f"tenant{i % 50}.example.com", _address(i)
    h = _core_headers("sofia::unregister" if unregister else "sofia::register", i)
    h.update({
        "profile-name": "internal", "from-user": user, "from-host": realm,
        "presence-hosts": realm, "contact": f'"" <sip:{user}@{ip}:5060>',
        "call-id": f"reg-{i}@{ip}", "rpid": "unknown",
        "status": "Registered(UDP)", "expires": "0" if unregister else "300",
        "to-user": user, "to-host": realm, "network-ip": ip, "network-port": "5060",
        "username": user, "realm": realm, "user-agent": "Yealink SIP-T54W 96.86.0.100",
        "sip_number_alias": user, "sip_auth_username": user, "sip_auth_realm": realm,
        "number_alias": user, "user_name": user, "domain_name": realm,
        "record_stereo": "true", "default_gateway": "example.com",
        "default_areacode": "918", "transfer_fallback_extension": "operator",
        "toll_allow": "domestic,international,local", "accountcode": user,
        "user_context": "default", "effective_caller_id_name": f"Extension {user}",
        "effective_caller_id_number": user, "outbound_caller_id_name": "FreeSWITCH",
        "outbound_caller_id_number": "0000000000", "callgroup": "techsupport",
    })
    return h


def json_frame(h: dict[str, str]) -> Frame:
    body = json.dumps(h, separators=(",", ":")).encode()
    return Frame({"Content-Length": str(len(body)), "Content-Type": "text/event-json"}, body)


def plain_frame(h: dict[str, str]) -> Frame:
    body = "".join(f"{k}: {quote(v, safe='')}\n" for k, v in h.items()).encode() + b"\n"
    return Frame({"Content-Length": str(len(body)), "Content-Type": "text/event-plain"}, body)


def registrations(n: int, now: float) -> list[Registration]:
    return [Registration(str(10000 + i), f"tenant{i % 50}.example.com", _address(i), 5060,
                         now + 360, "internal", f'"" <sip:{10000 + i}@{_address(i)}:5060>',
                         f"reg-{i}@{_address(i)}", NODE) for i in range(n)]


def xmlstatus(regs: list[Registration], now: float) -> str:
    """`sofia xmlstatus profile internal reg` as mod_sofia writes it (the
    fake Event Socket's renderer)."""
    from nfguard.lab.fakeesl import Row, reg_xml
    return reg_xml([Row(r.user, r.realm, r.ip, r.port, r.call_id, r.contact,
                        int(r.expires - now)) for r in regs], now)


def _best(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_esl(repeat: int, rounds: int, loads: int = 1) -> dict:
    now = time.time()
    frames = {
        "json": [json_frame(event_headers(i, i % 4 == 3)) for i in range(EVENTS)],
        "plain": [plain_frame(event_headers(i, i % 4 == 3)) for i in range(EVENTS)],
    }
    parsed = {
        fmt: round(EVENTS / _best(rounds, lambda fs=fs: [parse_event(f, NODE, now) for f in fs]))
        for fmt, fs in frames.items()
    }
    regs = registrations(REGISTRATIONS, now)

    def applied() -> None:
        reg = Registry()
        reg.resync(NODE, regs, now)
        for f in frames["json"]:
            reg.apply(NODE, parse_event(f, NODE, now), now)
    resync_s = _best(rounds, lambda: Registry().resync(NODE, regs, now))
    # applying to a registry that first needs its resync: subtract that
    apply_s = max(_best(rounds, applied) - resync_s, 1e-9)

    full = Registry()
    full.resync(NODE, regs, now)
    again_s = _best(rounds, lambda: full.resync(NODE, regs, now))

    xml = xmlstatus(regs, now)
    xml_s = _best(max(1, rounds // 2), lambda: parse_xmlstatus_reg(xml, NODE, "internal", now))

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    kept = Registry()
    kept.resync(NODE, regs, now)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "registrations": REGISTRATIONS,
        "events_parsed_per_s": parsed,
        "events_applied_per_s": round(EVENTS / apply_s),
        "resync_s": round(resync_s, 3),
        "resync_unchanged_s": round(again_s, 3),
        "xmlstatus_parse_s": round(xml_s, 3),
        "xmlstatus_mb": round(len(xml) / 1e6, 1),
        "registry_mb": round((current - base) / 1e6, 1),
        "resync_peak_mb": round((peak - base) / 1e6, 1),
    }


def print_esl(result: dict, repeat: int, rounds: int, loads: int) -> None:
    n = result["registrations"]
    p = result["events_parsed_per_s"]
    print(f"FreeSWITCH events and registry (best of {rounds})")
    print(f"  events parsed          {p['json']:>9,}/s json   {p['plain']:>9,}/s plain")
    print(f"  events parsed+applied  {result['events_applied_per_s']:>9,}/s json "
          f"(registry of {n:,})")
    print(f"  resync of {n:,} into an empty registry   {result['resync_s']:.3f} s")
    print(f"  resync of the same {n:,} again           {result['resync_unchanged_s']:.3f} s")
    print(f"  sofia xmlstatus of {n:,} rows parsed     {result['xmlstatus_parse_s']:.3f} s "
          f"({result['xmlstatus_mb']} MB)")
    print(f"  registry memory {result['registry_mb']} MB, peak during resync "
          f"{result['resync_peak_mb']} MB")
