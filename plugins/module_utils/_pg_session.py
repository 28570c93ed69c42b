# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""PostgreSQL non-exclusive backup session: what pg_backup_session does (started, stopped, aborted, status) and the
label files it writes.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The SQL and the preflight are in _pg_sql, the holder process that keeps the backup's one connection open (and the
client that talks to it) in _pg_holder; this file composes them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _layout, _pg_manifest
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write
from ansible_collections.consistent.backup.plugins.module_utils._layout import DATA_DIR, default_runtime_dir
from ansible_collections.consistent.backup.plugins.module_utils._manifest import load_manifest
from ansible_collections.consistent.backup.plugins.module_utils._pg_holder import (
    ALIVE, BUSY, ENDED_UNUSABLE, FAILED, GONE, RUNNING, STARTING, STOPPED, STOPPING, HolderUnreachable, SessionStore,
    aborted_message, ended_message, guard_post, holder_request, mark_gone, session_liveness, spawn_holder)
from ansible_collections.consistent.backup.plugins.module_utils._pg_sql import (
    HAS_PSYCOPG, SessionError, connect, connection_kwargs, describe_target, error_text, holder_connection_kwargs, holder_queries,
    parse_lsn, psycopg_module, retryable_sqlstate, run_preflight, stop_queries, validate_backup_id)


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
        """Start the backup (check mode: the preflight); every result carries ``guard_post``, the guard's post for it."""
        store = self.require_id()
        store.check_socket_path()
        result = self._started(store)
        result["guard_post"] = guard_post(store)
        return result

    def _started(self, store: SessionStore) -> t.Dict[str, t.Any]:
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
        except psycopg_module().Error as exc:
            raise SessionError("preflight on %s failed: %s; grant the role what the statement needs (see queries) or use another "
                               "login_user" % (describe_target(base_kwargs), error_text(exc)),
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
