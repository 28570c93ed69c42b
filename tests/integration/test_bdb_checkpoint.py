# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bdb_checkpoint against real environments: check -> real -> idempotent -> idempotent in check mode, what it
returns, and its refusals; and backup.yml --check, which changes nothing."""

from __future__ import annotations

import os

from bdb_fixtures import bdb_env, bdb_job, run_module, tree_checksums  # noqa: F401  pylint: disable=unused-import
from helpers import inventory, run_playbook


def test_checkpoint_check_then_real_then_idempotent_then_idempotent_in_check_mode(tmp_path, bdb_env):
    bdb_env.write(50)
    args = {"home": bdb_env.home}
    before = tree_checksums(bdb_env.home)
    check = run_module(tmp_path, "bdb_checkpoint", args, check=True)
    assert check["changed"] is True and check["checkpoint_due"] is True
    assert check["checkpoint_lsn_after"] == check["checkpoint_lsn_before"]
    assert tree_checksums(bdb_env.home) == before  # check mode wrote nothing: no database, log, config or region file
    real = run_module(tmp_path, "bdb_checkpoint", args)
    assert real["changed"] is True and real["checkpoint_lsn_after"] != real["checkpoint_lsn_before"]
    again = run_module(tmp_path, "bdb_checkpoint", args)
    assert again["changed"] is False and again["checkpoint_due"] is False
    assert again["checkpoint_lsn_after"] == again["checkpoint_lsn_before"] == real["checkpoint_lsn_after"]
    again_check = run_module(tmp_path, "bdb_checkpoint", args, check=True)
    assert again_check["changed"] is False
    forced = run_module(tmp_path, "bdb_checkpoint", dict(args, force=True))
    assert forced["changed"] is True and forced["checkpoint_lsn_after"] != real["checkpoint_lsn_after"]


def test_checkpoint_describes_files_page_sizes_and_directories(tmp_path, bdb_env):
    result = run_module(tmp_path, "bdb_checkpoint", {"home": bdb_env.home}, check=True)
    assert result["data_dirs"] == ["data"] and result["log_dir"] == "logs" and result["config_file"] == "DB_CONFIG"
    # history.db was not opened during the current logs: db_archive -s misses it, the module does not
    assert result["data_files"] == ["data/history.db", "data/locations.db", "data/parts.db"]
    assert result["unlisted_data_files"] == ["data/history.db"]
    assert result["page_sizes"] == {"data/history.db": 4096, "data/locations.db": 8192, "data/parts.db": 4096}
    assert result["block_size"] == 8192
    assert result["log_files"] == ["logs/" + name for name in bdb_env.logs()]


def test_checkpoint_refuses_a_directory_that_is_not_an_environment(tmp_path):
    (tmp_path / "plain").mkdir()
    result = run_module(tmp_path, "bdb_checkpoint", {"home": str(tmp_path / "plain")})
    assert "is not a Berkeley DB environment" in result["msg"] and result["retryable"] is False


def test_checkpoint_refuses_an_environment_without_logging(tmp_path):
    home = tmp_path / "nolog"
    home.mkdir()
    (home / "DB_CONFIG").write_text("set_data_dir data\n")
    result = run_module(tmp_path, "bdb_checkpoint", {"home": str(home)})
    assert "has no log files" in result["msg"] and "DB_INIT_TXN" in result["msg"]


def test_checkpoint_names_missing_utilities(tmp_path, bdb_env):
    result = run_module(tmp_path, "bdb_checkpoint", {"home": bdb_env.home, "bindir": str(tmp_path)})
    assert "utilities" in result["msg"] and "not found" in result["msg"] and "db5.3-util" in result["msg"]


def test_backup_playbook_in_check_mode_reports_readiness_and_changes_nothing(tmp_path, bdb_env, media):
    bdb_env.write(50)
    before = tree_checksums(bdb_env.home)
    run = run_playbook("backup.yml", inventory(tmp_path), bdb_job(bdb_env, media.path, "dry"), check=True)
    assert run.rc == 0, run
    closed = run.registered("backup_closed")
    assert closed["report"]["verdict"] == "ready"
    declares = run.fact("bdb_declares")
    assert declares["database"] == bdb_env.home and declares["post"] == {"none": True}
    assert "checkpoint" in declares["would"]["pre"] and "hot set" in declares["would"]["copy"]
    assert tree_checksums(bdb_env.home) == before  # the region files included
    assert os.listdir(media.path) == [] or not os.path.exists(os.path.join(media.path, "dry", "data"))
