# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of the PostgreSQL session engine without a server: the SQL per version, LSNs, the preflight
verdicts, the connection parameters, the session state file and what stopped/started do with each state."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import threading

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _guard, _layout, _pg_holder, _pg_session, _pg_sql
from ansible_collections.consistent.backup.plugins.module_utils._layout import default_runtime_dir
from ansible_collections.consistent.backup.plugins.module_utils._pg_holder import (
    ALIVE,
    GONE,
    SessionStore,
    aborted_message,
    guard_post,
    holder_probe,
)
from ansible_collections.consistent.backup.plugins.module_utils._pg_session import PgBackupSession, write_outputs
from ansible_collections.consistent.backup.plugins.module_utils._pg_sql import (
    SessionError,
    archiver_failing,
    backup_functions,
    connection_kwargs,
    describe_target,
    evaluate_preflight,
    format_lsn,
    holder_connection_kwargs,
    is_not_in_progress_error,
    parse_lsn,
    render_sql,
    segment_archived,
    session_settings,
    setting_bytes,
    validate_backup_id,
    walfile_timeline,
)

LABEL = ("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n"
         "BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2024-05-01 10:00:00 UTC\nLABEL: b1\n"
         "START TIMELINE: 1\n")


# -- SQL per server version ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("version_num", [120000, 120022, 130000, 140000, 140013])
def test_12_to_14_use_pg_start_backup_non_exclusive_and_pg_stop_backup_without_wait(version_num):
    functions = backup_functions(version_num)

    assert functions.start_sql == "SELECT pg_catalog.pg_start_backup(%s, %s, false)::text"
    assert functions.stop_sql == "SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_stop_backup(false, false)"
    assert functions.start_signature == "pg_catalog.pg_start_backup(text, boolean, boolean)"
    assert functions.stop_signature == "pg_catalog.pg_stop_backup(boolean, boolean)"
    assert functions.not_in_progress == "non-exclusive backup is not in progress"


@pytest.mark.parametrize("version_num", [150000, 150008, 160000, 170000, 180000, 180006])
def test_15_and_later_use_pg_backup_start_and_pg_backup_stop_without_wait(version_num):
    functions = backup_functions(version_num)

    assert functions.start_sql == "SELECT pg_catalog.pg_backup_start(%s, %s)::text"
    assert functions.stop_sql == "SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)"
    assert functions.start_signature == "pg_catalog.pg_backup_start(text, boolean)"
    assert functions.stop_signature == "pg_catalog.pg_backup_stop(boolean)"
    assert functions.not_in_progress == "backup is not in progress"


@pytest.mark.parametrize("version_num", [90600, 100000, 110022])
def test_servers_before_12_are_refused_with_the_minimum_version(version_num):
    with pytest.raises(SessionError, match="needs PostgreSQL 12 or later"):
        backup_functions(version_num)


@pytest.mark.parametrize("message", ["ERROR:  backup is not in progress", "ERROR:  non-exclusive backup is not in progress"])
def test_the_no_backup_in_progress_error_of_every_version_is_recognised(message):
    assert is_not_in_progress_error(message)


def test_other_errors_are_not_taken_for_no_backup_in_progress():
    assert not is_not_in_progress_error("a backup is already in progress in this session")


def test_idle_session_timeout_is_disabled_from_14_where_it_exists():
    assert "SET idle_session_timeout = 0" in session_settings(140000)
    assert "SET idle_session_timeout = 0" not in session_settings(130000)
    assert session_settings(180000)[1:] == ["SET idle_in_transaction_session_timeout = 0", "SET statement_timeout = 0",
                                            "SET max_parallel_workers_per_gather = 0"]


def test_queries_are_reported_with_literal_parameters():
    assert render_sql("SELECT pg_catalog.pg_backup_start(%s, %s)::text", ["it's", True]) == \
        "SELECT pg_catalog.pg_backup_start('it''s', true)::text"


# -- LSNs and WAL file names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("0/0", 0), ("0/2000028", 0x2000028), ("16/B374D848", 0x16B374D848),
                                         ("FFFFFFFF/FFFFFFFF", 2 ** 64 - 1), ("0/02000028", 0x2000028)])
def test_lsn_text_parses_to_its_integer(text, value):
    assert parse_lsn(text) == value


@pytest.mark.parametrize("value, text", [(0, "0/0"), (0x2000028, "0/2000028"), (0x16B374D848, "16/B374D848")])
def test_lsn_integers_print_as_postgresql_prints_them(value, text):
    assert format_lsn(value) == text


@pytest.mark.parametrize("text", ["", "2000028", "0/", "G/1", "0/123456789", None])
def test_malformed_lsns_are_refused(text):
    with pytest.raises(ValueError, match="not a PostgreSQL LSN"):
        parse_lsn(text)


def test_the_timeline_of_a_wal_file_is_its_first_eight_hex_digits():
    assert walfile_timeline("0000000A0000000100000002") == 10


# -- is the stop segment archived? ----------------------------------------------------------------------------------
# The stop segment in these tables is 00000001 00000000 00000005 (timeline 1, segment 5); the backup started in
# segment 2, so its history file is 000000010000000000000002.00000028.backup.

STOP = "000000010000000000000005"


@pytest.mark.parametrize("last_archived, expected", [
    ("000000010000000000000005", True),            # the stop segment itself
    ("000000010000000000000006", True),            # a later segment: the archiver goes oldest first
    ("000000010000000100000000", True),            # a later log file (segment number wraps into the log part)
    ("000000010000000000000004", False),           # an earlier segment
    ("000000010000000000000002.00000028.backup", False),  # the backup's own history file, archived after the stop segment
    ("000000010000000000000005.00000028.backup", False),  # a .backup file never proves its segment was archived
    ("000000010000000000000006.00000028.backup", False),
    ("00000002.history", False),                   # a timeline history file is archived before everything else
    ("000000020000000000000005", True),            # the server switched to timeline 2 at or after the stop segment
    ("000000020000000000000006", True),
    ("000000020000000000000004", False),           # a later timeline, but an earlier segment number
    ("000000000000000000000009", False),           # an earlier timeline never counts
    ("000000010000000000000005.partial", True),    # the old timeline's last segment at a promotion
    ("000000010000000000000004.partial", False),
    ("00000001000000000000000G", False),           # not hex: not a segment
    ("0000000100000000000000050", False),          # 25 digits: not a segment
    ("", False),
    (None, False),
])
def test_only_a_real_segment_at_or_after_the_stop_segment_proves_it_was_archived(last_archived, expected):
    assert segment_archived(last_archived, STOP) is expected


