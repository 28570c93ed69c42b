# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tape_changer against the stateful mtx/tapeinfo doubles (tests/integration/files): the state is kept between calls."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _mtx
from ansible_collections.consistent.backup.plugins.modules import tape_changer, tape_status

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "integration"))
from tape_fixtures import MTX, TAPEINFO, Library, use_tape_double  # noqa: E402  pylint: disable=wrong-import-position
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


run = module_result  # run(module, capsys, **options)


@pytest.fixture
def library(tmp_path, monkeypatch):
    use_tape_double(monkeypatch)
    return Library(str(tmp_path / "lib"), {1: "LT1001L3", 2: None, 3: "LT1003L3", 4: None, 5: "LT1002L3"}, loaded="LT1000L3",
                   loaded_from=2, import_export=[5])


def changer_args(library, **more):
    args = dict(changer=library.changer, mtx=MTX, device=library.drive, wait_timeout=5)
    args.update(more)
    return args


def test_load_by_barcode_unloads_the_wrong_volume_home_first_then_is_idempotent(library, capsys):
    result = run(tape_changer, capsys, **changer_args(library, barcode="LT1001L3"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert [(m["action"], m["slot"]) for m in result["moves"]] == [("unload", 2), ("load", 1)]
    assert result["drive"] == {"drive": 0, "full": True, "tag": "LT1001L3", "source_slot": 1, "source_unknown": False}
    assert library.state()["slots"]["2"] == "LT1000L3"
    assert library.tape()["volume"] == "LT1001L3" and result["tape"]["online"] is True
    again = run(tape_changer, capsys, **changer_args(library, barcode="LT1001L3"))
    assert again["changed"] is False and again["moves"] == []


def test_load_by_slot(library, capsys):
    result = run(tape_changer, capsys, **changer_args(library, slot=3))
    assert result["changed"] is True and result["drive"]["tag"] == "LT1003L3"
    assert library.mtx_calls()[-3:] == ["unload 2 0", "load 3 0", "status"]


def test_check_mode_reports_the_moves_and_moves_nothing(library, capsys):
    result = run(tape_changer, capsys, _ansible_check_mode=True, **changer_args(library, barcode="LT1003L3"))
    assert result["changed"] is True and [m["action"] for m in result["moves"]] == ["unload", "load"]
    assert result["would"][0].startswith("unload LT1000L3 from drive 0 into slot 2")
    assert library.mtx_calls() == ["status"] and library.state()["drives"]["0"]["tag"] == "LT1000L3"


def test_empty_source_slot_fails_before_any_move(library, capsys):
    result = run(tape_changer, capsys, **changer_args(library, slot=4))
    assert result["failed"] is True and result["reason"] == {"kind": "source_empty", "slot": 4}
    assert library.mtx_calls() == ["status"]


def test_a_failed_move_is_a_structured_reason(library, capsys):
    library.update(fail_next_move=True)
    result = run(tape_changer, capsys, **changer_args(library, slot=1, drive=0))
    assert result["failed"] is True and result["reason"]["kind"] == "move_failed"
    assert "MOVE MEDIUM from Element Address 500 to 1002 Failed" in result["msg"]


def test_a_missing_changer_is_named(library, capsys, tmp_path):
    result = run(tape_changer, capsys, **changer_args(library, changer=str(tmp_path / "sg9"), slot=1))
    assert result["failed"] is True and result["reason"]["kind"] == "no_changer"
    assert "check backup_tape_changer" in result["msg"]


def test_sense_noise_on_stderr_does_not_spoil_a_valid_status(library, capsys):
    library.update(sense_noise=True)
    result = run(tape_changer, capsys, **changer_args(library, barcode="LT1000L3"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False and result["changer_status"]["drive_count"] == 1


def test_drive_full_from_mtx_itself_is_recognised(library):
    proc = subprocess.run([MTX, "-f", library.changer, "load", "1", "0"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stderr == "Drive 0 Full (Storage Element 2 loaded)\n"
    assert _mtx.parse_error(proc.stderr)["kind"] == "drive_full"


def test_unload_returns_the_volume_home(library, capsys):
    result = run(tape_changer, capsys, **changer_args(library, state="unloaded"))
    assert result["changed"] is True and result["drive"]["full"] is False
    assert library.state()["slots"]["2"] == "LT1000L3" and library.tape()["loaded"] is False
    again = run(tape_changer, capsys, **changer_args(library, state="unloaded"))
    assert again["changed"] is False


def test_a_slow_load_is_waited_for_until_online(library, capsys, monkeypatch):
    monkeypatch.setattr("ansible_collections.consistent.backup.plugins.module_utils._tape.POLL_INTERVAL", 0.01)
    library.update(loading_polls=3)
    result = run(tape_changer, capsys, **changer_args(library, barcode="LT1003L3"))
    assert result.get("failed") is not True, result.get("msg")
    assert result["tape"]["polls"] == 4 and result["tape"]["online"] is True


def test_a_load_that_never_comes_online_fails(library, capsys, monkeypatch):
    monkeypatch.setattr("ansible_collections.consistent.backup.plugins.module_utils._tape.POLL_INTERVAL", 0.01)
    library.update(loading_polls=1000)
    result = run(tape_changer, capsys, **changer_args(library, barcode="LT1003L3", wait_timeout=0))
    assert result["failed"] is True and result["reason"]["kind"] == "not_online"


def test_cleaning_alert_from_tapeinfo_fails_no_cleaning(library, capsys):
    library.set_tape(tape_alerts=[20])
    result = run(tape_status, capsys, device=library.drive, alerts=True, sg_device=library.drive, tapeinfo=TAPEINFO,
                 require=["loaded", "online", "no_cleaning"])
    assert result["failed"] is True and result["cleaning_needed"] is True
    assert result["tape_alerts"] == [{"flag": 20, "text": "Clean Now: The tape drive needs cleaning NOW."}]
    assert "asks for cleaning" in result["msg"]


def test_check_real_idempotent_and_idempotent_in_check_mode(library, capsys):
    args = changer_args(library, slot=3)
    checked = run(tape_changer, capsys, _ansible_check_mode=True, **args)
    assert checked["changed"] is True and library.state()["drives"]["0"]["tag"] == "LT1000L3"
    real = run(tape_changer, capsys, **args)
    assert real["changed"] is True and library.state()["drives"]["0"]["tag"] == "LT1003L3"
    again = run(tape_changer, capsys, **args)
    assert again["changed"] is False and again["moves"] == []
    again_checked = run(tape_changer, capsys, _ansible_check_mode=True, **args)
    assert again_checked["changed"] is False and again_checked["moves"] == []
