"""The pinned state maps and their layout.

The daemon pins its state maps (bindings, trusted networks, ports, config,
counters) under the pin directory, and the next load reuses them, so that
enforcement survives a restart or an upgrade. A new build whose map key,
value or size differs must not reuse an older build's pins blindly (the
program would read its values with the wrong layout), so before bcc binds
the pins, the loader compares each pinned map's type, key size, value size
and entry count, and the layout version stored in the config map, with what
this build expects.

On a difference the daemon retires the old pins (moves them into
`retired/` below the pin directory, where the attached old program keeps
using its maps) and starts on fresh maps; it fills them from FreeSWITCH and
only then replaces the old program on every interface, so enforcement never
has a window. Other commands refuse with one line that names the fix.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from nfguard import consts
from nfguard.errors import NfguardError
from nfguard.kernel.libbpf import pinned_map_info, pinned_map_lookup

RETIRED = "retired"
# struct nfg_config: eight __u32, the hash seed, the IPv6 mask (two words),
# then the rate limits: an interval and a slack per class
CONFIG_SIZE = 8 * 4 + 8 + 2 * 8 + 2 * 8 * consts.RC_COUNT

# BPF map types (include/uapi/linux/bpf.h)
HASH, ARRAY, PERCPU_ARRAY, LPM_TRIE = 1, 2, 6, 11
_TYPE_NAMES = {HASH: "hash", ARRAY: "array", PERCPU_ARRAY: "percpu_array",
               LPM_TRIE: "lpm_trie"}


@dataclass(frozen=True)
class MapLayout:
    type: int
    key_size: int
    value_size: int
    max_entries: int

    def describe(self) -> str:
        return (f"{_TYPE_NAMES.get(self.type, self.type)}, key {self.key_size} B, "
                f"value {self.value_size} B, {self.max_entries} entries")


class PinLayoutError(NfguardError):
    """The pins were made by a build with another map layout."""


def _define(cflags: Iterable[str], name: str, default: int) -> int:
    """A -DNAME=VALUE among the compiler flags (the test hooks of
    bpf/nfguard_consts.h and nfguard_structs.h), or default."""
    for flag in cflags:
        m = re.fullmatch(rf"-D{name}=(\d+)", flag)
        if m:
            return int(m.group(1))
    return default


def expected(cflags: Iterable[str] = ()) -> tuple[int, dict[str, MapLayout]]:
    """The layout version and the pinned maps of a build with these flags;
    tests/test_pins.py holds it equal to what bcc compiles."""
    cflags = list(cflags)
    cred = consts.USER_MAX + consts.REALM_MAX
    binding_value = 8 + 4 + 4 + cred + _define(cflags, "NFG_TEST_BINDING_PAD", 0)
    return _define(cflags, "NFG_LAYOUT_VERSION", consts.LAYOUT_VERSION), {
        "bindings": MapLayout(HASH, 8 + 16, binding_value, consts.BINDINGS_MAX),
        "trusted": MapLayout(LPM_TRIE, 4 + 16, 1, consts.TRUSTED_MAX),
        "ports": MapLayout(ARRAY, 4, 8, consts.PORT_WORDS),
        "config": MapLayout(ARRAY, 4, CONFIG_SIZE, 1),
        "counters": MapLayout(PERCPU_ARRAY, 4, 8, len(consts.REASONS)),
        "bans": MapLayout(HASH, 16, 8 + 4 + 4, consts.BANS_MAX),
        "ban_filter": MapLayout(ARRAY, 4, 8, consts.BAN_FILTER_WORDS),
        "bound": MapLayout(HASH, 16, 8, consts.BINDINGS_MAX),
    }


def differences(pin_dir: str, cflags: Iterable[str] = ()) -> list[str] | None:
    """None where pin_dir holds no state maps (a fresh start); otherwise
    what differs between the pinned maps and this build ([] where nothing
    does: the pins may be reused)."""
    version, maps = expected(cflags)
    found = {name: pinned_map_info(os.path.join(pin_dir, name)) for name in maps}
    if not any(found.values()):
        return None
    diffs = []
    for name, want in maps.items():
        info = found[name]
        if info is None:
            diffs.append(f"{name}: not pinned")
            continue
        have = MapLayout(info.type, info.key_size, info.value_size, info.max_entries)
        if have != want:
            diffs.append(f"{name}: {have.describe()}, this build has {want.describe()}")
    if not diffs:
        raw = pinned_map_lookup(os.path.join(pin_dir, "config"), struct.pack("<I", 0),
                                maps["config"].value_size)
        layout = struct.unpack_from("<I", raw)[0] if raw else None
        if layout != version:
            diffs.append(f"config: layout version {layout}, this build has {version}")
    return diffs


def refuse(pin_dir: str, diffs: list[str]) -> PinLayoutError:
    return PinLayoutError(
        f"the maps pinned in {pin_dir} were made by another nfguard build "
        f"({'; '.join(diffs)}): 'nfguard run' moves them aside and takes over "
        "once it has synced with FreeSWITCH, without a gap in enforcement; or "
        "'nfguard uninstall' removes them (and enforcement) first")


def retire(pin_dir: str) -> str:
    """Move every pin of pin_dir (state maps, stage arrays) into
    retired/<time>/; the programs still attached keep using those maps.
    Returns that directory."""
    dest = os.path.join(pin_dir, RETIRED, str(time.time_ns()))
    os.makedirs(dest, mode=0o700)
    for name in os.listdir(pin_dir):
        path = os.path.join(pin_dir, name)
        if name != RETIRED and not os.path.isdir(path):
            os.rename(path, os.path.join(dest, name))  # bpffs renames within itself
    return dest


def retired(pin_dir: str) -> bool:
    """Pins of an older build wait for the daemon's first full sync."""
    return os.path.isdir(os.path.join(pin_dir, RETIRED))


def remove_retired(pin_dir: str) -> None:
    """Unpin what retire() kept: the old program is off every interface."""
    shutil.rmtree(os.path.join(pin_dir, RETIRED), ignore_errors=True)
