"""nfguard freeswitch-install: the guard first in every dialplan context,
idempotent, and taken out exactly."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from nfguard import guard_install
from nfguard.guard_install import INCLUDE, InstallError, install, remove

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_XML = """<?xml version="1.0" encoding="utf-8"?>
<include>
  <context name="default">

    <extension name="unloop">
      <condition field="destination_number" expression="^9196$">
        <action application="echo"/>
      </condition>
    </extension>
    <X-PRE-PROCESS cmd="include" data="default/*.xml"/>
  </context>
</include>
"""
PUBLIC_XML = """<include>
\t<context name="public" extra="x">
\t\t<extension name="a"><condition><action application="answer"/></condition></extension>
\t</context>
</include>
"""


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "freeswitch.xml").write_text("<document/>")
    (tmp_path / "dialplan").mkdir()
    (tmp_path / "dialplan" / "default.xml").write_text(DEFAULT_XML)
    (tmp_path / "dialplan" / "public.xml").write_text(PUBLIC_XML)
    (tmp_path / "dialplan" / "default").mkdir()
    (tmp_path / "dialplan" / "default" / "01_x.xml").write_text("<include/>")
    return tmp_path


def _first_children(path):
    root = ET.fromstring(open(path).read().replace(INCLUDE, "<GUARD/>"))
    return [next(iter(ctx)).tag for ctx in root.iter("context")]


def test_install_puts_the_guard_first_in_every_context(conf):
    changes = install(str(conf))
    assert len(changes) == 3  # the snippet and two files
    for name in ("default.xml", "public.xml"):
        assert _first_children(conf / "dialplan" / name) == ["GUARD"]
    # the extension files under dialplan/default/ hold no contexts: untouched
    assert (conf / "dialplan" / "default" / "01_x.xml").read_text() == "<include/>"
    snippet = (conf / "nfguard" / "guard-extension.xml").read_text()
    ext = ET.fromstring(snippet).find("extension")
    assert ext.get("continue") == "true"
    action = ext.find("condition/action")
    assert action.get("application") == "lua"
    assert action.get("data") == guard_install.guard_script()
    assert os.path.isabs(action.get("data"))


def test_install_twice_changes_nothing(conf):
    install(str(conf))
    before = {p: p.read_text() for p in conf.rglob("*.xml")}
    assert install(str(conf)) == []
    assert {p: p.read_text() for p in conf.rglob("*.xml")} == before


def test_remove_restores_the_files_exactly(conf):
    install(str(conf))
    changes = remove(str(conf))
    assert len(changes) == 3
    assert (conf / "dialplan" / "default.xml").read_text() == DEFAULT_XML
    assert (conf / "dialplan" / "public.xml").read_text() == PUBLIC_XML
    assert not (conf / "nfguard").exists()
    assert remove(str(conf)) == []


def test_dry_run_changes_nothing(conf):
    changes = install(str(conf), dry_run=True)
    assert changes
    assert (conf / "dialplan" / "default.xml").read_text() == DEFAULT_XML
    assert not (conf / "nfguard").exists()


def test_another_guard_path_rewrites_the_snippet_only(conf, tmp_path_factory):
    install(str(conf))
    other = tmp_path_factory.mktemp("g") / "guard.lua"
    other.write_text("-- stand-in")
    changes = install(str(conf), str(other))
    assert len(changes) == 1 and "rewrote" in changes[0]
    assert str(other) in (conf / "nfguard" / "guard-extension.xml").read_text()


@pytest.mark.parametrize("bad, problem", [
    ("relative.lua", "absolute"),
    ('/tmp/a"b.lua', "XML"),
])
def test_bad_guard_paths_are_refused(conf, bad, problem, tmp_path_factory):
    path = bad
    if bad.startswith("/"):
        d = tmp_path_factory.mktemp("q")
        path = str(d / os.path.basename(bad))
        open(path, "w").close()
    else:
        open(os.path.join(conf, bad), "w").close()
        os.chdir(conf)
    with pytest.raises(InstallError, match=problem):
        install(str(conf), path)


def test_not_a_freeswitch_conf_dir(tmp_path):
    with pytest.raises(InstallError, match=r"no freeswitch\.xml"):
        install(str(tmp_path))
    (tmp_path / "freeswitch.xml").write_text("<document/>")
    with pytest.raises(InstallError, match="FusionPBX"):
        install(str(tmp_path))


def test_a_missing_guard_script_is_an_error(conf):
    with pytest.raises(InstallError, match="no guard script"):
        install(str(conf), "/nonexistent/guard.lua")


def test_the_command_line(conf):
    cmd = [sys.executable, "-m", "nfguard", "freeswitch-install", "--conf-dir", str(conf),
           "--config", "/nonexistent.yaml"]
    out = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "would change" in out.stdout
    out = subprocess.run(cmd + ["--no-reload"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert _first_children(conf / "dialplan" / "default.xml") == ["GUARD"]
    out = subprocess.run(cmd + ["--no-reload"], capture_output=True, text=True, cwd=ROOT)
    assert "installed already" in out.stdout
    out = subprocess.run(cmd + ["--remove", "--no-reload"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "taken out" in out.stdout
    out = subprocess.run(cmd[:4] + ["--conf-dir", "/nonexistent"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 1 and "no freeswitch.xml" in out.stderr


def test_a_reader_that_left_stops_nothing(conf):
    """`nfguard freeswitch-install | grep -q ...`: grep leaves at its first
    match; the install (and the reloadxml after it) still finishes, with no
    traceback and status 0 (the package test once failed on exactly that)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "nfguard", "freeswitch-install", "--conf-dir", str(conf),
             "--config", "/nonexistent.yaml"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    finally:
        os.close(write_end)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert _first_children(conf / "dialplan" / "default.xml") == ["GUARD"]