@pytest.mark.parametrize("status, last_archived, expected", [
    ("done", None, True),                                      # <stop>.done: archived, whatever the archiver did since
    ("done", "000000010000000000000002.00000028.backup", True),  # the case of the issue: the .backup file came last
    ("ready", "000000010000000000000009", False),              # <stop>.ready is the truth, not a name comparison
    ("removed", None, True),                                   # neither file nor segment: archived, then recycled
    ("unnotified", "000000010000000000000009", False),         # neither file but the segment is there: not yet
    (None, "000000010000000000000005", True),                  # no status directory: fall back to the names
    (None, "000000010000000000000002.00000028.backup", False),
    (None, "00000002.history", False),
])
def test_the_archive_status_file_decides_when_it_can_be_read(status, last_archived, expected):
    assert _pg_sql.stop_segment_archived(STOP, status, last_archived) is expected


@pytest.mark.parametrize("names, in_pg_wal, expected", [
    ([STOP + ".done"], True, "done"),
    ([STOP + ".ready"], True, "ready"),
    ([STOP + ".ready", STOP + ".done"], True, "done"),  # XLogArchiveCheckDone looks for .done first
    ([], True, "unnotified"),
    ([], False, "removed"),
    (None, False, "removed"),
])
def test_the_archive_status_is_read_from_the_directory_listings(names, in_pg_wal, expected):
    assert _pg_sql.archive_status_from_listing(STOP, names, in_pg_wal) == expected


def test_the_poll_reads_the_status_file_when_it_may_then_the_listing_then_only_the_archiver():
    by_file = _pg_sql.archive_poll(STOP, True, True)
    by_listing = _pg_sql.archive_poll(STOP, False, True)
    by_archiver = _pg_sql.archive_poll(STOP, False, False)

    assert by_file[0] == by_listing[0] == "archive_status" and by_archiver[0] == "pg_stat_archiver"
    assert by_file[2] == ["pg_wal/archive_status/%s.done" % STOP, "pg_wal/archive_status/%s.ready" % STOP, "pg_wal/" + STOP]
    assert by_listing[2] == [STOP + ".done", STOP + ".ready", STOP]
    assert by_archiver[2] == []


# -- preflight verdicts --------------------------------------------------------------------------------------------

def healthy(**changes):
    facts = {
        "in_recovery": False, "pooled": None, "wal_level": "replica", "superuser": True, "current_user": "postgres",
        "privileges": {"start": True, "stop": True, "start_signature": "s", "stop_signature": "t"},
        "archive_mode": "on", "archive_command": "cp %p /archive/%f", "archive_library": "",
        "settings_readable": ["archive_command"],
        "archiver": {"last_archived_wal": "000000010000000000000002", "last_archived_time": "2024-05-01T10:00:00Z",
                     "last_failed_wal": None, "last_failed_time": None, "failed_count": 0},
    }
    facts.update(changes)
    return facts


def test_a_healthy_primary_passes_the_preflight():
    assert evaluate_preflight(healthy(), require_archiving=True) == ([], [])


def test_a_standby_is_refused():
    errors, _warnings = evaluate_preflight(healthy(in_recovery=True), True)

    assert any("standby" in e and "pg_is_in_recovery" in e for e in errors)


def test_wal_level_minimal_is_refused():
    errors, _warnings = evaluate_preflight(healthy(wal_level="minimal"), True)

    assert any("wal_level is minimal" in e for e in errors)


def test_a_role_without_superuser_or_execute_on_the_functions_is_refused():
    privileges = {"start": True, "stop": False, "start_signature": "pg_catalog.pg_backup_start(text, boolean)",
                  "stop_signature": "pg_catalog.pg_backup_stop(boolean)"}
    facts = healthy(superuser=False, privileges=privileges)

    errors, _warnings = evaluate_preflight(facts, True)

    assert any("GRANT EXECUTE" in e and "pg_catalog.pg_backup_stop(boolean)" in e for e in errors)


def test_a_non_superuser_with_execute_on_both_functions_passes():
    facts = healthy(superuser=False)

    assert evaluate_preflight(facts, True) == ([], [])


def test_a_backend_pid_that_changes_between_statements_means_a_pooler_and_is_refused():
    errors, _warnings = evaluate_preflight(healthy(pooled="100 then 101"), True)

    assert any("pooler" in e for e in errors)


def test_archive_mode_off_is_refused_when_archiving_is_required():
    errors, warnings = evaluate_preflight(healthy(archive_mode="off", archive_command="(disabled)"), True)

    assert any("archive_mode is off" in e for e in errors)
    assert warnings == []


def test_archive_problems_are_only_warnings_when_archiving_is_not_required():
    errors, warnings = evaluate_preflight(healthy(archive_mode="off"), False)

    assert errors == []
    assert any("archive_mode is off" in w for w in warnings)


def test_archive_mode_on_without_command_or_library_is_refused():
    errors, _warnings = evaluate_preflight(healthy(archive_command=""), True)

    assert any("neither archive_command nor archive_library" in e for e in errors)


def test_an_archive_library_replaces_the_archive_command():
    assert evaluate_preflight(healthy(archive_command="", archive_library="basic_archive"), True) == ([], [])


