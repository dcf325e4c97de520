"""The system libbpf (libbpf1) through ctypes, for what bcc 0.26 lacks:
BPF_PROG_TEST_RUN, pinning, program lookup by id and raw program loads.
One loader, so every caller gets the same signatures and error."""

import ctypes
import ctypes.util
import errno
import functools
import os
import struct

from nfguard.errors import NfguardError


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts of libbpf 1.x (bpf.h)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (include/uapi/linux/bpf.h); the
    kernel fills as much as info_len asks for."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
    ]


_libbpf = None


def lib():
    """libbpf.so.1 with the signatures nfguard uses."""
    global _libbpf
    if _libbpf is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            so = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise NfguardError(f"libbpf not found ({e}): install libbpf1") from e
        so.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]
        so.bpf_prog_test_run_opts.restype = ctypes.c_int
        so.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        so.bpf_obj_pin.restype = ctypes.c_int
        so.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
        so.bpf_prog_get_fd_by_id.restype = ctypes.c_int
        so.bpf_obj_get_info_by_fd.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
        ]
        so.bpf_obj_get_info_by_fd.restype = ctypes.c_int
        so.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                                     ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
        so.bpf_prog_load.restype = ctypes.c_int
        so.bpf_prog_get_next_id.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
        so.bpf_prog_get_next_id.restype = ctypes.c_int
        so.bpf_obj_get.argtypes = [ctypes.c_char_p]
        so.bpf_obj_get.restype = ctypes.c_int
        so.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        so.bpf_map_lookup_elem.restype = ctypes.c_int
        _libbpf = so
    return _libbpf


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> tuple[int, int, bytes]:
    """Run the program on data; returns (retval, ns per run, data out)."""
    if len(data) < 14:
        raise ValueError("a frame is at least 14 bytes (an Ethernet header)")
    buf_in = ctypes.create_string_buffer(bytes(data), len(data))
    out_size = len(data) + 256
    buf_out = ctypes.create_string_buffer(out_size)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(buf_in, ctypes.c_void_p),
        data_out=ctypes.cast(buf_out, ctypes.c_void_p),
        data_size_in=len(data),
        data_size_out=out_size,
        repeat=repeat,
    )
    _test_run(prog_fd, opts)
    return opts.retval, opts.duration, buf_out.raw[: opts.data_size_out]


def _test_run(prog_fd: int, opts: _TestRunOpts) -> None:
    rc = lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if rc != 0:
        err = -rc if rc < 0 else ctypes.get_errno()
        raise NfguardError(f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")


BPF_PROG_TYPE_XDP = 6
_BPF_FUNC_XDP_ADJUST_META = 54
_XDP_PASS = 2


def insn(code: int, dst: int, src: int, off: int = 0, imm: int = 0) -> bytes:
    """One struct bpf_insn, for the few-instruction probes nfguard loads raw."""
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def load_raw(prog_type: int, name: bytes, insns: bytes) -> int:
    """Load a program of raw instructions: its fd, or a negative errno
    (-ENOSYS where there is no libbpf to load it with)."""
    try:
        load = lib().bpf_prog_load
    except (NfguardError, AttributeError):
        return -errno.ENOSYS
    fd = load(prog_type, name, b"GPL", insns, len(insns) // 8, None)
    if fd >= 0:
        return fd
    return fd if fd < -1 else -(ctypes.get_errno() or errno.EINVAL)


@functools.cache
def xdp_adjust_meta_allowed() -> bool:
    """Whether this kernel lets an XDP program call bpf_xdp_adjust_meta.
    Some builds refuse the helper outright ("program of this type cannot
    use helper bpf_xdp_adjust_meta#54", seen on a 6.18.44 cloud kernel),
    and a program that calls it then does not load at all. Asked with a
    four-instruction program; only the verifier's EINVAL counts as a no,
    so any other trouble (no privilege, no libbpf) still shows in the real
    load's own error."""
    probe = (
        insn(0xB7, 2, 0, imm=-4)  # r2 = -4 (r1 is the context)
        + insn(0x85, 0, 0, imm=_BPF_FUNC_XDP_ADJUST_META)  # call
        + insn(0xB7, 0, 0, imm=_XDP_PASS)  # r0 = XDP_PASS
        + insn(0x95, 0, 0)  # exit
    )
    fd = load_raw(BPF_PROG_TYPE_XDP, b"nfg_meta_probe", probe)
    if fd >= 0:
        os.close(fd)
        return True
    return fd != -errno.EINVAL


_SKB_MARK_OFFSET = 8  # struct __sk_buff: len, pkt_type, mark
_SKB_IFINDEX_OFFSET = 40  # ... priority, ingress_ifindex, ifindex
_SKB_CTX_SIZE = 256  # struct __sk_buff is 192 bytes on 6.1; the kernel copies what it has


def skb_test_run_mark(prog_fd: int, data: bytes) -> tuple[int, int]:
    """Run a TC (sched_cls) program once on an Ethernet frame; returns
    (retval, the skb->mark it left)."""
    retval, mark, _ = skb_test_run(prog_fd, data)
    return retval, mark


def skb_test_run(prog_fd: int, data: bytes, ifindex: int = 0,
                 repeat: int = 1) -> tuple[int, int, int]:
    """Run an skb program (TC, cgroup_skb) repeat times on an Ethernet
    frame, as received on ifindex (0: loopback); returns (retval, skb->mark
    after, ns per run). A TC program sees the frame from its Ethernet
    header, a cgroup_skb one from its IP header."""
    buf_in = ctypes.create_string_buffer(bytes(data), len(data))
    ctx_in = ctypes.create_string_buffer(_SKB_CTX_SIZE)
    struct.pack_into("<I", ctx_in, _SKB_IFINDEX_OFFSET, ifindex)
    ctx_out = ctypes.create_string_buffer(_SKB_CTX_SIZE)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(buf_in, ctypes.c_void_p),
        data_size_in=len(data),
        ctx_in=ctypes.cast(ctx_in, ctypes.c_void_p) if ifindex else None,
        ctx_size_in=_SKB_IFINDEX_OFFSET + 4 if ifindex else 0,
        ctx_out=ctypes.cast(ctx_out, ctypes.c_void_p),
        ctx_size_out=_SKB_CTX_SIZE,
        repeat=repeat,
    )
    _test_run(prog_fd, opts)
    mark = struct.unpack_from("<I", ctx_out.raw, _SKB_MARK_OFFSET)[0]
    return opts.retval, mark, opts.duration


def obj_pin(fd: int, path: str) -> None:
    """Pin a BPF map or program on bpffs."""
    rc = lib().bpf_obj_pin(fd, path.encode())
    if rc != 0:
        err = -rc if rc < 0 else ctypes.get_errno()
        raise NfguardError(f"cannot pin {path}: {os.strerror(err)}")


def _info(fd: int, info) -> bool:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    return lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) == 0


