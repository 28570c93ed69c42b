# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Backup set lifecycle: open (lock), close (report.json, then COMPLETE last), release.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

A set lives in ``<backup_dest>/<backup_id>/``. While a run writes it, ``LOCK`` holds the run's identity
(created with O_EXCL, so two runs cannot both own it). ``COMPLETE`` is written last and only when the
verdict is a success and the set's manifest (and any engine metadata the caller names) is on the medium:
a restore refuses a set without it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _detach
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, fsync_dir, output_tail
from ansible_collections.consistent.backup.plugins.module_utils import _layout
from ansible_collections.consistent.backup.plugins.module_utils import _sets
from ansible_collections.consistent.backup.plugins.module_utils._layout import (
    COMPLETE_NAME, IDENTITY_NAME, LOCK_NAME, REPORT_NAME, utc_iso)
from ansible_collections.consistent.backup.plugins.module_utils._manifest import (
    MANIFEST_NAME, default_host, load_manifest, manifest_path)
from ansible_collections.consistent.backup.plugins.module_utils._secrets import mask, mask_data, module_secrets

# The phase ledger: one JSON line per attempt of pre, copy or post, appended by the module that made the attempt.
LEDGER_NAME = "phases.jsonl"
PHASE_ORDER = ("media", "pre", "copy", "post", "verify", "readback")


class BackupSetError(Exception):
    """A backup set cannot be opened or closed; the message says why and what to do."""


def set_path(dest: str, backup_id: str) -> str:
    """The set's directory (the one rule in _layout), with its refusal as a BackupSetError naming this module's option."""
    try:
        return _layout.set_path(dest, backup_id, option="dest")
    except ValueError as exc:
        raise BackupSetError(str(exc))


def read_lock(path: str) -> t.Optional[t.Dict[str, t.Any]]:
    try:
        with open(os.path.join(path, LOCK_NAME), "r", encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"unreadable": text[:200]}


def lock_is_stale(lock: t.Dict[str, t.Any], stale_after: t.Optional[int], now: float) -> t.Optional[str]:
    """Why another run's lock may be taken over, or None.

    The lock names its owner: the run's guard process on the database host (the one process that lives as long as
    the run). When that process is provably gone (same host; the process is gone or the host rebooted), the lock
    is stale. Otherwise only an operator's stale_after (the longest a run may take) makes it stale.
    """
    gone, why = _detach.owner_gone(lock.get("owner"))
    if gone:
        return "its owner is gone: " + why
    if stale_after is not None and isinstance(lock.get("epoch"), (int, float)) and now - lock["epoch"] > stale_after:
        return "it is %d s old, more than stale_lock_after %d s" % (now - lock["epoch"], stale_after)
    return None


def plan_open(dest: str, backup_id: str, run_id: str) -> t.Dict[str, t.Any]:
    """What opening the set would do, without writing: raises BackupSetError when it would be refused."""
    path = set_path(dest, backup_id)
    if not os.path.isdir(dest):
        raise BackupSetError("backup destination %s does not exist or is not a directory; mount the backup medium there first" % dest)
    if os.path.exists(os.path.join(path, COMPLETE_NAME)):
        raise BackupSetError(
            "backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or remove the set" % path
        )
    lock = read_lock(path)
    return {
        "set_path": path,
        "exists": os.path.isdir(path),
        "lock": lock,
        "own_lock": bool(lock and lock.get("run_id") == run_id),
    }


