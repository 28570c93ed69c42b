# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure functions of the restore engine: label and tablespace_map parsing, manifest path rules, settings."""

from __future__ import annotations

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _pg_manifest
from ansible_collections.consistent.backup.plugins.module_utils import _pg_restore as pr


def test_parse_label_returns_the_key_value_lines():
    text = ("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n"
            "BACKUP METHOD: streamed\nSTART TIMELINE: 1\nLABEL: db1-20261122T0200Z\nnot a field\n")
    assert pr.parse_label(text) == {
        "START WAL LOCATION": "0/2000028 (file 000000010000000000000002)",
        "CHECKPOINT LOCATION": "0/2000060",
        "BACKUP METHOD": "streamed",
        "START TIMELINE": "1",
        "LABEL": "db1-20261122T0200Z",
    }


def test_tablespace_map_paths_with_backslash_and_newline_round_trip():
    pairs = [("16385", "/srv/spc/plain"), ("16386", "/srv/spc/back\\slash"), ("16387", "/srv/spc/new\nline")]
    text = pr.format_tablespace_map(pairs)
    assert text == "16385 /srv/spc/plain\n16386 /srv/spc/back\\\\slash\n16387 /srv/spc/new\\\nline\n"
    assert pr.parse_tablespace_map(text) == pairs


def test_tablespace_map_is_read_as_postgresql_reads_it():
    """read_tablespace_map: a backslash takes the next character literally; an unescaped CR or LF ends a line."""
    assert pr.parse_tablespace_map("16385 /srv/a\\\rb\r\n16386 /srv/c\n\n") == [("16385", "/srv/a\rb"), ("16386", "/srv/c")]
    assert pr.parse_tablespace_map("") == []


@pytest.mark.parametrize("path, problem", [
    ("pgdata/base/5/16384", ""),
    ("pgdata", ""),
    ("", "it is not a non-empty string"),
    (None, "it is not a non-empty string"),
    ("pgdata/a\0b", "it holds a NUL byte"),
    ("/pgdata/base", "it is absolute"),
    ("pgdata//base", "it has an empty component (a doubled or trailing '/')"),
    ("pgdata/base/", "it has an empty component (a doubled or trailing '/')"),
    ("pgdata/../etc", "it has a '.' or '..' component"),
    ("pgdata/./base", "it has a '.' or '..' component"),
    ("other/base", "it is not under pgdata/ (a PostgreSQL set holds only the data directory there)"),
])
def test_manifest_paths_must_be_relative_normalised_and_under_pgdata(path, problem):
    assert pr.manifest_path_problem(path) == problem


@pytest.mark.parametrize("value, quoted", [(True, "on"), (False, "off"), (5499, "5499"), ("/tmp", "'/tmp'"),
                                           ("it's", "'it''s'")])
def test_settings_are_quoted_as_postgresql_reads_them(value, quoted):
    assert pr.quote_setting(value) == quoted


def test_recovery_settings_for_an_immediate_target_keep_the_drill_off_the_archive():
    settings = pr.recovery_settings(5499, "/backup/wal", "/tmp", "immediate", None, "promote", {})
    assert settings == {
        "port": 5499,
        "listen_addresses": "",
        "unix_socket_directories": "/tmp",
        "archive_mode": "off",
        "restore_command": 'cp "/backup/wal/%f" "%p"',
        "recovery_target_action": "promote",
        "logging_collector": False,
        "recovery_target": "immediate",
    }


def test_recovery_settings_for_a_named_target_name_the_target_and_latest_names_none():
    named = pr.recovery_settings(5499, "/w", "/tmp", "name", "before-upgrade", "pause", {})
    assert named["recovery_target_name"] == "before-upgrade" and "recovery_target" not in named
    latest = pr.recovery_settings(5499, "/w", "/tmp", "latest", None, "promote", {})
    assert not [name for name in latest if name.startswith("recovery_target") and name != "recovery_target_action"]


def test_a_recovery_target_without_its_value_is_refused():
    with pytest.raises(pr.RestoreError) as caught:
        pr.recovery_settings(5499, "/w", "/tmp", "lsn", None, "promote", {})
    assert str(caught.value) == "recovery_target lsn needs recovery_target_value (the lsn to stop at)"


def test_extra_settings_win_over_the_restore_defaults():
    settings = pr.recovery_settings(5499, "/w", "/tmp", "immediate", None, "promote", {"listen_addresses": "127.0.0.1"})
    assert settings["listen_addresses"] == "127.0.0.1"


def test_a_wal_archive_path_with_a_quote_stays_one_cp_argument():
    settings = pr.recovery_settings(5499, '/backup/w"al', "/tmp", "immediate", None, "promote", {})
    assert settings["restore_command"] == 'cp "/backup/w\\"al/%f" "%p"'


def test_latest_and_rule_following_ids_are_accepted_others_refused():
    pr.check_restore_id("latest")
    pr.check_restore_id("db1-20261122T0200Z")
    with pytest.raises(pr.RestoreError) as caught:
        pr.check_restore_id("../etc")
    assert "found '../etc'" in str(caught.value) and str(caught.value).endswith(", or latest for the newest COMPLETE set")


def test_the_restore_skips_exactly_the_files_the_server_writes():
    assert pr.NOT_COPIED == frozenset(_pg_manifest.SERVER_WRITTEN) == {"backup_label", "tablespace_map", "backup_manifest"}


def test_a_third_party_copy_loses_the_running_servers_files_and_its_wal(tmp_path):
    target = tmp_path / "pgdata"
    (target / "pg_wal" / "archive_status").mkdir(parents=True)
    (target / "global").mkdir()
    for name in ("postmaster.pid", "postmaster.opts", "recovery.signal", "PG_VERSION", "global/pg_control",
                 "pg_wal/000000010000000000000003", "pg_wal/archive_status/000000010000000000000003.done"):
        (target / name).write_bytes(b"x")
    removed = pr.clean_third_party_copy(str(target))
    assert sorted(removed) == ["pg_wal/000000010000000000000003", "pg_wal/archive_status/000000010000000000000003.done",
                               "postmaster.opts", "postmaster.pid", "recovery.signal"]
    assert sorted(path.name for path in target.iterdir()) == ["PG_VERSION", "global", "pg_wal"]
    assert (target / "global" / "pg_control").exists()
    assert list((target / "pg_wal").iterdir()) == [target / "pg_wal" / "archive_status"]