def test_a_failing_archiver_is_refused_naming_pg_stat_archiver_and_the_failed_wal():
    archiver = {"last_archived_wal": "000000010000000000000002", "last_archived_time": "2024-05-01T10:00:00Z",
                "last_failed_wal": "000000010000000000000003", "last_failed_time": "2024-05-01T10:05:00Z", "failed_count": 7}

    errors, _warnings = evaluate_preflight(healthy(archiver=archiver), True)

    assert len(errors) == 1
    assert "pg_stat_archiver" in errors[0] and "000000010000000000000003" in errors[0] and "fix archive_command" in errors[0]


def test_an_archiver_that_succeeded_after_its_last_failure_is_healthy():
    archiver = {"last_archived_time": "2024-05-01T10:06:00Z", "last_failed_time": "2024-05-01T10:05:00Z"}

    assert not archiver_failing(archiver)


def test_archiver_times_compare_as_times_not_as_text():
    archiver = {"last_archived_time": "2024-05-01T10:00:00.500000Z", "last_failed_time": "2024-05-01T10:00:00Z"}

    assert not archiver_failing(archiver)


def test_an_archiver_that_only_ever_failed_is_failing():
    assert archiver_failing({"last_archived_time": None, "last_failed_time": "2024-05-01T10:05:00Z"})


def test_an_unreadable_archive_command_is_a_warning_not_a_refusal():
    errors, warnings = evaluate_preflight(healthy(archive_command=None, settings_readable=[]), True)

    assert errors == []
    assert any("pg_read_all_settings" in w for w in warnings)


@pytest.mark.parametrize("setting, unit, expected", [("16777216", "B", 16777216), ("2048", "8kB", 16777216),
                                                     ("16", "MB", 16777216), (None, "B", None)])
def test_settings_with_units_convert_to_bytes(setting, unit, expected):
    assert setting_bytes(setting, unit) == expected


# -- connection parameters -----------------------------------------------------------------------------------------

def test_unset_connection_options_are_not_passed_so_libpq_environment_applies():
    assert connection_kwargs({"login_host": None, "login_port": None, "login_user": None, "login_password": None,
                              "login_db": None, "login_unix_socket": None, "connect_params": {}}) == {}


def test_set_connection_options_become_libpq_keywords():
    kwargs = connection_kwargs({"login_host": "db1", "login_port": 5433, "login_user": "backup", "login_password": "pw",
                                "login_db": "postgres", "connect_params": {"sslmode": "require", "port": "1"}})

    assert kwargs == {"host": "db1", "port": "5433", "user": "backup", "password": "pw", "dbname": "postgres",
                      "sslmode": "require"}


def test_the_unix_socket_directory_is_the_host_unless_a_remote_host_is_named():
    assert connection_kwargs({"login_unix_socket": "/run/pg"})["host"] == "/run/pg"
    assert connection_kwargs({"login_unix_socket": "/run/pg", "login_host": "localhost"})["host"] == "/run/pg"
    assert connection_kwargs({"login_unix_socket": "/run/pg", "login_host": "db1"})["host"] == "db1"


def test_the_holder_connection_adds_keepalives_and_names_itself_after_the_backup():
    kwargs = holder_connection_kwargs({"host": "db1", "keepalives_idle": "5", "application_name": "x"}, "b1")

    assert kwargs["keepalives"] == "1" and kwargs["keepalives_idle"] == "5"
    assert kwargs["application_name"] == "consistent.backup:b1"
    assert kwargs["connect_timeout"] == "10"


def test_the_connection_description_never_shows_the_password(monkeypatch):
    monkeypatch.setenv("PGHOST", "/run/pg")

    text = describe_target({"host": "db1", "user": "backup", "password": "s3cret"})

    assert "s3cret" not in text and "host=db1" in text and "PGHOST=/run/pg" in text


# -- backup ids and runtime directory ------------------------------------------------------------------------------

@pytest.mark.parametrize("backup_id", ["b1", "20240501T0200-pg1", "nightly.2024-05-01", "a+b@c_d", "db1:2024-05-01T02:00",
                                       "_x", "x" * 128])
def test_backup_ids_that_follow_the_one_rule_are_accepted(backup_id):
    assert validate_backup_id(backup_id) == backup_id


@pytest.mark.parametrize("backup_id", ["", None, ".hidden", "a/b", "..", "with space", "line1\nline2", "x" * 129, "caf\u00e9"])
def test_backup_ids_that_break_the_rule_are_refused_naming_the_option_and_not_retryable(backup_id):
    with pytest.raises(SessionError, match="backup_id must be 1-128 characters") as caught:
        validate_backup_id(backup_id)

    assert caught.value.retryable is False


def test_a_colon_in_the_backup_id_is_fine_for_the_socket_path(runtime):
    store = SessionStore(runtime, "db1:2024-05-01T02:00")

    store.create()

    assert os.path.isdir(os.path.join(runtime, "db1:2024-05-01T02:00"))


def test_started_refuses_a_socket_path_too_long_for_a_unix_socket_in_check_mode_too(runtime):
    backup_id = "x" * 128

    with pytest.raises(SessionError) as caught:
        PgBackupSession(params(runtime, backup_id=backup_id), True, lambda w: None).started()

    assert "longer than the 107 bytes a Unix socket path may have" in caught.value.msg
    assert "a backup_id of at most %d characters" % (107 - len(runtime) - len("//holder.sock")) in caught.value.msg
    assert caught.value.retryable is False
    assert os.listdir(runtime) == []


def test_the_runtime_dir_falls_back_to_tmp_per_uid_when_run_is_not_writable(monkeypatch):
    monkeypatch.setattr(_layout.os, "access", lambda path, mode: False)

    assert default_runtime_dir() == "/tmp/consistent-backup-%d" % os.getuid()


# -- session state -------------------------------------------------------------------------------------------------

