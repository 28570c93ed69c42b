# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Berkeley DB engine's parsers and decisions, without the utilities: page sizes from headers in both byte
orders, db_stat's numbers, LSNs, log gaps, the recovery output, DB_CONFIG, utility discovery, the chain of sets and
which logs archival may remove. Outputs are those of db5.3-util 5.3.28 on Debian 12 (docs/bdb.md)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _bdb, _restore_gate


def write_header(path, order, magic, size):
    with open(path, "wb") as handle:
        handle.write(struct.pack(order + "6I", 1, 28, 0, magic, 9, size) + b"\0" * (size - 24))


@pytest.mark.parametrize("order,name", [("<", "little"), (">", "big")])
@pytest.mark.parametrize("magic,method", [(0x053162, "btree"), (0x061561, "hash"), (0x042253, "queue"), (0x074582, "heap")])
def test_page_size_is_read_from_the_header_in_either_byte_order(tmp_path, order, name, magic, method):
    path = str(tmp_path / "x.db")
    write_header(path, order, magic, 8192)
    assert _bdb.page_size(path) == (8192, method, name)


def test_a_file_without_a_database_magic_has_no_page_size(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"not a database at all, just text" * 4)
    (tmp_path / "short").write_bytes(b"\x01\x02")
    assert _bdb.page_size(str(tmp_path / "notes.txt")) is None
    assert _bdb.page_size(str(tmp_path / "short")) is None


@pytest.mark.parametrize("text,expected", [("0", 0), ("637B", 637), ("497KB 637B", 497 * 1024 + 637),
                                           ("2MB 12KB 5B", 2 * 1024 ** 2 + 12 * 1024 + 5), ("64Kb", 64 * 1024)])
def test_db_stat_byte_counts(text, expected):
    assert _bdb.parse_stat_bytes(text) == expected


def test_db_stat_lines_become_a_dict():
    out = "0x40988\tLog magic number\n497KB 637B\tLog bytes written since last checkpoint\n9\tCurrent log file number\n"
    assert _bdb.stat_values(out)["Log bytes written since last checkpoint"] == "497KB 637B"


@pytest.mark.parametrize("text,expected", [("9/1221", (9, 1221)), ("[9][1221]", (9, 1221)), ("0/0", (0, 0)), ("x", None), ("", None)])
def test_lsns(text, expected):
    assert _bdb.parse_lsn(text) == expected


def test_lsns_compare_by_file_then_offset():
    assert _bdb.parse_lsn("10/28") > _bdb.parse_lsn("9/65000") > _bdb.parse_lsn("9/1221")


def test_log_names_numbers_and_gaps():
    assert _bdb.log_number("logs/log.0000000012") == 12 and _bdb.log_number("logs/log.12") is None
    assert _bdb.log_name(12) == "log.0000000012"
    assert _bdb.log_gaps([3, 4, 6, 7, 9]) == [5, 8]
    assert _bdb.log_gaps([]) == [] and _bdb.log_gaps([5]) == []


def test_recovery_output_gives_the_last_valid_lsn_and_the_recovery_checkpoint():
    out = ("BDB2526 Finding last valid log LSN: file: 9 offset 1277\nBDB1514 Recovery starting from [1][28]\n"
           "BDB1518 Recovery complete at Sun Nov 22 05:02:29 2026\n"
           "BDB1519 Maximum transaction ID 800003ec recovery checkpoint [9][1277]\n")
    assert _bdb.parse_recovery(out) == {"last_valid_lsn": "9/1277", "recovery_checkpoint_lsn": "9/1277"}
    assert _bdb.parse_recovery("") == {"last_valid_lsn": None, "recovery_checkpoint_lsn": None}


def test_db_config_directories(tmp_path):
    (tmp_path / "DB_CONFIG").write_text("set_data_dir data\nadd_data_dir more/\nset_lg_dir logs\nset_lg_max 65536\n")
    assert _bdb.read_db_config(str(tmp_path)) == (["data", "more"], "logs")


def test_without_db_config_everything_is_in_the_home(tmp_path):
    assert _bdb.read_db_config(str(tmp_path)) == (["."], ".")


