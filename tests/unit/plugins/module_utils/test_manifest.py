# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the one manifest.json reader/merger/writer of a backup set."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.consistent.backup.plugins.module_utils._manifest import (
    load_manifest,
    manifest_path,
    merge,
    merge_and_write,
    merge_and_write_changed,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def entry(path, phase=0, sha=SHA_A, size=1):
    return {"path": path, "type": "file", "size": size, "sha256": sha, "mtime": 1.5, "mtime_ns": 1500000000,
            "mode": "0600", "phase": phase}


def read(set_path):
    return json.loads(open(manifest_path(str(set_path))).read())


def test_manifest_path_is_manifest_json_in_the_set(tmp_path):
    assert manifest_path(str(tmp_path)) == os.path.join(str(tmp_path), "manifest.json")


def test_a_set_without_manifest_loads_as_an_empty_manifest(tmp_path):
    assert load_manifest(str(tmp_path)) == {"format": 1, "files": [], "vanished": [], "facts": {}}


def test_first_write_records_format_ids_host_and_utc_times(tmp_path):
    merge_and_write(str(tmp_path), [entry("a")], [], {"backup_id": "b1", "engine": "files", "block_size": 8192})
    doc = read(tmp_path)
    assert doc["format"] == 1 and doc["backup_id"] == "b1" and doc["engine"] == "files" and doc["block_size"] == 8192
    assert doc["host"]
    assert doc["created"].endswith("Z") and doc["updated"].endswith("Z")
    assert doc["files"] == [entry("a")]
    assert doc["vanished"] == [] and doc["facts"] == {}


def test_the_manifest_file_is_private_to_its_owner(tmp_path):
    merge_and_write(str(tmp_path), [entry("a")])
    assert stat.S_IMODE(os.stat(manifest_path(str(tmp_path))).st_mode) == 0o600


def test_new_entries_replace_old_ones_by_path_and_others_are_kept(tmp_path):
    merge_and_write(str(tmp_path), [entry("a"), entry("b")])
    merge_and_write(str(tmp_path), [entry("b", sha=SHA_B), entry("c")])
    files = read(tmp_path)["files"]
    assert [(f["path"], f["sha256"]) for f in files] == [("a", SHA_A), ("b", SHA_B), ("c", SHA_A)]


def test_files_are_sorted_by_phase_then_path(tmp_path):
    merge_and_write(str(tmp_path), [entry("pgdata/global/pg_control", phase=1), entry("pgdata/z"), entry("pgdata/a")])
    assert [f["path"] for f in read(tmp_path)["files"]] == ["pgdata/a", "pgdata/z", "pgdata/global/pg_control"]


def test_entries_keep_size_sha256_and_mtime_exactly(tmp_path):
    exact = dict(entry("f", size=1234567890123), mtime=1700000000.123456789, mtime_ns=1700000000123456789)
    merge_and_write(str(tmp_path), [exact])
    assert read(tmp_path)["files"][0] == exact


def test_vanished_paths_accumulate_and_a_path_copied_again_leaves_the_list(tmp_path):
    merge_and_write(str(tmp_path), [], ["x", "y"])
    merge_and_write(str(tmp_path), [entry("x")], ["z"])
    assert read(tmp_path)["vanished"] == ["y", "z"]


def test_facts_are_merged_key_by_key(tmp_path):
    merge_and_write(str(tmp_path), [], [], {"facts": {"start_lsn": "0/2000028", "timeline": 1}})
    merge_and_write(str(tmp_path), [], [], {"facts": {"timeline": 2, "stop_lsn": "0/2000100"}})
    assert read(tmp_path)["facts"] == {"start_lsn": "0/2000028", "timeline": 2, "stop_lsn": "0/2000100"}


def test_meta_left_none_keeps_the_stored_value(tmp_path):
    merge_and_write(str(tmp_path), [], [], {"engine": "postgresql", "backup_id": "b1"})
    merge_and_write(str(tmp_path), [], [], {"engine": None, "backup_id": None})
    doc = read(tmp_path)
    assert doc["engine"] == "postgresql" and doc["backup_id"] == "b1"


def test_a_merge_that_changes_nothing_does_not_rewrite_the_file(tmp_path):
    merge_and_write(str(tmp_path), [entry("a")], [], {"engine": "files"})
    path = manifest_path(str(tmp_path))
    before = open(path, "rb").read()
    os.utime(path, ns=(1, 1))
    _doc, written = merge_and_write_changed(str(tmp_path), [entry("a")], [], {"engine": "files"})
    assert written is False
    assert open(path, "rb").read() == before
    assert os.stat(path).st_mtime_ns == 1


def test_created_is_kept_and_updated_moves_on_a_change(tmp_path):
    merge_and_write(str(tmp_path), [entry("a")])
    doc = read(tmp_path)
    doc["created"] = doc["updated"] = "2000-01-01T00:00:00Z"
    open(manifest_path(str(tmp_path)), "w").write(json.dumps(doc))
    merge_and_write(str(tmp_path), [entry("b")])
    doc = read(tmp_path)
    assert doc["created"] == "2000-01-01T00:00:00Z"
    assert doc["updated"] != "2000-01-01T00:00:00Z"


def test_no_temporary_file_is_left_beside_the_manifest(tmp_path):
    merge_and_write(str(tmp_path), [entry("a")])
    merge_and_write(str(tmp_path), [entry("b")])
    assert os.listdir(str(tmp_path)) == ["manifest.json"]


def test_a_manifest_that_is_not_json_is_refused_with_its_path(tmp_path):
    open(manifest_path(str(tmp_path)), "w").write("{not json")
    with pytest.raises(ValueError, match="manifest %s is not valid JSON" % manifest_path(str(tmp_path))):
        load_manifest(str(tmp_path))
    with pytest.raises(ValueError):
        merge_and_write(str(tmp_path), [entry("a")])
    assert open(manifest_path(str(tmp_path))).read() == "{not json"


def test_a_json_document_that_is_not_a_manifest_is_refused(tmp_path):
    open(manifest_path(str(tmp_path)), "w").write("[1, 2]")
    with pytest.raises(ValueError, match="is not a consistent.backup manifest"):
        load_manifest(str(tmp_path))


def test_merge_does_not_modify_its_input():
    original = {"format": 1, "files": [entry("a")], "vanished": ["v"], "facts": {"k": 1}}
    snapshot = json.dumps(original, sort_keys=True)
    merge(original, [entry("a", sha=SHA_B)], ["w"], {"facts": {"k": 2}})
    assert json.dumps(original, sort_keys=True) == snapshot