@pytest.fixture
def runtime():
    # Short path: Unix socket paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="cb-ut-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def params(runtime, **changes):
    values = {"backup_id": "b1", "runtime_dir": runtime, "set_path": None, "label_dest": None, "data_prefix": "pgdata",
              "wait_for_archive": True, "archive_timeout": 5, "require_archiving": True, "fast": True,
              "max_duration": 60, "keepalive_interval": 10, "connect_params": {}}
    values.update(changes)
    return values


def stored_session(runtime, state, **extra):
    store = SessionStore(runtime, "b1")
    store.create()
    document = {"backup_id": "b1", "state": state, "holder_pid": 999999, "backend_pid": 4242, "reason": None,
                "facts": {"start_lsn": "0/2000028", "timeline": 1, "server_version_num": 180000}, "result": None}
    document.update(extra)
    store.write_state(document)
    return store


def stop_result(**changes):
    result = {"lsn": "0/2000100", "labelfile": LABEL, "spcmapfile": "", "encoding": "utf-8", "start_lsn": "0/2000028",
              "timeline": 1, "stop_timeline": 1, "stop_walfile": "000000010000000000000002", "archived": True,
              "system_identifier": 7310000000000000001, "server_version_num": 180000, "stopped_at": "2024-05-01T10:01:00Z",
              "stop_seconds": 0.2, "queries": ["SELECT 1"]}
    result.update(changes)
    return result


def test_a_runtime_dir_others_can_write_is_refused_and_left_alone(runtime):
    shared = os.path.join(runtime, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)

    with pytest.raises(SessionError, match="writable by group or others"):
        SessionStore(shared, "b1").create()
    assert os.stat(shared).st_mode & 0o7777 == 0o1777


def test_a_runtime_dir_that_is_a_symlink_is_refused(runtime):
    os.mkdir(os.path.join(runtime, "real"), 0o700)
    os.symlink(os.path.join(runtime, "real"), os.path.join(runtime, "link"))

    with pytest.raises(SessionError, match="symlink"):
        SessionStore(os.path.join(runtime, "link"), "b1").create()


def test_the_state_file_round_trips_and_records_when_it_was_written(runtime):
    store = stored_session(runtime, "running")

    state = store.read_state()

    assert state["state"] == "running" and state["holder_pid"] == 999999
    assert state["updated_at"].endswith("Z")
    assert os.stat(store.path).st_mode & 0o777 == 0o700
    assert os.stat(store.state_path).st_mode & 0o777 == 0o600


def test_a_corrupt_state_file_is_reported_with_what_to_do(runtime):
    store = stored_session(runtime, "running")
    with open(store.state_path, "w", encoding="utf-8") as handle:
        handle.write("{not json")

    with pytest.raises(SessionError, match="pg_stat_activity"):
        store.read_state()


def test_a_holder_whose_socket_nobody_listens_on_is_gone(runtime):
    store = stored_session(runtime, "running")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(store.socket_path)  # bound, never listening: what a SIGKILLed holder leaves
    dead.close()

    assert holder_probe(store, store.read_state())[0] == GONE


def test_a_holder_answering_status_for_this_backup_is_alive(runtime):
    store = stored_session(runtime, "running")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(store.socket_path)
    listener.listen(1)

    def answer():
        client, _addr = listener.accept()
        client.recv(1024)
        client.sendall(json.dumps({"ok": True, "state": {"backup_id": "b1", "holder_pid": 999999, "state": "running"}}).encode() + b"\n")
        client.close()

    thread = threading.Thread(target=answer)
    thread.start()
    liveness, live = holder_probe(store, store.read_state())
    thread.join()
    listener.close()

    assert liveness == ALIVE and live["state"] == "running"


def test_the_aborted_message_names_the_holder_the_reason_and_says_the_copy_is_unusable():
    message = aborted_message("b1", {"holder_pid": 77, "reason": "max_duration of 3 s reached"})

    assert message == ("PostgreSQL backup b1 was aborted: the holder process 77 is gone (max_duration of 3 s reached) so the "
                       "server ended backup mode when its connection closed; the files copied for this backup are NOT a "
                       "usable backup. Run the backup again.")


def test_stopped_without_a_session_directory_is_ok_and_not_changed(runtime):
    result = PgBackupSession(params(runtime), False, lambda w: None).stopped()

    assert result["changed"] is False
    assert result["msg"].startswith("no PostgreSQL backup session b1 was running")


def test_stopped_when_the_holder_vanished_fails_and_records_the_abort(runtime):
    store = stored_session(runtime, "running")

    with pytest.raises(SessionError) as caught:
        PgBackupSession(params(runtime), False, lambda w: None).stopped()

    assert "was aborted: the holder process 999999 is gone" in caught.value.msg
    assert store.read_state()["state"] == "aborted"


@pytest.mark.parametrize("state", ["aborted", "expired"])
def test_stopped_after_an_abort_or_expiry_fails_with_the_recorded_reason_and_is_not_retried(runtime, state):
    stored_session(runtime, state, reason="max_duration of 3 s reached at 2024-05-01T10:00:03Z")

    with pytest.raises(SessionError, match=r"was aborted: .*\(max_duration of 3 s reached") as caught:
        PgBackupSession(params(runtime), False, lambda w: None).stopped()

    assert caught.value.retryable is False


def test_stopped_after_an_archive_timeout_fails_with_that_reason(runtime):
    stored_session(runtime, "failed", reason="WAL segment 000000010000000000000002 (holding the stop LSN 0/2000100) was not archived")

    with pytest.raises(SessionError, match="failed: WAL segment 000000010000000000000002"):
        PgBackupSession(params(runtime), False, lambda w: None).stopped()


def test_stopped_of_a_stopped_session_returns_the_stored_facts_and_writes_missing_labels(runtime, tmp_path):
    stored_session(runtime, "stopped", result=stop_result())
    engine = PgBackupSession(params(runtime, label_dest=str(tmp_path)), False, lambda w: None)

    first = engine.stopped()
    second = engine.stopped()

    assert first["changed"] is True and second["changed"] is False
    assert second["lsn"] == "0/2000100" and second["labelfile"] == LABEL
    assert (tmp_path / "b1" / "backup_label").read_bytes() == LABEL.encode()
    assert second["queries"] == []


