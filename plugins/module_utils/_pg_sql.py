# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PostgreSQL's SQL for a non-exclusive backup: the functions per server version, LSNs and WAL segment names, the
archive status of the stop segment, the connection helper and the read-only preflight.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Nothing here keeps a session: the holder (_pg_holder) runs these statements in its own connection, the operations
(_pg_session) report them as ``queries``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _layout, _pg_manifest
from ansible_collections.consistent.backup.plugins.module_utils._layout import parse_utc_iso, utc_iso

# psycopg is imported on first use, not here: the stop path only talks to the holder over its socket, and
# importing psycopg (about 0.1 s) would otherwise sit inside the database's quiesce window.
HAS_PSYCOPG = importlib.util.find_spec("psycopg") is not None
PSYCOPG_IMPORT_ERROR = None if HAS_PSYCOPG else "ModuleNotFoundError: No module named 'psycopg'"  # type: t.Optional[str]


def psycopg_module() -> t.Any:
    """The psycopg package, imported once when a connection is first needed."""
    return importlib.import_module("psycopg")


MIN_SERVER_VERSION_NUM = 120000
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_WALFILE_RE = re.compile(r"^[0-9A-F]{24}")
# A real WAL segment: timeline, log, segment (8 hex digits each), and '.partial' for the last segment of an old timeline.
_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
ARCHIVE_POLL_SECONDS = 0.1


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
        return psycopg_module().connect(autocommit=True, **options)
    except psycopg_module().Error as exc:
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
    except psycopg_module().Error:
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
                    "or pg_stat_archiver alone, as the role may)" % ARCHIVE_POLL_SECONDS]
    return queries


def retryable_error(exc: BaseException) -> bool:
    """Whether trying again may help: a SessionError says so, a server error by its SQLSTATE."""
    if isinstance(exc, SessionError):
        return exc.retryable
    return retryable_sqlstate(getattr(exc, "sqlstate", None))


def error_text(exc: BaseException) -> str:
    """A server error as the operator reads it: its text and SQLSTATE."""
    text = str(exc).strip() or exc.__class__.__name__
    sqlstate = getattr(exc, "sqlstate", None)
    return "%s (SQLSTATE %s)" % (text, sqlstate) if sqlstate else text
