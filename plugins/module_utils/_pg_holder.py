# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The PostgreSQL backup's holder: the detached process that owns the backup's connection, its session directory,
and the client side that talks to it over its socket.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Why a holder process: a non-exclusive backup belongs to the database session that started it. When that
connection closes before the stop, the server aborts the backup ("aborting backup due to backend exiting
before pg_backup_stop was called") and no reconnect can recover it. An Ansible task ends when its module
returns, so ``started`` starts a detached holder (_detach.spawn: double fork, setsid, stdio on /dev/null) that opens
the one connection itself, starts the backup and keeps the session until ``stopped`` asks it, over a Unix socket in a
0700 directory, to stop the backup and hand back backup_label and tablespace_map.

Per session directory ``<runtime_dir>/<backup_id>/``:

    holder.sock   the holder's socket (_wire: one JSON line each way; cmd status / stop / abort)
    state.json    starting | running | stopping | stopped | aborted | expired | failed, the run_id that started it, the start facts,
                  the stop result (label included, so a failed write of the label can be repeated) and the reason
    lock          flock'ed by a module run while it changes the session
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import select
import signal
import socket
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _detach, _wire
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import exclusive_lock, private_dir_problem, write_json
from ansible_collections.consistent.backup.plugins.module_utils._layout import utc_iso
from ansible_collections.consistent.backup.plugins.module_utils._pg_sql import (
    SQL_ARCHIVE_MODE, SQL_ARCHIVE_STATUS_PRIVILEGES, SQL_BACKEND_PID, SQL_POLL_STATUS_DIR, SQL_POLL_STATUS_FILE,
    SQL_VERIFY_SESSION, SQL_WALFILE, ARCHIVE_POLL_SECONDS, ARCHIVE_READY, ARCHIVE_REMOVED, ARCHIVE_UNNOTIFIED, SessionError,
    archive_poll, archive_status_from_listing, backup_functions, error_text, is_not_in_progress_error, psycopg_module, render_sql,
    retryable_error, session_settings, stop_segment_archived, walfile_timeline)

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

_MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux
# The on-host guard's post (guard_post): how long the holder may take to answer the abort, and then to exit.
GUARD_ABORT_TIMEOUT = 10.0
GUARD_EXIT_WAIT = 15.0


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
                self.fail_start(error_text(exc), retryable=retryable_error(exc))
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
                    self.end(ABORTED, "the holder failed: %s" % error_text(exc))
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

        self.conn = psycopg_module().connect(autocommit=True, **spec["conn_kwargs"])
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
            self.end(ABORTED, "the connection to PostgreSQL was lost (%s)" % error_text(exc))
            return
        if pid != self.state["backend_pid"]:
            self.end(ABORTED, "the backend pid changed from %s to %s: a pooler moved the session to another backend"
                     % (self.state["backend_pid"], pid))

    # -- requests -------------------------------------------------------------------------------------
    def handle(self, client: socket.socket) -> None:
        client.settimeout(10)
        peer_uid = _wire.peer_credentials(client)[1]
        try:
            request = _wire.receive(client)
        except (OSError, ValueError) as exc:
            _wire.send(client, {"ok": False, "error": "bad request: %s" % exc})
            return
        if peer_uid not in (0, os.geteuid()):
            _wire.send(client, {"ok": False, "error": "uid %d may not talk to this holder" % peer_uid})
            return
        command = request.get("cmd")
        if command == "status":
            _wire.send(client, {"ok": True, "state": self.state})
        elif command == "stop":
            _wire.send(client, self.stop(bool(request.get("wait_for_archive", True)), int(request.get("archive_timeout", 300))))
        elif command == "abort":
            self.end(ABORTED, request.get("reason") or "aborted on request")
            _wire.send(client, {"ok": True, "state": self.state})
        else:
            _wire.send(client, {"ok": False, "error": "unknown command %r" % command})

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
            text = error_text(exc)
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
                error = "could not check the archiving of %s: %s" % (stop_walfile, error_text(exc))
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
            time.sleep(ARCHIVE_POLL_SECONDS)

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

# Nobody listens on the session's socket: the holder is gone.
HolderUnreachable = _wire.Unreachable


def holder_request(socket_path: str, request: t.Dict[str, t.Any], timeout: float) -> t.Dict[str, t.Any]:
    """One request to the holder (cmd status, stop or abort) and its answer (_wire.request)."""
    return _wire.request(socket_path, request, timeout)


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


def guard_post(store: SessionStore) -> t.Dict[str, t.Any]:
    """The post the on-host guard holds for this session (backup_guard's ``post``, the generic ``socket`` kind).

    It asks the holder to abort (the holder closes its connection, so the server leaves backup mode) and waits for the
    holder to exit; a holder that does not answer gets SIGTERM. Post is idempotent: nobody listening on the socket means
    the holder is gone (the session was stopped, aborted or never started, or the holder died and its connection with
    it), so the server is not in backup mode for this session any more.
    """
    return {"socket": {
        "path": store.socket_path,
        "request": {"cmd": "abort"},
        "reason_key": "reason",
        "success": {"ok": True},
        "absent_ok": True,
        "timeout": GUARD_ABORT_TIMEOUT,
        "exit_wait": GUARD_EXIT_WAIT,
        "answer_field": "state.state",
        "what": "end the PostgreSQL backup session %s (its holder closes the connection; the server leaves backup mode)"
                % store.backup_id,
    }}