def test_a_label_that_cannot_be_written_fails_naming_the_file_and_the_kept_label_and_is_not_retried(runtime, monkeypatch):
    stored_session(runtime, "stopped", result=stop_result())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/labels/b1/backup_label")

    monkeypatch.setattr(_pg_session, "write_outputs", full)

    with pytest.raises(SessionError) as caught:
        PgBackupSession(params(runtime, label_dest="/labels"), False, lambda w: None).stopped()

    assert "No space left on device (ENOSPC) on /labels/b1/backup_label" in caught.value.msg
    assert "the label is kept in %s" % os.path.join(runtime, "b1", "state.json") in caught.value.msg
    assert caught.value.retryable is False


def test_stopped_after_a_start_that_failed_is_ok_because_backup_mode_never_began(runtime):
    stored_session(runtime, "failed", reason="the start failed: permission denied for function pg_backup_start",
                   start_failed=True)

    result = PgBackupSession(params(runtime), False, lambda w: None).stopped()

    assert result["changed"] is False
    assert "never started (the start failed: permission denied" in result["msg"]


def test_started_with_the_id_of_a_completed_backup_is_refused_and_not_retryable(runtime):
    stored_session(runtime, "stopped", result=stop_result())

    with pytest.raises(SessionError, match="already completed.*choose a new backup_id") as caught:
        PgBackupSession(params(runtime), False, lambda w: None).started()

    assert caught.value.retryable is False


def test_started_without_psycopg_reports_the_missing_library(runtime, monkeypatch):
    monkeypatch.setattr(_pg_session, "HAS_PSYCOPG", False)

    with pytest.raises(SessionError) as caught:
        PgBackupSession(params(runtime), False, lambda w: None).started()

    assert caught.value.facts == {"missing_psycopg": True}
    assert caught.value.retryable is False


# -- run ids: post changes nothing that another run started ---------------------------------------------------------

def test_stopped_of_an_earlier_runs_completed_backup_writes_nothing_and_is_not_changed(runtime, tmp_path):
    stored_session(runtime, "stopped", result=stop_result(), run_id="run-earlier")
    set_path = tmp_path / "b1"
    (set_path / "data" / "pgdata").mkdir(parents=True)

    for check_mode in (True, False):
        result = PgBackupSession(params(runtime, run_id="run-now", set_path=str(set_path), label_dest=str(tmp_path / "labels")),
                                 check_mode, lambda w: None).stopped()

        assert result["changed"] is False
        assert "belongs to another run (run_id run-earlier, state stopped)" in result["msg"]
        assert "writes no file" in result["msg"]
        assert result["label_paths"] == [] and result["session_run_id"] == "run-earlier"
    assert not (set_path / "backup_label").exists() and not (tmp_path / "labels").exists()


def test_stopped_of_another_runs_running_session_leaves_it_alone(runtime):
    store = stored_session(runtime, "running", run_id="run-other")

    result = PgBackupSession(params(runtime, run_id="run-now"), False, lambda w: None).stopped()

    assert result["changed"] is False and "belongs to another run" in result["msg"]
    assert store.read_state()["state"] == "running"  # not probed, not marked gone


def test_stopped_of_another_runs_failed_session_is_ok_not_a_failure_of_this_run(runtime):
    stored_session(runtime, "aborted", reason="max_duration of 3 s reached", run_id="run-other")

    result = PgBackupSession(params(runtime, run_id="run-now"), False, lambda w: None).stopped()

    assert result["changed"] is False and "belongs to another run" in result["msg"]


def test_stopped_of_a_session_without_a_recorded_run_id_is_left_alone_when_a_run_id_is_given(runtime):
    stored_session(runtime, "stopped", result=stop_result())

    result = PgBackupSession(params(runtime, run_id="run-now"), False, lambda w: None).stopped()

    assert result["changed"] is False and "belongs to another run (run_id None" in result["msg"]


def test_stopped_of_this_runs_session_stops_it(runtime, tmp_path):
    stored_session(runtime, "stopped", result=stop_result(), run_id="run-now")

    result = PgBackupSession(params(runtime, run_id="run-now", label_dest=str(tmp_path)), False, lambda w: None).stopped()

    assert result["changed"] is True and result["session_run_id"] == "run-now"
    assert (tmp_path / "b1" / "backup_label").read_bytes() == LABEL.encode()


def test_aborted_of_another_runs_session_leaves_it_alone(runtime):
    store = stored_session(runtime, "running", run_id="run-other")

    result = PgBackupSession(params(runtime, run_id="run-now"), False, lambda w: None).aborted()

    assert result["changed"] is False and "belongs to another run" in result["msg"]
    assert store.read_state()["state"] == "running"


def test_started_refuses_a_running_session_of_another_run_and_is_not_retryable(runtime, monkeypatch):
    stored_session(runtime, "running", run_id="run-other")
    live = {"backup_id": "b1", "state": "running", "holder_pid": 999999, "run_id": "run-other", "started_at": "2024-05-01T10:00:00Z"}
    monkeypatch.setattr(_pg_session, "session_liveness", lambda store, state: (ALIVE, live))

    with pytest.raises(SessionError, match="running for another run \\(run_id run-other") as caught:
        PgBackupSession(params(runtime, run_id="run-now"), False, lambda w: None).started()

    assert caught.value.retryable is False


def test_started_again_by_the_same_run_returns_the_running_session(runtime, monkeypatch):
    stored_session(runtime, "running", run_id="run-now")
    live = {"backup_id": "b1", "state": "running", "holder_pid": 999999, "run_id": "run-now",
            "facts": {"start_lsn": "0/2000028"}}
    monkeypatch.setattr(_pg_session, "session_liveness", lambda store, state: (ALIVE, live))

    result = PgBackupSession(params(runtime, run_id="run-now"), False, lambda w: None).started()

    assert result["changed"] is False and result["start_lsn"] == "0/2000028" and result["session_run_id"] == "run-now"
    assert result["guard_post"] == guard_post(SessionStore(runtime, "b1"))