def test_directories_outside_the_home_are_absolute_and_inside_ones_relative(tmp_path):
    home = tmp_path / "env"
    home.mkdir()
    (home / "DB_CONFIG").write_text("set_data_dir data\nadd_data_dir /srv/db-data/\nset_lg_dir ../logs\n")
    assert _bdb.Environment(str(home), {}, lambda argv: (0, "", "")).directories() == (
        ["data", "/srv/db-data"], str(tmp_path / "logs"))


def test_a_file_outside_the_home_keeps_its_absolute_path_under_the_outside_directory_of_the_set():
    assert _bdb.set_rel("data/parts.db") == "data/parts.db"
    assert _bdb.set_rel("/srv/db-logs/log.0000000001") == "_outside_home/srv/db-logs/log.0000000001"


def test_a_laid_out_db_config_points_at_the_copys_own_outside_directories(tmp_path):
    original = "set_data_dir data\nadd_data_dir /srv/db-data\nset_lg_dir /srv/db-logs/\nset_lg_max 65536\n"
    text, rewritten = _bdb.rewrite_db_config(original, "/srv/env", str(tmp_path))
    assert rewritten == {"add_data_dir /srv/db-data": "add_data_dir _outside_home/srv/db-data",
                         "set_lg_dir /srv/db-logs/": "set_lg_dir _outside_home/srv/db-logs"}
    assert text == "set_data_dir data\nadd_data_dir _outside_home/srv/db-data\nset_lg_dir _outside_home/srv/db-logs\nset_lg_max 65536\n"
    (tmp_path / "DB_CONFIG").write_text(text)
    assert _bdb.read_db_config(str(tmp_path)) == (["data", "_outside_home/srv/db-data"], "_outside_home/srv/db-logs")


def test_a_db_config_with_only_relative_directories_inside_the_home_is_left_as_it_is(tmp_path):
    original = "set_data_dir data\nadd_data_dir more/\nset_lg_dir logs\n"
    assert _bdb.rewrite_db_config(original, "/srv/env", str(tmp_path)) == (original, {})


def test_a_relative_directory_with_dot_dot_goes_under_the_outside_directory_of_the_copy(tmp_path):
    text, rewritten = _bdb.rewrite_db_config("set_data_dir data\nset_lg_dir ../logs\nset_tmp_dir ../../tmp/x\n", "/srv/db/env",
                                             str(tmp_path))
    assert rewritten == {"set_lg_dir ../logs": "set_lg_dir _outside_home/srv/db/logs",
                         "set_tmp_dir ../../tmp/x": "set_tmp_dir _outside_home/srv/tmp/x"}
    assert text == "set_data_dir data\nset_lg_dir _outside_home/srv/db/logs\nset_tmp_dir _outside_home/srv/tmp/x\n"


@pytest.mark.parametrize("directive", ["set_data_dir", "add_data_dir", "set_create_dir", "set_lg_dir", "set_tmp_dir"])
def test_every_directory_directive_that_leaves_the_copy_is_moved_inside_it(tmp_path, directive):
    text, rewritten = _bdb.rewrite_db_config("%s ../../../../../../etc\n" % directive, "/srv/db/env", str(tmp_path))
    assert text == "%s _outside_home/etc\n" % directive


def test_a_directory_line_with_more_than_one_word_is_refused(tmp_path):
    with pytest.raises(_restore_gate.GateError, match="expected 'set_data_dir <directory>'"):
        _bdb.rewrite_db_config("set_data_dir data ../../x\n", "/srv/db/env", str(tmp_path))


def test_a_set_whose_recorded_home_is_not_absolute_cannot_place_its_db_config(tmp_path):
    with pytest.raises(_restore_gate.GateError, match="expected an absolute, normalised path"):
        _bdb.rewrite_db_config("set_lg_dir ../logs\n", "srv/db/env", str(tmp_path))


def test_the_shadow_of_a_home_names_dot_dot_directories_by_their_absolute_path():
    assert _bdb.absolute_outside_dirs("set_data_dir data\nset_lg_dir ../logs\nset_lg_max 1\n", "/srv/db/env") == \
        "set_data_dir data\nset_lg_dir /srv/db/logs\nset_lg_max 1\n"


