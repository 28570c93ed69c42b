# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Btrieve engine's rules without an engine: deltas, the list file, the checks before start, butil's statuses,
the module's record, stale deltas; butil is a scripted runner here."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _btrieve as b


def data_file(directory, name, size=4096):
    path = os.path.join(str(directory), name)
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def mountinfo(tmp_path, fstype):
    """A mount table in which tmp_path is on ``fstype``."""
    path = tmp_path / "mountinfo"
    path.write_text("1 0 8:1 / / rw - ext4 /dev/vda1 rw\n2 1 0:40 / %s rw - %s server:/export rw\n" % (tmp_path, fstype))
    return str(path)


class ScriptedButil:
    """A runner that answers each butil call from a script: [(rc, stdout), ...]; records the argv."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.argvs = []

    def __call__(self, argv):
        self.argvs.append(argv)
        rc, out = self.answers.pop(0)
        return rc, out, ""


def test_a_delta_has_the_data_file_s_base_name_and_the_extension_caret_caret_caret():
    assert b.delta_path("/srv/zen/INVOICE.HDR") == "/srv/zen/INVOICE.^^^"
    assert b.delta_path("/srv/zen/INVOICE.DET") == "/srv/zen/INVOICE.^^^"
    assert b.delta_path("/srv/zen/PLAIN") == "/srv/zen/PLAIN.^^^"


def test_the_list_file_holds_fully_qualified_paths_one_per_line_with_cr_lf():
    assert b.list_file_bytes(["/a/B.MKD", "/a/C.MKD"]) == b"/a/B.MKD\r\n/a/C.MKD\r\n"


def test_globs_are_expanded_by_the_module_deltas_never_match_and_ddf_files_are_added(tmp_path):
    data = [data_file(tmp_path, name) for name in ("A.MKD", "B.MKD")]
    data_file(tmp_path, "A.^^^")
    ddf = tmp_path / "ddf"
    ddf.mkdir()
    dictionary = [data_file(ddf, name) for name in ("FIELD.DDF", "FILE.DDF", "index.ddf")]
    data_file(ddf, "README")
    files, problems = b.expand_files([str(tmp_path / "*.*"), data[0]], str(ddf))
    assert problems == []
    assert files == data + sorted(dictionary)


def test_a_glob_that_matches_nothing_and_a_relative_path_are_problems(tmp_path):
    files, problems = b.expand_files([str(tmp_path / "*.MKD"), "relative/A.MKD"], None)
    assert files == []
    assert problems[0].startswith("no file matches %s" % (tmp_path / "*.MKD"))
    assert problems[1].startswith("relative/A.MKD is not an absolute path")


def test_missing_files_non_regular_files_and_a_shared_base_name_are_problems_before_butil(tmp_path):
    header, detail = data_file(tmp_path, "INVOICE.HDR"), data_file(tmp_path, "INVOICE.DET")
    problems = b.file_problems([header, detail, str(tmp_path / "GONE.MKD"), str(tmp_path)], mountinfo(tmp_path, "ext4"))
    assert len(problems) == 3
    assert "share the base name INVOICE" in problems[0]
    assert problems[1].startswith("%s does not exist" % (tmp_path / "GONE.MKD"))
    assert problems[2].startswith("%s is not a regular file" % tmp_path)


@pytest.mark.parametrize("fstype", ["nfs4", "cifs", "fuse.sshfs"])
def test_a_file_on_a_network_filesystem_is_refused(tmp_path, fstype):
    path = data_file(tmp_path, "A.MKD")
    problems = b.file_problems([path], mountinfo(tmp_path, fstype))
    assert len(problems) == 1 and "network filesystem (%s" % fstype in problems[0] and "single server" in problems[0]


def test_local_files_have_no_problem(tmp_path):
    assert b.file_problems([data_file(tmp_path, "A.MKD")], mountinfo(tmp_path, "xfs")) == []


@pytest.mark.parametrize("out, statuses", [
    ("BUTIL-100: MicroKernel error = 12 on file /a", [12]),
    ("Status Code: 3012", [3012]),
    ("BUTIL-139: Depending on ...\nThe command completed successfully.", []),
])
def test_only_the_status_numbers_are_read_from_butil_s_output(out, statuses):
    assert b.parse_statuses(out) == statuses


@pytest.mark.parametrize("rc, out, retryable, words", [
    (2, "BUTIL-100: MicroKernel error = 20", True, "engine is not running"),
    (2, "BUTIL-100: MicroKernel error = 3012", True, "not accessible"),
    (2, "BUTIL-100: MicroKernel error = 170", False, "login failed"),
    (2, "BUTIL-100: MicroKernel error = 88", False, "already in continuous operation"),
    (3, "BUTIL-1: Invalid command line", False, "does not accept the documented command line"),
    (2, "BUTIL-100: MicroKernel error = 85", True, "file in use"),
])
def test_a_failed_call_becomes_what_happened_and_what_to_do(rc, out, retryable, words):
    result = b.ButilResult(["/usr/local/actianzen/bin/butil", "-startbu", "@/run/x.lst"], rc, out, "", 0.1)
    msg, can_retry = b.describe(result, "starting continuous operation failed")
    assert can_retry is retryable
    assert words in msg and ("exited with %d" % rc) in msg


def test_the_password_is_masked_in_what_the_module_returns():
    runner = ScriptedButil((0, "The command completed successfully."))
    butil = b.Butil("/bin/butil", runner, "admin", "s3cret", "INVENTORY")
    butil.run("-startbu", "@/run/x.lst")
    assert runner.argvs == [["/bin/butil", "-startbu", "@/run/x.lst", "-UIDadmin", "-PWDs3cret", "-DBINVENTORY"]]
    assert "s3cret" not in repr(butil.calls)


def test_every_butil_call_carries_the_login_on_a_secured_engine():
    runner = ScriptedButil(*[(0, "The command completed successfully.")] * 3)
    butil = b.Butil("/bin/butil", runner, "admin", "s3cret")
    for args in (("-startbu", "@/run/x.lst"), ("-endbu", "@/run/x.lst"), ("-stat", "/srv/zen/PART.MKD")):
        butil.run(*args)
    assert [argv[-2:] for argv in runner.argvs] == [["-UIDadmin", "-PWDs3cret"]] * 3


def test_an_unsecured_engine_gets_no_login_arguments():
    runner = ScriptedButil((0, "The command completed successfully."))
    b.Butil("/bin/butil", runner).run("-endbu", "@/run/x.lst")
    assert runner.argvs == [["/bin/butil", "-endbu", "@/run/x.lst"]]


def test_a_password_butil_echoes_in_an_error_is_masked_in_the_call_and_in_the_failure_message():
    echoed = "butil -endbu @/run/x.lst -UIDadmin -PWDs3cret\nBUTIL-100: MicroKernel error = 170"
    runner = ScriptedButil((2, echoed))
    butil = b.Butil("/bin/butil", runner, "admin", "s3cret")
    result = butil.run("-endbu", "@/run/x.lst")
    msg, retryable = b.describe(result, "ending continuous operation failed")
    assert "s3cret" not in repr(butil.calls) and "s3cret" not in msg
    assert "-PWD********" in result.stdout and "-PWD********" in msg
    assert "status 170: login failed" in msg and retryable is False


def test_butil_is_found_in_the_usual_locations_then_on_path(tmp_path, monkeypatch):
    monkeypatch.setattr(b, "BUTIL_LOCATIONS", (str(tmp_path / "missing"),))
    assert b.find_butil(None, lambda name: "/opt/bin/" + name) == "/opt/bin/butil"
    with pytest.raises(b.BtrieveError, match="butil was not found"):
        b.find_butil(None, lambda name: None)


def started_view(tmp_path, files):
    view = b.look(files, str(tmp_path / "state"))
    scripted = ScriptedButil((0, "The command completed successfully."))

    def startbu(argv):
        for path in files:
            data_file(os.path.dirname(path), os.path.basename(b.delta_path(path)), 0)  # what the engine makes at start
        return scripted(argv)

    return view, b.Butil("/bin/butil", startbu)


def test_start_writes_the_list_file_and_the_record_and_a_second_start_of_the_same_run_changes_nothing(tmp_path):
    files = [data_file(tmp_path, "A.MKD"), data_file(tmp_path, "B.MKD")]
    view, butil = started_view(tmp_path, files)
    result = b.start(view, butil, False, "fail", False, "", 5, "run-1")
    assert result["changed"] is True and result["start_seconds"] >= 0
    with open(view.record.list_file, "rb") as handle:
        assert handle.read() == b.list_file_bytes(files)
    again = b.start(b.look(files, str(tmp_path / "state")), butil, False, "fail", False, "", 5, "run-1")
    assert again["changed"] is False and "already in continuous operation" in again["msg"]
    assert len(butil.calls) == 1


def test_a_start_never_adopts_another_run_s_continuous_operation_it_ends_it_then_starts_its_own(tmp_path):
    files = [data_file(tmp_path, "A.MKD"), data_file(tmp_path, "B.MKD")]
    view, butil = started_view(tmp_path, files)
    b.start(view, butil, False, "fail", False, "", 5, "dead-run")
    audit = b.start(b.look(files, str(tmp_path / "state")), butil, True, "fail", False, "", 5, "run-2")
    assert audit["changed"] is True and audit["ended_earlier"]["would"] is True and "by run dead-run" in audit["msg"]
    scripted = ScriptedButil((0, "The command completed successfully."), (0, "The command completed successfully."))

    def engine(argv):
        if argv[1] == "-endbu":
            for path in files:
                os.unlink(b.delta_path(path))  # the roll-in
        else:
            for path in files:
                data_file(os.path.dirname(path), os.path.basename(b.delta_path(path)), 0)
        return scripted(argv)

    result = b.start(b.look(files, str(tmp_path / "state")), b.Butil("/bin/butil", engine), False, "fail", False, "", 5, "run-2")
    assert [argv[1] for argv in scripted.argvs] == ["-endbu", "-startbu"]
    assert result["changed"] is True and result["ended_earlier"]["run_id"] == "dead-run"
    assert result["ended_earlier"]["files"] == files and result["ended_earlier"]["rollin_seconds"] >= 0
    assert b.look(files, str(tmp_path / "state")).started["run_id"] == "run-2"


def test_stop_waits_for_the_deltas_and_reports_the_durations_then_stops_nothing(tmp_path):
    files = [data_file(tmp_path, "A.MKD")]
    view, butil = started_view(tmp_path, files)
    b.start(view, butil, False, "fail", False, "", 5, "run-1")
    scripted = ScriptedButil((0, "The command completed successfully."))

    def endbu(argv):
        os.unlink(b.delta_path(files[0]))  # the roll-in
        return scripted(argv)

    ender = b.Butil("/bin/butil", endbu)
    stopped = b.stop(b.look(files, str(tmp_path / "state")), ender, False, 5)
    assert stopped["changed"] is True and stopped["continuous_seconds"] >= 0 and stopped["progress"][-1]["remaining"] == 0
    again = b.stop(b.look(files, str(tmp_path / "state")), ender, False, 5)
    assert again["changed"] is False and len(ender.calls) == 1


def test_a_roll_in_that_does_not_finish_in_time_fails_retryable(tmp_path):
    files = [data_file(tmp_path, "A.MKD")]
    view, butil = started_view(tmp_path, files)
    b.start(view, butil, False, "fail", False, "", 5, "run-1")
    ender = b.Butil("/bin/butil", ScriptedButil((0, "The command completed successfully.")))
    with pytest.raises(b.BtrieveError, match="still being rolled in") as failure:
        b.stop(b.look(files, str(tmp_path / "state")), ender, False, 0.3)
    assert failure.value.retryable is True


def test_a_delta_this_module_did_not_start_is_stale_and_refused_by_default(tmp_path):
    path = data_file(tmp_path, "A.MKD")
    data_file(tmp_path, "A.^^^", 100)
    view = b.look([path], str(tmp_path / "state"))
    assert view.stale == [str(tmp_path / "A.^^^")]
    with pytest.raises(b.BtrieveError, match="stale_deltas=rollin") as failure:
        b.start(view, b.Butil("/bin/butil", ScriptedButil()), True, "fail", False, "", 5, "")
    assert failure.value.retryable is False and failure.value.facts["stale_deltas"] == view.stale


def test_discard_keeps_each_delta_aside_before_it_deletes_it(tmp_path):
    path = data_file(tmp_path, "A.MKD")
    delta = data_file(tmp_path, "A.^^^", 100)
    kept = b.discard_stale([delta], str(tmp_path / "aside"))
    assert not os.path.exists(delta)
    assert kept[0]["delta"] == delta and os.path.getsize(kept[0]["kept"]) == 100
    assert kept[0]["kept"].endswith(delta) and os.path.exists(path)


def test_latest_is_the_newest_btrieve_set_when_another_engines_set_is_newer(tmp_path):
    for name, engine, when in (("bt1", "btrieve", 1e9), ("pg1", "postgresql", 4e9)):
        os.makedirs(os.path.join(str(tmp_path), name))
        with open(os.path.join(str(tmp_path), name, "set.json"), "w", encoding="utf-8") as handle:
            json.dump({"engine": engine, "host": "db1", "database": "x"}, handle)
        open(os.path.join(str(tmp_path), name, "COMPLETE"), "w", encoding="utf-8").close()
        os.utime(os.path.join(str(tmp_path), name, "COMPLETE"), (when, when))
    assert b.resolve_complete_set(str(tmp_path), "latest", "db1") == os.path.join(str(tmp_path), "bt1")
