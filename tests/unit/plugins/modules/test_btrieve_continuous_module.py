# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""btrieve_continuous's login options, run in-process."""

from __future__ import annotations

import pytest

from ansible_collections.consistent.backup.plugins.modules import btrieve_continuous

from module_result import module_result  # noqa: E402  pylint: disable=wrong-import-position


@pytest.mark.parametrize("login", [{"password": "s3cret"}, {"db": "INVENTORY"}])
def test_a_password_or_a_database_without_a_user_is_refused_before_butil_runs(capsys, tmp_path, login):
    result = module_result(btrieve_continuous, capsys, state="stopped", files=[str(tmp_path / "PART.MKD")],
                           butil="/nonexistent/butil", **login)
    assert result["failed"] is True and result["retryable"] is False
    assert "set user (backup_btrieve_user)" in result["msg"]
    assert "s3cret" not in str(result)
