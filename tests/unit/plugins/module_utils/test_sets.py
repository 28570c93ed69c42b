# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The set reader: latest is the newest COMPLETE set of one engine, one host and one database; a named set must be
COMPLETE and of the engine asked for."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _sets


def make_set(dest, backup_id, engine="bdb", host="db1", database="/env", complete=True, when=None, identity=True):
    path = os.path.join(str(dest), backup_id)
    os.makedirs(path)
    if identity:
        with open(os.path.join(path, "set.json"), "w", encoding="utf-8") as handle:
            json.dump(_sets.identity_document(backup_id, engine, host, database, "run-" + backup_id), handle)
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({"engine": engine, "host": "fqdn." + host, "files": []}, handle)
    if complete:
        marker = os.path.join(path, "COMPLETE")
        open(marker, "w", encoding="utf-8").close()
        if when is not None:
            os.utime(marker, (when, when))
    return path


def test_latest_is_the_newest_complete_set_of_the_engine_host_and_database(tmp_path):
    make_set(tmp_path, "a", when=1000)
    make_set(tmp_path, "b", when=2000)
    make_set(tmp_path, "c", when=3000, complete=False)
    make_set(tmp_path, "other-host", host="db2", when=4000)
    make_set(tmp_path, "other-env", database="/env2", when=5000)
    make_set(tmp_path, "other-engine", engine="postgresql", when=6000)
    assert _sets.select_latest(str(tmp_path), "bdb", "db1", "/env")["backup_id"] == "b"
    assert _sets.select_latest(str(tmp_path), "bdb", "db2", "/env")["backup_id"] == "other-host"
    assert _sets.select_latest(str(tmp_path), "postgresql")["backup_id"] == "other-engine"


def test_latest_refuses_to_choose_between_databases_by_time_alone(tmp_path):
    make_set(tmp_path, "a", database="/env", when=1000)
    make_set(tmp_path, "b", database="/env2", when=2000)
    with pytest.raises(_sets.SetError) as caught:
        _sets.select_latest(str(tmp_path), "bdb", "db1", database_option="backup_bdb_home")
    assert str(caught.value) == (
        "%s holds COMPLETE bdb sets of 2 databases (/env, /env2); latest would pick one of them by time alone. "
        "Say which one with backup_bdb_home" % tmp_path)


def test_latest_refuses_to_choose_between_hosts_by_time_alone(tmp_path):
    make_set(tmp_path, "a", host="db1")
    make_set(tmp_path, "b", host="db2")
    with pytest.raises(_sets.SetError) as caught:
        _sets.select_latest(str(tmp_path), "bdb", database="/env")
    assert "of 2 hosts (db1, db2)" in str(caught.value) and str(caught.value).endswith("Say which one with host")


def test_no_matching_set_says_which_filter_found_nothing(tmp_path):
    make_set(tmp_path, "a", host="db1")
    with pytest.raises(_sets.SetError) as caught:
        _sets.select_latest(str(tmp_path), "bdb", "db9", "/env")
    assert str(caught.value) == ("no COMPLETE bdb set of host db9 of database /env in %s; run playbooks/backup.yml with "
                                 "backup_engine bdb first, or give backup_id" % tmp_path)
    assert _sets.select_latest(str(tmp_path), "bdb", "db9", required=False) is None


def test_a_set_without_set_json_is_read_from_its_manifest_and_has_no_database(tmp_path):
    make_set(tmp_path, "old", engine="postgresql", host="db1", identity=False)
    info = _sets.read_set(str(tmp_path), "old")
    assert (info["engine"], info["host"], info["database"], info["complete"]) == ("postgresql", "fqdn.db1", None, True)
    assert _sets.select_latest(str(tmp_path), "postgresql", database="/pgdata", required=False) is None


def test_dot_names_and_names_that_break_the_id_rule_are_out_of_sight(tmp_path):
    make_set(tmp_path, ".removing-a", when=9000)
    os.makedirs(os.path.join(str(tmp_path), "has space"))
    make_set(tmp_path, "b", when=1000)
    assert [info["backup_id"] for info in _sets.list_sets(str(tmp_path))] == ["b"]


def test_a_named_set_must_be_complete_and_of_the_engine_asked_for(tmp_path):
    make_set(tmp_path, "pg", engine="postgresql")
    make_set(tmp_path, "open", complete=False)
    with pytest.raises(_sets.SetError) as caught:
        _sets.resolve(str(tmp_path), "pg", "bdb")
    assert "is a postgresql set, expected a bdb set" in str(caught.value)
    with pytest.raises(_sets.SetError) as caught:
        _sets.resolve(str(tmp_path), "open", "bdb")
    assert "is not marked COMPLETE" in str(caught.value)
    assert _sets.resolve(str(tmp_path), "open", "bdb", require_complete=False)["backup_id"] == "open"
    with pytest.raises(_sets.SetError) as caught:
        _sets.resolve(str(tmp_path), "../pg", "postgresql")
    assert "backup_id must be" in str(caught.value)


def test_a_named_set_is_taken_whatever_its_host(tmp_path):
    make_set(tmp_path, "theirs", host="db2")
    assert _sets.resolve(str(tmp_path), "theirs", "bdb", host="db1")["host"] == "db2"
