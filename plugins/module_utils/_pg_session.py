# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PostgreSQL non-exclusive backup session: connection helper, preflight, the detached holder and its client.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Why a holder process: a non-exclusive backup belongs to the database session that started it. When that
connection closes before the stop, the server aborts the backup ("aborting backup due to backend exiting
before pg_backup_stop was called") and no reconnect can recover it. An Ansible task ends when its module
returns, so ``started`` starts a detached holder (_detach.spawn: double fork, setsid, stdio on /dev/null) that opens
the one connection itself, starts the backup and keeps the session until ``stopped`` asks it, over a Unix socket in a
0700 directory, to stop the backup and hand back backup_label and tablespace_map.

Per session directory ``<runtime_dir>/<backup_id>/``:

    holder.sock   the holder's socket (JSON lines: status / stop / abort)
    state.json    starting | running | stopping | stopped | aborted | expired | failed, the run_id that started it, the start facts,
                  the stop result (label included, so a failed write of the label can be repeated) and the reason
    lock          flock'ed by a module run while it changes the session
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import importlib
import importlib.util
import json
import os
import re
import select
import signal
import socket
import struct
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, exclusive_lock, private_dir_problem, write_json
from ansible_collections.consistent.backup.plugins.module_utils import _detach, _layout, _pg_manifest
from ansible_collections.consistent.backup.plugins.module_utils._layout import (
    DATA_DIR, default_runtime_dir, parse_utc_iso, utc_iso)
from ansible_collections.consistent.backup.plugins.module_utils._manifest import load_manifest

# psycopg is imported on first use, not here: the stop path only talks to the holder over its socket, and
# importing psycopg (about 0.1 s) would otherwise sit inside the database's quiesce window.
HAS_PSYCOPG = importlib.util.find_spec("psycopg") is not None
PSYCOPG_IMPORT_ERROR = None if HAS_PSYCOPG else "ModuleNotFoundError: No module named 'psycopg'"  # type: t.Optional[str]


def _psycopg() -> t.Any:
    """The psycopg package, imported once when a connection is first needed."""
    return importlib.import_module("psycopg")


MIN_SERVER_VERSION_NUM = 120000
STATE_NAME = "state.json"
SOCKET_NAME = "holder.sock"
LOCK_NAME = "lock"

STARTING = "starting"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"
ABORTED = "aborted"
EXPIRED = "expired"
FAILED = "failed"
ENDED_UNUSABLE = (ABORTED, EXPIRED, FAILED)

# Answers of holder_probe()
ALIVE = "alive"
GONE = "gone"
BUSY = "busy"

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_WALFILE_RE = re.compile(r"^[0-9A-F]{24}")
# A real WAL segment: timeline, log, segment (8 hex digits each), and '.partial' for the last segment of an old timeline.
_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
_MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux
_ARCHIVE_POLL_SECONDS = 0.1


class SessionError(Exception):
    """A failure of the session with a message for the operator and the facts known so far.

    ``retryable`` is False when trying again cannot help (invalid input, a used backup id, missing privileges,
    archiving not configured, a standby, a backup the server already ended); the roles then stop after one attempt.
    """

    def __init__(self, msg: str, retryable: bool = True, **facts: t.Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.retryable = retryable
        self.facts = facts


# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------

class BackupFunctions(t.NamedTuple):
    """The SQL of one server version's low-level backup API (see reference: 12-14 vs 15+)."""

    start_sql: str           # parameters: label, fast
    stop_sql: str            # no parameters; returns lsn, labelfile, spcmapfile
    start_signature: str     # for has_function_privilege()
    stop_signature: str
    not_in_progress: str     # the server's error when the session has no backup to stop


def backup_functions(server_version_num: int) -> BackupFunctions:
    """The start/stop SQL for ``server_version_num``; the one place that knows the function names.

    The stop never waits for archiving (second argument false): the built-in wait sleeps in one-second steps
    with no bound. The holder leaves backup mode at once and then waits for the archive itself, bounded.
    """
    if server_version_num < MIN_SERVER_VERSION_NUM:
        raise SessionError(
            "PostgreSQL server_version_num %d is not supported by pg_backup_session: it needs PostgreSQL 12 or later "
            "(non-exclusive backups with pg_start_backup(label, fast, false)); upgrade the server or back it up "
            "with pg_basebackup" % server_version_num, retryable=False)
    if server_version_num < 150000:
        return BackupFunctions(
            start_sql="SELECT pg_catalog.pg_start_backup(%s, %s, false)::text",
            stop_sql="SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_stop_backup(false, false)",
            start_signature="pg_catalog.pg_start_backup(text, boolean, boolean)",
            stop_signature="pg_catalog.pg_stop_backup(boolean, boolean)",
            not_in_progress="non-exclusive backup is not in progress",
        )
    return BackupFunctions(
        start_sql="SELECT pg_catalog.pg_backup_start(%s, %s)::text",
        stop_sql="SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)",
        start_signature="pg_catalog.pg_backup_start(text, boolean)",
        stop_signature="pg_catalog.pg_backup_stop(boolean)",
        not_in_progress="backup is not in progress",
    )


def is_not_in_progress_error(message: str) -> bool:
    """True for the server's "no backup in this session" error of any version (12-14 and 15+ wording)."""
    return "backup is not in progress" in message


def session_settings(server_version_num: int) -> t.List[str]:
    """SET statements that keep the holder's session alive for hours (pgBackRest #2789: idle_session_timeout)."""
    statements = []
    if server_version_num >= 140000:
        statements.append("SET idle_session_timeout = 0")
    statements += [
        "SET idle_in_transaction_session_timeout = 0",
        "SET statement_timeout = 0",
        "SET max_parallel_workers_per_gather = 0",
    ]
    return statements


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> integer. Raises ValueError naming the value for anything else."""
    match = _LSN_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError("not a PostgreSQL LSN (expected hex/hex such as 0/2000028): %r" % (text,))
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value: int) -> str:
    """Integer -> ``'X/X'`` the way PostgreSQL prints pg_lsn."""
    return _pg_manifest.format_lsn(value)


def walfile_timeline(walfile: str) -> int:
    """Timeline of a WAL segment file name (its first 8 hex digits)."""
    if not _WALFILE_RE.match(walfile or ""):
        raise ValueError("not a WAL segment file name: %r" % (walfile,))
    return int(walfile[:8], 16)


def segment_position(name: t.Optional[str]) -> t.Optional[t.Tuple[int, t.Tuple[int, int]]]:
    """(timeline, (log, segment)) of a real WAL segment name, None for anything else.

    (log, segment) orders as the segment number whatever wal_segment_size is. ``.backup`` and ``.history`` files
    are not segments: their names say nothing about how far the archiver got.
    """
    match = _SEGMENT_RE.match(name or "")
    if not match:
        return None
    return int(match.group(1), 16), (int(match.group(2), 16), int(match.group(3), 16))


def segment_archived(last_archived_wal: t.Optional[str], walfile: str) -> bool:
    """Does pg_stat_archiver.last_archived_wal prove that segment ``walfile`` is archived? (the fallback judgement)

    The archiver takes the oldest ``.ready`` file first, and segments become ready in order, so once it archived a
    segment at or after ours - on our timeline or a later one - ours was archived. What it archived around our
    segment proves nothing: the start segment's ``<start>.<offset>.backup`` file is made after the stop segment is
    ready and may be archived before or after it, and ``<timeline>.history`` files are archived first of all. For
    those, keep polling.
    """
    last = segment_position(last_archived_wal)
    stop = segment_position(walfile)
    if last is None or stop is None:
        return False
    return last[0] >= stop[0] and last[1] >= stop[1]


# What pg_wal/archive_status says about the stop segment (read in this order, as XLogArchiveCheckDone does):
ARCHIVE_DONE = "done"              # <segment>.done: archived
ARCHIVE_READY = "ready"            # <segment>.ready: waiting for the archiver
ARCHIVE_UNNOTIFIED = "unnotified"  # neither, the segment still in pg_wal: the server could not create .ready yet
ARCHIVE_REMOVED = "removed"        # neither, the segment gone from pg_wal: archived, then removed or recycled
# How the stop's archiving was judged (returned as archive_check)
CHECK_ARCHIVE_STATUS = "archive_status"
CHECK_PG_STAT_ARCHIVER = "pg_stat_archiver"


def stop_segment_archived(walfile: str, status: t.Optional[str], last_archived_wal: t.Optional[str]) -> bool:
    """Is the stop segment archived? ``status`` is what pg_wal/archive_status says (None when the role may not read it).

    Why "neither file and no segment" means archived: the server creates ``<segment>.ready`` when it finishes the
    segment (XLogWrite -> XLogArchiveNotifySeg, before the stop's WAL switch returns), the archiver renames it to
    ``.done`` after archive_command succeeded (pgarch_archiveDone), and the checkpointer removes or recycles a
    segment only when XLogArchiveCheckDone finds ``.done`` (it re-creates a missing ``.ready`` instead), deleting
    the ``.done`` after the segment (RemoveXlogFile -> XLogArchiveCleanup). A failed XLogArchiveNotify (only a LOG
    line) leaves neither file while the segment is still there and unarchived: that is ARCHIVE_UNNOTIFIED, not done.
    """
    if status in (ARCHIVE_DONE, ARCHIVE_REMOVED):
        return True
    if status in (ARCHIVE_READY, ARCHIVE_UNNOTIFIED):
        return False
    return segment_archived(last_archived_wal, walfile)


def archive_status_from_listing(walfile: str, status_names: t.Iterable[str], segment_in_pg_wal: bool) -> str:
    """The stop segment's archive status from directory listings (pg_ls_archive_statusdir, pg_ls_waldir)."""
    names = set(status_names or ())
    if walfile + ".done" in names:
        return ARCHIVE_DONE
    if walfile + ".ready" in names:
        return ARCHIVE_READY
    return ARCHIVE_UNNOTIFIED if segment_in_pg_wal else ARCHIVE_REMOVED


def sql_literal(value: t.Any) -> str:
    """A value as an SQL literal, for the ``queries`` report only (execution always binds parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return "'%s'" % str(value).replace("'", "''")


def render_sql(sql: str, params: t.Sequence[t.Any] = ()) -> str:
    """``sql`` with its %s placeholders replaced by literals: what ``queries`` reports."""
    if not params:
        return sql
    return sql % tuple(sql_literal(value) for value in params)


def validate_backup_id(backup_id: t.Optional[str]) -> str:
    """The backup id follows the collection's one rule (_layout.check_backup_id); a retry cannot fix a bad one.

    The id is the PostgreSQL backup label, a directory name and part of the holder's socket path. Every character
    the rule allows (':' included) is safe in all three: the server takes any label up to 1024 bytes and writes it
    as the line ``LABEL: <id>`` that recovery reads up to the newline (the rule has none); a Unix socket path may
    hold any byte but NUL, only its length is limited (SessionStore.check_socket_path).
    """
    try:
        return _layout.check_backup_id(backup_id)
    except _layout.InvalidBackupId as exc:
        raise SessionError(str(exc), retryable=False)


def retryable_sqlstate(sqlstate: t.Optional[str]) -> bool:
    """Whether a server error may go away on its own: not for privileges and authorization (classes 42, 28), bad
    input (22) or an object in the wrong state for the call (55000: wal_level too low, a server in recovery)."""
    if not sqlstate:
        return True
    return sqlstate[:2] not in ("22", "28", "42") and sqlstate != "55000"


_PERMANENT_CONNECT_ERRORS = ("authentication failed", "no pg_hba.conf entry", "does not exist", "is not permitted to log in",
                             "permission denied", "no password supplied", "invalid connection option", "invalid sslmode")


def retryable_connect_error(text: str) -> bool:
    """A refused login (wrong password, pg_hba.conf, unknown role or database) stays refused; a server that is down,
    starting or out of connection slots may come back."""
    lowered = text.lower()
    return not any(marker in lowered for marker in _PERMANENT_CONNECT_ERRORS)


def setting_bytes(setting: t.Optional[str], unit: t.Optional[str]) -> t.Optional[int]:
    """pg_settings setting * unit in bytes (``'16777216', 'B'`` or ``'2048', '8kB'``)."""
    if setting is None:
        return None
    factor = 1
    match = re.match(r"^(\d*)\s*(B|kB|MB|GB|TB)?$", unit or "")
    if match:
        scale = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}.get(match.group(2) or "B", 1)
        factor = int(match.group(1) or 1) * scale
    return int(setting) * factor


# ---------------------------------------------------------------------------------------------------------
# Connection helper and preflight
# ---------------------------------------------------------------------------------------------------------

def connection_argument_spec() -> t.Dict[str, t.Any]:
    """The PostgreSQL connection options of every module that connects (documented by the doc fragment
    consistent.backup._postgres), named as community.postgresql names them; the old names are aliases."""
    return dict(
        login_host=dict(type="str", aliases=["host"]),
        login_port=dict(type="int", aliases=["port"]),
        login_user=dict(type="str"),
        login_password=dict(type="str", no_log=True),
        login_db=dict(type="str", aliases=["db"]),
        login_unix_socket=dict(type="str"),
        connect_params=dict(type="dict", default={}),
    )


def connection_kwargs(params: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """libpq keywords from the module options: only what is set, so PGHOST/PGPORT/PGUSER/PGSERVICE still apply.

    ``login_unix_socket`` is the host (a directory) unless ``login_host`` names a host other than localhost,
    as in community.postgresql. ``connect_params`` come first; the named options win over them.
    """
    kwargs = dict((str(k), v) for k, v in (params.get("connect_params") or {}).items() if v is not None)
    host = params.get("login_host")
    unix_socket = params.get("login_unix_socket")
    if unix_socket and (not host or host == "localhost"):
        host = unix_socket
    for key, value in (("host", host), ("port", params.get("login_port")), ("user", params.get("login_user")),
                       ("password", params.get("login_password")), ("dbname", params.get("login_db"))):
        if value is not None and value != "":
            kwargs[key] = str(value)
    return kwargs


def holder_connection_kwargs(base: t.Dict[str, t.Any], backup_id: str) -> t.Dict[str, t.Any]:
    """The holder's connection: ours plus TCP keepalives (network gear drops idle sessions) and an application_name."""
    kwargs = dict(base)
    kwargs.setdefault("connect_timeout", "10")
    kwargs.setdefault("keepalives", "1")
    kwargs.setdefault("keepalives_idle", "30")
    kwargs.setdefault("keepalives_interval", "10")
    kwargs.setdefault("keepalives_count", "6")
    kwargs["application_name"] = "consistent.backup:%s" % backup_id
    return kwargs


def describe_target(kwargs: t.Dict[str, t.Any]) -> str:
    """Where a connection goes, for messages (never the password)."""
    parts = ["%s=%s" % (key, kwargs[key]) for key in ("host", "port", "user", "dbname", "service") if key in kwargs]
    environment = ["%s=%s" % (key, os.environ[key]) for key in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE")
                   if os.environ.get(key)]
    text = " ".join(parts) if parts else "libpq defaults"
    if environment:
        text += " (environment: %s)" % " ".join(environment)
    return text


def connect(kwargs: t.Dict[str, t.Any], application_name: str = "consistent.backup:preflight") -> t.Any:
    """An autocommit psycopg connection (never idle in transaction: that would pin the xmin horizon)."""
    options = dict(kwargs)
    options.setdefault("application_name", application_name)
    options.setdefault("connect_timeout", "10")
    try:
        return _psycopg().connect(autocommit=True, **options)
    except _psycopg().Error as exc:
        text = str(exc).strip()
        raise SessionError(
            "could not connect to PostgreSQL at %s: %s. Check login_host, login_port, login_user, login_password or the "
            "PG* environment and that the server is running" % (describe_target(kwargs), text),
            retryable=retryable_connect_error(text) and retryable_sqlstate(getattr(exc, "sqlstate", None)))


PREFLIGHT_SETTINGS = ("server_version_num", "wal_level", "archive_mode", "archive_command", "archive_library",
                      "data_directory", "block_size", "wal_segment_size", "server_encoding")
SQL_BACKEND_PID = "SELECT pg_catalog.pg_backend_pid()"
SQL_SETTINGS = "SELECT name, setting, unit FROM pg_catalog.pg_settings WHERE name = ANY(%s)"
SQL_SERVER = ("SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_postmaster_start_time(), current_user, "
              "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)")
SQL_SYSTEM_IDENTIFIER = "SELECT system_identifier FROM pg_catalog.pg_control_system()"
SQL_ARCHIVER = ("SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
                "last_failed_time FROM pg_catalog.pg_stat_archiver")
SQL_PRIVILEGES = "SELECT pg_catalog.has_function_privilege(%s, 'EXECUTE'), pg_catalog.has_function_privilege(%s, 'EXECUTE')"
SQL_TABLESPACES = ("SELECT oid::bigint, spcname, pg_catalog.pg_tablespace_location(oid) FROM pg_catalog.pg_tablespace "
                   "WHERE pg_catalog.pg_tablespace_location(oid) <> '' ORDER BY oid")
SQL_WALFILE = "SELECT pg_catalog.pg_walfile_name(%s::pg_lsn)"
SQL_VERIFY_SESSION = "SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_postmaster_start_time()"
SQL_ARCHIVE_MODE = "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'archive_mode'"
SQL_LAST_ARCHIVED = "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_catalog.pg_stat_archiver"
# Reading pg_wal/archive_status: pg_stat_file (superuser, or EXECUTE granted) names files exactly; the listings need
# superuser or pg_monitor.
SQL_ARCHIVE_STATUS_PRIVILEGES = (
    "SELECT pg_catalog.has_function_privilege('pg_catalog.pg_stat_file(text, boolean)', 'EXECUTE'), "
    "pg_catalog.has_function_privilege('pg_catalog.pg_ls_archive_statusdir()', 'EXECUTE') "
    "AND pg_catalog.has_function_privilege('pg_catalog.pg_ls_waldir()', 'EXECUTE')")
# CASE evaluates its branches in order: .done, then .ready, then the segment, as XLogArchiveCheckDone does, so a
# rename between two of the stat calls cannot make an unarchived segment look archived. (pg_stat_file(...)).size,
# not the whole row: its creation column is NULL on Unix.
SQL_POLL_STATUS_FILE = (
    "SELECT CASE WHEN (pg_catalog.pg_stat_file(%s, true)).size IS NOT NULL THEN 'done' "
    "WHEN (pg_catalog.pg_stat_file(%s, true)).size IS NOT NULL THEN 'ready' "
    "WHEN (pg_catalog.pg_stat_file(%s, true)).size IS NOT NULL THEN 'unnotified' ELSE 'removed' END, "
    "last_archived_wal, last_failed_wal, last_failed_time FROM pg_catalog.pg_stat_archiver")
SQL_POLL_STATUS_DIR = (
    "SELECT ARRAY(SELECT name FROM pg_catalog.pg_ls_archive_statusdir() WHERE name IN (%s, %s)), "
    "EXISTS (SELECT 1 FROM pg_catalog.pg_ls_waldir() WHERE name = %s), "
    "last_archived_wal, last_failed_wal, last_failed_time FROM pg_catalog.pg_stat_archiver")


def archive_poll(walfile: str, stat_file: bool, listing: bool) -> t.Tuple[str, str, t.List[str]]:
    """(archive_check, SQL, parameters) of the statement that polls the archiving of ``walfile``."""
    status_dir = "pg_wal/archive_status/"
    if stat_file:
        return CHECK_ARCHIVE_STATUS, SQL_POLL_STATUS_FILE, [status_dir + walfile + ".done", status_dir + walfile + ".ready",
                                                            "pg_wal/" + walfile]
    if listing:
        return CHECK_ARCHIVE_STATUS, SQL_POLL_STATUS_DIR, [walfile + ".done", walfile + ".ready", walfile]
    return CHECK_PG_STAT_ARCHIVER, SQL_LAST_ARCHIVED, []


def archiver_failing(archiver: t.Dict[str, t.Any]) -> bool:
    """pg_stat_archiver says archiving is failing: its last failure is newer than its last success."""
    failed = parse_utc_iso(archiver.get("last_failed_time"))
    if failed is None:
        return False
    archived = parse_utc_iso(archiver.get("last_archived_time"))
    return archived is None or failed > archived


class PreflightVerdict(t.NamedTuple):
    errors: t.List[str]      # each refuses the start
    warnings: t.List[str]
    retryable: bool          # False when an error is one a retry cannot fix (all but a failing archiver)


def evaluate_preflight(facts: t.Dict[str, t.Any], require_archiving: bool) -> t.Tuple[t.List[str], t.List[str]]:
    """(errors, warnings) for the preflight facts; errors refuse the start. Pure, for the unit tests."""
    verdict = preflight_verdict(facts, require_archiving)
    return verdict.errors, verdict.warnings


def preflight_verdict(facts: t.Dict[str, t.Any], require_archiving: bool) -> PreflightVerdict:
    """The preflight's errors and warnings, and whether waiting could clear the errors.

    Only a failing archiver can heal while we wait (the archive medium comes back); a standby, a pooler, wal_level,
    privileges and archive settings need an operator (and most of them a restart).
    """
    errors = []  # type: t.List[str]
    warnings = []  # type: t.List[str]
    if facts.get("in_recovery"):
        errors.append(
            "the server is a standby (pg_is_in_recovery() is true); pg_backup_session backs up a primary only for now: "
            "connect to the primary (or use pg_basebackup against the standby)")
    if facts.get("pooled"):
        errors.append(
            "the backend pid changed between two statements (%s): the connection goes through a pooler in transaction "
            "mode, so the stop could reach another backend; connect to PostgreSQL directly" % facts["pooled"])
    if facts.get("wal_level") == "minimal":
        errors.append("wal_level is minimal; a base backup needs wal_level replica or logical: set it and restart the server")
    privileges = facts.get("privileges") or {}
    if not facts.get("superuser") and not (privileges.get("start") and privileges.get("stop")):
        errors.append(
            "role %s is not a superuser and lacks EXECUTE on %s or %s; GRANT EXECUTE on both to it (or use a superuser)"
            % (facts.get("current_user"), privileges.get("start_signature"), privileges.get("stop_signature")))
    archive_problems = []
    mode = facts.get("archive_mode")
    if mode not in ("on", "always"):
        archive_problems.append(
            "archive_mode is %s (expected on or always): without a WAL archive the backup has no guaranteed WAL; set "
            "archive_mode = on and archive_command (restart needed)" % (mode or "unknown"))
    else:
        command = facts.get("archive_command")
        library = facts.get("archive_library")
        if command is None and "archive_command" not in facts.get("settings_readable", ()):
            warnings.append("archive_command is not visible to role %s (needs pg_read_all_settings or pg_monitor); "
                            "cannot check it is set" % facts.get("current_user"))
        elif not library and (not command or command == "(disabled)"):
            archive_problems.append("archive_mode is %s but neither archive_command nor archive_library is set: WAL piles "
                                    "up in pg_wal and is never archived; set archive_command" % mode)
    permanent = bool(errors) or (require_archiving and bool(archive_problems))
    archiver = facts.get("archiver") or {}
    if archiver_failing(archiver):
        archive_problems.append(
            "pg_stat_archiver shows archiving failing: last_failed_wal %s at %s is newer than the last success (%s at %s), "
            "failed_count %s; fix archive_command (see the server log) until pg_stat_archiver reports a success"
            % (archiver.get("last_failed_wal"), archiver.get("last_failed_time"), archiver.get("last_archived_wal"),
               archiver.get("last_archived_time"), archiver.get("failed_count")))
    if require_archiving:
        errors.extend(archive_problems)
    else:
        warnings.extend(archive_problems)
    return PreflightVerdict(errors, warnings, not permanent)


def _fetch_settings(conn: t.Any) -> t.Dict[str, t.Tuple[t.Optional[str], t.Optional[str]]]:
    rows = conn.execute(SQL_SETTINGS, [list(PREFLIGHT_SETTINGS)]).fetchall()
    return dict((name, (setting, unit)) for name, setting, unit in rows)


def run_preflight(conn: t.Any, backup_id: str, require_archiving: bool,
                  queries: t.List[str]) -> t.Dict[str, t.Any]:
    """Read everything the start needs over a short connection; raise SessionError listing every refusal."""
    def run(sql: str, params: t.Sequence[t.Any] = ()) -> t.Any:
        queries.append(render_sql(sql, params))
        return conn.execute(sql, list(params)) if params else conn.execute(sql)

    first_pid = run(SQL_BACKEND_PID).fetchone()[0]
    queries.append("SELECT name, setting, unit FROM pg_catalog.pg_settings WHERE name IN (%s)"
                   % ", ".join(sql_literal(n) for n in PREFLIGHT_SETTINGS))
    settings = _fetch_settings(conn)
    version_num = int(settings["server_version_num"][0])
    functions = backup_functions(version_num)
    in_recovery, postmaster_start, current_user, superuser = run(SQL_SERVER).fetchone()
    try:
        system_identifier = int(run(SQL_SYSTEM_IDENTIFIER).fetchone()[0]) % (1 << 64)
    except _psycopg().Error:
        system_identifier = None
    archiver_row = run(SQL_ARCHIVER).fetchone()
    archiver = dict(zip(("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
                         "last_failed_time"), archiver_row))
    for key in ("last_archived_time", "last_failed_time"):
        archiver[key] = utc_iso(archiver[key]) if archiver[key] is not None else None
    can_start, can_stop = run(SQL_PRIVILEGES, [functions.start_signature, functions.stop_signature]).fetchone()
    tablespaces = [{"oid": int(oid), "name": name, "location": location}
                   for oid, name, location in run(SQL_TABLESPACES).fetchall()]
    last_pid = run(SQL_BACKEND_PID).fetchone()[0]

    def setting(name: str) -> t.Optional[str]:
        return settings.get(name, (None, None))[0]

    facts = {
        "backup_id": backup_id,
        "server_version_num": version_num,
        "in_recovery": bool(in_recovery),
        "postmaster_start_time": utc_iso(postmaster_start),
        "current_user": current_user,
        "superuser": bool(superuser),
        "privileges": {"start": bool(can_start), "stop": bool(can_stop),
                       "start_signature": functions.start_signature, "stop_signature": functions.stop_signature},
        "wal_level": setting("wal_level"),
        "archive_mode": setting("archive_mode"),
        "archive_command": setting("archive_command"),
        "archive_library": setting("archive_library"),
        "settings_readable": sorted(settings),
        "data_directory": setting("data_directory"),
        "server_encoding": setting("server_encoding"),
        "page_size": int(setting("block_size")) if setting("block_size") else None,
        "wal_segment_size": setting_bytes(*settings.get("wal_segment_size", (None, None))),
        "system_identifier": system_identifier,
        "archiver": archiver,
        "tablespaces": tablespaces,
        "pooled": None if first_pid == last_pid else "%s then %s" % (first_pid, last_pid),
    }
    verdict = preflight_verdict(facts, require_archiving)
    facts["warnings"] = verdict.warnings
    facts["errors"] = verdict.errors
    facts["retryable"] = verdict.retryable
    return facts


def holder_queries(server_version_num: int, backup_id: str, fast: bool) -> t.List[str]:
    """What the holder runs to start the backup (also what check mode reports)."""
    functions = backup_functions(server_version_num)
    return ([SQL_BACKEND_PID] + session_settings(server_version_num)
            + [render_sql(functions.start_sql, [backup_id, fast]), SQL_BACKEND_PID,
               "SELECT pg_catalog.pg_walfile_name(<start_lsn>::pg_lsn)", SQL_VERIFY_SESSION])


def stop_queries(server_version_num: int, wait_for_archive: bool) -> t.List[str]:
    """What the holder runs to stop the backup (also what check mode reports)."""
    functions = backup_functions(server_version_num)
    queries = [SQL_VERIFY_SESSION, functions.stop_sql, "SELECT pg_catalog.pg_walfile_name(<stop_lsn>::pg_lsn)"]
    if wait_for_archive:
        _check, sql, params = archive_poll("<stop_walfile>", True, False)
        queries += [SQL_ARCHIVE_MODE, SQL_ARCHIVE_STATUS_PRIVILEGES,
                    render_sql(sql, params) + " -- every %.1f s until <stop_walfile> is archived (or pg_ls_archive_statusdir, "
                    "or pg_stat_archiver alone, as the role may)" % _ARCHIVE_POLL_SECONDS]
    return queries


# ---------------------------------------------------------------------------------------------------------
# Session directory and state file
# ---------------------------------------------------------------------------------------------------------

def _ensure_private_dir(path: str) -> None:
    """Create ``path`` (0700) or accept an existing real directory of ours that nobody else can write."""
    problem = private_dir_problem(path)
    if problem:
        raise SessionError("runtime directory %s; the holder's socket must live in a private directory: set runtime_dir to a "
                           "directory of our own (chmod 0700) or remove it" % problem, retryable=False)


class SessionStore:
    """The files of one backup session: ``<runtime_dir>/<backup_id>/{state.json,holder.sock,lock}``."""

    def __init__(self, runtime_dir: str, backup_id: str) -> None:
        self.runtime_dir = runtime_dir
        self.backup_id = backup_id
        self.path = os.path.join(runtime_dir, backup_id)
        self.state_path = os.path.join(self.path, STATE_NAME)
        self.socket_path = os.path.join(self.path, SOCKET_NAME)
        self.lock_path = os.path.join(self.path, LOCK_NAME)

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def check_socket_path(self) -> None:
        """The holder binds ``<runtime_dir>/<backup_id>/holder.sock``; Linux takes at most 107 bytes there."""
        length = len(os.fsencode(self.socket_path))
        if length > _MAX_SOCKET_PATH:
            room = _MAX_SOCKET_PATH - (length - len(os.fsencode(self.backup_id)))
            raise SessionError(
                "the holder socket path %s is %d bytes, longer than the %d bytes a Unix socket path may have; use a shorter "
                "runtime_dir, or a backup_id of at most %d characters with this runtime_dir"
                % (self.socket_path, length, _MAX_SOCKET_PATH, max(room, 0)), retryable=False)

    def create(self) -> None:
        self.check_socket_path()
        os.makedirs(os.path.dirname(self.runtime_dir.rstrip("/")) or "/", exist_ok=True)
        _ensure_private_dir(self.runtime_dir)
        _ensure_private_dir(self.path)

    def read_state(self) -> t.Optional[t.Dict[str, t.Any]]:
        try:
            with open(self.state_path, "rb") as handle:
                return json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise SessionError("state file %s is not valid JSON (%s); the session is unknown: check the server with "
                               "pg_stat_activity and remove %s" % (self.state_path, exc, self.path), retryable=False)

    def write_state(self, state: t.Dict[str, t.Any]) -> None:
        write_json(self.state_path, dict(state, updated_at=utc_iso()))

    def lock(self) -> t.ContextManager[None]:
        """Serialise module runs on one session (two tasks starting or stopping the same backup)."""
        return exclusive_lock(self.lock_path)


def aborted_message(backup_id: str, state: t.Dict[str, t.Any]) -> str:
    """The failure of a backup whose holder ended without a stop: the copy is not a backup."""
    reason = state.get("reason") or "it was killed or crashed while %s said running" % STATE_NAME
    return ("PostgreSQL backup %s was aborted: the holder process %s is gone (%s) so the server ended backup mode when its "
            "connection closed; the files copied for this backup are NOT a usable backup. Run the backup again."
            % (backup_id, state.get("holder_pid"), reason))


def failed_message(backup_id: str, state: t.Dict[str, t.Any], store: SessionStore) -> str:
    return ("PostgreSQL backup %s failed: %s. The files copied for this backup are NOT a usable backup; fix the cause and "
            "run the backup again (the server's answer is kept in %s)." % (backup_id, state.get("reason"), store.state_path))


def ended_message(backup_id: str, state: t.Dict[str, t.Any], store: SessionStore) -> str:
    if state.get("state") == FAILED:
        return failed_message(backup_id, state, store)
    return aborted_message(backup_id, state)


# ---------------------------------------------------------------------------------------------------------
# Holder: the detached process that owns the backup's connection
# ---------------------------------------------------------------------------------------------------------

class _Terminate(Exception):
    pass


def _raise_terminate(signum: int, frame: t.Any) -> None:
    raise _Terminate(signal.Signals(signum).name)


def _retryable_error(exc: BaseException) -> bool:
    if isinstance(exc, SessionError):
        return exc.retryable
    return retryable_sqlstate(getattr(exc, "sqlstate", None))


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    sqlstate = getattr(exc, "sqlstate", None)
    return "%s (SQLSTATE %s)" % (text, sqlstate) if sqlstate else text


class Holder:
    """Runs in the detached process: starts the backup, serves status/stop/abort, keeps the session alive."""

    def __init__(self, spec: t.Dict[str, t.Any], report_fd: int) -> None:
        self.spec = spec
        self.report_fd = report_fd
        self.store = SessionStore(spec["runtime_dir"], spec["backup_id"])
        self.functions = backup_functions(spec["server_version_num"])
        self.conn = None  # type: t.Any
        self.listener = None  # type: t.Optional[socket.socket]
        self.finished = False
        self.deadline = time.monotonic() + spec["max_duration"]
        started = datetime.datetime.now(datetime.timezone.utc)
        self.state = {
            "backup_id": spec["backup_id"],
            "state": STARTING,
            "holder_pid": os.getpid(),
            "backend_pid": None,
            "started_at": utc_iso(started),
            "expires_at": utc_iso(started + datetime.timedelta(seconds=spec["max_duration"])),
            "max_duration": spec["max_duration"],
            "keepalive_interval": spec["keepalive_interval"],
            "socket": self.store.socket_path,
            "run_id": spec.get("run_id"),
            "facts": None,
            "result": None,
            "reason": None,
        }  # type: t.Dict[str, t.Any]

    # -- state ----------------------------------------------------------------------------------------
    def set_state(self, name: str, reason: t.Optional[str] = None, **extra: t.Any) -> None:
        self.state["state"] = name
        if reason is not None:
            self.state["reason"] = reason
        self.state.update(extra)
        self.store.write_state(self.state)

    def report(self, message: t.Dict[str, t.Any]) -> None:
        """The one answer to the waiting module (a dead module is not an error: state.json tells the next run)."""
        _detach.report(self.report_fd, message)
        self.report_fd = None

    # -- life cycle -----------------------------------------------------------------------------------
    def run(self) -> None:
        signal.signal(signal.SIGTERM, _raise_terminate)
        signal.signal(signal.SIGINT, _raise_terminate)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            self.set_state(STARTING)
            try:
                self.listen()
                facts = self.start_backup()
            except _Terminate as exc:
                self.fail_start("the holder received %s while starting the backup" % exc, retryable=True)
                return
            except Exception as exc:  # pylint: disable=broad-except
                self.fail_start(_error_text(exc), retryable=_retryable_error(exc))
                return
            self.set_state(RUNNING, facts=facts, backend_pid=facts["backend_pid"])
            self.report({"ok": True, "state": self.state})
            try:
                self.serve()
            except _Terminate as exc:
                if not self.finished:
                    self.end(ABORTED, "the holder received %s" % exc)
            except Exception as exc:  # pylint: disable=broad-except
                if not self.finished:
                    self.end(ABORTED, "the holder failed: %s" % _error_text(exc))
        finally:
            self.close_connection()
            self.close_listener()

    def fail_start(self, error: str, retryable: bool) -> None:
        self.close_connection()
        self.set_state(FAILED, reason="the start failed: %s" % error, start_failed=True)
        self.report({"ok": False, "error": error, "retryable": retryable, "state": self.state})

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.store.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.store.socket_path)
        os.chmod(self.store.socket_path, 0o600)
        listener.listen(8)
        self.listener = listener

    def start_backup(self) -> t.Dict[str, t.Any]:
        spec = self.spec
        queries = []  # type: t.List[str]

        def run(sql: str, params: t.Sequence[t.Any] = ()) -> t.Any:
            queries.append(render_sql(sql, params))
            return self.conn.execute(sql, list(params)) if params else self.conn.execute(sql)

        self.conn = _psycopg().connect(autocommit=True, **spec["conn_kwargs"])
        backend_pid = run(SQL_BACKEND_PID).fetchone()[0]
        for statement in session_settings(spec["server_version_num"]):
            run(statement)
        # The database's quiesce window opens with this call and closes when the stop call returns.
        backup_start_epoch = time.time()
        start_lsn = run(self.functions.start_sql, [spec["backup_id"], spec["fast"]]).fetchone()[0]
        after_pid = run(SQL_BACKEND_PID).fetchone()[0]
        if after_pid != backend_pid:
            raise SessionError("the backend pid changed from %s to %s during the start: the connection goes through a pooler "
                               "in transaction mode; connect to PostgreSQL directly" % (backend_pid, after_pid), retryable=False)
        start_walfile = run(SQL_WALFILE, [start_lsn]).fetchone()[0]
        _pid, postmaster_start = run(SQL_VERIFY_SESSION).fetchone()
        preflight = dict(spec["preflight"])
        return {
            "start_lsn": start_lsn,
            "start_walfile": start_walfile,
            "timeline": walfile_timeline(start_walfile),
            "backend_pid": backend_pid,
            "holder_pid": os.getpid(),
            "server_version_num": spec["server_version_num"],
            "postmaster_start_time": utc_iso(postmaster_start),
            "system_identifier": preflight.get("system_identifier"),
            "data_directory": preflight.get("data_directory"),
            "tablespaces": preflight.get("tablespaces") or [],
            "page_size": preflight.get("page_size"),
            "wal_segment_size": preflight.get("wal_segment_size"),
            "archiving": preflight.get("archive_mode") in ("on", "always"),
            "encoding": self.conn.info.encoding,
            "started_at": self.state["started_at"],
            "expires_at": self.state["expires_at"],
            "backup_start_epoch": backup_start_epoch,
            "queries": queries,
        }

    def serve(self) -> None:
        interval = self.spec["keepalive_interval"]
        next_keepalive = time.monotonic() + interval
        while not self.finished:
            now = time.monotonic()
            if now >= self.deadline:
                self.end(EXPIRED, "max_duration of %d s reached at %s; the holder closed its connection, so the server "
                         "aborted backup mode" % (self.spec["max_duration"], utc_iso()))
                return
            if now >= next_keepalive:
                self.keepalive()
                next_keepalive = time.monotonic() + interval
                continue
            readable, _w, _x = select.select([self.listener], [], [], max(0.0, min(next_keepalive, self.deadline) - now))
            if readable:
                client, _addr = self.listener.accept()
                # A stop must not be cut between the server's answer and state.json: signals wait until it is recorded.
                signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
                try:
                    with contextlib.closing(client):
                        self.handle(client)
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))

    def keepalive(self) -> None:
        """A statement every keepalive_interval: keeps the session warm and proves it is still the same backend."""
        try:
            pid = self.conn.execute(SQL_BACKEND_PID).fetchone()[0]
        except Exception as exc:  # pylint: disable=broad-except
            self.end(ABORTED, "the connection to PostgreSQL was lost (%s)" % _error_text(exc))
            return
        if pid != self.state["backend_pid"]:
            self.end(ABORTED, "the backend pid changed from %s to %s: a pooler moved the session to another backend"
                     % (self.state["backend_pid"], pid))

    # -- requests -------------------------------------------------------------------------------------
    def handle(self, client: socket.socket) -> None:
        client.settimeout(10)
        peer_uid = struct.unpack("3i", client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        try:
            request = json.loads(_read_line(client).decode("utf-8"))
        except (OSError, ValueError) as exc:
            _send(client, {"ok": False, "error": "bad request: %s" % exc})
            return
        if peer_uid not in (0, os.geteuid()):
            _send(client, {"ok": False, "error": "uid %d may not talk to this holder" % peer_uid})
            return
        command = request.get("cmd")
        if command == "status":
            _send(client, {"ok": True, "state": self.state})
        elif command == "stop":
            _send(client, self.stop(bool(request.get("wait_for_archive", True)), int(request.get("archive_timeout", 300))))
        elif command == "abort":
            self.end(ABORTED, request.get("reason") or "aborted on request")
            _send(client, {"ok": True, "state": self.state})
        else:
            _send(client, {"ok": False, "error": "unknown command %r" % command})

    def stop(self, wait_for_archive: bool, archive_timeout: int) -> t.Dict[str, t.Any]:
        if self.state["state"] != RUNNING:
            return {"ok": False, "error": "the session is %s, not running" % self.state["state"], "state": self.state}
        began = time.monotonic()
        self.set_state(STOPPING)
        queries = []  # type: t.List[str]

        def run(sql: str, params: t.Sequence[t.Any] = ()) -> t.Any:
            queries.append(render_sql(sql, params))
            return self.conn.execute(sql, list(params)) if params else self.conn.execute(sql)

        facts = self.state["facts"]
        try:
            pid, postmaster_start = run(SQL_VERIFY_SESSION).fetchone()
            if pid != self.state["backend_pid"] or utc_iso(postmaster_start) != facts["postmaster_start_time"]:
                self.end(ABORTED, "the session changed under the holder (backend pid %s -> %s, postmaster start %s -> %s)"
                         % (self.state["backend_pid"], pid, facts["postmaster_start_time"], utc_iso(postmaster_start)))
                return {"ok": False, "error": "aborted", "state": self.state}
            lsn, labelfile, spcmapfile = run(self.functions.stop_sql).fetchone()
            stop_walfile = run(SQL_WALFILE, [lsn]).fetchone()[0]
        except Exception as exc:  # pylint: disable=broad-except
            text = _error_text(exc)
            if is_not_in_progress_error(text):
                text = "the server says no backup is in progress in the holder's session (%s)" % text
            self.end(ABORTED, "the stop failed: %s" % text)
            return {"ok": False, "error": "aborted", "state": self.state}
        left_backup_mode = time.monotonic()
        backup_stop_epoch = time.time()
        result = {
            "lsn": lsn,
            "labelfile": labelfile,
            "spcmapfile": spcmapfile,
            "encoding": self.conn.info.encoding,
            "start_lsn": facts["start_lsn"],
            "timeline": facts["timeline"],
            "stop_timeline": walfile_timeline(stop_walfile),
            "stop_walfile": stop_walfile,
            "archived": False,
            "archive_check": None,
            "system_identifier": facts.get("system_identifier"),
            "server_version_num": facts["server_version_num"],
            "stopped_at": utc_iso(),
            "backup_stop_epoch": backup_stop_epoch,
            "backup_mode_seconds": None,
            "queries": queries,
        }
        error = None
        if wait_for_archive:
            try:
                error = self.wait_for_archive(stop_walfile, archive_timeout, run, result)
            except Exception as exc:  # pylint: disable=broad-except
                error = "could not check the archiving of %s: %s" % (stop_walfile, _error_text(exc))
        result["stop_seconds"] = round(time.monotonic() - began, 3)
        result["backup_mode_seconds"] = round(left_backup_mode - began, 3)
        if error:
            self.end(FAILED, error, result=result)
            return {"ok": False, "error": error, "state": self.state}
        self.end(STOPPED, None, result=result)
        return {"ok": True, "state": self.state}

    def wait_for_archive(self, walfile: str, timeout: int, run: t.Callable[..., t.Any], result: t.Dict[str, t.Any]) -> t.Optional[str]:
        """Poll until ``walfile`` (holding the stop LSN) is archived; an error text on timeout.

        The segment's archive status file decides when the role may read pg_wal/archive_status; otherwise only a
        segment archived at or after it does (segment_archived), which on a quiet server may not come.
        """
        mode = run(SQL_ARCHIVE_MODE).fetchone()
        if not mode or mode[0] not in ("on", "always"):
            result["archive_mode"] = mode[0] if mode else None
            return None
        stat_file, listing = run(SQL_ARCHIVE_STATUS_PRIVILEGES).fetchone()
        check, sql, params = archive_poll(walfile, bool(stat_file), bool(listing))
        result["archive_check"] = check
        deadline = time.monotonic() + timeout
        first = True
        removed_seen = 0
        while True:
            if first:
                row = run(sql, params).fetchone()
                first = False
            else:
                row = (self.conn.execute(sql, params) if params else self.conn.execute(sql)).fetchone()
            if sql == SQL_POLL_STATUS_FILE:
                status, last_archived, last_failed, failed_at = row
            elif sql == SQL_POLL_STATUS_DIR:
                status = archive_status_from_listing(walfile, row[0], row[1])
                last_archived, last_failed, failed_at = row[2:]
            else:
                status = None
                last_archived, last_failed, failed_at = row
            # A listing is a readdir: one that runs while the archiver renames .ready to .done may see neither name,
            # so "removed" from listings counts only when two polls in a row say it (the rename happens once).
            removed_seen = removed_seen + 1 if status == ARCHIVE_REMOVED else 0
            unsure = sql == SQL_POLL_STATUS_DIR and status == ARCHIVE_REMOVED and removed_seen < 2
            if not unsure and stop_segment_archived(walfile, status, last_archived):
                result["archived"] = True
                return None
            if time.monotonic() >= deadline:
                return ("WAL segment %s (holding the stop LSN %s) was not archived within archive_timeout %d s: %s; "
                        "pg_stat_archiver last_archived_wal is %s, last_failed_wal %s at %s; check archive_command and the "
                        "server log, then run the backup again"
                        % (walfile, result["lsn"], timeout, self.archive_finding(walfile, status), last_archived, last_failed,
                           utc_iso(failed_at) if failed_at else None))
            time.sleep(_ARCHIVE_POLL_SECONDS)

    def archive_finding(self, walfile: str, status: t.Optional[str]) -> str:
        """What the last poll found, for the timeout message."""
        if status == ARCHIVE_READY:
            return "pg_wal/archive_status/%s.ready is still there, so the archiver has not archived it" % walfile
        if status == ARCHIVE_UNNOTIFIED:
            return ("pg_wal/archive_status has neither %s.ready nor .done while the segment is in pg_wal: the server could "
                    "not mark it for archiving (see the server log for 'could not create archive status file')" % walfile)
        if status == ARCHIVE_REMOVED:
            return "pg_wal/archive_status listings disagreed about %s" % walfile
        role = (self.spec.get("preflight") or {}).get("current_user") or "the backup role"
        return ("role %s may not read pg_wal/archive_status, so only a segment archived at or after %s proves it was, and "
                "the archiver has archived none (a .backup or .history file proves nothing); GRANT pg_monitor TO %s for an "
                "exact check" % (role, walfile, role))

    def end(self, name: str, reason: t.Optional[str], **extra: t.Any) -> None:
        """Leave the session: close the connection (the server aborts a backup still running) and record why."""
        self.close_connection()
        self.set_state(name, reason, **extra)
        self.finished = True

    def close_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def close_listener(self) -> None:
        """Remove the socket: from now on a client learns from state.json alone how the session ended."""
        if self.listener is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.store.socket_path)
            self.listener.close()
            self.listener = None


