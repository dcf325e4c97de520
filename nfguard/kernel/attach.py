"""Attach nfguard's programs to an interface, and detach them, over rtnetlink.

The XDP classifier goes on the interface itself (native, generic or auto:
native when the driver supports it, generic otherwise); the TC program that
turns the reject metadata into skb->mark goes on the clsact ingress hook as a
direct-action bpf filter. All of it speaks netlink through pyroute2 (no `ip`
or `tc` processes), and follows docs/design.md:

- another tool's XDP program is never replaced unless asked (replace=True):
  fresh attaches use XDP_FLAGS_UPDATE_IF_NOEXIST, so the kernel refuses even
  when another tool attached between our check and our request;
- nfguard's own program ("nfguard_xdp") is replaced atomically with
  XDP_FLAGS_REPLACE and IFLA_XDP_EXPECTED_FD: the kernel swaps the programs in
  one step, and only if the one attached is still the one we looked at;
- attach() puts TC on first and XDP second and removes TC again when XDP
  fails, so an interface never has half of nfguard; detach() takes XDP off
  first, so there is no moment where XDP marks packets that TC then misses.

pyroute2 0.7's IFLA_XDP_FLAGS nla is a big-endian 16-bit field, which the
kernel rejects (it wants a host-order u32), so the XDP request is a small
message class of our own. Program fds come from this process; with `netns`
only the netlink socket is created inside that namespace (setns on this
thread, then back), so the kernel resolves the fds in our own fd table.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from typing import NamedTuple

from pyroute2 import RawIPRoute
from pyroute2.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_SETLINK

from nfguard.errors import AttachError
from nfguard.kernel.libbpf import ProgInfo, lib

XDP_PROG_NAME = "nfguard_xdp"
TC_PROG_NAME = "nfguard_tc"

# include/uapi/linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
XDP_MODES = ("auto", "native", "generic")
# IFLA_XDP_ATTACHED values (XDP_ATTACHED_*), as numbers or pyroute2's names
_ATTACHED = {
    0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi",
    None: None, "xdp": "native", "xdpgeneric": "generic",
    "xdpoffload": "offload", "xdpmulti": "multi",
}

# TC: one bpf filter on clsact ingress. A low preference runs it before the
# filters most tools add (tc's default is 49152), so the mark is set before
# anything else classifies the packet; the handle makes it easy to spot in
# `tc filter show dev IF ingress`.
TC_H_INGRESS_PARENT = 0xFFFFFFF1  # where clsact/ingress qdiscs hang
TC_INGRESS = 0xFFFFFFF2  # clsact ingress hook (ffff:fff2)
TC_EGRESS = 0xFFFFFFF3  # clsact egress hook (ffff:fff3)
TC_PRIO = 7
TC_HANDLE = 0x4E46  # "NF"
ETH_P_ALL = 0x0003

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11


class XdpStatus(NamedTuple):
    mode: str | None  # native, generic, offload, multi; None: nothing attached
    prog_id: int  # 0 when nothing is attached
    prog_name: str | None


class DetachResult(NamedTuple):
    xdp: bool  # nfguard's XDP program was removed
    tc: bool  # nfguard's TC filter was removed
    foreign_xdp: str | None  # another tool's XDP program, left in place


class _xdp_setlink(nlmsg):
    """RTM_SETLINK carrying only IFLA_XDP, with a u32 IFLA_XDP_FLAGS."""

    prefix = "IFLA_"
    fields = (
        ("family", "B"),
        ("__align", "x"),
        ("ifi_type", "H"),
        ("index", "i"),
        ("flags", "I"),
        ("change", "I"),
    )
    nla_map = ((43, "IFLA_XDP", "xdp"),)

    class xdp(nla):
        nla_flags = NLA_F_NESTED
        prefix = "IFLA_XDP_"
        nla_map = (
            (1, "IFLA_XDP_FD", "int32"),
            (3, "IFLA_XDP_FLAGS", "uint32"),
            (8, "IFLA_XDP_EXPECTED_FD", "int32"),
        )


# -- libbpf: program ids, fds and names ------------------------------------
def _errno_of(rc: int) -> int:
    return -rc if rc < 0 else (ctypes.get_errno() or errno.EIO)


def prog_fd_by_id(prog_id: int) -> int | None:
    """A new fd for the program with this id (close it), or None when the
    program is gone."""
    rc = lib().bpf_prog_get_fd_by_id(prog_id)
    if rc >= 0:
        return rc
    err = _errno_of(rc)
    if err == errno.ENOENT:
        return None
    if err in (errno.EPERM, errno.EACCES):
        raise AttachError(
            f"permission denied reading BPF program {prog_id}: run as root "
            "(CAP_SYS_ADMIN or CAP_BPF is needed)"
        )
    raise AttachError(f"cannot open BPF program {prog_id}: {os.strerror(err)}")


def prog_info(prog_fd: int) -> tuple[int, str]:
    """(id, name) of the program behind prog_fd."""
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = lib().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size))
    if rc != 0:
        err = _errno_of(rc)
        raise AttachError(f"cannot read BPF program info: {os.strerror(err)}")
    return info.id, info.name.decode("utf-8", "replace")


def prog_name_by_id(prog_id: int) -> str | None:
    fd = prog_fd_by_id(prog_id)
    if fd is None:
        return None
    try:
        return prog_info(fd)[1]
    finally:
        os.close(fd)


# -- netlink sockets, namespaces, interfaces --------------------------------
def _netns_path(netns: str) -> str:
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


@contextlib.contextmanager
def in_netns(netns: str | None):
    """Run the body on this thread inside network namespace `netns` (a name
    under /var/run/netns or a path); sockets created there stay in it after
    the body returns. None: stay where we are."""
    if netns is None:
        yield
        return
    path = _netns_path(netns)
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AttachError(f"network namespace {netns!r} not found ({path})") from None
    except PermissionError:
        raise AttachError(
            f"permission denied opening network namespace {path}: run as root") from None
    try:
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(target)
        raise
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            if err in (errno.EPERM, errno.EACCES):
                raise AttachError(
                    f"permission denied entering network namespace {netns!r}: run as root"
                )
            raise AttachError(f"cannot enter network namespace {netns!r}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:  # pragma: no cover
                # this thread is stranded in the other namespace: nothing
                # it does afterwards could be trusted
                os.abort()
    finally:
        os.close(target)
        os.close(here)


@contextlib.contextmanager
def _rtnl(netns: str | None):
    with in_netns(netns):
        try:
            ipr = RawIPRoute()
        except OSError as e:
            raise AttachError(f"cannot open a netlink socket: {e.strerror}") from e
    try:
        try:
            ipr.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # the kernel's reasons
        except OSError:
            pass
        yield ipr
    finally:
        ipr.close()


def _where(ifname: str, netns: str | None) -> str:
    return f"{ifname} (network namespace {netns})" if netns else ifname


def _ifindex(ipr, ifname: str, netns: str | None) -> int:
    if not ifname or len(ifname) > 15 or "/" in ifname or any(c.isspace() for c in ifname):
        raise AttachError(f"{ifname!r} is not a valid interface name")
    try:
        found = ipr.link_lookup(ifname=ifname)
    except NetlinkError as e:
        raise _netlink_error(e, f"looking up interface {ifname}") from None
    if not found:
        raise AttachError(
            f"no interface named {ifname}"
            + (f" in network namespace {netns}" if netns else "")
            + " (see `ip link`)"
        )
    return found[0]


def check_interface(ifname: str, netns: str | None = None) -> int:
    """The interface's index; AttachError when there is no such interface."""
    with _rtnl(netns) as ipr:
        return _ifindex(ipr, ifname, netns)


