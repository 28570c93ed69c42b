# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tape_set positioned: the label, the expected volume, the record size, append against the catalog, overwrite."""

from __future__ import annotations

import functools
import os
import sys

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _tape
from ansible_collections.consistent.backup.plugins.modules import tape_set

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "integration"))
from tape_fixtures import fake_tape, use_tape_double  # noqa: E402  pylint: disable=wrong-import-position
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position

RECORD = 64 * 1024


run = functools.partial(module_result, tape_set)  # run(capsys, [check_mode=True,] **options)


@pytest.fixture
def drive(tmp_path, monkeypatch):
    use_tape_double(monkeypatch)
    return fake_tape.create(str(tmp_path / "nst0"), volume="LT1001L3")


def position(capsys, drive, tmp_path, **more):
    args = dict(state="positioned", device=drive, catalog=str(tmp_path / "catalog"), volume="LT1001L3", record_size=RECORD)
    args.update(more)
    return run(capsys, **args)


def add_set(tmp_path, number, expires):
    def change(catalog):
        catalog["files"].append({"file_number": number, "kind": "set", "backup_id": "b%d" % number, "expires": expires})
    _tape.update_catalog(str(tmp_path / "catalog"), "LT1001L3", change)


def write_tape_file(drive, number):
    with open(fake_tape.tape_file(drive, "LT1001L3", number), "wb") as handle:
        handle.write(b"\0" * RECORD)


def test_a_blank_tape_is_labelled_in_a_real_run_only(capsys, drive, tmp_path):
    checked = position(capsys, drive, tmp_path, _ansible_check_mode=True)
    assert (checked["changed"], checked["labelled"], checked["file_number"]) == (True, True, 1)
    assert not os.path.exists(fake_tape.tape_file(drive, "LT1001L3", 0))
    real = position(capsys, drive, tmp_path)
    assert (real["changed"], real["labelled"], real["file_number"]) == (True, True, 1)
    again = position(capsys, drive, tmp_path)
    assert (again["changed"], again["labelled"], again["file_number"], again["volume"]) == (False, False, 1, "LT1001L3")


def test_a_blank_tape_without_a_volume_name_is_refused(capsys, drive, tmp_path):
    result = position(capsys, drive, tmp_path, volume="")
    assert result["failed"] is True and "name the volume to label it" in result["msg"]


def test_another_record_size_than_the_volumes_is_refused(capsys, drive, tmp_path):
    position(capsys, drive, tmp_path)
    result = position(capsys, drive, tmp_path, record_size=2 * RECORD)
    assert result["failed"] is True and "a set is never written with another record size" in result["msg"]


def test_foreign_data_is_not_overwritten_without_permission(capsys, drive, tmp_path):
    with open(fake_tape.tape_file(drive, "LT1001L3", 0), "wb") as handle:
        handle.write(b"ustar data of another program".ljust(RECORD, b"\0"))
    result = position(capsys, drive, tmp_path)
    assert result["failed"] is True and "found other data in file 0" in result["msg"]


def test_overwrite_relabels_only_when_every_set_has_expired(capsys, drive, tmp_path):
    position(capsys, drive, tmp_path)
    write_tape_file(drive, 1)
    write_tape_file(drive, 2)
    add_set(tmp_path, 1, "2000-01-01T00:00:00Z")
    add_set(tmp_path, 2, "2999-01-01T00:00:00Z")
    kept = position(capsys, drive, tmp_path, overwrite=True)
    assert (kept["changed"], kept["file_number"]) == (False, 3)
    assert kept["overwrite_refused"] == ["b2 (file 2, expires 2999-01-01T00:00:00Z)"]
    _tape.update_catalog(str(tmp_path / "catalog"), "LT1001L3",
                         lambda c: c["files"][-1].update(expires="2001-01-01T00:00:00Z"))
    relabelled = position(capsys, drive, tmp_path, overwrite=True)
    assert (relabelled["changed"], relabelled["labelled"], relabelled["file_number"]) == (True, True, 1)
    catalog = _tape.load_catalog(str(tmp_path / "catalog"), "LT1001L3")
    assert [f["kind"] for f in catalog["files"]] == ["label"]
    assert not os.path.exists(fake_tape.tape_file(drive, "LT1001L3", 1))  # everything after the new label is gone
