"""Optional Prometheus text metrics (`metrics: {listen: host:port}`): a
tiny HTTP/1.0 responder on asyncio for GET /metrics, no dependency. The
prometheus_client wheel would bring its own threads and registry for the
dozen numbers below; Debian 12 packages it, but not for nfguard's sake."""

from __future__ import annotations

import asyncio
import time


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def render(daemon) -> str:
    lines = [
        "# HELP nfguard_packets_total Guarded packets by reason (XDP program).",
        "# TYPE nfguard_packets_total counter",
    ]
    for reason, n in daemon.backend.counters().items():
        lines.append(f'nfguard_packets_total{{reason="{reason}"}} {n}')
    lines += [
        "# HELP nfguard_bindings Bindings in the registry.",
        "# TYPE nfguard_bindings gauge",
        f"nfguard_bindings {len(daemon.registry)}",
        "# HELP nfguard_esl_up ESL endpoint connected and in sync (1) or not (0).",
        "# TYPE nfguard_esl_up gauge",
    ]
    for runner, _ in daemon.runners.values():
        up = 1 if runner.state == "up" else 0
        lines.append(f'nfguard_esl_up{{endpoint="{runner.endpoint.name}"}} {up}')
    lines += [
        "# HELP nfguard_synced The first full sync is done (1) or not (0).",
        "# TYPE nfguard_synced gauge",
        f"nfguard_synced {1 if daemon.synced else 0}",
    ]
    bans = daemon.ban_summary(time.time())
    lines += [
        "# HELP nfguard_bans_active Addresses (IPv6: prefixes) banned now.",
        "# TYPE nfguard_bans_active gauge",
        f"nfguard_bans_active {bans['active']}",
        "# HELP nfguard_bans_total Bans since the daemon started, by kind.",
        "# TYPE nfguard_bans_total counter",
        f'nfguard_bans_total{{kind="auto"}} {bans["bans"]}',
        f'nfguard_bans_total{{kind="manual"}} {bans["manual_bans"]}',
        "# HELP nfguard_bans_spared_total Addresses over the failure threshold not banned "
        "(trusted or bound).",
        "# TYPE nfguard_bans_spared_total counter",
        f"nfguard_bans_spared_total {bans['spared']}",
        "# HELP nfguard_auth_failures_total Failed authentications FreeSWITCH reported "
        "(sofia::register_failure).",
        "# TYPE nfguard_auth_failures_total counter",
        f"nfguard_auth_failures_total {bans['auth_failures']}",
    ]
    lines += [
        "# HELP nfguard_guard_verdicts_total Failing verdicts of the Lua guard in FreeSWITCH "
        "(nfguard::guard events).",
        "# TYPE nfguard_guard_verdicts_total counter",
    ]
    for (reason, transport, action), n in sorted(daemon.guard_verdicts.items()):
        lines.append(f'nfguard_guard_verdicts_total{{reason="{reason}",transport="{transport}",'
                     f'action="{action}"}} {n}')
    lines += [
        "# HELP nfguard_guard_synced The guard's state is written in the endpoint's "
        "FreeSWITCH (1) or not (0).",
        "# TYPE nfguard_guard_synced gauge",
    ]
    for ep in daemon.guard.endpoints.values():
        lines.append(f'nfguard_guard_synced{{endpoint="{ep.name}"}} '
                     f'{1 if ep.state == "synced" else 0}')
    return "\n".join(lines) + "\n"


async def serve_metrics(listen: str, daemon) -> asyncio.AbstractServer:
    host, port = _host_port(listen)

    async def on_client(reader, writer):
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)).strip():
                pass  # headers
            if request.split()[:2] == [b"GET", b"/metrics"]:
                body = render(daemon).encode()
                head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            else:
                body = b"not found\n"
                head = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(on_client, host, port)
