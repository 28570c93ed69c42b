# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/backup.yml with tape media (files engine): the tape is checked and moved before pre, the set is one tar
stream of fixed-size records, it is read back before COMPLETE, and disk-then-tape writes the tape after post.

The library is the changer and drive doubles of tape_fixtures.py (verbatim mtx outputs, a drive directory standing in
for the tape: one file per tape file); the modules reach the drive double through the test seam
(TAPE_DOUBLE_ENV: files/tape_seam/sitecustomize.py in each module's process, docs/tape.md). The operator commands are files/fakedb.py.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from helpers import load_json, run_playbook
from tape_fixtures import MTX, TAPE_DOUBLE_ENV, Library, tar_members
from test_backup_files import fakedb, job_vars, one_host  # noqa: F401  pylint: disable=unused-import

RECORD = 64 * 1024


@pytest.fixture
def library(tmp_path):
    return Library(str(tmp_path / "library"), {1: "LT1001L3", 2: None, 3: "LT1003L3"}, loaded="LT1000L3", loaded_from=2)


def tape_vars(fakedb, tmp_path, library, **more):  # pylint: disable=redefined-outer-name
    dest = tmp_path / "sets"
    dest.mkdir(exist_ok=True)
    values = job_vars(fakedb, str(dest), backup_id="b1", backup_media="tape", backup_tape_device=library.drive,
                      backup_tape_changer=library.changer, backup_tape_barcode="LT1001L3", backup_tape_mtx=MTX,
                      backup_tape_wait_timeout=5, backup_tape_record_size=RECORD)
    values.update(more)
    return values


def failed_result(run, name):
    """The failed result of the task that registered ``name`` (the recorder keeps the status beside the result)."""
    found = [entry["result"] for entry in run.results if entry["register"] == name and entry["status"] == "failed"]
    assert found, "the task registering %s did not fail: %r" % (name, run)
    return found[-1]


def run_tape_job(tmp_path, values, **kwargs):
    return run_playbook("backup.yml", one_host(tmp_path), values, env=TAPE_DOUBLE_ENV, **kwargs)


def test_success_writes_one_stream_of_fixed_records_that_matches_the_manifest_and_reads_back(tmp_path, fakedb, library):  # noqa: F811
    values = tape_vars(fakedb, tmp_path, library)
    run = run_tape_job(tmp_path, values)
    assert run.rc == 0, run
    assert fakedb.calls() == ["pre ok", "post ok"]
    assert run.registered("__media_tape_changer_result")["moves"][0]["action"] == "unload"
    assert run.registered("__media_tape_position")["file_number"] == 1  # file 0 is the new label
    set_dir = os.path.join(values["backup_dest"], "b1")
    stream = library.tape_file("LT1001L3", 1)
    writes = [size for volume, number, size in library.records() if (volume, number) == ("LT1001L3", 1)]
    assert writes and set(writes) == {RECORD} and os.path.getsize(stream) == len(writes) * RECORD
    manifest = load_json(os.path.join(set_dir, "manifest.json"))
    members = tar_members(stream)
    files = {"data/" + e["path"]: e["sha256"] for e in manifest["files"] if e["type"] == "file"}
    assert {name: hashlib.sha256(data).hexdigest() for name, data in members.items() if name != "manifest.json"} == files
    with open(os.path.join(set_dir, "manifest.json"), "rb") as handle:
        assert members["manifest.json"] == handle.read()
    read_back = run.registered("backup_read_back")
    assert read_back["read_back"]["verified"] is True and read_back["read_back"]["files_checked"] == len(files)
    assert os.path.exists(os.path.join(set_dir, "COMPLETE")) and load_json(os.path.join(set_dir, "tape.json"))["verdict"] == "success"
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["verdict"] == "success" and report["phases"]["readback"]["result"] == "ok"
    catalog = load_json(os.path.join(values["backup_dest"], ".tape-catalog", "LT1001L3.json"))
    assert [(f["file_number"], f["kind"], f.get("verified")) for f in catalog["files"]] == [(0, "label", None), (1, "set", True)]

    # The next job appends after the last set: end of data (file 2) agrees with the catalog.
    second = run_tape_job(tmp_path, dict(values, backup_id="b2"))
    assert second.rc == 0, second
    assert second.registered("__media_tape_changer_result")["changed"] is False
    assert second.registered("__media_tape_position")["file_number"] == 2
    assert load_json(os.path.join(values["backup_dest"], "b2", "tape.json"))["file_number"] == 2


def test_write_protected_tape_stops_the_job_before_pre(tmp_path, fakedb, library):  # noqa: F811
    library.update(write_protected_tags=["LT1001L3"])
    run = run_tape_job(tmp_path, tape_vars(fakedb, tmp_path, library))
    assert run.rc != 0, run
    status = failed_result(run, "__media_tape_status")
    assert status["write_protected"] is True and status["unmet"][0].endswith("remove the write tab")
    assert fakedb.calls() == []
    assert not os.path.exists(os.path.join(str(tmp_path / "sets"), "b1"))


@pytest.mark.parametrize("engine", ["postgresql", "bdb"])
def test_an_engine_whose_set_is_not_one_copy_is_refused_tape_media_before_anything(tmp_path, fakedb, library, engine):  # noqa: F811
    run = run_tape_job(tmp_path, tape_vars(fakedb, tmp_path, library, backup_engine=engine))
    assert run.rc != 0, run
    (message,) = run.failure_messages()
    assert message.startswith("backup_media tape cannot hold a %s set:" % engine), message
    assert message.endswith("Use backup_media disk with backup_tape_copy true (disk, then tape): the COMPLETE set is "
                            "streamed to tape after post."), message
    assert library.state()["drives"]["0"]["tag"] == "LT1000L3"  # no media movement either
    assert not os.path.exists(os.path.join(str(tmp_path / "sets"), "b1"))


def test_wrong_volume_stops_the_job_before_pre(tmp_path, fakedb, library):  # noqa: F811
    # No changer: LT1000L3 (labelled by an earlier job) is in the drive, the job wants LT1001L3.
    first = run_tape_job(tmp_path, tape_vars(fakedb, tmp_path, library, backup_tape_changer="", backup_tape_barcode="LT1000L3",
                                             backup_id="b0"))
    assert first.rc == 0, first
    run = run_tape_job(tmp_path, tape_vars(fakedb, tmp_path, library, backup_tape_changer=""))
    assert run.rc != 0, run
    position = failed_result(run, "__media_tape_position")
    assert position["volume"] == "LT1000L3"
    assert position["msg"].startswith("Wrong Volume mounted on device %s: Wanted LT1001L3 have LT1000L3" % library.drive)
    assert fakedb.calls() == ["pre ok", "post ok"]  # the first job's only
    assert not os.path.exists(os.path.join(str(tmp_path / "sets"), "b1"))


def test_changer_error_stops_the_job_before_pre(tmp_path, fakedb, library):  # noqa: F811
    library.update(fail_next_move=True)
    run = run_tape_job(tmp_path, tape_vars(fakedb, tmp_path, library))
    assert run.rc != 0, run
    changer = failed_result(run, "__media_tape_changer_result")
    assert changer["reason"]["kind"] == "move_failed"
    assert fakedb.calls() == []


def test_tape_and_catalog_that_disagree_stop_the_job_before_pre(tmp_path, fakedb, library):  # noqa: F811
    values = tape_vars(fakedb, tmp_path, library)
    assert run_tape_job(tmp_path, values).rc == 0
    os.unlink(os.path.join(values["backup_dest"], ".tape-catalog", "LT1001L3.json"))
    run = run_tape_job(tmp_path, dict(values, backup_id="b2"))
    assert run.rc != 0, run
    position = failed_result(run, "__media_tape_position")
    assert (position["tape_end_of_data"], position["catalog_end_of_data"]) == (2, 0)
    assert fakedb.calls() == ["pre ok", "post ok"]


def test_a_flipped_byte_on_tape_fails_the_read_back_and_the_set_is_not_complete(tmp_path, fakedb, library):  # noqa: F811
    library.set_tape(flip_at={"volume": "LT1001L3", "file": 1, "offset": 300000})
    values = tape_vars(fakedb, tmp_path, library)
    run = run_tape_job(tmp_path, values)
    assert run.rc != 0, run
    assert fakedb.calls() == ["pre ok", "post ok"]
    read_back = run.registered("backup_read_back")
    assert read_back["read_back"]["verified"] is False and "differs from the manifest" in read_back["read_back"]["problems"][0]
    set_dir = os.path.join(values["backup_dest"], "b1")
    assert not os.path.exists(os.path.join(set_dir, "COMPLETE")) and not os.path.exists(os.path.join(set_dir, "tape.json"))
    report = load_json(os.path.join(set_dir, "report.json"))
    assert report["verdict"] == "failed" and report["phases"]["readback"]["result"] == "failed"
    assert run.registered("backup_closed")["complete"] is False


def disk_then_tape_vars(fakedb, tmp_path, library, **more):  # noqa: F811  pylint: disable=redefined-outer-name
    values = tape_vars(fakedb, tmp_path, library, backup_media="disk", backup_tape_copy=True,
                       backup_media_require_mountpoint=False)
    values.update(more)
    return values


def test_disk_then_tape_writes_the_tape_after_post_and_reports_both_verdicts(tmp_path, fakedb, library):  # noqa: F811
    values = disk_then_tape_vars(fakedb, tmp_path, library)
    run = run_tape_job(tmp_path, values)
    assert run.rc == 0, run
    set_dir = os.path.join(values["backup_dest"], "b1")
    assert os.path.exists(os.path.join(set_dir, "COMPLETE")) and os.path.isdir(os.path.join(set_dir, "data"))
    report = load_json(os.path.join(set_dir, "report.json"))
    tape = load_json(os.path.join(set_dir, "tape.json"))
    assert report["phases"]["post"]["end"] == tape["post_end"] < tape["tape_start"] < tape["tape_end"]
    assert (tape["disk_verdict"], tape["tape_verdict"], tape["file_number"]) == ("success", "success", 1)
    assert run.stats("consistent_backup_tape")["db1"]["disk_verdict"] == "success"
    assert run.stats("consistent_backup_tape")["db1"]["tape_verdict"] == "success"
    writes = [size for volume, number, size in library.records() if (volume, number) == ("LT1001L3", 1)]
    assert writes and set(writes) == {RECORD}
    assert json.loads(tar_members(library.tape_file("LT1001L3", 1))["manifest.json"]) == load_json(os.path.join(set_dir, "manifest.json"))


def test_disk_then_tape_fails_the_job_when_the_tape_copy_fails(tmp_path, fakedb, library):  # noqa: F811
    library.set_tape(flip_at={"volume": "LT1001L3", "file": 1, "offset": 300000})
    values = disk_then_tape_vars(fakedb, tmp_path, library)
    run = run_tape_job(tmp_path, values)
    assert run.rc != 0, run
    set_dir = os.path.join(values["backup_dest"], "b1")
    assert os.path.exists(os.path.join(set_dir, "COMPLETE"))  # the disk set is good
    assert load_json(os.path.join(set_dir, "report.json"))["verdict"] == "success"
    stats = run.stats("consistent_backup_tape")["db1"]
    assert (stats["disk_verdict"], stats["tape_verdict"]) == ("success", "failed")
    assert "differs from the manifest" in stats["failure"]


def test_check_mode_reports_the_moves_and_writes_nothing(tmp_path, fakedb, library):  # noqa: F811
    run = run_tape_job(tmp_path, tape_vars(fakedb, tmp_path, library), check=True)
    assert run.rc == 0, run
    changer = run.registered("__media_tape_changer_result")
    assert changer["changed"] is True and [(m["action"], m["slot"]) for m in changer["moves"]] == [("unload", 2), ("load", 1)]
    assert library.mtx_calls() == ["status"] and library.tape()["volume"] == "LT1000L3"
    assert library.records() == [] and fakedb.calls() == []
    assert not os.path.exists(os.path.join(str(tmp_path / "sets"), ".tape-catalog"))


def test_a_failed_copy_is_not_read_back_and_the_catalog_is_untouched(tmp_path, fakedb, library):  # noqa: F811
    fakedb.fail_next("pre", 3)
    values = tape_vars(fakedb, tmp_path, library)
    run = run_tape_job(tmp_path, values)
    assert run.rc != 0, run
    assert fakedb.calls() == ["pre fail", "pre fail", "pre fail", "post ok already-open"]
    assert run.registered("backup_read_back")["skipped_reason"].startswith("the copy did not succeed")
    report = load_json(os.path.join(values["backup_dest"], "b1", "report.json"))
    assert report["verdict"] == "failed" and "readback" not in report["phases"]
    catalog = load_json(os.path.join(values["backup_dest"], ".tape-catalog", "LT1001L3.json"))
    assert [f["kind"] for f in catalog["files"]] == ["label"]


def test_a_copy_that_fails_half_way_leaves_a_partial_file_the_catalog_records_and_the_next_job_appends(tmp_path, fakedb, library):  # noqa: F811,E501
    library.set_tape(eio_after_offset=4 * RECORD)
    values = tape_vars(fakedb, tmp_path, library)
    run = run_tape_job(tmp_path, values)
    assert run.rc != 0, run
    assert fakedb.calls() == ["pre ok", "post ok"]
    report = load_json(os.path.join(values["backup_dest"], "b1", "report.json"))
    assert report["phases"]["copy"]["result"] == "failed" and report["phases"]["copy"]["attempts"] == 3
    assert "writing the tar stream failed with [Errno 5]" in report["phases"]["copy"]["msg"]
    assert run.registered("backup_read_back")["partial_file"] == 1
    library.set_tape(eio_after_offset=None)
    second = run_tape_job(tmp_path, dict(values, backup_id="b2"))
    assert second.rc == 0, second
    assert second.registered("__media_tape_position")["file_number"] == 2
    catalog = load_json(os.path.join(values["backup_dest"], ".tape-catalog", "LT1001L3.json"))
    assert [(f["file_number"], f["kind"]) for f in catalog["files"]] == [(0, "label"), (1, "partial"), (2, "set")]