def _netlink_error(e: NetlinkError, doing: str) -> AttachError:
    code = e.code
    detail = e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(code)
    if code in (errno.EPERM, errno.EACCES):
        return AttachError(
            f"permission denied {doing}: run nfguard as root "
            "(it needs CAP_NET_ADMIN and CAP_BPF or CAP_SYS_ADMIN)"
        )
    return AttachError(f"{doing} failed: {detail}")


# -- XDP -------------------------------------------------------------------
def _xdp_state(ipr, index: int) -> tuple[str | None, int]:
    link = ipr.get_links(index)[0]
    xdp = link.get_attr("IFLA_XDP")
    if xdp is None:
        return None, 0
    mode = _ATTACHED.get(xdp.get_attr("IFLA_XDP_ATTACHED"), "unknown")
    if mode is None:
        return None, 0
    prog_id = (
        xdp.get_attr("IFLA_XDP_PROG_ID")
        or xdp.get_attr("IFLA_XDP_DRV_PROG_ID")
        or xdp.get_attr("IFLA_XDP_SKB_PROG_ID")
        or xdp.get_attr("IFLA_XDP_HW_PROG_ID")
        or 0
    )
    return mode, prog_id


def _set_xdp(ipr, index: int, fd: int, flags: int, expected_fd: int | None = None) -> None:
    attrs = [["IFLA_XDP_FD", fd], ["IFLA_XDP_FLAGS", flags]]
    if expected_fd is not None:
        attrs.append(["IFLA_XDP_EXPECTED_FD", expected_fd])
    msg = _xdp_setlink()
    msg["family"] = 0
    msg["index"] = index
    msg["attrs"] = [["IFLA_XDP", {"attrs": attrs}]]
    ipr.nlm_request(msg, msg_type=RTM_SETLINK, msg_flags=NLM_F_REQUEST | NLM_F_ACK)


