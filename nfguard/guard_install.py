"""Install the FreeSWITCH-side guard into a vanilla FreeSWITCH configuration.

The guard (freeswitch/nfguard_guard.lua) must run first in every dialplan
context, before any routing. In a file-based configuration that means one
extension at the top of each `<context>`: this module writes that
extension once, as CONF/nfguard/guard-extension.xml, and includes it as the
first child of every context in CONF/dialplan/*.xml. The extension has
`continue="true"`: dialplan hunting goes on, but its Lua application is the
first to execute, and a refused call is hung up before any later one runs.

The file lives outside CONF/dialplan/ on purpose: freeswitch.xml includes
dialplan/*.xml as whole contexts. Every change is marked with a comment, so
installing twice changes nothing and `remove()` takes exactly our lines out.
FusionPBX keeps its dialplan in a database instead: README.md gives the
steps there (a global dialplan entry with the lowest order).
"""

from __future__ import annotations

import glob
import os
import re

from nfguard.errors import NfguardError

MARK = "<!-- nfguard guard -->"
SNIPPET = "nfguard/guard-extension.xml"  # relative to the conf dir, as FreeSWITCH reads it
INCLUDE = f'{MARK}<X-PRE-PROCESS cmd="include" data="../{SNIPPET}"/>'  # relative to dialplan/
PACKAGE_DIR = "/usr/share/nfguard/freeswitch"
_CONTEXT = re.compile(r"<context\b[^>]*?(?<!/)>")


class InstallError(NfguardError):
    pass


def guard_dir() -> str:
    """Where the guard and its snippets are: $NFGUARD_FREESWITCH_DIR, the
    source tree, or the Debian package's /usr/share/nfguard/freeswitch."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for c in (os.environ.get("NFGUARD_FREESWITCH_DIR"), os.path.join(here, "freeswitch"),
              PACKAGE_DIR):
        if c and os.path.isfile(os.path.join(c, "nfguard_guard.lua")):
            return c
    raise InstallError("the FreeSWITCH guard (nfguard_guard.lua) was not found: set "
                       "NFGUARD_FREESWITCH_DIR or reinstall nfguard")


def guard_script() -> str:
    return os.path.join(guard_dir(), "nfguard_guard.lua")


def extension_xml(guard_path: str) -> str:
    """The extension, with the guard's absolute path in it."""
    if not os.path.isabs(guard_path):
        raise InstallError(f"the guard's path must be absolute (FreeSWITCH resolves a relative "
                           f"one against its own script dir): {guard_path}")
    if any(c in guard_path for c in '"<>&'):
        raise InstallError(f"the guard's path cannot go into XML as it is: {guard_path!r}")
    template = open(os.path.join(guard_dir(), "guard-extension.xml")).read()
    if "@GUARD@" not in template:
        raise InstallError("guard-extension.xml has no @GUARD@ placeholder")
    return template.replace("@GUARD@", guard_path)


def _dialplan_files(conf_dir: str) -> list[str]:
    if not os.path.isfile(os.path.join(conf_dir, "freeswitch.xml")):
        raise InstallError(f"{conf_dir} is not a FreeSWITCH configuration directory "
                           f"(no freeswitch.xml)")
    files = sorted(glob.glob(os.path.join(conf_dir, "dialplan", "*.xml")))
    if not files:
        raise InstallError(f"no dialplan files in {conf_dir}/dialplan: is the dialplan kept "
                           f"elsewhere (FusionPBX: see README.md, 'The FreeSWITCH guard')?")
    return files


def _with_guard(text: str) -> tuple[str, int]:
    """text with the include as the first child of every context that does
    not start with it yet; how many were added."""
    out, pos, added = [], 0, 0
    for m in _CONTEXT.finditer(text):
        out.append(text[pos:m.end()])
        pos = m.end()
        if text[pos:].lstrip().startswith(MARK):
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        indent = re.match(r"[ \t]*", text[line_start:m.start()]).group(0)
        out.append(f"\n{indent}  {INCLUDE}")
        added += 1
    out.append(text[pos:])
    return "".join(out), added


def _without_guard(text: str) -> tuple[str, int]:
    pattern = re.compile(r"\n[ \t]*" + re.escape(INCLUDE))
    return pattern.subn("", text)


def _write(path: str, text: str) -> None:
    tmp = f"{path}.nfguard-tmp"
    with open(tmp, "w") as f:
        f.write(text)
    if os.path.exists(path):
        st = os.stat(path)
        os.chmod(tmp, st.st_mode & 0o7777)
        try:
            os.chown(tmp, st.st_uid, st.st_gid)
        except PermissionError:
            pass
    os.replace(tmp, path)


def install(conf_dir: str, guard_path: str | None = None, dry_run: bool = False) -> list[str]:
    """Put the guard first in every context of conf_dir's dialplan; what
    was changed, one line each (nothing: it was installed already)."""
    guard_path = guard_path or guard_script()
    if not os.path.isfile(guard_path):
        raise InstallError(f"no guard script at {guard_path}")
    files = _dialplan_files(conf_dir)
    changes = []
    snippet_path = os.path.join(conf_dir, SNIPPET)
    wanted = extension_xml(guard_path)
    current = open(snippet_path).read() if os.path.isfile(snippet_path) else None
    if current != wanted:
        changes.append(f"{'rewrote' if current else 'wrote'} {snippet_path} (guard {guard_path})")
        if not dry_run:
            os.makedirs(os.path.dirname(snippet_path), exist_ok=True)
            _write(snippet_path, wanted)
    contexts = 0
    for path in files:
        text = open(path).read()
        contexts += len(_CONTEXT.findall(text))
        new, added = _with_guard(text)
        if added:
            changes.append(f"{path}: the guard first in {added} context(s)")
            if not dry_run:
                _write(path, new)
    if not contexts:
        raise InstallError(f"no <context> in {conf_dir}/dialplan/*.xml")
    return changes


def remove(conf_dir: str, dry_run: bool = False) -> list[str]:
    """Take the guard out of conf_dir's dialplan; what was changed."""
    changes = []
    for path in _dialplan_files(conf_dir):
        text = open(path).read()
        new, removed = _without_guard(text)
        if removed:
            changes.append(f"{path}: the guard taken out of {removed} context(s)")
            if not dry_run:
                _write(path, new)
    snippet_path = os.path.join(conf_dir, SNIPPET)
    if os.path.isfile(snippet_path):
        changes.append(f"removed {snippet_path}")
        if not dry_run:
            os.remove(snippet_path)
            try:
                os.rmdir(os.path.dirname(snippet_path))
            except OSError:
                pass  # not empty: someone else's files
    return changes
