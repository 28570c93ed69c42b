# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The mtx status parser, the error lines as reasons and the move planning (outputs verbatim from reference/tape.md)."""

from __future__ import annotations

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _mtx

PAD = " " * 24  # mtx pads volume tags with blanks (reference/tape.md: "volume tags carry trailing blanks")
STATUS = (
    "      Storage Changer /dev/sg6:2 Drives, 38 Slots ( 36 Import/Export )\n"
    "Data Transfer Element 0:Full (Storage Element 2 Loaded):VolumeTag = LT1000L3" + PAD + "\n"
    "Data Transfer Element 1:Empty\n"
    "      Storage Element 1:Full :VolumeTag=LT1001L3" + PAD + "\n"
    "      Storage Element 2:Empty\n"
    "      Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=LT1002L3" + PAD + "\n"
)


def test_status_drives_slots_and_tags_without_trailing_blanks():
    status = _mtx.parse_status(STATUS)
    assert (status["changer"], status["drive_count"], status["slot_count"], status["import_export_count"]) == ("/dev/sg6", 2, 38, 36)
    assert status["drives"] == [
        {"drive": 0, "full": True, "tag": "LT1000L3", "source_slot": 2, "source_unknown": False},
        {"drive": 1, "full": False, "tag": None, "source_slot": None, "source_unknown": False}]
    assert status["slots"] == [
        {"slot": 1, "full": True, "tag": "LT1001L3", "import_export": False},
        {"slot": 2, "full": False, "tag": None, "import_export": False},
        {"slot": 5, "full": True, "tag": "LT1002L3", "import_export": True}]


def test_unknown_source_slot_is_parsed_and_unloads_to_the_first_empty_slot():
    status = _mtx.parse_status(STATUS.replace("(Storage Element 2 Loaded)", "(Unknown Storage Element Loaded)"))
    assert status["drives"][0]["source_slot"] is None and status["drives"][0]["source_unknown"] is True
    assert _mtx.plan_moves(status, 0, "unloaded") == [{"action": "unload", "slot": 2, "drive": 0, "tag": "LT1000L3"}]


def test_noise_lines_are_ignored_and_no_status_is_an_error():
    assert len(_mtx.parse_status("mtx: Request Sense: Long Report=yes\n" + STATUS)["slots"]) == 3
    with pytest.raises(_mtx.ChangerError, match="no changer status"):
        _mtx.parse_status("mtx: Request Sense: Sense Key=Unit Attention\n")


def test_load_by_barcode_unloads_the_other_volume_to_its_home_slot_first():
    moves = _mtx.plan_moves(_mtx.parse_status(STATUS), 0, "loaded", barcode="LT1001L3")
    assert moves == [{"action": "unload", "slot": 2, "drive": 0, "tag": "LT1000L3"},
                     {"action": "load", "slot": 1, "drive": 0, "tag": "LT1001L3"}]


def test_the_right_volume_already_loaded_needs_no_move():
    status = _mtx.parse_status(STATUS)
    assert _mtx.plan_moves(status, 0, "loaded", barcode="LT1000L3") == []
    assert _mtx.plan_moves(status, 0, "loaded", slot=2) == []
    assert _mtx.plan_moves(status, 1, "unloaded") == []


def test_load_by_slot_into_an_empty_drive():
    assert _mtx.plan_moves(_mtx.parse_status(STATUS), 1, "loaded", slot=5) == [
        {"action": "load", "slot": 5, "drive": 1, "tag": "LT1002L3"}]


def test_empty_source_slot_and_unknown_barcode_are_refused_before_any_move():
    status = _mtx.parse_status(STATUS)
    with pytest.raises(_mtx.ChangerError, match="found the slot empty") as empty:
        _mtx.plan_moves(status, 1, "loaded", slot=2)
    assert empty.value.reason == {"kind": "source_empty", "slot": 2}
    with pytest.raises(_mtx.ChangerError, match="expected volume LT9999L3 for drive 1, found none"):
        _mtx.plan_moves(status, 1, "loaded", barcode="LT9999L3")
    with pytest.raises(_mtx.ChangerError, match="has no drive 4"):
        _mtx.plan_moves(status, 4, "loaded", slot=1)


@pytest.mark.parametrize("line,kind,numbers", [
    ("Drive 0 Full (Storage Element 2 loaded)", "drive_full", {"drive": "0", "slot": "2"}),
    ("Source Element Address 1 is Empty", "source_empty", {"address": "1"}),
    ("Storage Element 2 is Already Full", "slot_full", {"slot": "2"}),
    ("Data Transfer Element 0 is Empty", "drive_empty", {"drive": "0"}),
    ("MOVE MEDIUM from Element Address 1001 to 500 Failed", "move_failed", {"source": "1001", "target": "500"}),
    ("cannot open SCSI device '/dev/x' - No such file or directory", "no_changer", {"device": "/dev/x"}),
])
def test_mtx_error_lines_become_structured_reasons(line, kind, numbers):
    reason = _mtx.parse_error("mtx: Request Sense: Long Report=yes\n" + line + "\n")
    assert reason["kind"] == kind and reason["line"] == line
    for key, value in numbers.items():
        assert reason[key] == value
    assert reason["advice"]
