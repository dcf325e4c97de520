"""Host checks the loader needs before bcc runs: kernel headers and bpffs."""

import os
import platform

from .errors import HeadersMissing, NfguardError

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


def _is_bpffs(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)
    except OSError:
        return False


def ensure_bpffs(pin_dir: str) -> None:
    """Mount bpffs at /sys/fs/bpf when it is not, and create pin_dir."""
    if not _is_bpffs(BPFFS):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
            err = ctypes.get_errno()
            raise NfguardError(
                f"cannot mount the BPF filesystem on {BPFFS}: {os.strerror(err)} "
                "(run as root, or mount it: mount -t bpf bpf /sys/fs/bpf)"
            )
    os.makedirs(pin_dir, mode=0o700, exist_ok=True)