def _read_line(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("message longer than %d bytes" % limit)
    return data


def _send(sock: socket.socket, message: t.Dict[str, t.Any]) -> None:
    with contextlib.suppress(OSError):
        sock.sendall((json.dumps(message) + "\n").encode("utf-8"))


def spawn_holder(spec: t.Dict[str, t.Any], timeout: t.Optional[float] = None) -> t.Dict[str, t.Any]:
    """Start the detached holder and wait for its report: ``{"ok": true, "state": ...}`` or ``{"ok": false, "error": ...}``.

    _detach.spawn re-parents the holder to init with no controlling terminal, so it survives the end of the Ansible
    task (and of an SSH session). Only the holder connects, so no connection is shared across the fork. With
    ``timeout`` (pre's bound) the wait for the server's start is abandoned there; post (or the guard) ends the session.
    """
    report = _detach.spawn(lambda report_fd: Holder(spec, report_fd).run(), timeout)
    if report is not None:
        return report
    store = SessionStore(spec["runtime_dir"], spec["backup_id"])
    try:
        state = store.read_state() or {}
    except SessionError:
        state = {}
    reason = state.get("reason") or "no reason recorded"
    return {"ok": False, "state": state,
            "error": "the holder process ended without reporting (%s; see %s)" % (reason, store.state_path)}


# ---------------------------------------------------------------------------------------------------------
# Client side (the module)
# ---------------------------------------------------------------------------------------------------------

class HolderUnreachable(Exception):
    """Nobody listens on the session's socket: the holder is gone."""


def holder_request(socket_path: str, request: t.Dict[str, t.Any], timeout: float) -> t.Dict[str, t.Any]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise HolderUnreachable(str(exc))
            raise
        sock.sendall((json.dumps(request) + "\n").encode("utf-8"))
        data = _read_line(sock)
    finally:
        sock.close()
    if not data:
        raise HolderUnreachable("the holder closed the connection without an answer")
    return json.loads(data.decode("utf-8"))


def holder_probe(store: SessionStore, state: t.Optional[t.Dict[str, t.Any]], timeout: float = 5.0) -> t.Tuple[str, t.Optional[t.Dict[str, t.Any]]]:
    """(ALIVE | GONE | BUSY, live state): ALIVE answers status, BUSY listens but is inside a start or a stop."""
    try:
        answer = holder_request(store.socket_path, {"cmd": "status"}, timeout)
    except HolderUnreachable:
        return GONE, None
    except socket.timeout:
        return BUSY, None
    except OSError:
        return GONE, None
    live = answer.get("state") or {}
    if live.get("backup_id") != store.backup_id or (state and live.get("holder_pid") != state.get("holder_pid")):
        return GONE, None
    return ALIVE, live


def session_liveness(store: SessionStore, state: t.Optional[t.Dict[str, t.Any]]) -> t.Tuple[str, t.Optional[t.Dict[str, t.Any]]]:
    """Like holder_probe, for a state that says the holder should be there; a holder that is GONE by socket
    but whose pid lives on while starting is BUSY (it binds its socket before the first statement)."""
    if not state or state.get("state") not in (STARTING, RUNNING, STOPPING):
        return GONE, None
    liveness, live = holder_probe(store, state)
    if liveness == GONE and state.get("state") == STARTING and _detach.pid_alive(state.get("holder_pid")):
        return BUSY, None
    return liveness, live


def mark_gone(store: SessionStore, state: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """Record that a holder vanished without saying so (SIGKILL, OOM killer, reboot)."""
    state = dict(state)
    state["reason"] = ("it was killed or crashed while %s said %s; its socket %s does not answer"
                       % (STATE_NAME, state.get("state"), store.socket_path))
    state["state"] = ABORTED
    store.write_state(state)
    return state


# ---------------------------------------------------------------------------------------------------------
# Label files
# ---------------------------------------------------------------------------------------------------------

class _OutputWriter:
    """Writes files atomically unless they already hold the bytes; in check mode only tells what would change."""

    def __init__(self, check_mode: bool) -> None:
        self.check_mode = check_mode
        self.changed = False
        self.paths = []  # type: t.List[str]

    def put(self, path: str, data: bytes, mode: int = 0o640, listed: bool = True) -> bool:
        """Write ``data`` to ``path`` unless it is there already; True when it was (or would be) written."""
        if listed:
            self.paths.append(path)
        try:
            with open(path, "rb") as handle:
                if handle.read() == data:
                    return False
        except FileNotFoundError:
            pass
        self.changed = True
        if not self.check_mode:
            atomic_write(path, data, mode=mode)
        return True


def write_outputs(result: t.Dict[str, t.Any], backup_id: str, set_path: t.Optional[str], label_dest: t.Optional[str],
                  data_prefix: str, warn: t.Callable[[str], None], check_mode: bool = False) -> t.Dict[str, t.Any]:
    """Write backup_label/tablespace_map (+ label.json, + backup_manifest) where asked; idempotent.

    backup_label and tablespace_map are written byte-exact as the server returned them (the text re-encoded in
    the connection's encoding). tablespace_map only when the server returned one with content, like
    pg_basebackup. In check mode nothing is written. Returns {label_paths, backup_manifest, changed}.
    """
    encoding = result.get("encoding") or "utf-8"
    label = result["labelfile"].encode(encoding)
    spcmap = result["spcmapfile"].encode(encoding) if result.get("spcmapfile") else None
    writer = _OutputWriter(check_mode)
    manifest_path = None

    def put_labels(directory: str) -> bool:
        changed = writer.put(os.path.join(directory, "backup_label"), label)
        if spcmap is not None:
            changed = writer.put(os.path.join(directory, "tablespace_map"), spcmap) or changed
        return changed

    if set_path:
        if not os.path.isdir(set_path):
            raise SessionError("set_path %s does not exist: expected the backup set directory <backup_dest>/%s made by the "
                               "copy; the label is kept in the session state, run stopped again once the set exists"
                               % (set_path, backup_id), retryable=False)
        put_labels(set_path)
        copy_dir = os.path.join(set_path, DATA_DIR, data_prefix)
        if os.path.isdir(copy_dir):
            labels_changed = put_labels(copy_dir)
            if check_mode and labels_changed:
                # The manifest lists the labels: new labels mean a new manifest.
                writer.changed = True
                manifest_path = os.path.join(copy_dir, _pg_manifest.MANIFEST_NAME)
            else:
                manifest_path = _write_backup_manifest(result, set_path, data_prefix, copy_dir, spcmap is not None, warn, writer)
        else:
            warn("no copy of the data directory at %s: backup_label was written to %s only and no backup_manifest was made"
                 % (copy_dir, set_path))
    if label_dest:
        directory = os.path.join(label_dest, backup_id)
        if not check_mode:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        put_labels(directory)
        info = {
            "backup_id": backup_id,
            "lsn": result["lsn"],
            "start_lsn": result["start_lsn"],
            "stop_lsn": result["lsn"],
            "timeline": result["timeline"],
            "stop_walfile": result["stop_walfile"],
            "system_identifier": result.get("system_identifier"),
            "server_version_num": result.get("server_version_num"),
            "set_path": set_path,
            "stopped_at": result.get("stopped_at"),
            "backup_label_sha256": hashlib.sha256(label).hexdigest(),
        }
        writer.put(os.path.join(directory, "label.json"), (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return {"label_paths": writer.paths, "backup_manifest": manifest_path, "changed": writer.changed}


def _write_backup_manifest(result: t.Dict[str, t.Any], set_path: str, data_prefix: str, copy_dir: str, has_spcmap: bool,
                           warn: t.Callable[[str], None], writer: _OutputWriter) -> t.Optional[str]:
    """PostgreSQL's backup_manifest for the copy in ``copy_dir`` (whose labels are already written); its path or None."""
    version_num = int(result.get("server_version_num") or 0)
    if version_num < 130000:
        warn("PostgreSQL %d has no backup_manifest format; none was written" % version_num)
        return None
    try:
        entries = _pg_manifest.copy_entries(load_manifest(set_path), set_path, data_prefix)
    except ValueError as exc:
        raise SessionError("cannot write backup_manifest for %s: %s; check manifest.json of %s (written by the copy) and run "
                           "stopped again" % (copy_dir, exc, set_path), retryable=False)
    if not entries:
        warn("manifest.json of %s lists no files under %s/: no backup_manifest was written (copy the data directory first)"
             % (set_path, data_prefix))
        return None
    entries.append(_pg_manifest.file_entry(copy_dir, "backup_label"))
    if has_spcmap:
        entries.append(_pg_manifest.file_entry(copy_dir, "tablespace_map"))
    if result["timeline"] != result.get("stop_timeline", result["timeline"]):
        raise SessionError("the backup started on timeline %s and ended on %s (a promotion during the backup); no "
                           "backup_manifest can be written for it: run the backup again" % (result["timeline"], result["stop_timeline"]),
                           retryable=False)
    manifest = _pg_manifest.build_manifest(entries, version_num, result.get("system_identifier"), int(result["timeline"]),
                                           parse_lsn(result["start_lsn"]), parse_lsn(result["lsn"]))
    path = os.path.join(copy_dir, _pg_manifest.MANIFEST_NAME)
    writer.put(path, manifest, listed=False)  # reported as backup_manifest, not among the label files
    return path


# ---------------------------------------------------------------------------------------------------------
# Operations (what the module calls)
# ---------------------------------------------------------------------------------------------------------

START_FACT_KEYS = ("start_lsn", "timeline", "backend_pid", "holder_pid", "server_version_num", "postmaster_start_time",
                   "system_identifier", "data_directory", "tablespaces", "page_size", "wal_segment_size", "backup_start_epoch", "started_at",
                   "expires_at")
STOP_FACT_KEYS = ("lsn", "labelfile", "spcmapfile", "start_lsn", "timeline", "stop_walfile", "archived", "archive_check", "stop_seconds",
                  "backup_stop_epoch", "backup_mode_seconds")


def _start_facts(state: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    facts = state.get("facts") or {}
    return dict((key, facts.get(key)) for key in START_FACT_KEYS)


def _stop_facts(result: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    return dict((key, result.get(key)) for key in STOP_FACT_KEYS)


class PgBackupSession:
    """The module's engine: ``started`` / ``stopped`` / ``aborted`` / ``status`` of one backup id."""

    def __init__(self, params: t.Dict[str, t.Any], check_mode: bool, warn: t.Callable[[str], None]) -> None:
        self.params = params
        self.check_mode = check_mode
        self.warn = warn
        self.runtime_dir = params.get("runtime_dir") or default_runtime_dir()
        self.backup_id = params.get("backup_id")
        self.run_id = params.get("run_id")
        self.store = SessionStore(self.runtime_dir, self.backup_id) if self.backup_id else None
        # Pre's bound on the wait for the holder's start (pg_backup_session's pre_window; _guard.PreWindow).
        self.start_timeout = None  # type: t.Optional[t.Callable[[], float]]

    def require_id(self) -> SessionStore:
        validate_backup_id(self.backup_id)
        return self.store

    def _other_run(self, state: t.Dict[str, t.Any]) -> bool:
        """The session was started by another run than ours (only known when we were given a run_id)."""
        return bool(self.run_id) and state.get("run_id") != self.run_id

    def _left_alone(self, what: str, state: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        """state=stopped/aborted for a session this run did not start: it is not ours to end, and its label is not ours."""
        result = {"changed": False, "queries": [], "session_run_id": state.get("run_id"),
                  "msg": "PostgreSQL backup session %s in %s belongs to another run (run_id %s, state %s), not to this run "
                         "(run_id %s): this run started nothing there, so state=%s leaves it alone%s"
                         % (self.backup_id, self.store.path, state.get("run_id"), state.get("state"), self.run_id, what,
                            " and writes no file" if what == "stopped" else "")}
        if what == "stopped":
            result.update(label_paths=[], backup_manifest=None)
        return result

    @contextlib.contextmanager
    def _locked(self) -> t.Iterator[None]:
        if self.check_mode:
            yield
            return
        with self.store.lock():
            yield

    # -- started --------------------------------------------------------------------------------------
    def started(self) -> t.Dict[str, t.Any]:
        store = self.require_id()
        store.check_socket_path()
        if not HAS_PSYCOPG:
            raise SessionError("psycopg missing", retryable=False, missing_psycopg=True)
        if not self.check_mode:
            store.create()
        with self._locked():
            state = store.read_state() if store.exists() else None
            previous = None
            if state:
                liveness, live = session_liveness(store, state)
                if liveness == ALIVE and live.get("state") == RUNNING:
                    if self._other_run(live):
                        raise SessionError(
                            "PostgreSQL backup %s is running for another run (run_id %s, holder %s, started at %s), not for "
                            "this run (run_id %s): a backup id names one backup; choose a new backup_id"
                            % (self.backup_id, live.get("run_id"), live.get("holder_pid"), live.get("started_at"), self.run_id),
                            retryable=False)
                    result = _start_facts(live)
                    result.update(changed=False, queries=[], preflight={}, runtime_dir=store.path, session_run_id=live.get("run_id"),
                                  msg="PostgreSQL backup %s is already running (holder %s)" % (self.backup_id, live.get("holder_pid")))
                    return result
                if liveness in (ALIVE, BUSY):
                    raise SessionError("PostgreSQL backup %s is being %s by another task (holder %s); wait for it and run again"
                                       % (self.backup_id, "started" if state.get("state") == STARTING else "stopped",
                                          state.get("holder_pid")))
                if state.get("state") == STOPPED:
                    raise SessionError(
                        "PostgreSQL backup %s was already completed (stopped at %s, stop LSN %s, state in %s); a backup label "
                        "is used once: choose a new backup_id" % (self.backup_id, (state.get("result") or {}).get("stopped_at"),
                                                                  (state.get("result") or {}).get("lsn"), store.state_path),
                        retryable=False)
                previous = state
            return self._start(previous)

    def _start(self, previous: t.Optional[t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
        params = self.params
        base_kwargs = connection_kwargs(params)
        queries = []  # type: t.List[str]
        conn = connect(base_kwargs)
        try:
            preflight = run_preflight(conn, self.backup_id, params["require_archiving"], queries)
        except _psycopg().Error as exc:
            raise SessionError("preflight on %s failed: %s; grant the role what the statement needs (see queries) or use another "
                               "login_user" % (describe_target(base_kwargs), _error_text(exc)),
                               retryable=retryable_sqlstate(getattr(exc, "sqlstate", None)), queries=queries)
        finally:
            conn.close()
        for warning in preflight["warnings"]:
            self.warn(warning)
        if previous is not None:
            self.warn("an earlier attempt of backup %s ended as %s (%s); starting a new one"
                      % (self.backup_id, previous.get("state"), previous.get("reason")))
        if preflight["errors"]:
            raise SessionError("PostgreSQL at %s is not ready for backup %s: %s"
                               % (describe_target(base_kwargs), self.backup_id, "; ".join(preflight["errors"])),
                               retryable=preflight["retryable"], preflight=preflight, queries=queries)
        version_num = preflight["server_version_num"]
        would_run = holder_queries(version_num, self.backup_id, params["fast"])
        if self.check_mode:
            result = dict((key, preflight.get(key)) for key in START_FACT_KEYS)
            result.update(changed=True, preflight=preflight, queries=queries + would_run, runtime_dir=self.store.path,
                          session_run_id=self.run_id,
                          msg="check mode: would start PostgreSQL backup %s in a holder process" % self.backup_id)
            return result
        spec = {
            "backup_id": self.backup_id,
            "run_id": self.run_id,
            "runtime_dir": self.runtime_dir,
            "conn_kwargs": holder_connection_kwargs(base_kwargs, self.backup_id),
            "fast": params["fast"],
            "max_duration": params["max_duration"],
            "keepalive_interval": params["keepalive_interval"],
            "server_version_num": version_num,
            "preflight": dict((k, v) for k, v in preflight.items() if k != "errors"),
        }
        report = spawn_holder(spec, self.start_timeout() if self.start_timeout else None)
        if report.get("timed_out"):
            raise SessionError("PostgreSQL backup %s did not start on %s within pre's bound (backup_pre_timeout): %s. The "
                               "holder (record %s) may still be waiting for the server's checkpoint; post ends its session. "
                               "Find out why the start is slow (a large checkpoint: backup_postgresql_fast), or raise "
                               "backup_pre_timeout" % (self.backup_id, describe_target(base_kwargs), report.get("error"),
                                                       self.store.state_path),
                               retryable=False, preflight=preflight, queries=queries, pre_timed_out=True)
        if not report.get("ok"):
            raise SessionError("PostgreSQL backup %s did not start on %s: %s. The server did not enter backup mode for it; fix "
                               "the cause (the holder's record is %s) and run the backup again"
                               % (self.backup_id, describe_target(base_kwargs), report.get("error"), self.store.state_path),
                               retryable=report.get("retryable", True), preflight=preflight, queries=queries)
        state = report["state"]
        result = _start_facts(state)
        result.update(changed=True, preflight=preflight, queries=queries + state["facts"].get("queries", []),
                      runtime_dir=self.store.path, session_run_id=state.get("run_id"))
        return result

    # -- stopped --------------------------------------------------------------------------------------
    def stopped(self) -> t.Dict[str, t.Any]:
        store = self.require_id()
        if not store.exists():
            return self._no_session("stopped")
        with self._locked():
            state = store.read_state()
            if not state:
                return self._no_session("stopped")
            if self._other_run(state):
                # A pre refused because the id was used before must not hand the earlier backup's label to this run.
                return self._left_alone("stopped", state)
            name = state.get("state")
            if name == STOPPED:
                return self._finish_stop(state, changed=False)
            if name == FAILED and state.get("start_failed"):
                # The server never entered backup mode for this id: like no session, post has nothing to undo.
                result = self._no_session("stopped")
                result["msg"] = ("PostgreSQL backup %s never started (%s); the server was never in backup mode for it, "
                                 "nothing to stop" % (self.backup_id, state.get("reason")))
                return result
            if name in ENDED_UNUSABLE:
                raise SessionError(ended_message(self.backup_id, state, store), retryable=False, state=state)
            liveness, _live = session_liveness(store, state)
            if liveness == GONE:
                state = mark_gone(store, state)
                raise SessionError(aborted_message(self.backup_id, state), retryable=False, state=state)
            if liveness == BUSY or name != RUNNING:
                raise SessionError("PostgreSQL backup %s is being %s by another task (holder %s); wait for it and run stopped again"
                                   % (self.backup_id, "started" if name == STARTING else "stopped", state.get("holder_pid")))
            version_num = (state.get("facts") or {}).get("server_version_num") or 150000
            if self.check_mode:
                facts = state.get("facts") or {}
                result = dict((key, None) for key in STOP_FACT_KEYS)
                result.update(start_lsn=facts.get("start_lsn"), timeline=facts.get("timeline"), archived=False, changed=True,
                              queries=stop_queries(version_num, self.params["wait_for_archive"]), label_paths=[],
                              backup_manifest=None,
                              msg="check mode: would stop PostgreSQL backup %s (holder %s)" % (self.backup_id, state.get("holder_pid")))
                return result
            request = {"cmd": "stop", "wait_for_archive": self.params["wait_for_archive"],
                       "archive_timeout": self.params["archive_timeout"]}
            try:
                answer = holder_request(store.socket_path, request, timeout=self.params["archive_timeout"] + 120)
            except HolderUnreachable:
                state = mark_gone(store, state)
                raise SessionError(aborted_message(self.backup_id, state), retryable=False, state=state)
            except socket.timeout:
                raise SessionError("the holder of PostgreSQL backup %s did not answer the stop within %d s; check %s and the "
                                   "server, then run stopped again"
                                   % (self.backup_id, self.params["archive_timeout"] + 120, store.state_path))
            state = answer.get("state") or store.read_state() or {}
            if not answer.get("ok"):
                raise SessionError(ended_message(self.backup_id, state, store), retryable=False, state=state)
            return self._finish_stop(state, changed=True)

    def _finish_stop(self, state: t.Dict[str, t.Any], changed: bool) -> t.Dict[str, t.Any]:
        """Write the label files (again, if a previous write failed) and return the stop facts."""
        result = state["result"]
        try:
            outputs = write_outputs(result, self.backup_id, self.params.get("set_path"), self.params.get("label_dest"),
                                    self.params["data_prefix"], self.warn, self.check_mode)
        except OSError as exc:
            raise SessionError(
                "could not write the label files of PostgreSQL backup %s: %s (%s) on %s; the server already left backup mode "
                "and the label is kept in %s: fix the destination and run stopped again"
                % (self.backup_id, exc.strerror or exc, errno.errorcode.get(exc.errno or 0, "?"), exc.filename, self.store.state_path),
                retryable=exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT))
        if not self.check_mode and (outputs["changed"] or result.get("label_paths") != outputs["label_paths"]):
            stored = dict(state)
            stored["result"] = dict(result, label_paths=outputs["label_paths"], backup_manifest=outputs["backup_manifest"])
            self.store.write_state(stored)
        facts = _stop_facts(result)
        facts.update(changed=changed or outputs["changed"], label_paths=outputs["label_paths"],
                     backup_manifest=outputs["backup_manifest"], queries=result.get("queries", []) if changed else [],
                     session_run_id=state.get("run_id"))
        if result.get("archive_mode") is not None:
            self.warn("the WAL of backup %s was not waited for: archive_mode is %s on the server; the backup needs the WAL "
                      "from %s onwards from pg_wal" % (self.backup_id, result.get("archive_mode"), result.get("start_lsn")))
        return facts

    # -- aborted --------------------------------------------------------------------------------------
    def aborted(self) -> t.Dict[str, t.Any]:
        store = self.require_id()
        if not store.exists():
            return self._no_session("aborted")
        with self._locked():
            state = store.read_state()
            if not state:
                return self._no_session("aborted")
            if self._other_run(state):
                return self._left_alone("aborted", state)
            name = state.get("state")
            if name not in (STARTING, RUNNING, STOPPING):
                return {"changed": False, "state": state, "queries": [],
                        "msg": "PostgreSQL backup %s is already %s; nothing to abort" % (self.backup_id, name)}
            liveness, _live = session_liveness(store, state)
            if liveness == GONE:
                state = mark_gone(store, state)
                return {"changed": False, "state": state, "queries": [],
                        "msg": "the holder of PostgreSQL backup %s was already gone; the server ended backup mode" % self.backup_id}
            if self.check_mode:
                return {"changed": True, "state": state, "queries": [],
                        "msg": "check mode: would abort PostgreSQL backup %s (holder %s)" % (self.backup_id, state.get("holder_pid"))}
            try:
                answer = holder_request(store.socket_path, {"cmd": "abort", "reason": "aborted on request (state=aborted)"}, timeout=60)
            except HolderUnreachable:
                state = mark_gone(store, state)
                return {"changed": False, "state": state, "queries": [],
                        "msg": "the holder of PostgreSQL backup %s was already gone" % self.backup_id}
            except socket.timeout:
                raise SessionError("the holder of PostgreSQL backup %s did not answer the abort within 60 s (busy starting or "
                                   "stopping); run aborted again" % self.backup_id)
            return {"changed": True, "state": answer.get("state") or store.read_state(), "queries": [],
                    "msg": "PostgreSQL backup %s aborted: the holder closed its connection, so the server left backup mode" % self.backup_id}

    # -- status ---------------------------------------------------------------------------------------
    def status(self) -> t.Dict[str, t.Any]:
        if not self.backup_id:
            return self._all_sessions()
        store = self.require_id()
        state = store.read_state() if store.exists() else None
        if not state:
            return {"changed": False, "running": False, "state": {},
                    "msg": "no PostgreSQL backup session %s in %s" % (self.backup_id, self.runtime_dir)}
        liveness, live = session_liveness(store, state)
        if live:
            state = live
        running = state.get("state") == RUNNING and liveness in (ALIVE, BUSY)
        msg = "PostgreSQL backup %s is %s" % (self.backup_id, state.get("state"))
        if state.get("state") in (STARTING, RUNNING, STOPPING) and liveness == GONE:
            msg = aborted_message(self.backup_id, state)
        return {"changed": False, "running": running, "state": state, "msg": msg}

    def _all_sessions(self) -> t.Dict[str, t.Any]:
        """status without backup_id: every session in runtime_dir, ``running`` when any runs."""
        sessions = []
        try:
            names = sorted(os.listdir(self.runtime_dir))
        except FileNotFoundError:
            names = []
        for name in names:
            store = SessionStore(self.runtime_dir, name)
            state = store.read_state() if not _layout.backup_id_problem(name) and store.exists() else None
            if not state:
                continue
            liveness, live = session_liveness(store, state)
            state = live or state
            sessions.append({"backup_id": name, "state": state.get("state"),
                             "running": state.get("state") == RUNNING and liveness in (ALIVE, BUSY),
                             "holder_pid": state.get("holder_pid"), "started_at": state.get("started_at")})
        running = [s["backup_id"] for s in sessions if s["running"]]
        return {"changed": False, "running": bool(running), "state": {}, "sessions": sessions,
                "msg": "%d PostgreSQL backup session(s) in %s, running: %s"
                       % (len(sessions), self.runtime_dir, ", ".join(running) or "none")}

    def _no_session(self, what: str) -> t.Dict[str, t.Any]:
        result = {"changed": False, "queries": [],
                  "msg": "no PostgreSQL backup session %s was running (no %s); nothing to do for state=%s"
                  % (self.backup_id, self.store.state_path, what)}
        if what == "stopped":
            result.update(label_paths=[], backup_manifest=None)
        return result