def test_utilities_db53_first_then_db(tmp_path):
    on_path = {"db5.3_stat": "/usr/bin/db5.3_stat", "db_stat": "/usr/bin/db_stat", "db_archive": "/usr/bin/db_archive"}
    found = _bdb.find_utilities(on_path.get, names=("stat", "archive"))
    assert found == {"stat": "/usr/bin/db5.3_stat", "archive": "/usr/bin/db_archive"}


def test_missing_utilities_are_named_with_what_to_do():
    with pytest.raises(_bdb.BdbError) as caught:
        _bdb.find_utilities(lambda name: None, names=("stat", "recover"))
    assert "stat, recover not found" in str(caught.value) and "db5.3-util" in str(caught.value)


def test_utilities_in_a_bindir_with_a_prefix(tmp_path):
    tool = tmp_path / "my_stat"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert _bdb.find_utilities(lambda name: None, "my_", str(tmp_path), names=("stat",)) == {"stat": str(tool)}


def test_permission_denied_from_a_utility_says_whose_access(tmp_path):
    env = _bdb.Environment(str(tmp_path), {"stat": "/usr/bin/db5.3_stat"},
                           lambda argv: (1, "", "db5.3_stat: open: __db.001: Permission denied"))
    with pytest.raises(_bdb.BdbError) as caught:
        env.run("stat", "-t")
    assert "refused access" in str(caught.value) and caught.value.retryable is False


# --- sets ------------------------------------------------------------------------------------------------------

def make_set(dest, backup_id, facts, files=(), complete=True, verified=True):
    path = os.path.join(dest, backup_id)
    os.makedirs(os.path.join(path, "data", "env", "logs"))
    entries = []
    for rel, content in files:
        with open(os.path.join(path, "data", "env", rel), "wb") as handle:
            handle.write(content)
        entries.append({"path": "env/" + rel, "type": "file", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()})
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"files": entries, "facts": {"bdb": facts}}, handle)
    # whose set it is, as backup_set writes it when the set is opened (the set reader's keys)
    with open(os.path.join(path, "set.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "backup_id": backup_id, "engine": "bdb", "host": facts.get("host", "db1"),
                   "database": facts.get("home", "/env")}, handle)
    with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as handle:
        json.dump({"bdb": {"verification": {"ok": verified}}}, handle)
    if complete:
        open(os.path.join(path, "COMPLETE"), "w", encoding="utf-8").close()
    return path


def test_the_chain_follows_previous_sets_back_to_the_full_set(tmp_path):
    dest = str(tmp_path)
    make_set(dest, "f1", {"home": "/env", "mode": "hot"})
    make_set(dest, "i1", {"home": "/env", "mode": "incremental", "previous_set": "f1"})
    make_set(dest, "i2", {"home": "/env", "mode": "incremental", "previous_set": "i1"}, complete=False)
    assert [link["backup_id"] for link in _bdb.resolve_chain(dest, "i2", head_complete=False)] == ["f1", "i1", "i2"]
    with pytest.raises(_bdb.BdbError) as caught:
        _bdb.resolve_chain(dest, "i2")
    assert "not marked COMPLETE" in str(caught.value)


def test_a_chain_with_a_missing_link_is_refused(tmp_path):
    make_set(str(tmp_path), "i1", {"home": "/env", "mode": "incremental", "previous_set": "gone"})
    with pytest.raises(_bdb.BdbError) as caught:
        _bdb.resolve_chain(str(tmp_path), "i1")
    assert "gone does not exist (named as the previous set of i1)" in str(caught.value)


def test_previous_set_is_the_newest_complete_set_of_the_same_environment(tmp_path):
    dest = str(tmp_path)
    old = make_set(dest, "old", {"home": "/env", "mode": "hot"})
    make_set(dest, "other", {"home": "/other", "mode": "hot"})
    make_set(dest, "open", {"home": "/env", "mode": "hot"}, complete=False)
    new = make_set(dest, "new", {"home": "/env", "mode": "incremental", "previous_set": "old"})
    os.utime(os.path.join(old, "COMPLETE"), (1000, 1000))
    os.utime(os.path.join(new, "COMPLETE"), (2000, 2000))
    found = _bdb.previous_set(dest, "/env")
    assert found["backup_id"] == "new" and found["verified"] is True
    assert _bdb.previous_set(dest, "/nowhere") is None


