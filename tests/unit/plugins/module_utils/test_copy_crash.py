# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of a copy killed in the middle of a many-file tree: it leaves nothing that looks complete, and the next
run with the same backup id resumes without copying the files the killed run made durable, and the result verifies."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _copy_plan
from ansible_collections.consistent.backup.plugins.module_utils._copy import run_copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import normalize_sources, plan_attempt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
SET = "many-1"
RUN_ID = "run-1"
FILES = 800
BLOCK = 8192
READ = 8 * BLOCK

# The copy step as aligned_copy runs it (plan_attempt, then run_copy), in its own process so that it can be killed.
# Each read sleeps a little so that the kill reliably lands in the middle of the tree; the journal interval is short so
# that the killed run has made a good part of the tree durable.
CHILD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["collections"])
from ansible_collections.consistent.backup.plugins.module_utils import _copy, _copy_plan, _copy_stream
_copy.JOURNAL_INTERVAL = 0.05

def slow_reader(fd, buffer, offset):
    time.sleep(0.004)
    return _copy_stream.default_reader(fd, buffer, offset)

sources = _copy_plan.normalize_sources([{"path": args["src"], "dest": "tree"}])
plan = _copy_plan.plan_attempt(sources, [], os.path.join(args["dest"], args["backup_id"]), args["run_id"])
_copy.run_copy(plan, args["dest"], args["backup_id"], block_size=args["block"], read_size=args["read"], reader=slow_reader)
"""


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    for n in range(FILES):
        path = src / ("d%02d" % (n % 20)) / ("f%04d" % n)
        path.parent.mkdir(parents=True, exist_ok=True)
        # 1 to 4 pages, every file different
        path.write_bytes(hashlib.sha256(b"%d" % n).digest() * ((n % 4 + 1) * BLOCK // 32))
    dest = tmp_path / "backup"
    dest.mkdir()
    return src, dest


def journal_lines(set_path: str) -> int:
    try:
        with open(os.path.join(set_path, _copy_plan.JOURNAL_NAME), "rb") as handle:
            return handle.read().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_in_the_middle(src, dest) -> str:
    set_path = os.path.join(str(dest), SET)
    args = {"collections": COLLECTIONS, "src": str(src), "dest": str(dest), "backup_id": SET, "run_id": RUN_ID,
            "block": BLOCK, "read": READ}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)])
    try:
        deadline = time.monotonic() + 60
        while journal_lines(set_path) < FILES // 8:
            assert child.poll() is None, "the copy ended (rc %s) before it could be killed in the middle" % child.returncode
            assert time.monotonic() < deadline, "the copy made no durable progress in 60 s"
            time.sleep(0.01)
        assert child.poll() is None, "the copy ended before it could be killed in the middle"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return set_path


def journaled(set_path: str) -> dict:
    _existed, entries = _copy_plan.load_journal(set_path)
    return entries


def verify(set_path: str) -> dict:
    """The set as restore reads it: exactly the manifest's files under data/, each with the manifest's size and SHA-256."""
    with open(os.path.join(set_path, "manifest.json"), "rb") as handle:
        files = dict((e["path"], e) for e in json.load(handle)["files"] if e["type"] == "file")
    data_root = os.path.join(set_path, "data")
    found = {}
    for directory, _dirs, names in os.walk(data_root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                content = handle.read()
            found[os.path.relpath(path, data_root)] = (len(content), hashlib.sha256(content).hexdigest())
    assert found == dict((rel, (e["size"], e["sha256"])) for rel, e in files.items())
    return files


def resume(src, dest):
    sources = normalize_sources([{"path": str(src), "dest": "tree"}])
    plan = plan_attempt(sources, [], os.path.join(str(dest), SET), RUN_ID)
    return plan, run_copy(plan, str(dest), SET, block_size=BLOCK, read_size=READ)


def test_a_copy_killed_in_the_middle_leaves_no_complete_and_no_manifest(tree):
    src, dest = tree
    set_path = kill_in_the_middle(src, dest)
    assert not os.path.exists(os.path.join(set_path, "COMPLETE"))
    assert not os.path.exists(os.path.join(set_path, "manifest.json"))
    assert 0 < len(journaled(set_path)) < FILES


def test_the_next_run_resumes_without_copying_the_files_the_killed_run_made_durable_and_verifies(tree):
    src, dest = tree
    set_path = kill_in_the_middle(src, dest)
    done = journaled(set_path)
    before = dict((rel, os.stat(os.path.join(set_path, "data", rel))) for rel in done)
    plan, result = resume(src, dest)
    assert plan.resumed
    assert result.files == FILES
    assert result.skipped_identical >= len(done)
    assert result.copied == FILES - result.skipped_identical < FILES
    for rel, was in before.items():
        now = os.stat(os.path.join(set_path, "data", rel))
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (was.st_ino, was.st_mtime_ns, was.st_ctime_ns), rel
    assert len(verify(set_path)) == FILES
    assert sorted(os.listdir(set_path)) == ["data", "manifest.json"]


def test_the_temporary_files_of_a_killed_run_are_removed_by_the_next_run(tree):
    src, dest = tree
    set_path = kill_in_the_middle(src, dest)
    stray = os.path.join(set_path, "data", "tree", "d00", ".f0000.cb-1-1.partial")
    with open(stray, "wb") as handle:
        handle.write(b"half a file")
    resume(src, dest)
    assert not os.path.exists(stray)
    verify(set_path)


def test_check_mode_after_a_killed_copy_counts_what_the_journal_vouches_for_as_identical(tree):
    src, dest = tree
    set_path = kill_in_the_middle(src, dest)
    done = journaled(set_path)
    sources = normalize_sources([{"path": str(src), "dest": "tree"}])
    summary = _copy_plan.summarize_plan(plan_attempt(sources, [], set_path, RUN_ID), set_path)
    assert summary["identical_files"] >= len(done)
    assert summary["to_copy"] == FILES - summary["identical_files"]