def open_set(dest: str, backup_id: str, run_id: str, stale_after: t.Optional[int],
             owner_pid: t.Optional[int] = None, engine: str = "files", host: t.Optional[str] = None,
             database: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """Create the set directory, take its lock and record whose set it is. Returns {set_path, changed, lock,
    broke_stale_lock, identity}.

    ``owner_pid`` is the run's guard process; the lock records it so that a later run can prove the owner gone.
    The identity (set.json: engine, host, database, the set reader's keys) is written once, by the run that holds the
    lock, before pre: a set that never closes still says whose it is.
    """
    plan = plan_open(dest, backup_id, run_id)
    path = plan["set_path"]
    if plan["own_lock"]:
        return {"set_path": path, "changed": False, "lock": plan["lock"], "broke_stale_lock": None,
                "identity": _sets.read_identity(path)}
    created = False
    if not plan["exists"]:
        os.mkdir(path, 0o750)
        fsync_dir(dest)
        created = True
    now = time.time()
    lock = {
        "run_id": run_id,
        "backup_id": backup_id,
        "host": socket.gethostname(),
        "epoch": now,
        "since": utc_iso(),
    }
    if owner_pid:
        lock["owner"] = _detach.owner(owner_pid)
    broke = None
    lock_file = os.path.join(path, LOCK_NAME)
    for _attempt in range(2):
        try:
            fd = os.open(lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            held = read_lock(path) or {}
            if held.get("run_id") == run_id:
                return {"set_path": path, "changed": created, "lock": held, "broke_stale_lock": None,
                        "identity": _sets.read_identity(path)}
            stale = lock_is_stale(held, stale_after, now) if broke is None else None
            if stale:
                broke = dict(held, taken_over_because=stale)
                lock["took_over"] = broke  # report.json says so when the set is closed
                os.unlink(lock_file)
                continue
            raise BackupSetError(
                "backup set %s is locked by run %s from host %s since %s (%s); expected no other run on this set. "
                "Wait for that run to finish, or if it is dead remove %s"
                % (path, held.get("run_id"), held.get("host"), held.get("since"),
                   _detach.owner_gone(held.get("owner"))[1], lock_file)
            )
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(lock, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(path)
        identity = _sets.identity_document(backup_id, engine, host or default_host(), database, run_id)
        atomic_write(os.path.join(path, IDENTITY_NAME), (json.dumps(identity, sort_keys=True) + "\n").encode("utf-8"), 0o640)
        return {"set_path": path, "changed": True, "lock": lock, "broke_stale_lock": broke, "identity": identity}
    raise BackupSetError("backup set %s: could not take the lock %s; remove it if no run is using the set" % (path, lock_file))


def open_or_plan(dest: str, backup_id: str, run_id: str, stale_after: t.Optional[int], owner_pid: t.Optional[int],
                 engine: str, host: t.Optional[str], database: t.Optional[str], check_mode: bool) -> t.Dict[str, t.Any]:
    """state=open of backup_set (and of backup_guard's open_set): open the set, or in check mode say whether it would
    be opened (a live lock of another run is refused as it would be). Raises BackupSetError; the result's ``warning``
    says when an abandoned lock was taken over."""
    path = set_path(dest, backup_id)
    if check_mode:
        plan = plan_open(dest, backup_id, run_id)
        held = plan["lock"]
        stale = lock_is_stale(held, stale_after, time.time()) if held and not plan["own_lock"] else None
        if held and not plan["own_lock"] and not stale:
            raise BackupSetError("backup set %s is locked by run %s from host %s since %s; wait for that run to finish"
                                 % (path, held.get("run_id"), held.get("host"), held.get("since")))
        return {"changed": not plan["own_lock"], "set_path": path, "lock": held, "identity": None,
                "broke_stale_lock": dict(held, taken_over_because=stale) if stale else None}
    result = open_set(dest, backup_id, run_id, stale_after, owner_pid, engine, host, database)
    broke = result.get("broke_stale_lock")
    if broke:
        result["warning"] = "took over the lock of run %s on backup set %s: %s" % (
            broke.get("run_id"), path, broke["taken_over_because"])
    return result


# ---------------------------------------------------------------------------------------------------------
# The phase ledger
# ---------------------------------------------------------------------------------------------------------
#
# Each attempt of a phase is recorded by the module that makes it (backup_command for operator commands,
# pg_backup_session, aligned_copy), in <set>/phases.jsonl: a line when it starts (result "started") and a line when it
# ends (ok or failed), appended and fsynced. Ansible's until/retries keeps only the last attempt's result; the ledger
# keeps every attempt, with its message. An attempt that started and never said how it ended (its module crashed or
# was killed) counts as failed: a step that never reported is not trusted. close_set reads it back into report.json.

# The result of an attempt's first line; the attempt's end line follows it (ok or failed), unless the module died.
STARTED = "started"


def record_attempt(set_dir: str, run_id: str, phase: str, record: t.Dict[str, t.Any]) -> bool:
    """Append one attempt to the set's ledger. False (nothing written) when the set does not exist: a run that was
    refused before it opened its set has no ledger."""
    if not os.path.isdir(set_dir):
        return False
    line = dict(record, phase=phase, run_id=run_id)
    fd = os.open(os.path.join(set_dir, LEDGER_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def read_ledger(set_dir: str, run_id: str) -> t.List[t.Dict[str, t.Any]]:
    """This run's attempts, in the order they ended (a torn last line, from a crash, is skipped)."""
    attempts = []
    try:
        with open(os.path.join(set_dir, LEDGER_NAME), "r", encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("run_id") == run_id:
                    attempts.append(record)
    except FileNotFoundError:
        pass
    return attempts


def _unreported(started: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """The end of an attempt that started and never said how it ended: a failure."""
    when = _as_float(started.get("start"))
    return {"start": started.get("start"), "end": None, "result": "failed", "rc": None, "stdout_tail": None,
            "stderr_tail": None, "msg": "the attempt started at %s (pid %s) never reported how it ended: its module crashed "
            "or was killed; see the task's output, then run the backup again"
            % (utc_iso(when) if when is not None else "an unknown time", started.get("pid", "unknown"))}


def phases_from_ledger(attempts: t.List[t.Dict[str, t.Any]]) -> t.Dict[str, t.Dict[str, t.Any]]:
    """report.json's phases: per phase, start of the first attempt, end of the last, attempts, the last result,
    every failed attempt's message, and the facts of the last attempt (bytes, quiesce times, ...). An attempt whose
    start line has no end line (the next line of the phase is another start, or there is none) is a failed attempt."""
    ended = []  # type: t.List[t.Dict[str, t.Any]]
    open_attempts = {}  # type: t.Dict[str, t.Dict[str, t.Any]]
    for record in attempts:
        name = record["phase"]
        if record.get("result") == STARTED:
            if name in open_attempts:
                ended.append(dict(_unreported(open_attempts[name]), phase=name))
            open_attempts[name] = record
            continue
        open_attempts.pop(name, None)
        ended.append(record)
    ended += [dict(_unreported(started), phase=name) for name, started in open_attempts.items()]
    phases = {}  # type: t.Dict[str, t.Dict[str, t.Any]]
    for record in ended:
        phase = phases.setdefault(record["phase"], {"start": record.get("start"), "attempts": 0, "messages": []})
        phase["attempts"] += 1
        phase["end"] = record.get("end")
        phase["result"] = record.get("result")
        for key in ("msg", "rc", "stdout_tail", "stderr_tail"):
            phase[key] = record.get(key)
        if record.get("result") == "failed":
            phase["messages"].append({"attempt": phase["attempts"], "msg": record.get("msg"), "rc": record.get("rc"),
                                      "stderr_tail": record.get("stderr_tail")})
        phase.update(record.get("facts") or {})
    return phases


# The job handle (doc_fragments/_job.py): every module that works inside a set takes it; the ledger is job + phase.
JOB_ARGUMENT_SPEC: t.Dict[str, t.Dict[str, t.Any]] = {
    "job": {"type": "dict", "options": {"dest": {"type": "path", "required": True},
                                        "backup_id": {"type": "str", "required": True},
                                        "run_id": {"type": "str", "required": True}}},
    "phase": {"type": "str", "choices": list(PHASE_ORDER)},
}


def job_argument_spec() -> t.Dict[str, t.Dict[str, t.Any]]:
    """A fresh copy of the job handle's options, for a module's argument spec."""
    return json.loads(json.dumps(JOB_ARGUMENT_SPEC))


def job_set_path(module: t.Any) -> t.Optional[str]:
    """The set of the module's ``job`` (None without one); a bad destination or id fails the module, naming it."""
    job = module.params.get("job")
    if not job:
        return None
    try:
        return _layout.set_path(job["dest"], job["backup_id"], option="job.dest")
    except ValueError as exc:  # the message starts with the option: job.dest ..., job.backup_id ...
        text = str(exc)
        module.fail_json(msg=text if text.startswith("job.") else "job." + text, retryable=False)
    return None  # not reached


def apply_job_defaults(module: t.Any, keys: t.Sequence[str] = ("dest", "backup_id", "run_id")) -> None:
    """Fill the module's own ``dest``, ``backup_id`` and ``run_id`` from its ``job`` where the call left them empty (the
    call's own values take precedence)."""
    job = module.params.get("job") or {}
    for key in keys:
        module.params[key] = module.params.get(key) or job.get(key, module.params.get(key))


def medium_error_message(dest: str, exc: OSError, backup_id: str) -> str:
    """What an OS error on the backup medium while a set is opened or closed says, and what to do."""
    return ("backup set in %s: %s (%s); check that the backup medium is mounted read-write and has space"
            % (dest, exc.strerror or exc, getattr(exc, "filename", None) or backup_id))


def job_ledger(module: t.Any) -> t.Optional[t.Dict[str, t.Any]]:
    """The ledger this attempt is recorded in: {set_path, run_id, phase} from ``job`` and ``phase``, else None."""
    path = job_set_path(module)
    if path is None or not module.params.get("phase"):
        return None
    return {"set_path": path, "run_id": module.params["job"]["run_id"], "phase": module.params["phase"]}


class PhaseLedger:
    """Records the attempt a module makes when the module exits, whether it succeeds or fails.

    ``ledger`` is ``{set_path, run_id, phase}`` (job_ledger: the module's ``job`` and ``phase``); ``facts`` picks from the module's result what the
    report needs (bytes, quiesce times). Nothing is recorded in check mode or without a ledger option.

    The ledger is a file, so AnsibleModule's masking of ``no_log`` values does not reach it: every string of the line
    is masked here for the module's secrets (its ``no_log_values``, plus ``secrets``), before an output is cut to its
    tail. report.json is built from the ledger, and set_stats from report.json, so they hold only masked text.
    """

    def __init__(self, module: t.Any, ledger: t.Optional[t.Dict[str, t.Any]],
                 facts: t.Optional[t.Callable[[t.Dict[str, t.Any]], t.Dict[str, t.Any]]] = None,
                 secrets: t.Iterable[str] = ()) -> None:
        self.ledger = ledger if ledger and not module.check_mode else None
        self.facts = facts or (lambda result: {})
        self.module = module
        self.extra_secrets = list(secrets)
        self.start = time.time()
        if self.ledger is None:
            return
        try:  # the attempt's first line: if the module dies before its end line, the attempt counts as failed
            record_attempt(self.ledger["set_path"], self.ledger["run_id"], self.ledger["phase"],
                           {"start": self.start, "result": STARTED, "pid": os.getpid()})
        except (OSError, KeyError, TypeError):
            pass
        exit_json, fail_json = module.exit_json, module.fail_json

        def exit_recorded(**result: t.Any) -> None:
            self.record("ok", result)
            exit_json(**result)

        def fail_recorded(msg: str, **result: t.Any) -> None:
            self.record("failed", dict(result, msg=msg))
            fail_json(msg=msg, **result)

        module.exit_json, module.fail_json = exit_recorded, fail_recorded

    @property
    def secrets(self) -> t.List[str]:
        # Read when the attempt ends: the module's no_log values are all known by then.
        return module_secrets(self.module) + self.extra_secrets

    def record(self, outcome: str, result: t.Dict[str, t.Any]) -> None:
        secrets = self.secrets
        try:
            record_attempt(self.ledger["set_path"], self.ledger["run_id"], self.ledger["phase"], mask_data({
                "start": self.start, "end": time.time(), "result": outcome,
                "msg": result.get("msg") if outcome == "failed" else None, "rc": result.get("rc"),
                "stdout_tail": (output_tail(mask(result.get("stdout"), secrets)) or None) if outcome == "failed" else None,
                "stderr_tail": (output_tail(mask(result.get("stderr"), secrets)) or None) if outcome == "failed" else None,
                "facts": self.facts(result) if outcome == "ok" else {},
            }, secrets))
        except (OSError, KeyError, TypeError):
            pass  # the ledger is a record, never the reason a phase fails; close_set says what is missing


def _as_float(value: t.Any) -> t.Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def build_report(backup_id: str, engine: str, phases: t.Dict[str, t.Dict[str, t.Any]], manifest: t.Optional[t.Dict[str, t.Any]],
                 failure: t.Optional[str], check_mode: bool, required_phases: t.Sequence[str] = ()) -> t.Dict[str, t.Any]:
    """The report.json document: phases in order with times and attempts, quiesce_seconds, bytes, verdict.

    quiesce_seconds is the database's time out of its normal state: from the start of pre to the end of post.
    pre, copy and post, and the engine's ``required_phases`` (bdb: verify, its proof), must each have an attempt that
    ended in the ledger: a module that crashed before it could record its attempt leaves its phase without a result,
    and the verdict fails rather than trust a step that never said how it ended.
    """
    ordered = {}
    for name in PHASE_ORDER:
        if name in phases:
            ordered[name] = dict(phases[name])
    for name in sorted(set(phases) - set(PHASE_ORDER)):
        ordered[name] = dict(phases[name])
    for phase in ordered.values():
        start, end = _as_float(phase.get("start")), _as_float(phase.get("end"))
        if start is not None and end is not None:
            phase["seconds"] = round(end - start, 3)
    pre_start = _as_float(ordered.get("pre", {}).get("start"))
    post_end = _as_float(ordered.get("post", {}).get("end"))
    window = round(post_end - pre_start, 3) if pre_start is not None and post_end is not None else None
    # An engine that knows when the database left and re-entered its normal state (PostgreSQL: the start call and
    # the return of the stop call) reports it; that is the quiesce window. Otherwise the controller's pre-to-post
    # window is the best measure we have.
    engine_start = _as_float(ordered.get("pre", {}).get("quiesce_start"))
    engine_end = _as_float(ordered.get("post", {}).get("quiesce_end"))
    if engine_start is not None and engine_end is not None:
        quiesce, quiesce_source = round(engine_end - engine_start, 3), "engine"
    else:
        quiesce, quiesce_source = window, "controller"
    failed = [name for name, phase in ordered.items() if phase.get("result") == "failed"]
    must_end = ["pre", "copy", "post"] + [name for name in required_phases if name not in ("pre", "copy", "post")]
    incomplete = [name for name in must_end if ordered.get(name, {}).get("result") not in ("ok", "failed")]
    if check_mode:
        verdict = "failed" if failed else "ready"
    elif failed:
        verdict = "failed"
    elif incomplete:
        verdict = "failed"
        failure = failure or "phases %s did not run to the end" % ", ".join(incomplete)
    else:
        verdict = "success"
    files = (manifest or {}).get("files", [])
    return {
        "backup_id": backup_id,
        "engine": engine,
        "host": socket.gethostname(),
        "check_mode": check_mode,
        "phases": ordered,
        "quiesce_seconds": quiesce,
        "quiesce_source": quiesce_source,
        "window_seconds": window,
        "files": sum(1 for entry in files if entry.get("type", "file") == "file"),
        "bytes": sum(int(entry.get("size") or 0) for entry in files if entry.get("type", "file") == "file"),
        "failed_phases": failed,
        "failure": failure if verdict == "failed" else None,
        "verdict": verdict,
        "written": utc_iso(),
    }


def read_manifest(path: str) -> t.Tuple[t.Optional[t.Dict[str, t.Any]], t.Optional[str]]:
    """The set's manifest.json (through the one manifest reader), or None and why it cannot vouch for the set."""
    if not os.path.isfile(manifest_path(path)):
        return None, "%s is missing" % MANIFEST_NAME
    try:
        return load_manifest(path), None
    except ValueError as exc:
        return None, str(exc)


def missing_for_complete(path: str, require: t.List[str], manifest_problem: t.Optional[str]) -> t.List[str]:
    """What a COMPLETE marker would vouch for but is not on the medium: the manifest and required metadata."""
    missing = [manifest_problem] if manifest_problem else []
    for name in require:
        if not os.path.isfile(os.path.join(path, name)):
            missing.append(name)
    return missing


def failed_phase_message(name: str, phase: t.Dict[str, t.Any]) -> str:
    attempts = phase.get("attempts") or 1
    return "%s failed after %d attempt%s: %s" % (name, attempts, "" if attempts == 1 else "s", phase.get("msg"))


def guard_section(armed: t.Optional[t.Dict[str, t.Any]], disarmed: t.Optional[t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
    """report.json's record of the on-host guard: this run's guard, what an earlier one did, whether ours fired."""
    armed, disarmed = armed or {}, disarmed or {}
    return {"pid": armed.get("pid"), "post": armed.get("post_what"), "previous": armed.get("previous"),
            "took_over": armed.get("took_over"), "fired": disarmed.get("fired")}


def close_set(path: str, backup_id: str, run_id: str, engine: str, phases: t.Dict[str, t.Dict[str, t.Any]],
              failure: t.Optional[str], require: t.List[str], extra: t.Dict[str, t.Any],
              require_phases: t.Sequence[str] = ()) -> t.Dict[str, t.Any]:
    """Write report.json, then COMPLETE (only on success, last), then drop our lock."""
    if not os.path.isdir(path):
        raise BackupSetError("backup set %s does not exist; the set is opened before pre, so open it first (state=open)" % path)
    lock = read_lock(path)
    if lock is not None and lock.get("run_id") != run_id:
        raise BackupSetError(
            "backup set %s is locked by run %s (host %s), not by this run %s; this run must not write its report there"
            % (path, lock.get("run_id"), lock.get("host"), run_id)
        )
    manifest, manifest_problem = read_manifest(path)
    phases = dict(phases_from_ledger(read_ledger(path, run_id)), **phases)
    if failure is None:
        failure = "; ".join(failed_phase_message(name, phase) for name, phase in phases.items()
                            if phase.get("result") == "failed") or None
    report = build_report(backup_id, engine, phases, manifest, failure, check_mode=False, required_phases=require_phases)
    identity = _sets.read_identity(path) or {}
    report["host"] = identity.get("host") or report["host"]
    report["database"] = identity.get("database")
    # The engine's section of the report starts from what the set records about itself (manifest.json's facts under
    # the engine's name), with how many sources changed while they were read; the engine's report adds to it.
    recorded = ((manifest or {}).get("facts") or {}).get(engine)
    if isinstance(recorded, dict):
        section = dict(recorded, changed_during_copy=len((manifest or {}).get("changed_during_copy") or []))
        section.update(extra.get(engine) or {})
        extra = dict(extra, **{engine: section})
    # The engine's report (and the guard's record) add facts before the verdict is settled, and never replace one the
    # verdict rests on: an engine report with a 'verdict' or 'failure' key decides nothing.
    for key, value in extra.items():
        report.setdefault(key, value)
    if report["verdict"] == "success":
        missing = missing_for_complete(path, require, manifest_problem)
        if missing:
            report["verdict"] = "failed"
            report["failure"] = "the set lacks %s, so it is not marked COMPLETE" % ", ".join(missing)
    report["lock_taken_over"] = (lock or {}).get("took_over")
    report["complete"] = report["verdict"] == "success"
    atomic_write(os.path.join(path, REPORT_NAME), (json.dumps(report, indent=2, sort_keys=False) + "\n").encode("utf-8"), 0o640)
    if report["complete"]:
        marker = {"backup_id": backup_id, "completed": utc_iso(), "run_id": run_id, "files": report["files"], "bytes": report["bytes"]}
        atomic_write(os.path.join(path, COMPLETE_NAME), (json.dumps(marker, sort_keys=True) + "\n").encode("utf-8"), 0o640)
    release_lock(path, run_id)
    return report


def release_lock(path: str, run_id: str) -> bool:
    lock = read_lock(path)
    if lock is None or lock.get("run_id") != run_id:
        return False
    try:
        os.unlink(os.path.join(path, LOCK_NAME))
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False
    fsync_dir(path)
    return True