def test_archival_takes_only_archivable_logs_the_set_holds_with_the_same_checksum(tmp_path):
    home = tmp_path / "env"
    (home / "logs").mkdir(parents=True)
    for number, content in ((1, b"one"), (2, b"two"), (3, b"three-grown")):
        (home / "logs" / ("log.%010d" % number)).write_bytes(content)
    set_path = make_set(str(tmp_path / "sets"), "s1", {"home": str(home)},
                        files=[("logs/log.0000000001", b"one"), ("logs/log.0000000003", b"three")])
    info = {"home": str(home), "archivable_logs": ["logs/log.0000000001", "logs/log.0000000002", "logs/log.0000000003"]}
    remove, kept = _bdb.archivable_in_set(info, set_path)
    assert remove == ["logs/log.0000000001"]
    assert {entry["log"]: entry["why"] for entry in kept} == {
        "logs/log.0000000002": "not in the set",
        "logs/log.0000000003": "the set's copy differs from the live file (size or SHA-256)"}


@pytest.mark.parametrize("complete,verified,problem", [(False, True, "not COMPLETE"), (True, False, "no passed verification")])
def test_archival_refuses_a_set_that_is_not_complete_and_verified(tmp_path, complete, verified, problem):
    set_path = make_set(str(tmp_path), "s1", {"home": "/env"}, complete=complete, verified=verified)
    with pytest.raises(_bdb.BdbError) as caught:
        _bdb.archivable_in_set({"home": "/env", "archivable_logs": []}, set_path)
    assert problem in str(caught.value)


def test_log_checks_catch_no_logs_a_gap_and_a_missing_checkpoint_log():
    def failed(logs, checkpoint):
        return {c["check"] for c in _bdb.check_logs(logs, checkpoint) if not c["ok"]}
    assert failed([], "3/28") == {"logs present", "logs contiguous", "checkpoint log present"}
    assert failed(["logs/log.0000000002", "logs/log.0000000004"], "4/28") == {"logs contiguous"}
    assert failed(["logs/log.0000000002", "logs/log.0000000003"], "4/28") == {"checkpoint log present"}
    assert failed(["logs/log.0000000002", "logs/log.0000000003"], "3/28") == set()


def test_a_directory_db_config_names_that_is_missing_is_reported_as_a_layout_problem_not_as_recovery():
    failure = _bdb._utility_failure(
        ["/usr/bin/db5.3_archive", "-h", "/tmp/shadow", "-a", "-l"], 1,
        "db5.3_archive: /tmp/shadow/../logs: No such file or directory\n"
        "db5.3_archive: DB_ENV->open: BDB0087 DB_RUNRECOVERY: Fatal error, run database recovery\n", "/srv/env")
    message = str(failure)
    assert "/tmp/shadow/../logs does not exist; it is a directory the environment's DB_CONFIG names" in message
    assert "This layout cannot be read as configured" in message
    assert "run recovery" not in message and "run database recovery" not in message and failure.retryable is False


# --- the plan: full or incremental, decided before pre ---------------------------------------------------------

LIVE = ("logs/log.0000000005", "logs/log.0000000006", "logs/log.0000000007")


def chain_of_two(dest, host="db1"):
    make_set(dest, "f1", {"home": "/env", "mode": "hot", "host": host, "last_log": "log.0000000003", "runs_since_full": 0})
    make_set(dest, "i1", {"home": "/env", "mode": "incremental", "host": host, "previous_set": "f1", "base_set": "f1",
                          "last_log": "log.0000000005", "runs_since_full": 1})
    os.utime(os.path.join(dest, "i1", "COMPLETE"), (2e9, 2e9))


def plan(dest, mode="incremental", host="db1", live=None, full_every=7, bulk_loaded=False):
    return _bdb.plan_backup(dest, "/env", host, "new", mode, full_every, bulk_loaded, LIVE if live is None else live,
                            _bdb.previous_set(dest, "/env", host))


