"""What the kernel and nftables hold, for `nfguard status`: the same view
whether the daemon gathers it or the CLI does while the daemon is down
(from the pinned maps and the nft table)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from nfguard.daemon.nftstate import Element, element_comment
from nfguard.errors import NfguardError
from nfguard.kernel import attach


def elements_of(bindings) -> dict[str, Element]:
    """nft elements (one per address) from bindings with a boot-time
    expiry (program.Binding): what the sets should hold."""
    from nfguard.kernel.program import NO_EXPIRY, boottime_ns

    now, boot = time.time(), boottime_ns()
    by_ip: dict[str, list] = {}
    for b in bindings:
        by_ip.setdefault(b.ip, []).append(b)
    out = {}
    for ip, bs in by_ip.items():
        exp = max(b.expires_ns for b in bs)
        expires = now + 10 * 365 * 86400 if exp >= NO_EXPIRY else now + (exp - boot) / 1e9
        out[ip] = Element(expires, element_comment(f"{b.user}@{b.realm}" for b in bs))
    return out


def interface_status(cfg, native_refused: Mapping[tuple, str] | None = None) -> list[dict]:
    """Each configured interface as the kernel has it. native_refused: the
    daemon's record of why native XDP was refused where auto mode fell
    back to generic, by (name, netns); only the daemon knows it."""
    out = []
    for itf in cfg.interfaces:
        row = {"name": itf.name, "netns": itf.netns, "configured_xdp_mode": itf.xdp_mode,
               "native_refused": (native_refused or {}).get((itf.name, itf.netns))}
        try:
            xdp = attach.xdp_status(itf.name, netns=itf.netns)
            tc = attach.tc_status(itf.name, netns=itf.netns)
            row["xdp"] = {"mode": xdp.mode, "prog": xdp.prog_name, "id": xdp.prog_id}
            row["nfguard_xdp"] = xdp.prog_name == attach.XDP_PROG_NAME
            row["nfguard_tc"] = any(name == attach.TC_PROG_NAME for _, _, name in tc)
        except NfguardError as e:
            row["error"] = str(e)
            row["nfguard_xdp"] = row["nfguard_tc"] = False
        out.append(row)
    return out


def kernel_status(prog, nft, cfg, elements: Mapping[str, Element] | None = None,
                  bpf_count: int | None = None,
                  native_refused: Mapping[tuple, str] | None = None) -> dict:
    """Program config, interfaces, counters, binding counts, and the drift
    between what the nft sets should hold (`elements`: the daemon's; made
    from the bindings map when there is no daemon) and what they hold. The
    bindings are read one at a time, never listed whole (at 100,000 the
    table's listing cost ~250 MB). bpf_count: the map's bindings, when the
    caller has counted them already. native_refused: as for
    interface_status()."""
    if elements is None:
        elements = elements_of(prog.iter_bindings())
    summary = nft.summary()
    table = summary["mark"] is not None
    drift = nft.drift(elements, time.time()) if table else None  # reads the sets' dump
    kcfg = prog.config()
    return {
        "kernel": {**kcfg, "ports": prog.ports(), "trusted": prog.trusted()},
        "interfaces": interface_status(cfg, native_refused),
        "counters": {k: v for k, v in prog.counters().items() if v},
        "bindings": {"bpf": prog.binding_count() if bpf_count is None else bpf_count,
                     "nft": (nft.held_count() or 0) if table else 0},
        "nft": {"table": table, "rejected": summary["rejected"] if table else None,
                "mark": summary["mark"]},
        "drift": {"nft": drift},
        "bans": ban_counts(prog),
    }


def ban_counts(prog) -> dict:
    """The kernel's bans map: entries in force, manual ones among them, and
    every entry (expired ones remember repeat offenders)."""
    from nfguard.kernel.program import boottime_ns

    boot = boottime_ns()
    active = manual = entries = 0
    for b in prog.iter_bans():
        entries += 1
        if b.expires_ns > boot:
            active += 1
            manual += b.manual
    return {"active": active, "manual": manual, "entries": entries}
