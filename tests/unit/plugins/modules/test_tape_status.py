# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tape_status: options in, facts and failures out; never changed, check mode identical."""

from __future__ import annotations

import functools
import os
import sys

import pytest

from ansible_collections.consistent.backup.plugins.modules import tape_status

FILES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "integration", "files")
sys.path.insert(0, FILES)
sys.path.insert(0, os.path.dirname(FILES))
import fake_tape  # noqa: E402  pylint: disable=wrong-import-position
from tape_fixtures import use_tape_double  # noqa: E402  pylint: disable=wrong-import-position
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


run = functools.partial(module_result, tape_status)  # run(capsys, [check_mode=True,] **options)


@pytest.fixture
def drive(tmp_path, monkeypatch):
    use_tape_double(monkeypatch)
    return fake_tape.create(str(tmp_path / "nst0"))


def test_dev_null_fails_as_not_a_tape_device(capsys):
    result = run(capsys, device="/dev/null")
    assert result["failed"] is True and result["state"] == "not_a_tape" and result["changed"] is False
    assert "not a tape drive (ENOTTY)" in result["msg"] and "/dev/nst0" in result["msg"]


def test_a_regular_file_fails_as_not_a_tape_device(tmp_path, capsys):
    path = tmp_path / "backup.tar"
    path.write_bytes(b"\0" * 1024)
    result = run(capsys, device=str(path), require=["loaded"])
    assert result["failed"] is True and result["state"] == "not_a_tape"


def test_rewinding_node_is_refused_without_opening_it(capsys):
    result = run(capsys, device="/dev/st0")
    assert result["failed"] is True and result["state"] == "rewinding_node"
    assert "closing it rewinds the tape" in result["msg"]


def test_ready_drive_meets_every_need_and_is_not_changed(drive, capsys):
    result = run(capsys, device=drive, require=["loaded", "online", "writable", "bot"])
    assert result.get("failed") is not True, result.get("msg")
    assert (result["changed"], result["state"], result["file_number"], result["density"]) == (False, "ready", 0, "LTO-4")
    assert result["unmet"] == []


def test_check_mode_gives_the_same_answer(drive, capsys):
    normal = run(capsys, device=drive, require=["loaded"])
    checked = run(capsys, device=drive, require=["loaded"], _ansible_check_mode=True)
    for key in ("state", "loaded", "online", "file_number", "status_bits", "changed"):
        assert normal[key] == checked[key]


def test_write_protected_tape_fails_the_writable_need(tmp_path, drive, capsys):
    fake_tape.create(drive, write_protected=True)
    result = run(capsys, device=drive, require=["loaded", "online", "writable"])
    assert result["failed"] is True and result["write_protected"] is True
    assert result["unmet"] == ["tape %s: expected a writable tape, found it write-protected (WR_PROT set); load a writable "
                               "volume or remove the write tab" % drive]


def test_empty_drive_fails_the_loaded_need(drive, capsys):
    fake_tape.create(drive, loaded=False)
    result = run(capsys, device=drive, require=["loaded"])
    assert result["failed"] is True and result["state"] == "no_medium" and result["file_number"] == -1


def test_loading_drive_is_waited_for(drive, capsys, monkeypatch):
    monkeypatch.setattr("ansible_collections.consistent.backup.plugins.module_utils._tape.POLL_INTERVAL", 0.01)
    fake_tape.create(drive, loading_polls=3)
    result = run(capsys, device=drive, require=["loaded", "online"], wait_timeout=5)
    assert result.get("failed") is not True, result.get("msg")
    assert result["polls"] == 4 and result["online"] is True


def test_busy_drive_fails_with_what_to_do(drive, capsys):
    fake_tape.create(drive, open_errno=16)
    result = run(capsys, device=drive)
    assert result["failed"] is True and result["state"] == "busy" and "another program" in result["msg"]