def _xdp_attach_error(e: NetlinkError, ifname: str, netns, mode: str) -> AttachError:
    where = _where(ifname, netns)
    detail = e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(e.code)
    if e.code in (errno.EPERM, errno.EACCES):
        return _netlink_error(e, f"attaching XDP to {where}")
    if e.code == errno.EOPNOTSUPP:
        return AttachError(
            f"{where} does not support XDP in {mode} mode ({detail}): "
            "use --xdp-mode generic (or auto)"
        )
    if e.code == errno.EBUSY:
        return AttachError(
            f"{where} already has an XDP program or link attached ({detail}); "
            "nfguard did not change it"
        )
    if e.code == errno.EEXIST:
        return AttachError(
            f"the XDP program on {where} changed while nfguard was attaching ({detail}); "
            "check `nfguard` and other tools, then retry"
        )
    return AttachError(f"attaching XDP in {mode} mode to {where} failed: {detail}")


def xdp_status(ifname: str, netns: str | None = None) -> XdpStatus:
    """What XDP program, if any, is attached to the interface, and how."""
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        mode, prog_id = _xdp_state(ipr, index)
    if not prog_id:
        return XdpStatus(None, 0, None)
    return XdpStatus(mode, prog_id, prog_name_by_id(prog_id))


def attach_xdp(
    ifname: str,
    prog_fd: int,
    mode: str = "auto",
    replace: bool = False,
    netns: str | None = None,
    native_refused: list[str] | None = None,
) -> str:
    """Attach the XDP program prog_fd to ifname and return the mode used
    ("native" or "generic"). An nfguard program already there is replaced
    atomically; another tool's program only with replace=True. Where mode
    auto fell back to generic, the kernel's reason for refusing native mode
    is appended to native_refused (when given)."""
    if mode not in XDP_MODES:
        raise AttachError(f"XDP mode must be one of {', '.join(XDP_MODES)}, not {mode!r}")
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        try:
            cur_mode, cur_id = _xdp_state(ipr, index)
        except NetlinkError as e:
            raise _netlink_error(e, f"reading the XDP state of {ifname}") from None
        if cur_id:
            old_fd = prog_fd_by_id(cur_id)
            if old_fd is not None:
                try:
                    return _replace_xdp(
                        ipr, index, ifname, netns, prog_fd, mode, replace,
                        cur_mode, cur_id, old_fd,
                    )
                finally:
                    os.close(old_fd)
            # detached in the meantime: attach afresh (NOEXIST guards races)
        return _fresh_xdp(ipr, index, ifname, netns, prog_fd, mode, native_refused)