def test_an_incremental_builds_on_the_newest_set_of_its_host_with_the_whole_chain_resolved(tmp_path):
    chain_of_two(str(tmp_path))
    assert plan(str(tmp_path)) == {"requested_mode": "incremental", "mode": "incremental", "full_reason": None,
                                   "previous_set": "i1", "base_set": "f1", "runs_since_full": 2, "incremental_from": 5,
                                   "chain": ["f1", "i1"]}


def test_an_incremental_never_builds_on_another_hosts_set_with_the_same_home(tmp_path):
    chain_of_two(str(tmp_path), host="db2")
    with pytest.raises(_bdb.BdbError) as caught:
        plan(str(tmp_path), host="db1")
    assert "holds no COMPLETE set of the environment /env of host db1 to build on" in str(caught.value)


def test_an_incremental_whose_base_set_is_gone_is_a_full_set_and_says_why(tmp_path):
    chain_of_two(str(tmp_path))
    shutil.rmtree(os.path.join(str(tmp_path), "f1"))
    settled = plan(str(tmp_path))
    assert (settled["mode"], settled["base_set"], settled["previous_set"]) == ("hot", "new", None)
    assert settled["full_reason"].startswith("the chain of i1 is broken (backup set %s/f1 does not exist" % tmp_path)


def test_an_incremental_whose_base_set_is_another_hosts_is_a_full_set(tmp_path):
    chain_of_two(str(tmp_path))
    with open(os.path.join(str(tmp_path), "f1", "set.json"), "w", encoding="utf-8") as handle:
        json.dump({"engine": "bdb", "host": "db2", "database": "/env"}, handle)
    assert "a chain never crosses into another host's" in plan(str(tmp_path))["full_reason"]


def test_an_incremental_needs_the_previous_sets_last_log_still_in_the_environment(tmp_path):
    # The previous set copied log 5 while it was still being written: the next incremental starts at log 5 again.
    chain_of_two(str(tmp_path))
    settled = plan(str(tmp_path), live=["logs/log.0000000006", "logs/log.0000000007"])
    assert settled["mode"] == "hot" and settled["full_reason"] == (
        "the logs from log.0000000005 (the last log of i1) on are not all in the environment (its logs: log.0000000006 "
        "to log.0000000007)")


def test_a_gap_in_the_environments_logs_after_the_previous_set_forces_a_full_set(tmp_path):
    chain_of_two(str(tmp_path))
    assert plan(str(tmp_path), live=["logs/log.0000000005", "logs/log.0000000007"])["mode"] == "hot"


def test_a_full_set_every_full_every_runs_and_after_a_bulk_load(tmp_path):
    chain_of_two(str(tmp_path))
    assert plan(str(tmp_path), full_every=3)["mode"] == "incremental"  # f1, i1 and this one: three runs
    assert plan(str(tmp_path), full_every=2)["full_reason"] == "a full set every 2 runs (backup_bdb_full_every)"
    assert plan(str(tmp_path), bulk_loaded=True)["full_reason"].startswith("backup_bdb_bulk_loaded is true")


def test_hot_and_offline_plans_need_no_previous_set(tmp_path):
    assert plan(str(tmp_path), mode="offline") == {
        "requested_mode": "offline", "mode": "offline", "full_reason": None, "previous_set": None, "base_set": "new",
        "runs_since_full": 0, "incremental_from": 0, "chain": []}
    with pytest.raises(_bdb.BdbError) as caught:
        plan(str(tmp_path), full_every=0, mode="hot")
    assert "backup_bdb_full_every must be 1 or more; found 0" in str(caught.value)


def test_latest_is_the_newest_bdb_set_when_another_engines_set_is_newer(tmp_path):
    dest = str(tmp_path)
    make_set(dest, "f1", {"home": "/env", "mode": "hot"})
    os.makedirs(os.path.join(dest, "pg1"))
    with open(os.path.join(dest, "pg1", "set.json"), "w", encoding="utf-8") as handle:
        json.dump({"engine": "postgresql", "host": "db1", "database": "/pgdata"}, handle)
    open(os.path.join(dest, "pg1", "COMPLETE"), "w", encoding="utf-8").close()
    os.utime(os.path.join(dest, "pg1", "COMPLETE"), (4e9, 4e9))
    assert [link["backup_id"] for link in _bdb.resolve_chain(dest, "latest", set_host="db1")] == ["f1"]
