# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Berkeley DB proof on a real XFS filesystem with reflink (a loop device): the scratch copy is a clone that
shares the set's extents, costs next to no space, and recovery's writes to it never reach the set's bytes."""

from __future__ import annotations

import os

import pytest

from bdb_fixtures import BdbEnv, bdb_job, run_module, tree_checksums
from helpers import inventory, load_json, run_playbook
from xfsloop import shared_bytes

# About 100 MiB of databases: bulk.db's records grow to about 1.4 times their bytes in 8 KiB btree pages.
FILL_MIB = 72
LOG_MAX = 10 * 1024 * 1024


@pytest.fixture
def big_set(tmp_path, xfs_reflink):
    """A COMPLETE hot set of a ~100 MiB environment on the XFS mount, proven by the job itself; (mount, set path)."""
    env = BdbEnv(str(tmp_path / "bdb"), log_max=LOG_MAX)
    env.fill(FILL_MIB)
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(env, xfs_reflink.path, "big"))
    assert run.rc == 0, run
    return xfs_reflink, os.path.join(xfs_reflink.path, "big")


def set_bytes(set_path):
    return sum(entry["size"] for entry in load_json(os.path.join(set_path, "manifest.json"))["files"])


def test_the_jobs_proof_on_xfs_clones_the_set_and_passes(big_set):
    _xfs, set_path = big_set
    assert set_bytes(set_path) > 90 * 2 ** 20
    verification = load_json(os.path.join(set_path, "report.json"))["bdb"]["verification"]
    assert verification["ok"] is True, verification
    assert verification["layout"]["method"] == "reflink"
    assert verification["layout"]["bytes_cloned"] == set_bytes(set_path)
    assert not [name for name in os.listdir(os.path.dirname(set_path)) if name.startswith(".bdb-verify-")]


def test_a_reflinked_proof_costs_far_less_space_than_the_set_and_leaves_the_set_byte_identical(tmp_path, big_set):
    xfs, set_path = big_set
    before = tree_checksums(set_path)
    used_before = xfs.used_bytes()
    kept = os.path.join(xfs.path, "kept")
    result = run_module(tmp_path, "bdb_verify", {"backup_dest": xfs.path, "backup_id": "big", "keep_dir": kept})
    assert result.get("failed") is not True, result
    assert result["ok"] is True and result["layout_method"] == "reflink"
    assert result["bytes_cloned"] == result["bytes"] == set_bytes(set_path)
    grown = xfs.used_bytes() - used_before
    # the copy of a ~100 MiB set, recovered (recovery's writes and its new log included): a few MiB, not the set's size
    assert grown < 20 * 2 ** 20, "the kept copy took %d bytes for a set of %d" % (grown, result["bytes"])
    bulk = os.path.join(kept, "data", "bulk.db")
    assert shared_bytes(bulk) > 0.9 * os.path.getsize(bulk)  # still sharing its extents with the set after recovery
    # recovery wrote into the clone (copy-on-write): the set's files, manifest and report are as they were
    assert tree_checksums(set_path) == before