def _fresh_xdp(ipr, index, ifname, netns, prog_fd, mode, native_refused=None) -> str:
    tries = ["native", "generic"] if mode == "auto" else [mode]
    failures = []
    for m in tries:
        try:
            _set_xdp(ipr, index, prog_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | MODE_FLAGS[m])
            if failures and native_refused is not None:
                native_refused.append(failures[0])
            return m
        except NetlinkError as e:
            err = _xdp_attach_error(e, ifname, netns, m)
            fatal = e.code in (errno.EPERM, errno.EACCES, errno.EBUSY, errno.EEXIST,
                               errno.ENODEV, errno.EBADF)
            if fatal or m == tries[-1]:
                if failures:
                    raise AttachError(f"{err} (native mode: {failures[0]})") from None
                raise err from None
            failures.append(e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(e.code))
    raise AssertionError("unreachable")  # pragma: no cover


def _replace_xdp(ipr, index, ifname, netns, prog_fd, mode, replace,
                 cur_mode, cur_id, old_fd) -> str:
    where = _where(ifname, netns)
    _, old_name = prog_info(old_fd)
    if old_name != XDP_PROG_NAME and not replace:
        raise AttachError(
            f"{where} already has another XDP program attached "
            f"({old_name or 'unnamed'}, id {cur_id}, {cur_mode} mode); nfguard does not "
            "replace other tools' programs: detach it first, or use --replace"
        )
    if cur_mode not in MODE_FLAGS:
        raise AttachError(
            f"{where} has an XDP program in {cur_mode} mode (id {cur_id}); nfguard "
            "attaches in native or generic mode only: detach it first"
        )
    new_id, _ = prog_info(prog_fd)
    want = cur_mode if mode == "auto" else mode
    if new_id == cur_id and want == cur_mode:
        return cur_mode  # already attached, as asked
    if want == cur_mode:
        # one step in the kernel, and only if old_fd is still the one attached
        try:
            _set_xdp(ipr, index, prog_fd, XDP_FLAGS_REPLACE | MODE_FLAGS[want], old_fd)
        except NetlinkError as e:
            raise _xdp_attach_error(e, ifname, netns, want) from None
        return want
    # Switching between native and generic: the kernel does not allow both at
    # once, so this cannot be one step. Remove the old program (if it is
    # still the one we saw), attach the new one, and put the old one back if
    # that fails.
    try:
        _set_xdp(ipr, index, -1, XDP_FLAGS_REPLACE | MODE_FLAGS[cur_mode], old_fd)
    except NetlinkError as e:
        raise _xdp_attach_error(e, ifname, netns, cur_mode) from None
    try:
        _set_xdp(ipr, index, prog_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | MODE_FLAGS[want])
    except NetlinkError as e:
        err = _xdp_attach_error(e, ifname, netns, want)
        try:
            _set_xdp(ipr, index, old_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | MODE_FLAGS[cur_mode])
        except NetlinkError as e2:
            raise AttachError(
                f"{err}; putting the previous XDP program (id {cur_id}) back on "
                f"{where} failed too: {e2.args[-1]}"
            ) from None
        raise AttachError(
            f"{err}; the previous XDP program (id {cur_id}) is back in place") from None
    return want


def detach_xdp(ifname: str, netns: str | None = None, force: bool = False) -> bool:
    """Remove nfguard's XDP program from ifname. True when one was removed,
    False when no program was attached. Another tool's program is left in
    place (AttachError) unless force=True."""
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        return _detach_xdp(ipr, index, ifname, netns, force)


def _detach_xdp(ipr, index, ifname, netns, force) -> bool:
    where = _where(ifname, netns)
    cur_mode, cur_id = _xdp_state(ipr, index)
    if not cur_id:
        return False
    old_fd = prog_fd_by_id(cur_id)
    if old_fd is None:
        return False  # gone meanwhile
    try:
        _, name = prog_info(old_fd)
        if name != XDP_PROG_NAME and not force:
            raise AttachError(
                f"the XDP program on {where} is not nfguard's ({name or 'unnamed'}, "
                f"id {cur_id}): left in place"
            )
        if cur_mode not in MODE_FLAGS:
            raise AttachError(f"cannot detach an XDP program in {cur_mode} mode from {where}")
        try:
            _set_xdp(ipr, index, -1, XDP_FLAGS_REPLACE | MODE_FLAGS[cur_mode], old_fd)
        except NetlinkError as e:
            if e.code in (errno.EPERM, errno.EACCES):
                raise _netlink_error(e, f"detaching XDP from {where}") from None
            if e.code == errno.EEXIST:
                raise AttachError(
                    f"the XDP program on {where} changed while nfguard was detaching it; retry"
                ) from None
            raise _netlink_error(e, f"detaching XDP from {where}") from None
        return True
    finally:
        os.close(old_fd)