# -- the guard's post: a request on the holder's socket --------------------------------------------------------------

def test_the_guards_post_asks_the_holder_on_its_socket_to_abort_and_waits_for_it_to_exit(runtime):
    store = SessionStore(runtime, "b1")

    post = _guard.normalize_post(guard_post(store))["socket"]

    assert post["path"] == store.socket_path and post["request"] == {"cmd": "abort"} and post["reason_key"] == "reason"
    assert post["success"] == {"ok": True} and post["exit_wait"] > 0 and "PostgreSQL backup session b1" in post["what"]


def test_the_guards_post_counts_a_holder_that_is_gone_as_the_session_ended(runtime):
    store = stored_session(runtime, "stopped")

    outcome = _guard.run_post(_guard.normalize_post(guard_post(store)), 3, 0, 30, "released by the guard: test")

    assert outcome["ok"] is True and len(outcome["attempts"]) == 1
    assert outcome["attempts"][0]["stdout"].startswith("nobody listens on %s" % store.socket_path)


# -- retryable: what a retry cannot fix is said once ----------------------------------------------------------------

@pytest.mark.parametrize("sqlstate, expected", [
    (None, True), ("08006", True), ("57P01", True), ("53300", True),
    ("42501", False), ("28P01", False), ("22023", False), ("55000", False),
])
def test_server_errors_are_retryable_unless_privileges_authorization_input_or_state_are_wrong(sqlstate, expected):
    assert _pg_sql.retryable_sqlstate(sqlstate) is expected


@pytest.mark.parametrize("text, expected", [
    ('connection to server on socket "/run/pg/.s.PGSQL.5433" failed: Connection refused', True),
    ("connection to server at \"db1\" failed: FATAL:  the database system is starting up", True),
    ('FATAL:  password authentication failed for user "backup"', False),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.5", user "backup"', False),
    ('FATAL:  role "nobody" does not exist', False),
    ("fe_sendauth: no password supplied", False),
])
def test_a_refused_login_is_not_retryable_and_a_server_that_is_down_is(text, expected):
    assert _pg_sql.retryable_connect_error(text) is expected


@pytest.mark.parametrize("changes, retryable", [
    ({"in_recovery": True}, False),
    ({"wal_level": "minimal"}, False),
    ({"superuser": False, "privileges": {"start": False, "stop": False}}, False),
    ({"archive_mode": "off"}, False),
    ({"archive_command": ""}, False),
    ({"archiver": {"last_failed_time": "2024-05-01T10:00:00Z", "last_archived_time": "2024-05-01T09:00:00Z"}}, True),
])
def test_only_a_failing_archiver_refuses_the_start_in_a_way_a_retry_can_heal(changes, retryable):
    verdict = _pg_sql.preflight_verdict(healthy(**changes), True)

    assert verdict.errors
    assert verdict.retryable is retryable


