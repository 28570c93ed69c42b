# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The set's names, defined once: file names, the set path, the backup id rule and the one timestamp format."""

from __future__ import annotations

import datetime
import re

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _layout

UTC_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_the_sets_file_names():
    assert (_layout.DATA_DIR, _layout.MANIFEST_NAME, _layout.REPORT_NAME, _layout.LOCK_NAME, _layout.COMPLETE_NAME) == (
        "data", "manifest.json", "report.json", "LOCK", "COMPLETE")


def test_set_path_is_dest_slash_backup_id():
    assert _layout.set_path("/backup", "db1-20261122T0200Z") == "/backup/db1-20261122T0200Z"


@pytest.mark.parametrize("dest", ["backup", "", None])
def test_set_path_refuses_a_relative_dest_naming_the_option(dest):
    with pytest.raises(_layout.InvalidSetPath) as caught:
        _layout.set_path(dest, "b1", option="backup_dest")
    assert str(caught.value) == ("backup_dest must be an absolute path; found %r. Give the full path of the backup "
                                 "directory" % (dest,))


@pytest.mark.parametrize("backup_id", ["../b1", ".b1", "b/1", "b 1", "", "x" * 129, None])
def test_set_path_refuses_an_id_that_breaks_the_rule(backup_id):
    with pytest.raises(_layout.InvalidBackupId) as caught:
        _layout.set_path("/backup", backup_id)
    assert "found %r" % (backup_id,) in str(caught.value)


def test_both_refusals_are_value_errors():
    assert issubclass(_layout.InvalidSetPath, ValueError) and issubclass(_layout.InvalidBackupId, ValueError)


def test_utc_iso_has_microseconds_and_z_for_now_epochs_and_datetimes():
    assert UTC_ISO.match(_layout.utc_iso())
    assert _layout.utc_iso(0) == "1970-01-01T00:00:00.000000Z"
    assert _layout.utc_iso(1763776800.25) == "2025-11-22T02:00:00.250000Z"
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    assert _layout.utc_iso(datetime.datetime(2026, 11, 22, 3, 0, tzinfo=berlin)) == "2026-11-22T02:00:00.000000Z"
    assert _layout.utc_iso(datetime.datetime(2026, 11, 22, 2, 0)) == "2026-11-22T02:00:00.000000Z"  # naive is UTC


def test_parse_utc_iso_reads_what_utc_iso_writes_and_other_offsets():
    moment = datetime.datetime(2026, 11, 22, 2, 0, 0, 123456, tzinfo=datetime.timezone.utc)
    assert _layout.parse_utc_iso(_layout.utc_iso(moment)) == moment
    assert _layout.parse_utc_iso("2026-11-22T03:00:00+01:00") == datetime.datetime(2026, 11, 22, 2, 0, tzinfo=datetime.timezone.utc)
    assert _layout.parse_utc_iso("") is None and _layout.parse_utc_iso(None) is None