# -- TC --------------------------------------------------------------------
def _clsact_kind(ipr, index: int) -> str | None:
    """Kind of the qdisc on the ingress hook ("clsact", "ingress") or None."""
    for q in ipr.get_qdiscs(index):
        if q["index"] == index and q["parent"] == TC_H_INGRESS_PARENT:
            return q.get_attr("TCA_KIND")
    return None


def _filters(ipr, index: int, parent: int) -> list:
    try:
        return [
            f for f in ipr.get_filters(index=index, parent=parent)
            if f["index"] == index and f.get_attr("TCA_KIND")
        ]
    except NetlinkError as e:
        if e.code == errno.EINVAL:  # no such hook (no clsact qdisc)
            return []
        raise


def _our_prio(f) -> bool:
    return f["info"] >> 16 == TC_PRIO


def _bpf_name(f) -> str | None:
    opts = f.get_attr("TCA_OPTIONS")
    return opts.get_attr("TCA_BPF_NAME") if opts is not None else None


def tc_status(ifname: str, netns: str | None = None) -> list[tuple[int, int, str | None]]:
    """The filters on the clsact ingress hook: (pref, handle, bpf name)."""
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        return [
            (f["info"] >> 16, f["handle"], _bpf_name(f))
            for f in _filters(ipr, index, TC_INGRESS)
            if f["handle"]
        ]


def attach_tc(
    ifname: str, prog_fd: int, replace: bool = False, netns: str | None = None
) -> bool:
    """Put prog_fd on the clsact ingress hook of ifname as a direct-action bpf
    filter (creating the clsact qdisc when needed). Returns True when a new
    filter was added, False when nfguard's filter was replaced in place."""
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        created, _ = _attach_tc(ipr, index, ifname, netns, prog_fd, replace)
        return created


def _attach_tc(ipr, index, ifname, netns, prog_fd, replace) -> tuple[bool, bool]:
    """(filter newly added, clsact qdisc newly added)."""
    where = _where(ifname, netns)
    new_qdisc = False
    try:
        kind = _clsact_kind(ipr, index)
        if kind not in (None, "clsact"):
            raise AttachError(
                f"{where} has an {kind!r} qdisc on its ingress hook; nfguard needs "
                f"clsact there (remove it: tc qdisc del dev {ifname} ingress)"
            )
        if kind is None:
            ipr.tc("add", "clsact", index)
            new_qdisc = True
        ours = [f for f in _filters(ipr, index, TC_INGRESS) if _our_prio(f) and f["handle"]]
        for f in ours:
            name = _bpf_name(f)
            if (f.get_attr("TCA_KIND") != "bpf" or name != TC_PROG_NAME
                    or f["handle"] != TC_HANDLE) and not replace:
                raise AttachError(
                    f"{where} already has a TC ingress filter at pref {TC_PRIO} "
                    f"({f.get_attr('TCA_KIND')} {name or ''}, handle {f['handle']:#x}) that is not "
                    "nfguard's: remove it, or use --replace"
                )
        if any(f["handle"] != TC_HANDLE or f.get_attr("TCA_KIND") != "bpf" for f in ours):
            # replace=True over someone else's filters at our pref: the whole
            # pref goes, then ours is added
            ipr.tc("del-filter", index=index, parent=TC_INGRESS,
                   info=(TC_PRIO << 16) | _htons(ETH_P_ALL))
            ours = []
        # Replacing a cls_bpf filter by handle swaps the program in place.
        ipr.tc(
            "replace-filter", "bpf", index, TC_HANDLE,
            fd=prog_fd, name=TC_PROG_NAME, parent=TC_INGRESS,
            prio=TC_PRIO, protocol=ETH_P_ALL, direct_action=True,
        )
        return not ours, new_qdisc
    except (NetlinkError, AttachError) as e:
        if new_qdisc:  # leave no empty clsact of ours behind
            try:
                ipr.tc("del", "clsact", index)
            except NetlinkError:
                pass
        if isinstance(e, AttachError):
            raise
        if e.code in (errno.EPERM, errno.EACCES):
            raise _netlink_error(e, f"attaching TC to {where}") from None
        detail = e.args[1] if len(e.args) > 1 and e.args[1] else os.strerror(e.code)
        raise AttachError(f"attaching the TC ingress program to {where} failed: {detail}") from None


