"""Host checks the loader needs before bcc runs: kernel headers and bpffs."""

import importlib.util
import os
import platform
import sys

from nfguard.errors import AttachError, HeadersMissing, NfguardError

BPFFS = "/sys/fs/bpf"


def headers_dir(release: str | None = None) -> str | None:
    """The kernel build tree bcc compiles against, or None."""
    release = release or platform.release()
    modules = os.environ.get("NFGUARD_MODULES_DIR", "/lib/modules")  # tests point it elsewhere
    build = f"{modules}/{release}/build"
    if os.path.isfile(os.path.join(build, "Makefile")) or os.path.isdir(
        os.path.join(build, "include")
    ):
        return build
    if modules == "/lib/modules" and os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "/sys/kernel/kheaders.tar.xz"
    return None


def require_headers() -> str:
    found = headers_dir()
    if found:
        return found
    release = platform.release()
    modules = os.environ.get("NFGUARD_MODULES_DIR", "/lib/modules")
    raise HeadersMissing(
        f"kernel headers for {release} not found in {modules}/{release}/build: "
        f"install them with 'apt install linux-headers-{release}' "
        "(or load the kheaders module), then retry"
    )


def fstype_of(path: str) -> str | None:
    """Filesystem type of the mount that holds path (which may not exist)."""
    path = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                mnt = fields[1].replace("\\040", " ")  # mounts escapes spaces
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, fstype = mnt, fields[2]
    except OSError:
        return None
    return fstype


def ensure_bpffs(pin_dir: str) -> None:
    """Mount bpffs at /sys/fs/bpf when it is not, and create pin_dir, which
    must be on a BPF filesystem."""
    if fstype_of(BPFFS) != "bpf":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise NfguardError(
                f"cannot mount the BPF filesystem on {BPFFS}: {os.strerror(err)} "
                "(run as root, or mount it: mount -t bpf bpf /sys/fs/bpf)"
            )
    if fstype_of(pin_dir) != "bpf":
        raise NfguardError(f"pin directory {pin_dir} is not on a BPF filesystem "
                           f"(use a directory under {BPFFS})")
    os.makedirs(pin_dir, mode=0o700, exist_ok=True)


CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


def effective_caps() -> int:
    """This process's effective capability mask (0 when unreadable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_load_bpf(caps: int | None = None) -> bool:
    caps = effective_caps() if caps is None else caps
    return bool(caps >> CAP_BPF & 1 or caps >> CAP_SYS_ADMIN & 1)


def check_privileges(command: str = "nfguard attach") -> None:
    caps = effective_caps()
    if not (caps >> CAP_NET_ADMIN & 1 and can_load_bpf(caps)):
        raise AttachError(
            f"{command} needs root (CAP_NET_ADMIN, and CAP_BPF or CAP_SYS_ADMIN): "
            "run it with sudo or from the systemd unit"
        )


def require_bpf_runtime(what: str) -> None:
    """Fail with one line, before a 1.5 s compile, where loading cannot work:
    no CAP_BPF (or CAP_SYS_ADMIN), no kernel headers, no bcc."""
    if not can_load_bpf():
        raise NfguardError(f"{what} loads a BPF program: run it as root "
                           "(CAP_BPF and CAP_NET_ADMIN)")
    require_headers()
    if importlib.util.find_spec("bcc") is None:
        raise NfguardError(
            f"bcc is not importable by {sys.executable}: install python3-bpfcc "
            "and run nfguard with the system Python (/usr/bin/python3)"
        )
