"""`nfguard status [--json]`: the daemon, its ESL endpoints, the kernel
program and the nft table. While the daemon is down it still tells the
truth, from the pinned maps and the nft table."""

from __future__ import annotations

import argparse
import json
import time

from nfguard.cli import common
from nfguard.daemon import control
from nfguard.daemon.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_arguments(parser)


def offline_status(config_path: str, why: str) -> dict:
    """What the pinned maps and the nft table say, without the daemon."""
    from nfguard.daemon.nftstate import NftState
    from nfguard.daemon.status import kernel_status

    cfg = load_config(config_path)
    prog = common.pinned_program(cfg)
    try:
        st = kernel_status(prog, NftState(cfg.reject_mark), cfg)
    finally:
        prog.close()
    return {"daemon": "down", "why": why, "config": config_path, **st}


def gather(config_path: str) -> dict:
    try:
        return control.request(common.socket_path(config_path), "status")
    except control.DaemonUnavailable as e:
        return offline_status(config_path, str(e))


def _ago(t) -> str:
    return "never" if not t else f"{time.time() - t:.0f} s ago"


def freeswitch_drift_line(fs: dict) -> str:
    """What resyncs had to fix because the event stream missed it."""
    if not (fs["added"] or fs["removed"]):
        return "none (every resync found what the events had said)"
    last = ", ".join(("+" if i["change"] == "added" else "-") + i["binding"]
                     for i in fs["last"][:5])
    return (f"{fs['added']} added, {fs['removed']} removed in {fs['resyncs']} resync(s), "
            f"last {_ago(fs['last_at'])}: {last}")


GUARD_STATES = {"down": "not connected", "connected": "waiting for the first full sync",
                "syncing": "writing", "synced": "synced", "error": "write errors",
                "no_mod_hash": "mod_hash NOT loaded", "cleared": "emptied (disabled)"}


def guard_line(g: dict) -> str:
    """The FreeSWITCH-side guard: whether each endpoint's FreeSWITCH holds
    its state, and its verdicts by transport."""
    if not g["enabled"]:
        head = "disabled (freeswitch_guard.enabled)"
    else:
        t = g["transports"]
        head = f"transports {t if t == 'all' else ','.join(t)}"
    parts = []
    for e in g["endpoints"]:
        text = f"{e['name']} {GUARD_STATES.get(e['state'], e['state'])}"
        if e["state"] == "synced":
            text += f" ({e['keys']} keys, {_ago(e['synced_at'])})"
        if e["errors"] and e["last_error"]:
            text += f" [{e['errors']} error(s), last: {e['last_error']}]"
        parts.append(text)
    verdicts = g.get("verdicts") or {}
    tail = ("verdicts " + ", ".join(f"{t} {n}" for t, n in sorted(verdicts.items()))
            if verdicts else "no verdicts")
    return "; ".join([head, *parts, tail])


def show(st: dict) -> None:
    k = st["kernel"]
    print(f"daemon      {st['daemon']}" + (f" (pid {st['pid']}, up {st['uptime_s']:.0f} s)"
                                           if st["daemon"] == "up" else f" ({st['why']})"))
    print(f"mode        {k['mode']}, action {k['action']}, methods {', '.join(k['methods'])}, "
          f"ports {', '.join(map(str, k['ports']))}, fragments {k['fragments']}")
    if st["daemon"] == "up":
        sync = ("done " + _ago(st["first_sync_at"]) if st["synced"] else
                "waiting for the first full sync (monitor until then on a fresh start)")
        if st.get("unsynced"):
            sync += (f"; never synced: {', '.join(st['unsynced'])}"
                     + (" (first_sync_timeout: enforcing without them)"
                        if st.get("first_sync_partial") else ""))
        print(f"sync        {sync}")
        for e in st["esl"]:
            extra = f", last error: {e['last_error']}" if e["state"] != "up" else ""
            print(f"ESL         {e['name']} {e['host']}:{e['port']}: {e['state']}, last sync "
                  f"{_ago(e['last_sync'])}{extra}")
        if st.get("guard") is not None:
            print(f"guard       {guard_line(st['guard'])}")
    for i in st["interfaces"]:
        where = i["name"] + (f" (netns {i['netns']})" if i["netns"] else "")
        if i.get("error"):
            print(f"interface   {where}: {i['error']}")
        else:
            state = ("attached" if i["nfguard_xdp"] and i["nfguard_tc"] else
                     "XDP only" if i["nfguard_xdp"] else "NOT attached")
            print(f"interface   {where}: {state}, XDP {xdp_mode_text(i)}")
    b = dict(st["bindings"])
    bound = b.pop("bound_addresses", None)  # the kernel's bound map: addresses, not bindings
    counts = ", ".join(f"{k} {v}" for k, v in b.items())
    if bound is not None:
        counts += f"; bound addresses {bound}"
    print(f"bindings    {counts}")
    drift = st["drift"]
    issues = {k: v for k, v in drift.items() if v}
    nft = issues.pop("nft", None) or {}
    nft = {k: v for k, v in nft.items() if v}
    if issues or nft:
        print(f"drift       {json.dumps({**issues, **({'nft': nft} if nft else {})})}")
    else:
        print("drift       none")
    fs = st.get("freeswitch_drift")
    if fs is not None:
        print("drift FS    " + freeswitch_drift_line(fs))
    bans = st.get("bans")
    if bans is not None:
        line = f"{bans['active']} active ({bans.get('manual', 0)} manual)"
        if "auth_failures" in bans:
            line += (f"; {bans['auth_failures']} authentication failures, {bans['bans']} "
                     f"bans, {bans['spared']} spared since start"
                     + ("" if bans["enabled"] else "; automatic bans disabled (bans.enabled)"))
        flood = [f"{r} {st['counters'][r]}" for r in ("banned", "rate_limited")
                 if st["counters"].get(r)]
        if flood:
            line += "; packets " + ", ".join(flood)
        print(f"bans        {line} (nfguard bans)")
    if st["nft"].get("rejected"):
        print(f"rejected    {st['nft']['rejected']['packets']} packets (nft reject rule)")
    if st["counters"]:
        print("counters    " + ", ".join(f"{k} {v}" for k, v in sorted(st["counters"].items())))
    for ev in st.get("recent_events", [])[-5:]:
        where = f" over {ev['transport']}" if ev.get("transport") else ""
        print(f"event       {time.strftime('%H:%M:%S', time.localtime(ev['time']))} {ev['src']}"
              f"{where} {ev['user'] or '-'}@{ev['realm'] or '-'} {ev['reason']} -> "
              f"{ev['action']}" + (" (FreeSWITCH)" if ev.get("stage") == "freeswitch" else ""))


def run(args: argparse.Namespace) -> int:
    st = gather(args.config)
    if args.json:
        print(json.dumps(st))
    else:
        show(st)
    return 0


def xdp_mode_text(row: dict) -> str:
    """The XDP mode of an interface row, and for generic mode why it is
    generic and what that costs: XDP then sees a GSO super-packet as one
    frame, which the kernel splits into datagrams only at the socket."""
    mode = row["xdp"]["mode"]
    if mode != "generic" or not row["nfguard_xdp"]:
        return mode or "-"
    if row.get("native_refused"):
        why = f"the kernel refused native mode: {row['native_refused']}"
    elif row.get("configured_xdp_mode") == "generic":
        why = "configured"
    else:
        why = "native mode refused or not tried; the daemon that attached it logged why"
    return (f"generic ({why}; a GSO super-packet reaches XDP as one frame, "
            "so datagrams sent with UDP_SEGMENT are not judged one by one)")