def _htons(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8 & 0xFF)


def detach_tc(ifname: str, netns: str | None = None) -> bool:
    """Remove nfguard's TC ingress filter (and the clsact qdisc when nothing
    else uses it). True when nfguard's filter was there."""
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        return _detach_tc(ipr, index, ifname, netns)


def _detach_tc(ipr, index, ifname, netns) -> bool:
    where = _where(ifname, netns)
    try:
        if _clsact_kind(ipr, index) != "clsact":
            return False
        found = False
        for f in _filters(ipr, index, TC_INGRESS):
            if (_our_prio(f) and f["handle"] == TC_HANDLE
                    and f.get_attr("TCA_KIND") == "bpf" and _bpf_name(f) == TC_PROG_NAME):
                ipr.tc("del-filter", "bpf", index, TC_HANDLE, parent=TC_INGRESS,
                       prio=TC_PRIO, protocol=ETH_P_ALL)
                found = True
        if not _filters(ipr, index, TC_INGRESS) and not _filters(ipr, index, TC_EGRESS):
            ipr.tc("del", "clsact", index)
        return found
    except NetlinkError as e:
        raise _netlink_error(e, f"detaching TC from {where}") from None


# -- both ------------------------------------------------------------------
def attach(
    ifname: str,
    xdp_fd: int,
    tc_fd: int,
    mode: str = "auto",
    replace: bool = False,
    netns: str | None = None,
    native_refused: list[str] | None = None,
) -> str:
    """Attach nfguard (TC ingress first, then XDP) to ifname; on any failure
    take off what this call added. Returns the XDP mode used; native_refused
    as for attach_xdp()."""
    if mode not in XDP_MODES:
        raise AttachError(f"XDP mode must be one of {', '.join(XDP_MODES)}, not {mode!r}")
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        # Refuse before touching anything when another tool's XDP program
        # is there (attach_xdp checks again, race-free, in the kernel).
        cur_mode, cur_id = _xdp_state(ipr, index)
        if cur_id and not replace:
            name = prog_name_by_id(cur_id)
            if name is not None and name != XDP_PROG_NAME:
                raise AttachError(
                    f"{_where(ifname, netns)} already has another XDP program attached "
                    f"({name or 'unnamed'}, id {cur_id}, {cur_mode} mode); nfguard does not "
                    "replace other tools' programs: detach it first, or use --replace"
                )
        tc_new, _ = _attach_tc(ipr, index, ifname, netns, tc_fd, replace)
    try:
        return attach_xdp(ifname, xdp_fd, mode=mode, replace=replace, netns=netns,
                          native_refused=native_refused)
    except BaseException:
        if tc_new:
            with _rtnl(netns) as ipr:
                try:
                    _detach_tc(ipr, index, ifname, netns)
                except AttachError:
                    pass
        raise


def detach(ifname: str, netns: str | None = None, force: bool = False) -> DetachResult:
    """Take nfguard off ifname: XDP first, then TC. Another tool's XDP
    program stays (reported in foreign_xdp) unless force=True."""
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname, netns)
        foreign = None
        try:
            xdp = _detach_xdp(ipr, index, ifname, netns, force)
        except AttachError:
            mode, prog_id = _xdp_state(ipr, index)
            name = prog_name_by_id(prog_id) if prog_id else None
            if not prog_id or name == XDP_PROG_NAME:
                raise
            xdp, foreign = False, f"{name or 'unnamed'} (id {prog_id}, {mode} mode)"
        tc = _detach_tc(ipr, index, ifname, netns)
    return DetachResult(xdp, tc, foreign)