def test_a_start_refused_on_the_server_for_privileges_is_reported_not_retryable(runtime):
    class Denied(Exception):
        sqlstate = "42501"

    SessionStore(runtime, "b1").create()
    spec = {"backup_id": "b1", "run_id": "run-now", "runtime_dir": runtime, "server_version_num": 180000, "max_duration": 60,
            "keepalive_interval": 10}
    holder = _pg_holder.Holder(spec, None)
    reports = []
    holder.report = reports.append
    holder.listen = lambda: None

    def denied():
        raise Denied("permission denied for function pg_backup_start")

    holder.start_backup = denied
    handlers = dict((signum, signal.getsignal(signum)) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    try:
        holder.run()
    finally:
        for signum, handler in handlers.items():  # the holder installs its own: give pytest its handlers back
            signal.signal(signum, handler)

    assert reports[0]["ok"] is False and reports[0]["retryable"] is False
    state = SessionStore(runtime, "b1").read_state()
    assert state["state"] == "failed" and state["run_id"] == "run-now" and state["start_failed"] is True


def test_aborted_without_a_session_is_ok_and_not_changed(runtime):
    result = PgBackupSession(params(runtime), False, lambda w: None).aborted()

    assert result["changed"] is False


def test_status_of_a_session_whose_holder_vanished_is_not_running(runtime):
    stored_session(runtime, "running")

    result = PgBackupSession(params(runtime), False, lambda w: None).status()

    assert result["running"] is False
    assert "was aborted" in result["msg"]


# -- label files ---------------------------------------------------------------------------------------------------

def test_labels_go_into_the_set_root_and_next_to_the_copy_byte_exact(tmp_path):
    set_path = tmp_path / "b1"
    (set_path / "data" / "pgdata").mkdir(parents=True)
    warnings = []

    outputs = write_outputs(stop_result(), "b1", str(set_path), None, "pgdata", warnings.append)

    assert (set_path / "backup_label").read_bytes() == LABEL.encode()
    assert (set_path / "data" / "pgdata" / "backup_label").read_bytes() == LABEL.encode()
    assert outputs["backup_manifest"] is None  # no manifest.json entries yet: nothing to describe
    assert any("lists no files" in w for w in warnings)


def test_a_tablespace_map_is_written_only_when_the_server_returned_one(tmp_path):
    spcmap = "16390 /srv/pg/fast\n"

    write_outputs(stop_result(), "b1", None, str(tmp_path / "empty"), "pgdata", lambda w: None)
    write_outputs(stop_result(spcmapfile=spcmap), "b1", None, str(tmp_path / "with"), "pgdata", lambda w: None)

    assert not (tmp_path / "empty" / "b1" / "tablespace_map").exists()
    assert (tmp_path / "with" / "b1" / "tablespace_map").read_bytes() == spcmap.encode()


def test_label_text_is_written_back_in_the_connection_encoding(tmp_path):
    spcmap = "16390 /srv/pg/caf\u00e9\n"

    write_outputs(stop_result(spcmapfile=spcmap, encoding="latin-1"), "b1", None, str(tmp_path), "pgdata", lambda w: None)

    assert (tmp_path / "b1" / "tablespace_map").read_bytes() == b"16390 /srv/pg/caf\xe9\n"


def test_the_label_store_gets_a_label_json_with_the_lsns(tmp_path):
    write_outputs(stop_result(), "b1", None, str(tmp_path), "pgdata", lambda w: None)

    info = json.loads((tmp_path / "b1" / "label.json").read_text())

    assert info["start_lsn"] == "0/2000028" and info["stop_lsn"] == "0/2000100" and info["timeline"] == 1
    assert info["system_identifier"] == 7310000000000000001


def test_writing_the_same_labels_again_changes_nothing(tmp_path):
    first = write_outputs(stop_result(), "b1", None, str(tmp_path), "pgdata", lambda w: None)
    second = write_outputs(stop_result(), "b1", None, str(tmp_path), "pgdata", lambda w: None)

    assert first["changed"] is True and second["changed"] is False
    assert second["label_paths"] == first["label_paths"]


def test_check_mode_reports_missing_labels_as_a_change_and_writes_nothing(tmp_path):
    set_path = tmp_path / "b1"
    (set_path / "data" / "pgdata").mkdir(parents=True)

    outputs = write_outputs(stop_result(), "b1", str(set_path), str(tmp_path / "labels"), "pgdata", lambda w: None, check_mode=True)

    assert outputs["changed"] is True
    assert not (set_path / "backup_label").exists() and not (tmp_path / "labels").exists()


def test_a_missing_set_path_fails_and_says_the_label_is_kept(tmp_path):
    with pytest.raises(SessionError, match="does not exist.*kept in the session state"):
        write_outputs(stop_result(), "b1", str(tmp_path / "nope"), None, "pgdata", lambda w: None)


def test_the_backup_manifest_lists_the_copy_and_the_label(tmp_path):
    set_path = tmp_path / "b1"
    copy = set_path / "data" / "pgdata"
    copy.mkdir(parents=True)
    (copy / "PG_VERSION").write_bytes(b"18\n")
    (set_path / "manifest.json").write_text(json.dumps({"files": [
        {"path": "pgdata/PG_VERSION", "type": "file", "size": 3, "sha256": "ab" * 32, "mtime": 1714557600}]}))

    outputs = write_outputs(stop_result(), "b1", str(set_path), None, "pgdata", lambda w: None)

    manifest = json.loads((copy / "backup_manifest").read_text())
    assert outputs["backup_manifest"] == str(copy / "backup_manifest")
    assert str(copy / "backup_manifest") not in outputs["label_paths"]
    assert write_outputs(stop_result(), "b1", str(set_path), None, "pgdata", lambda w: None)["changed"] is False
    assert [f["Path"] for f in manifest["Files"]] == ["PG_VERSION", "backup_label"]
    assert manifest["System-Identifier"] == 7310000000000000001
    assert manifest["WAL-Ranges"] == [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]


# -- the holder's decisions (a fake connection stands in for the server) -------------------------------------------

class FakeCursor:
    def __init__(self, row):
        self.row = row

    def fetchone(self):
        return self.row


class FakeConnection:
    """Answers statements by their first words; an answer that is an exception is raised."""

    def __init__(self, answers):
        self.answers = answers
        self.closed = False
        self.executed = []
        self.info = type("Info", (), {"encoding": "utf-8"})()

    def execute(self, sql, params=None):
        self.executed.append(sql)
        for prefix, answer in self.answers:
            if sql.startswith(prefix):
                answer = answer() if callable(answer) else answer
                if isinstance(answer, Exception):
                    raise answer
                return FakeCursor(answer)
        raise AssertionError("unexpected statement %s" % sql)

    def close(self):
        self.closed = True


POSTMASTER_START = _layout.parse_utc_iso("2024-05-01T09:00:00Z")


def running_holder(runtime, answers):
    SessionStore(runtime, "b1").create()
    spec = {"backup_id": "b1", "runtime_dir": runtime, "server_version_num": 180000, "max_duration": 60, "keepalive_interval": 10}
    holder = _pg_holder.Holder(spec, None)
    holder.conn = FakeConnection(answers)
    holder.state.update(state="running", backend_pid=4242, facts={
        "start_lsn": "0/2000028", "timeline": 1, "server_version_num": 180000, "system_identifier": 1,
        "postmaster_start_time": _layout.utc_iso(POSTMASTER_START)})
    return holder


STOP_ANSWERS = [
    ("SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_postmaster_start_time()", (4242, POSTMASTER_START)),
    ("SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)", ("0/2000100", LABEL, "")),
    ("SELECT pg_catalog.pg_walfile_name", ("000000010000000000000002",)),
    ("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'archive_mode'", ("on",)),
]
NO_STATUS_DIRECTORY = [("SELECT pg_catalog.has_function_privilege('pg_catalog.pg_stat_file", (False, False))]
STATUS_BY_FILE = [("SELECT pg_catalog.has_function_privilege('pg_catalog.pg_stat_file", (True, True))]
STATUS_BY_LISTING = [("SELECT pg_catalog.has_function_privilege('pg_catalog.pg_stat_file", (False, True))]


def test_keepalive_aborts_when_a_pooler_moved_the_session_to_another_backend(runtime):
    holder = running_holder(runtime, [("SELECT pg_catalog.pg_backend_pid()", (5000,))])

    holder.keepalive()

    assert holder.finished and holder.conn is None
    state = SessionStore(runtime, "b1").read_state()
    assert state["state"] == "aborted" and "4242 to 5000" in state["reason"] and "pooler" in state["reason"]


def test_keepalive_aborts_when_the_connection_is_lost(runtime):
    holder = running_holder(runtime, [("SELECT pg_catalog.pg_backend_pid()", OSError("server closed the connection unexpectedly"))])

    holder.keepalive()

    state = SessionStore(runtime, "b1").read_state()
    assert state["state"] == "aborted" and "connection to PostgreSQL was lost" in state["reason"]


def test_keepalive_keeps_a_healthy_session(runtime):
    holder = running_holder(runtime, [("SELECT pg_catalog.pg_backend_pid()", (4242,))])

    holder.keepalive()

    assert not holder.finished and holder.state["state"] == "running"


def test_stop_waits_for_the_stop_segment_and_records_the_result(runtime):
    archived = iter([("000000010000000000000001", None, None), ("000000010000000000000002", None, None)])
    holder = running_holder(runtime, STOP_ANSWERS + NO_STATUS_DIRECTORY + [("SELECT last_archived_wal", lambda: next(archived))])

    answer = holder.stop(wait_for_archive=True, archive_timeout=10)

    assert answer["ok"] is True
    stored = SessionStore(runtime, "b1").read_state()
    assert stored["state"] == "stopped"
    assert stored["result"]["lsn"] == "0/2000100" and stored["result"]["labelfile"] == LABEL
    assert stored["result"]["archived"] is True and stored["result"]["stop_walfile"] == "000000010000000000000002"
    assert stored["result"]["archive_check"] == "pg_stat_archiver"
    assert holder.finished and holder.conn is None


def test_stop_sees_the_stop_segment_done_although_the_backup_history_file_was_archived_last(runtime):
    polls = iter([("ready", "000000010000000000000001", None, None),
                  ("done", "000000010000000000000001.00000028.backup", None, None)])
    holder = running_holder(runtime, STOP_ANSWERS + STATUS_BY_FILE + [("SELECT CASE WHEN", lambda: next(polls))])

    answer = holder.stop(wait_for_archive=True, archive_timeout=10)

    assert answer["ok"] is True
    result = SessionStore(runtime, "b1").read_state()["result"]
    assert result["archived"] is True and result["archive_check"] == "archive_status"


def test_stop_by_listing_needs_two_polls_without_the_segment_to_call_it_recycled(runtime):
    polls = iter([([], False, None, None, None), ([], False, None, None, None)])
    holder = running_holder(runtime, STOP_ANSWERS + STATUS_BY_LISTING + [("SELECT ARRAY(", lambda: next(polls))])
    connection = holder.conn

    answer = holder.stop(wait_for_archive=True, archive_timeout=10)

    assert answer["ok"] is True
    assert sum(1 for sql in connection.executed if sql.startswith("SELECT ARRAY(")) == 2


def test_stop_times_out_on_a_ready_stop_segment_and_says_so(runtime):
    holder = running_holder(runtime, STOP_ANSWERS + STATUS_BY_FILE + [("SELECT CASE WHEN", ("ready", "000000010000000000000009", None, None))])

    answer = holder.stop(wait_for_archive=True, archive_timeout=0)

    assert answer["ok"] is False
    reason = SessionStore(runtime, "b1").read_state()["reason"]
    assert "pg_wal/archive_status/000000010000000000000002.ready is still there" in reason


def test_stop_without_the_status_directory_says_which_grant_makes_the_check_exact(runtime):
    holder = running_holder(runtime, STOP_ANSWERS + NO_STATUS_DIRECTORY + [("SELECT last_archived_wal", ("00000002.history", None, None))])
    holder.spec["preflight"] = {"current_user": "backup"}

    holder.stop(wait_for_archive=True, archive_timeout=0)

    reason = SessionStore(runtime, "b1").read_state()["reason"]
    assert "role backup may not read pg_wal/archive_status" in reason and "GRANT pg_monitor TO backup" in reason


def test_stop_fails_naming_the_segment_when_it_is_not_archived_within_archive_timeout(runtime):
    holder = running_holder(runtime, STOP_ANSWERS + NO_STATUS_DIRECTORY
                            + [("SELECT last_archived_wal", ("000000010000000000000001", "000000010000000000000002", None))])

    answer = holder.stop(wait_for_archive=True, archive_timeout=0)

    assert answer["ok"] is False
    stored = SessionStore(runtime, "b1").read_state()
    assert stored["state"] == "failed"
    assert "WAL segment 000000010000000000000002" in stored["reason"] and "archive_command" in stored["reason"]


def test_stop_does_not_wait_when_the_server_does_not_archive(runtime):
    answers = STOP_ANSWERS[:3] + [("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'archive_mode'", ("off",))]
    holder = running_holder(runtime, answers)

    answer = holder.stop(wait_for_archive=True, archive_timeout=10)

    assert answer["ok"] is True
    result = SessionStore(runtime, "b1").read_state()["result"]
    assert result["archived"] is False and result["archive_mode"] == "off"


def test_stop_aborts_when_the_server_restarted_under_the_holder(runtime):
    answers = [("SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_postmaster_start_time()",
                (4242, _layout.parse_utc_iso("2024-05-01T11:00:00Z")))] + STOP_ANSWERS[1:]
    holder = running_holder(runtime, answers)
    connection = holder.conn

    answer = holder.stop(wait_for_archive=True, archive_timeout=10)

    assert answer["ok"] is False
    stored = SessionStore(runtime, "b1").read_state()
    assert stored["state"] == "aborted" and "postmaster start" in stored["reason"]
    assert not any("pg_backup_stop" in sql for sql in connection.executed)
    assert connection.closed


def test_stop_explains_a_session_without_backup_as_an_abort(runtime):
    answers = [STOP_ANSWERS[0], ("SELECT lsn::text", RuntimeError("backup is not in progress"))]
    holder = running_holder(runtime, answers)

    holder.stop(wait_for_archive=True, archive_timeout=10)

    stored = SessionStore(runtime, "b1").read_state()
    assert stored["state"] == "aborted" and "no backup is in progress in the holder's session" in stored["reason"]
