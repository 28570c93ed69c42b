# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the bdb_checkpoint module's interface: options in, LSNs, files and refusals out. A small real
environment (berkeleydb binding) and the real db5.3 utilities: they are the subject."""

from __future__ import annotations

import functools
import os

import pytest

from ansible_collections.consistent.backup.plugins.modules import bdb_checkpoint
from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position

db = pytest.importorskip("berkeleydb.db")


run = functools.partial(module_result, bdb_checkpoint)  # run(capsys, [check_mode=True,] **options)


@pytest.fixture
def home(tmp_path):
    """An environment in its home (no DB_CONFIG) with one committed write after its creation."""
    path = str(tmp_path / "env")
    os.makedirs(path)
    env = db.DBEnv()
    env.open(path, db.DB_CREATE | db.DB_INIT_TXN | db.DB_INIT_LOG | db.DB_INIT_LOCK | db.DB_INIT_MPOOL)
    handle = db.DB(env)
    txn = env.txn_begin()
    handle.open("stock.db", dbtype=db.DB_BTREE, flags=db.DB_CREATE, txn=txn)
    handle.put(b"bolt", b"12", txn=txn)
    txn.commit()
    handle.close()
    env.close()
    return path


def test_check_mode_says_a_checkpoint_is_due_and_moves_nothing(capsys, home):
    result = run(capsys, check_mode=True, home=home)
    assert result["changed"] is True and result["checkpoint_due"] is True
    assert result["checkpoint_lsn_after"] == result["checkpoint_lsn_before"]
    assert result["data_files"] == ["stock.db"] and result["data_dirs"] == ["."] and result["log_dir"] == "."
    assert result["config_file"] is None


def test_a_checkpoint_moves_the_lsn_and_a_second_one_changes_nothing(capsys, home):
    first = run(capsys, home=home)
    assert first["changed"] is True and first["checkpoint_lsn_after"] != first["checkpoint_lsn_before"]
    second = run(capsys, home=home)
    assert second["changed"] is False and second["checkpoint_lsn_after"] == first["checkpoint_lsn_after"]


def test_page_sizes_and_block_size(capsys, home):
    result = run(capsys, check_mode=True, home=home)
    assert result["page_sizes"] == {"stock.db": result["block_size"]} and result["block_size"] % 512 == 0


def test_not_an_environment_is_refused_and_not_retryable(capsys, tmp_path):
    result = run(capsys, home=str(tmp_path))
    assert result["failed"] is True and result["retryable"] is False
    assert "is not a Berkeley DB environment" in result["msg"]


def test_a_missing_home_is_refused(capsys, tmp_path):
    result = run(capsys, home=str(tmp_path / "nowhere"))
    assert result["failed"] is True and "does not exist" in result["msg"]


def test_archival_needs_a_complete_verified_set(capsys, home, tmp_path):
    (tmp_path / "set").mkdir()
    result = run(capsys, home=home, archive_set=str(tmp_path / "set"))
    assert result["failed"] is True and "not COMPLETE" in result["msg"]


def test_without_region_files_the_checkpoint_is_read_from_the_last_log(capsys, home):
    for name in os.listdir(home):
        if name.startswith("__db."):
            os.unlink(os.path.join(home, name))  # no process has the environment open: db_stat cannot join it
    before = run(capsys, check_mode=True, home=home)
    assert before["checkpoint_due"] is True and before["checkpoint_lsn_before"] is None
    first = run(capsys, home=home)
    assert first["changed"] is True and first["checkpoint_lsn_after"] is not None
    assert not [name for name in os.listdir(home) if name.startswith("__db.")]  # still no regions left behind
    second = run(capsys, home=home)
    assert second["changed"] is False and second["checkpoint_lsn_before"] == first["checkpoint_lsn_after"]
