"""The architecture, held: which package of nfguard may import which.

- base modules (nfguard/*.py: errors, consts, defaults, policy, packets,
  reference, pcap, verdict) import only each other;
- kernel/ (loading, attaching, pins) imports only the base;
- daemon/ (the controller) imports the base and kernel/, never cli/;
- bench/ imports the base, kernel/, daemon/ and lab/ (its fake Event
  Socket), never cli/;
- cli/ and lab/ may import everything.
Imports inside functions count too."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nfguard")
PACKAGES = ("kernel", "daemon", "cli", "bench", "lab")
ALLOWED = {
    "base": {"base"},
    "kernel": {"base", "kernel"},
    "daemon": {"base", "kernel", "daemon"},
    "bench": {"base", "kernel", "daemon", "bench", "lab"},
    "cli": {"base", *PACKAGES},
    "lab": {"base", *PACKAGES},
}


def layer(module: str) -> str:
    """nfguard.daemon.core -> daemon; nfguard.errors -> base."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "base"


def modules():
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                yield rel.removesuffix(".__init__"), path


def imports_of(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "nfguard")
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use nfguard.…)"
            if node.module and node.module.split(".")[0] == "nfguard":
                if node.module == "nfguard":  # from nfguard import packets, __version__
                    out.update(f"nfguard.{a.name}" for a in node.names)
                else:
                    out.add(node.module)
    return out


def test_the_layout_is_as_the_readme_says():
    assert {m for m, _ in modules()} >= {"nfguard.kernel", "nfguard.daemon", "nfguard.cli",
                                         "nfguard.bench", "nfguard.lab"}


@pytest.mark.parametrize("module,path", sorted(modules()))
def test_imports_follow_the_layers(module, path):
    if module == "nfguard.__main__":
        return  # `python -m nfguard` is the command line
    mine = layer(module)
    bad = sorted(m for m in imports_of(path)
                 if m != "nfguard.__version__" and layer(m) not in ALLOWED[mine])
    assert not bad, f"{module} ({mine}) may not import {bad}"


def test_each_default_is_written_once():
    """The pin directory, the socket and the config path are spelled in
    nfguard/defaults.py only; the version in nfguard/__init__.py only."""
    spelled = {"/sys/fs/bpf/nfguard": [], "/run/nfguard/nfguard.sock": [],
               "/etc/nfguard/nfguard.yaml": []}
    for module, path in modules():
        text = open(path).read()
        for value in spelled:
            if f'"{value}"' in text:
                spelled[value].append(module)
    assert spelled == {v: ["nfguard.defaults"] for v in spelled}
    from nfguard import __version__

    root = os.path.dirname(ROOT)
    assert __version__ not in open(os.path.join(root, "pyproject.toml")).read()
    changelog = open(os.path.join(root, "packaging/deb/debian/changelog")).readline()
    assert changelog.startswith(f"nfguard ({__version__})"), changelog