def map_ids_of_programs(name: str) -> set[int]:
    """The ids of every map used by a loaded program called name (attached
    anywhere, in any network namespace)."""
    ids: set[int] = set()
    cur, nxt = 0, ctypes.c_uint32()
    while lib().bpf_prog_get_next_id(cur, ctypes.byref(nxt)) == 0:
        cur = nxt.value
        fd = lib().bpf_prog_get_fd_by_id(cur)
        if fd < 0:
            continue  # unloaded meanwhile
        try:
            info = ProgInfo()
            if not _info(fd, info) or info.name.decode("utf-8", "replace") != name:
                continue
            maps = (ctypes.c_uint32 * info.nr_map_ids)()
            info2 = ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(maps))
            if _info(fd, info2):
                ids.update(maps[: min(info.nr_map_ids, info2.nr_map_ids)])
        finally:
            os.close(fd)
    return ids


def pinned_map_id(path: str) -> int | None:
    """The id of the map pinned at path, or None."""
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        return None
    try:
        info = MapInfo()
        return info.id if _info(fd, info) else None
    finally:
        os.close(fd)


def pinned_map_info(path: str) -> MapInfo | None:
    """Type, sizes and id of the map pinned at path, or None."""
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        return None
    try:
        info = MapInfo()
        return info if _info(fd, info) else None
    finally:
        os.close(fd)


def pinned_map_items(path: str, key_size: int, value_size: int):
    """(key, value) bytes of every entry of the map pinned at path, walked
    key by key (no bcc: the map may be an older build's); nothing when
    nothing is pinned there."""
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        return
    next_key = lib().bpf_map_get_next_key
    next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    next_key.restype = ctypes.c_int
    try:
        key = ctypes.create_string_buffer(key_size)
        val = ctypes.create_string_buffer(value_size)
        prev = None  # NULL: the first key
        while next_key(fd, prev, key) == 0:
            if lib().bpf_map_lookup_elem(fd, key, val) == 0:
                yield key.raw, val.raw
            prev = ctypes.create_string_buffer(key.raw, key_size)
    finally:
        os.close(fd)


def pinned_map_lookup(path: str, key: bytes, value_size: int) -> bytes | None:
    """The value under key in the map pinned at path, or None."""
    fd = lib().bpf_obj_get(path.encode())
    if fd < 0:
        return None
    try:
        k = ctypes.create_string_buffer(key, len(key))
        v = ctypes.create_string_buffer(value_size)
        if lib().bpf_map_lookup_elem(fd, k, v) != 0:
            return None
        return v.raw
    finally:
        os.close(fd)
