"""The FreeSWITCH guard (freeswitch/nfguard_guard.lua) under Debian's lua5.2:
its own table-driven tests (tests/lua/test_guard.lua, with a stand-in
FreeSWITCH), and the one thing the daemon and the guard must agree on byte
for byte: the hash key of a credential, enc(user)@enc(realm).

Without lua5.2 these skip, except under NFGUARD_REQUIRE_KERNEL=1 (CI), where
the skip is a failure (scripts/setup installs lua5.2)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

from conftest import ROOT, cannot_run

LUA = "lua5.2"
SCRIPT = os.path.join(ROOT, "freeswitch", "nfguard_guard.lua")
TESTS = os.path.join(ROOT, "tests", "lua", "test_guard.lua")

# Reads "<user hex> <realm hex>" lines, prints cred_key() of each.
KEYS_LUA = """
NFGUARD_GUARD_TEST = true
local M = dofile(os.getenv("NFGUARD_GUARD_SCRIPT"))
local function unhex(h)
  return (h:gsub("..", function(x) return string.char(tonumber(x, 16)) end))
end
for line in io.lines() do
  local sp = line:find(" ", 1, true)
  io.write(M.cred_key(unhex(line:sub(1, sp - 1)), unhex(line:sub(sp + 1))), "\\n")
end
"""

NAMES = [
    ("Bob@X", "PBX.test"), ("1001", "127.0.0.1"), ("1001", "tenant-b.test"),
    ("j\u00fcrgen", "pbx.test"), ("J\u00dcRGEN", "PBX.TEST"), ("a/b", "c/d"),
    ("a b%c", "x;y=z,w"), ("\u65e5\u672c", "\u00df.example"), ("\u01c5", "\u0130"),
    ("\u212a", "K"), ("", ""), ("'\"\\", ":[]()"), ("\x00\x01\x7f", "\t\n"),
    ("az09._~-", "AZ09._~-"), ("+1 (555) 010-9999", "sip.example.com"),
    ("\U0001f600", "\u00e9"),
]


def lua() -> str:
    path = shutil.which(LUA)
    if not path:
        cannot_run(f"{LUA} is not installed (apt-get install lua5.2)")
    return path


def reference_enc(text: str) -> str:
    """enc() as the contract (notes of issue 14) states it."""
    out = []
    for b in text.encode("utf-8").lower():  # bytes.lower(): ASCII A-Z only
        c = chr(b)
        out.append(c if c in "0123456789abcdefghijklmnopqrstuvwxyz._~-" else f"%{b:02X}")
    return "".join(out)


def lua_keys(pairs: list[tuple[str, str]]) -> list[str]:
    stdin = "".join(f"{u.encode().hex()} {r.encode().hex()}\n" for u, r in pairs)
    out = subprocess.run([lua(), "-e", KEYS_LUA], input=stdin.encode(), capture_output=True,
                         timeout=60, check=True, env={**os.environ, "NFGUARD_GUARD_SCRIPT": SCRIPT})
    return out.stdout.decode("ascii").splitlines()


def random_names(n: int) -> list[tuple[str, str]]:
    rnd = random.Random(14)
    alphabet = [chr(c) for c in range(0x00, 0x180)]
    alphabet += ["\u212a", "\u0130", "\u65e5", "\U0001f600", "@", "%", "/"]
    return [("".join(rnd.choices(alphabet, k=rnd.randint(0, 12))),
             "".join(rnd.choices(alphabet, k=rnd.randint(0, 12)))) for _ in range(n)]


def test_lua_guard_suite():
    out = subprocess.run([lua(), TESTS, SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    failures = [line for line in out.stdout.splitlines() if line.startswith("not ok")]
    assert out.returncode == 0 and not failures, out.stdout[-6000:] + out.stderr[-2000:]
    oks = [line for line in out.stdout.splitlines() if line.startswith("ok ")]
    assert f"1..{len(oks)}" in out.stdout.splitlines()
    assert len(oks) >= 200


def test_lua_enc_is_the_contract():
    pairs = NAMES + random_names(400)
    assert lua_keys(pairs) == [f"b:{reference_enc(u)}@{reference_enc(r)}" for u, r in pairs]
    assert lua_keys([("Bob@X", "PBX.test")]) == ["b:bob%40x@pbx.test"]


def test_lua_and_daemon_write_the_same_keys():
    from nfguard.daemon.fsguard import cred_key

    pairs = NAMES + random_names(400)
    assert lua_keys(pairs) == [cred_key(u, r) for u, r in pairs]
