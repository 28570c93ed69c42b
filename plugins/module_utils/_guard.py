# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The on-host guard: the database host's own promise that post runs, and the one-backup-per-database lock.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The playbook's ``always:`` is the controller's promise; it is void when the controller is killed (an AWX cancel
sends SIGTERM), the host becomes unreachable or the controller machine dies. So, just before pre, a detached
guard process is armed on the database host with the engine's post and two bounds:

* a lease: the copy renews it (the mtime of ``lease``) while it makes progress; when nobody renewed it for
  ``lease_seconds``, the controller is taken as gone. The operator does not have to guess how long a copy takes.
* ``max_quiesce``: the hard maximum the database may stay out of its normal state, whatever the lease says.

The controller's post disarms the guard (file ``disarm``). Otherwise the guard writes ``fired`` (so a copy still
running stops at once: its data would not be consistent), runs post itself with the same retries, and records
what it did in ``state.json``, where the next run and a check-mode audit report it.

Pre cannot outrun the guard (``PreWindow``). The guard is armed before pre, and pre's quiescing call (the
operator's pause command, ``butil -startbu``, the PostgreSQL start) may take long; without care, the lease runs
out while pre still runs, the guard runs post and leaves, and pre then quiesces with nobody left to release it.
Every engine's pre goes through one window:

* pre has a bound (``backup_pre_timeout``): its call is killed or abandoned there and the attempt fails;
* while the call runs (and only within the bound) the window renews the lease: pre is progress too;
* before it quiesces, pre takes the handshake lock (``pre.lock``), refuses when the guard has fired, and writes
  ``pre`` (this run, pid, deadline = start + bound + ``PRE_GRACE``); after the call it takes the lock again,
  writes ``pre.done`` and, if the guard fired meanwhile, releases what it quiesced (runs post) and fails;
* the guard writes ``fired`` under the same lock and reads ``pre``/``pre.done`` there. The lock orders the two:
  either pre saw ``fired`` before it quiesced (and never quiesces), or the guard saw pre's window open. In the
  second case the guard, after its post, stays (state ``fired_waiting_for_pre``) until ``pre.done`` appears, pre is
  provably over (its module is gone and so is its command's process group, recorded in ``pre``) or pre's deadline
  passes, and then runs post once more unless ``pre.done`` says pre released the database itself. So a quiesce
  that lands after the guard's post is always undone, by pre or by the guard, whichever lives.

The guard directory ``<runtime_dir>/guards/<key>/`` (0700, files 0600) is also the database lock: while a guard
of another run is alive there, a second backup of the same database is refused before pre (its post would
release the database under the first run's copy). A guard whose process is provably gone (same host, process
gone) is taken over: its post is run first, and the takeover is reported.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import threading
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _detach, _wire
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, exclusive_lock, output_tail, private_dir_problem, write_json
from ansible_collections.consistent.backup.plugins.module_utils._layout import default_runtime_dir, utc_iso
# The lease, ``fired`` and ``state.json``: the names the copy (``_lease.Lease``) and the guard agree on.
from ansible_collections.consistent.backup.plugins.module_utils._lease import FIRED_NAME, LEASE_NAME, STATE_NAME
from ansible_collections.consistent.backup.plugins.module_utils._secrets import mask

GUARDS_DIR = "guards"
# Written by the controller's post: the guard exits without running post.
DISARM_NAME = "disarm"
HISTORY_DIR = "history"
# The pre window's handshake with the guard (PreWindow): the lock, pre's start mark and its end mark.
PRE_LOCK_NAME = "pre.lock"
PRE_NAME = "pre"
PRE_DONE_NAME = "pre.done"

ARMED = "armed"
FIRING = "firing"
FIRED = "fired"            # the guard ran post and post succeeded
POST_FAILED = "post_failed"  # the guard ran post and every attempt failed
DISARMED = "disarmed"
# The guard ran post while pre's call was still running: it waits for pre's end (or its deadline), then runs post
# again unless pre released the database itself. Live: another run must not start while pre may still quiesce.
PRE_WAIT = "fired_waiting_for_pre"
LIVE_STATES = (ARMED, FIRING, PRE_WAIT)
UNREPORTED_STATES = (FIRING, PRE_WAIT, FIRED, POST_FAILED)

POLL_SECONDS = 0.25
# How much of a post command's output the guard keeps in its record.
RECORD_TAIL_CHARS = 2000
T = t.TypeVar("T")
# How often pre renews the lease while its call runs, and how long after pre's bound the guard still waits for
# pre's end mark (the killed call's cleanup, the module writing pre.done).
PRE_RENEW_SECONDS = 1.0
PRE_GRACE = 10.0


class GuardError(Exception):
    """The guard cannot be armed or disarmed; the message says why and what to do."""

    def __init__(self, msg: str, retryable: bool = False, **facts: t.Any) -> None:
        super(GuardError, self).__init__(msg)
        self.retryable = retryable
        self.facts = facts


def now() -> float:
    return time.time()


def database_key(engine: str, database: str) -> str:
    """The guard directory's name: engine plus a digest of what identifies the database on this host."""
    digest = hashlib.sha256(("%s\0%s" % (engine, database)).encode("utf-8")).hexdigest()[:20]
    return "%s-%s" % (engine, digest)


def _ensure_private_dir(path: str) -> None:
    """Create ``path`` 0700 or accept an existing real directory of ours that nobody else can write."""
    problem = private_dir_problem(path)
    if problem:
        raise GuardError("guard directory %s; remove it or give runtime_dir a private directory" % problem)


def _read_json(path: str) -> t.Optional[t.Dict[str, t.Any]]:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return {"state": "unreadable", "path": path}


class GuardDir:
    """The files of one database's guard."""

    def __init__(self, runtime_dir: t.Optional[str], engine: str, database: str) -> None:
        self.runtime_dir = runtime_dir or default_runtime_dir()
        self.engine = engine
        self.database = database
        self.key = database_key(engine, database)
        self.guards = os.path.join(self.runtime_dir, GUARDS_DIR)
        self._paths(os.path.join(self.guards, self.key))

    @classmethod
    def at(cls, path: str) -> "GuardDir":
        """The guard directory ``path`` as backup_guard returned it (RV guard_dir), for pre's window."""
        path = os.path.normpath(path)
        gdir = cls.__new__(cls)
        gdir.guards = os.path.dirname(path)
        gdir.runtime_dir = os.path.dirname(gdir.guards)
        gdir.key = os.path.basename(path)
        gdir._paths(path)
        state = gdir.read_state() or {}
        gdir.engine = state.get("engine") or gdir.key.split("-")[0]
        gdir.database = state.get("database") or gdir.key
        return gdir

    def _paths(self, path: str) -> None:
        self.path = path
        self.state_path = os.path.join(self.path, STATE_NAME)
        self.lease_path = os.path.join(self.path, LEASE_NAME)
        self.disarm_path = os.path.join(self.path, DISARM_NAME)
        self.fired_path = os.path.join(self.path, FIRED_NAME)
        self.pre_lock_path = os.path.join(self.path, PRE_LOCK_NAME)
        self.pre_path = os.path.join(self.path, PRE_NAME)
        self.pre_done_path = os.path.join(self.path, PRE_DONE_NAME)
        self.lock_path = self.path + ".lock"

    def create(self) -> None:
        os.makedirs(os.path.dirname(self.runtime_dir.rstrip("/")) or "/", exist_ok=True)
        for path in (self.runtime_dir, self.guards, self.path):
            _ensure_private_dir(path)

    def read_state(self) -> t.Optional[t.Dict[str, t.Any]]:
        return _read_json(self.state_path)

    def write_state(self, state: t.Dict[str, t.Any]) -> None:
        write_json(self.state_path, dict(state, updated_at=utc_iso(now())))

    def locked(self) -> t.ContextManager[None]:
        """Serialise module runs on one database (two runs arming at the same moment)."""
        return exclusive_lock(self.lock_path)

    def pre_locked(self) -> t.ContextManager[None]:
        """The pre window's handshake: ``fired`` and pre's marks are written and read under it (PreWindow)."""
        return exclusive_lock(self.pre_lock_path)

    def pre_window(self, run_id: str) -> t.Tuple[t.Optional[t.Dict[str, t.Any]], t.Optional[t.Dict[str, t.Any]]]:
        """(pre's start mark, pre's end mark) of run ``run_id``; None for a mark that is missing or of another run."""
        marks = []
        for path in (self.pre_path, self.pre_done_path):
            mark = _read_json(path)
            marks.append(mark if mark and mark.get("run_id") == run_id else None)
        return marks[0], marks[1]

    def archive(self, state: t.Dict[str, t.Any]) -> str:
        """Move a finished guard's record to history/ (it has been reported) and clear the working files."""
        history = os.path.join(self.path, HISTORY_DIR)
        _ensure_private_dir(history)
        name = "%s-%s.json" % (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), state.get("run_id") or "unknown")
        target = os.path.join(history, name.replace("/", "_"))
        if os.path.exists(self.state_path):
            os.rename(self.state_path, target)
        for path in (self.lease_path, self.disarm_path, self.fired_path, self.pre_path, self.pre_done_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return target


# ---------------------------------------------------------------------------------------------------------
# Post, as the guard runs it
# ---------------------------------------------------------------------------------------------------------

POST_KINDS = ("command", "socket", "none")
# The members of a socket post (see normalize_post): anything else is refused, so a typo fails at arming.
SOCKET_POST_DEFAULTS = {"request": None, "path": None, "reason_key": None, "success": {}, "absent_ok": False,
                        "timeout": 10.0, "exit_wait": 0.0, "answer_field": None, "what": None}  # type: t.Dict[str, t.Any]


def normalize_post(post: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """Check the engine's post description: ``{command: argv|string}``, ``{socket: {path, request, ...}}`` or
    ``{none: true}``. The guard knows these generic kinds only; an engine states its post in one of them."""
    if not isinstance(post, dict) or len([k for k in POST_KINDS if k in post]) != 1:
        raise GuardError("post must name exactly one of command (the operator's post command), socket (a request to a "
                         "service on a Unix socket) or none (nothing to undo); found %r" % (post,))
    if "command" in post:
        command = post["command"]
        argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in (command or [])]
        if not argv:
            raise GuardError("post.command is empty; give the operator's post command (argv list or a string split "
                             "without a shell), or post: {none: true} when there is nothing to undo")
        return {"command": argv}
    if "socket" in post:
        return {"socket": _normalize_socket_post(post["socket"])}
    return {"none": True}


def _normalize_socket_post(given: t.Any) -> t.Dict[str, t.Any]:
    """``{path, request, reason_key, success, absent_ok, timeout, exit_wait, answer_field, what}`` with defaults."""
    if not isinstance(given, dict):
        raise GuardError("post.socket must be a dict with path and request; found %r" % (given,))
    unknown = sorted(set(given) - set(SOCKET_POST_DEFAULTS))
    if unknown:
        raise GuardError("post.socket has unknown member(s) %s; expected only %s" % (", ".join(unknown), ", ".join(SOCKET_POST_DEFAULTS)))
    spec = dict(SOCKET_POST_DEFAULTS, **{key: value for key, value in given.items() if value is not None})
    if not isinstance(spec["path"], str) or not os.path.isabs(spec["path"]):
        raise GuardError("post.socket.path must be the absolute path of the service's Unix socket; found %r" % (spec["path"],))
    if not isinstance(spec["request"], dict) or not spec["request"]:
        raise GuardError("post.socket.request must be the request to send (a non-empty dict); found %r" % (spec["request"],))
    if not isinstance(spec["success"], dict):
        raise GuardError("post.socket.success must be a dict of the answer's members that mean success; found %r" % (spec["success"],))
    try:
        spec["timeout"] = float(spec["timeout"])
        spec["exit_wait"] = float(spec["exit_wait"])
    except (TypeError, ValueError):
        raise GuardError("post.socket.timeout and exit_wait must be numbers of seconds; found %r and %r"
                         % (spec["timeout"], spec["exit_wait"]))
    if spec["timeout"] <= 0 or spec["exit_wait"] < 0:
        raise GuardError("post.socket.timeout must be more than 0 and exit_wait 0 or more seconds; found %s and %s"
                         % (spec["timeout"], spec["exit_wait"]))
    spec["absent_ok"] = bool(spec["absent_ok"])
    return spec


def describe_post(post: t.Dict[str, t.Any]) -> str:
    if "command" in post:
        return "run %s" % " ".join(shlex.quote(part) for part in post["command"])
    if "socket" in post:
        sock = post["socket"]
        return sock.get("what") or "send %s to %s" % (json.dumps(sock["request"], sort_keys=True), sock["path"])
    return "nothing (the engine has nothing to undo)"


def _run_command(argv: t.List[str], timeout: float, secrets: t.Sequence[str] = ()) -> t.Dict[str, t.Any]:
    """One attempt of a command post; its output masked for ``secrets`` (a tool may echo its command line) before it
    is cut to the tail the record keeps."""
    env = dict(os.environ, LANG="C", LC_ALL="C")

    def tail(text: t.Any) -> str:
        return output_tail(mask(text, secrets), RECORD_TAIL_CHARS)

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False, env=env)
    except FileNotFoundError as exc:
        return {"rc": 127, "stdout": "", "stderr": tail(str(exc)), "ok": False}
    except subprocess.TimeoutExpired as exc:
        return {"rc": None, "stdout": tail(exc.stdout), "stderr": tail(exc.stderr) + "\n(killed after %d s)" % timeout,
                "ok": False}
    return {"rc": proc.returncode, "stdout": tail(proc.stdout), "stderr": tail(proc.stderr), "ok": proc.returncode == 0}


def _answer_says(answer: t.Any, field: t.Optional[str]) -> str:
    """What the record quotes of an answer: its member ``field`` (dotted, such as ``state.state``) or all of it."""
    if field:
        for key in field.split("."):
            answer = answer.get(key) if isinstance(answer, dict) else None
    return output_tail(answer if isinstance(answer, str) else json.dumps(answer, sort_keys=True), RECORD_TAIL_CHARS)


def _socket_request(spec: t.Dict[str, t.Any], reason: str) -> t.Dict[str, t.Any]:
    """One attempt of a socket post: send the request, read the answer; with ``exit_wait``, the listener must be gone.

    Idempotent: with ``absent_ok``, nobody listening on the socket (no socket file, or nobody accepts on it) means the
    service already ended, and that is success. The listener's pid is the one of the connected socket (SO_PEERCRED), so
    no pid file can name an unrelated process; one that accepts but does not answer within ``timeout`` is sent SIGTERM
    when ``exit_wait`` asks for its end.
    """
    request = dict(spec["request"])
    if spec.get("reason_key"):
        request[spec["reason_key"]] = reason
    peer = {}  # type: t.Dict[str, int]
    try:
        answer = _wire.request(spec["path"], request, spec["timeout"], peer)
    except _wire.Unreachable as exc:
        if spec["absent_ok"]:
            return {"ok": True, "rc": 0, "stdout": "nobody listens on %s (%s): the service already ended" % (spec["path"], exc),
                    "stderr": ""}
        return {"ok": False, "rc": None, "stdout": "", "stderr": "nobody listens on %s (%s)" % (spec["path"], exc)}
    except (OSError, ValueError) as exc:
        pid = peer.get("pid")
        if not (pid and spec["exit_wait"]):
            return {"ok": False, "rc": None, "stdout": "", "stderr": "%s did not answer (%s)" % (spec["path"], exc)}
        said = "%s did not answer (%s); sent SIGTERM to its listener, pid %s" % (spec["path"], exc, pid)
        if _detach.pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    else:
        said = "%s answered: %s" % (spec["path"], _answer_says(answer, spec.get("answer_field")))
        members = answer if isinstance(answer, dict) else {}
        unmet = {key: members.get(key) for key, value in spec["success"].items() if members.get(key) != value}
        if unmet:
            return {"ok": False, "rc": None, "stdout": said, "stderr": "the answer has %s; success needs %s" % (
                json.dumps(unmet, sort_keys=True), json.dumps(spec["success"], sort_keys=True))}
        pid = peer.get("pid")
    if not (pid and spec["exit_wait"]):
        return {"ok": True, "rc": 0, "stdout": said, "stderr": ""}
    deadline = time.monotonic() + spec["exit_wait"]
    while _detach.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _detach.pid_alive(pid):
        return {"ok": False, "rc": None, "stdout": said, "stderr": "the listener on %s, pid %s, is still alive %d s after the request"
                % (spec["path"], pid, spec["exit_wait"])}
    return {"ok": True, "rc": 0, "stdout": said + "; its listener, pid %s, is gone" % pid, "stderr": ""}


def run_post(post: t.Dict[str, t.Any], retries: int, retry_delay: float, timeout: float, reason: str,
             secret_argv: t.Sequence[str] = ()) -> t.Dict[str, t.Any]:
    """Post with the job's retry policy: up to ``retries`` attempts, ``retry_delay`` seconds apart.

    ``secret_argv`` (a secured engine's login, backup_guard's no_log option post_secret_argv) is appended to a command
    post's argv only here, when it runs: it is never part of ``post``, so no record holds it, and every output kept is
    masked for it."""
    attempts = []  # type: t.List[t.Dict[str, t.Any]]
    for number in range(1, max(1, retries) + 1):
        began = now()
        if "command" in post:
            outcome = _run_command(list(post["command"]) + list(secret_argv), timeout, secret_argv)
        elif "socket" in post:
            outcome = _socket_request(post["socket"], reason)
        else:
            outcome = {"ok": True, "rc": 0, "stdout": "nothing to undo", "stderr": ""}
        outcome.update({"attempt": number, "start": utc_iso(began), "seconds": round(now() - began, 3)})
        attempts.append(outcome)
        if outcome["ok"]:
            break
        if number < retries:
            time.sleep(retry_delay)
    return {"ok": attempts[-1]["ok"], "attempts": attempts, "what": describe_post(post)}


# ---------------------------------------------------------------------------------------------------------
# The guard process
# ---------------------------------------------------------------------------------------------------------

class _Terminate(Exception):
    pass


def _raise_terminate(signum: int, frame: t.Any) -> None:
    raise _Terminate(signal.Signals(signum).name)


class Guard:
    """Runs in the detached process: waits for the disarm, the end of the lease or max_quiesce."""

    def __init__(self, gdir: GuardDir, spec: t.Dict[str, t.Any], secret_argv: t.Sequence[str] = ()) -> None:
        self.gdir = gdir
        self.spec = spec
        # In this process's memory only (it is a fork of the module: nothing is exec'd, written or put on a command
        # line); never in spec, so never in state.json.
        self.secret_argv = list(secret_argv)
        self.state = dict(spec)
        self.state.update({"state": ARMED, "owner": _detach.owner(), "pid": os.getpid()})

    def run(self, report_fd: int) -> None:
        signal.signal(signal.SIGTERM, _raise_terminate)
        signal.signal(signal.SIGINT, _raise_terminate)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            self.gdir.write_state(self.state)
        except OSError as exc:
            _detach.report(report_fd, {"ok": False, "error": "could not write %s: %s" % (self.gdir.state_path, exc)})
            return
        _detach.report(report_fd, {"ok": True, "state": self.state})
        try:
            reason = self.wait()
        except _Terminate as exc:
            reason = "the guard received %s (the host is shutting down or someone stopped it)" % exc
        if reason is None:
            self.state.update({"state": DISARMED, "disarmed_at": utc_iso(now())})
            self.gdir.write_state(self.state)
            return
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # post must not be cut short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.fire(reason)

    def wait(self) -> t.Optional[str]:
        """None when disarmed; otherwise why the guard must run post."""
        lease = self.spec["lease_seconds"]
        hard_end = self.spec["armed_epoch"] + self.spec["max_quiesce"]
        while True:
            if os.path.exists(self.gdir.disarm_path):
                return None
            moment = now()
            if moment >= hard_end:
                return "max_quiesce (%d s) reached: the database was out of its normal state since %s" % (
                    self.spec["max_quiesce"], self.spec["armed_at"])
            if lease > 0:
                try:
                    renewed = os.stat(self.gdir.lease_path).st_mtime
                except FileNotFoundError:
                    renewed = self.spec["armed_epoch"]
                if moment - renewed > lease:
                    return ("no progress for %.0f s (lease %d s, last renewed %s): the controller's run is taken as gone"
                            % (moment - renewed, lease, utc_iso(renewed)))
            time.sleep(POLL_SECONDS)

    def fire(self, reason: str) -> None:
        # Under the pre lock: pre either sees ``fired`` before it quiesces, or the guard sees pre's window open here.
        with self.gdir.pre_locked():
            with contextlib.suppress(OSError):
                atomic_write(self.gdir.fired_path, (json.dumps({"reason": reason, "at": utc_iso(now())}) + "\n").encode("utf-8"), 0o600)
            pre, done = self.gdir.pre_window(self.spec["run_id"])
        pre_open = pre is not None and done is None
        self.state.update({"state": FIRING, "fired_at": utc_iso(now()), "reason": reason})
        if pre_open:
            self.state["pre_running"] = {key: pre.get(key) for key in ("what", "pid", "started_at", "bound", "deadline_at")}
        self.gdir.write_state(self.state)
        outcome = run_post(self.spec["post"], self.spec["retries"], self.spec["retry_delay"], self.spec["post_timeout"],
                           "released by the guard: %s" % reason, self.secret_argv)
        self.state.update({"post_result": outcome, "post_ended_at": utc_iso(now())})
        released = outcome["ok"]
        if pre_open:
            self.state["state"] = PRE_WAIT
            self.gdir.write_state(self.state)
            released = self.wait_for_pre(pre, reason)
        self.state["state"] = FIRED if released else POST_FAILED
        self.gdir.write_state(self.state)

    def wait_for_pre(self, pre: t.Dict[str, t.Any], reason: str) -> bool:
        """Pre was quiescing when the guard ran post: stay until pre's end mark or its deadline, then run post once more
        unless pre says it released the database itself. Returns whether the database is known released."""
        deadline = float(pre.get("deadline_epoch") or now())
        done = None
        over = ""
        while True:
            mark, done = self.gdir.pre_window(self.spec["run_id"])
            if done is not None or now() >= deadline:
                break
            over = pre_provably_over(mark or pre)
            if over:
                break
            time.sleep(POLL_SECONDS)
        if done is not None and done.get("released") is True:
            self.state.update({"pre_end": "pre ended at %s (%s) and released what it quiesced itself" % (
                done.get("at"), done.get("outcome")), "pre_done": done})
            return True
        if done is not None:
            why = "pre ended at %s (%s) after the guard's post, without releasing the database" % (done.get("at"), done.get("outcome"))
        elif over:
            why = "pre is over without its end mark: %s" % over
        else:
            why = "pre's bound passed at %s without pre's end mark (pre was killed or hangs)" % utc_iso(deadline)
        self.state.update({"pre_end": why, "pre_done": done})
        self.gdir.write_state(self.state)
        again = run_post(self.spec["post"], self.spec["retries"], self.spec["retry_delay"], self.spec["post_timeout"],
                         "released by the guard again: %s; %s" % (reason, why), self.secret_argv)
        self.state.update({"post_again": again, "post_ended_at": utc_iso(now())})
        return again["ok"]


# ---------------------------------------------------------------------------------------------------------
# Pre's window: pre cannot outrun the guard
# ---------------------------------------------------------------------------------------------------------

def pre_provably_over(mark: t.Dict[str, t.Any]) -> str:
    """Why pre can quiesce no more although it left no end mark ('' when it may): its module is provably gone and
    so is its command's process group (a command outlives a killed module: it runs in a session of its own)."""
    gone, why = _detach.owner_gone(mark.get("owner"))
    if not gone:
        return ""
    pgid = mark.get("command_pgid")
    if isinstance(pgid, int) and pgid > 0:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return "its module is gone (%s) and so is its command (process group %d)" % (why, pgid)
        except PermissionError:
            return ""
        return ""
    return "its module is gone (%s) and it had started no command" % why


class PreWindow:
    """Pre's quiescing call under the guard: bounded, renewing the lease, checked against ``fired`` before and after.

    Every engine's pre goes through ``run_pre`` with a window: ``open`` before the call (refuses when the guard has
    fired or is gone), the call itself bounded by ``remaining()`` (``run_command`` kills a command's whole process
    group at the bound), ``close`` after it (releases and fails when the guard fired meanwhile). See the module
    docstring for why the handshake closes the race with the guard.
    """

    def __init__(self, guard_dir: str, run_id: str, bound: float, what: str) -> None:
        self.gdir = GuardDir.at(guard_dir)
        self.run_id = run_id
        self.bound = float(bound)
        self.what = what
        self.started = 0.0
        self.bound_epoch = 0.0
        self.renew_every = PRE_RENEW_SECONDS
        self.mark = {}  # type: t.Dict[str, t.Any]
        self._stop = threading.Event()
        self._renewer = None  # type: t.Optional[threading.Thread]

    def _refuse(self, why: str) -> GuardError:
        return GuardError("pre (%s) of database %s did not run, nothing was quiesced: %s" % (self.what, self.gdir.database, why),
                          guard_dir=self.gdir.path)

    def open(self) -> None:
        if not os.path.isdir(self.gdir.path):
            raise self._refuse("the guard directory %s does not exist; pre runs only under this run's armed guard "
                               "(backup_guard state=armed)" % self.gdir.path)
        with self.gdir.pre_locked():
            state = self.gdir.read_state() or {}
            if state.get("run_id") != self.run_id:
                raise self._refuse("the guard in %s is run %s's, not this run's (%s); run the backup again"
                                   % (self.gdir.path, state.get("run_id"), self.run_id))
            if os.path.exists(self.gdir.fired_path) or state.get("state") != ARMED:
                fired = _read_json(self.gdir.fired_path) or {}
                raise self._refuse("the guard of this run already fired at %s because %s (state %s) and released the "
                                   "database; a quiesce now would stay with nobody to release it. Find out why the guard "
                                   "fired (raise backup_guard_lease if the tasks before pre are slow), then run the backup again"
                                   % (fired.get("at") or state.get("fired_at"), fired.get("reason") or state.get("reason"),
                                      state.get("state")))
            gone, why = _detach.owner_gone(state.get("owner"))
            if gone:
                raise self._refuse("the guard of this run is gone (%s), so nothing would release the database if the "
                                   "controller died; run the backup again (the next run takes the dead guard over)" % why)
            self.started = now()
            self.bound_epoch = self.started + self.bound
            # Renew well within the lease (a quarter of it, at most every PRE_RENEW_SECONDS).
            self.renew_every = min(PRE_RENEW_SECONDS, max(0.05, float(state.get("lease_seconds") or 0) / 4.0 or PRE_RENEW_SECONDS))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.gdir.pre_done_path)
            self.mark = {
                "run_id": self.run_id, "what": self.what, "pid": os.getpid(), "owner": _detach.owner(),
                "started_at": utc_iso(self.started),
                "started_epoch": self.started, "bound": self.bound, "deadline_epoch": self.bound_epoch + PRE_GRACE,
                "deadline_at": utc_iso(self.bound_epoch + PRE_GRACE)}
            write_json(self.gdir.pre_path, self.mark)
        self._renew_once()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="pre-lease", daemon=True)
        self._renewer.start()

    def _renew_once(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.gdir.lease_path)

    def _renew(self) -> None:
        """Pre is progress too, as long as it is within its bound: past the bound the lease runs out as usual."""
        while not self._stop.wait(self.renew_every):
            if now() >= self.bound_epoch:
                return
            self._renew_once()

    def remaining(self) -> float:
        return max(0.0, self.bound_epoch - now())

    def timed_out(self, detail: str = "") -> GuardError:
        return GuardError("pre (%s) of database %s did not finish within its bound, backup_pre_timeout (%d s), and was "
                          "stopped there%s. The database may be partly quiesced: post runs next (the guard runs it if the "
                          "controller is gone). Find out why pre is slow, or raise backup_pre_timeout"
                          % (self.what, self.gdir.database, self.bound, ("; " + detail) if detail else ""), pre_timed_out=True)

    def run_command(self, argv: t.List[str], env: t.Optional[t.Dict[str, str]] = None) -> t.Tuple[int, str, str]:
        """Run pre's command bounded by the window: at the bound its whole process group is killed (SIGKILL), and
        ``timed_out`` is raised. Returns (rc, stdout, stderr)."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
        # The command's process group, so the guard can tell when pre is provably over if this module dies.
        with self.gdir.pre_locked():
            self.mark["command_pgid"] = proc.pid
            write_json(self.gdir.pre_path, self.mark)
        try:
            stdout, stderr = proc.communicate(timeout=max(0.001, self.remaining()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise self.timed_out("%s was killed (its output: %s)" % (
                " ".join(shlex.quote(part) for part in argv),
                output_tail(stderr, RECORD_TAIL_CHARS) or output_tail(stdout, RECORD_TAIL_CHARS) or "none"))
        return proc.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")

    def close(self, outcome: str, release: t.Callable[[], t.Dict[str, t.Any]]) -> None:
        """Pre's call is over: say so to the guard; when the guard fired meanwhile, release and raise."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(5)
        ended = {"run_id": self.run_id, "outcome": outcome, "at": utc_iso(now()), "released": None}
        with self.gdir.pre_locked():
            fired = _read_json(self.gdir.fired_path) if os.path.exists(self.gdir.fired_path) else None
            if fired is None:
                write_json(self.gdir.pre_done_path, ended)
                return
        # The guard ran post while the call ran (it waits for this mark): release now, then tell it how that went.
        released = release()
        write_json(self.gdir.pre_done_path, dict(ended, released=bool(released.get("ok")), release=released))
        if released.get("ok"):
            then = "pre released what it quiesced (%s: ok)" % released.get("what")
        else:
            then = ("pre's release FAILED (%s: %s), so the database may still be quiesced; the guard runs post once more "
                    "now, check the database" % (released.get("what"), released.get("detail") or released.get("attempts")))
        raise GuardError("the guard of run %s fired at %s while pre (%s, %s) was running, because %s; %s. This attempt "
                         "fails: a copy after the guard's post would not be consistent. Find out why the guard fired "
                         "(the controller lost, max_quiesce, the guard stopped), then run the backup again"
                         % (self.run_id, fired.get("at"), self.what, outcome, fired.get("reason"), then),
                         guard_fired=fired, released=released)


# The argument spec of the ``pre_window`` option (doc fragment consistent.backup._pre_window).
PRE_WINDOW_ARGSPEC = dict(type='dict', options=dict(
    guard_dir=dict(type='path', required=True),
    run_id=dict(type='str', required=True),
    timeout=dict(type='int', required=True),
))
# Its lowest values for _options.check_options: a bound of 0 would stop pre's call before it starts.
PRE_WINDOW_MINIMUM = {'pre_window.timeout': 1}


def pre_window(option: t.Optional[t.Dict[str, t.Any]], what: str) -> t.Optional[PreWindow]:
    """The window of a module's ``pre_window`` option (None when it is not given); wrong values are refused."""
    if not option:
        return None
    if option["timeout"] < 1:
        raise GuardError("pre_window.timeout (backup_pre_timeout) must be at least 1 second; found %d. Give the longest "
                         "time pre may take" % option["timeout"])
    if not option["run_id"].strip() or not os.path.isabs(option["guard_dir"]):
        raise GuardError("pre_window needs the run's id and the guard's absolute directory (backup_guard's guard_dir); "
                         "found run_id %r, guard_dir %r" % (option["run_id"], option["guard_dir"]))
    return PreWindow(option["guard_dir"], option["run_id"], option["timeout"], what)


def guard_post_release(window: PreWindow) -> t.Callable[[], t.Dict[str, t.Any]]:
    """Pre's default release: the post this run's guard holds (its record), with the guard's retries."""
    def release() -> t.Dict[str, t.Any]:
        state = window.gdir.read_state() or {}
        try:
            post = normalize_post(state.get("post") or {"none": True})
        except GuardError as exc:
            return {"ok": False, "what": "the guard's post", "detail": str(exc)}
        return run_post(post, int(state.get("retries") or 3), float(state.get("retry_delay") or 0),
                        float(state.get("post_timeout") or 600), "pre released it: the guard fired while pre ran")
    return release


def run_pre(window: t.Optional[PreWindow], quiesce: t.Callable[[t.Optional[PreWindow]], T],
            release: t.Optional[t.Callable[[], t.Dict[str, t.Any]]] = None) -> T:
    """Pre's call (``quiesce(window)``) inside its window; without a window (no guard given) just the call."""
    if window is None:
        return quiesce(None)
    window.open()
    try:
        result = quiesce(window)
    except BaseException as exc:
        window.close("failed: %s" % (str(exc).splitlines() or [type(exc).__name__])[0][:300],
                     release or guard_post_release(window))
        raise
    window.close("ok", release or guard_post_release(window))
    return result


# ---------------------------------------------------------------------------------------------------------
# What the module does
# ---------------------------------------------------------------------------------------------------------

def summary(state: t.Optional[t.Dict[str, t.Any]]) -> t.Optional[t.Dict[str, t.Any]]:
    """What a report says about a guard record: who, when, why, what post did."""
    if not state:
        return None
    keys = ("state", "run_id", "backup_id", "engine", "database", "armed_at", "fired_at", "reason", "post_ended_at",
            "disarmed_at", "pid", "post_what")
    result = {key: state.get(key) for key in keys if state.get(key) is not None}
    post = state.get("post_result")
    if post:
        result["post_ok"] = post.get("ok")
        result["post_attempts"] = post.get("attempts")
    if state.get("pre_running"):
        # The guard fired while pre's call ran: how pre ended, and the post it ran once more (if it had to).
        result["pre_running"] = state["pre_running"]
        result["pre_end"] = state.get("pre_end")
        again = state.get("post_again")
        if again:
            result["post_again_ok"] = again.get("ok")
            result["post_again_attempts"] = again.get("attempts")
    return result


def describe_record(record: t.Dict[str, t.Any]) -> str:
    """One sentence on what an earlier guard did, for the next run's output."""
    if record.get("state") in (FIRED, POST_FAILED, FIRING, PRE_WAIT):
        attempts = record.get("post_attempts") or []
        last = attempts[-1] if attempts else {}
        outcome = ("post succeeded" if record.get("post_ok") else
                   "post FAILED after %d attempts (rc %s: %s); check the database, it may still be quiesced"
                   % (len(attempts), last.get("rc"), last.get("stderr") or last.get("stdout") or "no output"))
        if record.get("pre_running"):
            outcome += "; pre was still running then: %s" % (record.get("pre_end") or "the guard waits for its end")
            if "post_again_ok" in record:
                outcome += ", so the guard ran post once more (%s)" % ("ok" if record["post_again_ok"] else "FAILED")
        return ("the guard of run %s (backup %s) ran post itself at %s because %s; %s"
                % (record.get("run_id"), record.get("backup_id"), record.get("fired_at"), record.get("reason"), outcome))
    return "run %s (backup %s) is %s" % (record.get("run_id"), record.get("backup_id"), record.get("state"))


def _live_guard_message(gdir: GuardDir, state: t.Dict[str, t.Any], why: str) -> str:
    return ("database %s (%s) is being backed up by run %s (backup_id %s, guard pid %s on %s since %s; %s); expected no "
            "other backup of it: a second one would release the database under the first one's copy. Wait for that run "
            "to finish; if its controller died, its guard runs post at most %s s after the copy's last progress "
            "(state in %s)" % (gdir.database, gdir.engine, state.get("run_id"), state.get("backup_id"), state.get("pid"),
                               (state.get("owner") or {}).get("host"), state.get("armed_at"), why,
                               state.get("lease_seconds"), gdir.state_path)
            + ("; that guard has fired while its pre was running and stays until pre ends or its bound passes (%s)"
               % (state.get("pre_running") or {}).get("deadline_at") if state.get("state") == PRE_WAIT else ""))


def inspect(gdir: GuardDir, run_id: str) -> t.Dict[str, t.Any]:
    """Read-only: what is there for this database (check mode and the first half of arm)."""
    state = gdir.read_state()
    result = {"state": state, "live": False, "own": False, "stale": None, "previous": None}  # type: t.Dict[str, t.Any]
    if not state:
        return result
    result["own"] = state.get("run_id") == run_id
    if state.get("state") in LIVE_STATES:
        gone, why = _detach.owner_gone(state.get("owner"))
        if gone:
            result["stale"] = why
        else:
            result["live"] = True
            result["why"] = why
    elif state.get("state") in UNREPORTED_STATES or state.get("state") == "unreadable":
        result["previous"] = summary(state)
    return result


def arm(gdir: GuardDir, spec: t.Dict[str, t.Any], check_mode: bool, secret_argv: t.Sequence[str] = ()) -> t.Dict[str, t.Any]:
    """Take the database lock and start the guard. Idempotent for the same run_id while its guard lives.

    ``secret_argv`` goes to the guard process's memory, not into ``spec`` (which state.json records); a dead guard's
    post, taken over, runs with this run's ``secret_argv``: the same database, so the same login."""
    post = normalize_post(spec["post"])
    result = {"changed": False, "guard_dir": gdir.path, "lease_file": gdir.lease_path, "key": gdir.key,
              "post_what": describe_post(post), "previous": None, "took_over": None}  # type: t.Dict[str, t.Any]
    if check_mode:
        if os.path.isdir(gdir.path):
            found = inspect(gdir, spec["run_id"])
            if found["live"] and not found["own"]:
                raise GuardError(_live_guard_message(gdir, found["state"], found["why"]), holder=summary(found["state"]))
            result["previous"] = found["previous"] or (summary(found["state"]) if found["stale"] else None)
            if found["stale"]:
                result["took_over"] = {"would": True, "why": found["stale"], "record": summary(found["state"])}
        result["changed"] = True
        return result
    gdir.create()
    with gdir.locked():
        found = inspect(gdir, spec["run_id"])
        if found["live"]:
            if found["own"]:
                result.update({"pid": found["state"].get("pid"), "armed_at": found["state"].get("armed_at")})
                return result
            raise GuardError(_live_guard_message(gdir, found["state"], found["why"]), holder=summary(found["state"]))
        if found["stale"]:
            # The guard died without running post (SIGKILL, OOM, reboot): the database may still be quiesced, so its
            # post runs now, before anything else touches the database.
            stale = found["state"]
            try:
                stale_post = normalize_post(stale.get("post") or {"none": True})
            except GuardError as exc:
                raise GuardError("database %s: the earlier run %s left its guard dead, and the post it recorded cannot be "
                                 "run (%s); bring the database back by hand, remove %s, then run the backup again"
                                 % (gdir.database, stale.get("run_id"), exc, gdir.state_path))
            outcome = run_post(stale_post, stale.get("retries", 3),
                               stale.get("retry_delay", 5), stale.get("post_timeout", 600),
                               "taken over by run %s: the earlier guard is gone (%s)" % (spec["run_id"], found["stale"]),
                               secret_argv)
            stale = dict(stale, state=FIRED if outcome["ok"] else POST_FAILED, post_result=outcome, fired_at=utc_iso(now()),
                         reason="its guard is gone (%s); run %s took over and ran post" % (found["stale"], spec["run_id"]))
            gdir.write_state(stale)
            result["took_over"] = summary(stale)
            result["took_over"]["why"] = found["stale"]
            gdir.archive(stale)
            if not outcome["ok"]:
                raise GuardError("database %s: the earlier run %s left its guard dead and its post failed now too (%s); "
                                 "bring the database back by hand, then run the backup again"
                                 % (gdir.database, stale.get("run_id"), outcome["attempts"][-1]), took_over=result["took_over"])
        elif found["state"]:
            result["previous"] = found["previous"]
            if found["state"].get("state") == POST_FAILED:
                # A run never takes another run's quiesced state as its own pre: the earlier guard's post failed, so
                # the database may still be quiesced by that run. End it first, as the guard would (this run's post).
                outcome = run_post(post, spec.get("retries", 3), spec.get("retry_delay", 5), spec.get("post_timeout", 600),
                                   "run %s ends what run %s left quiesced (its guard's post failed)"
                                   % (spec["run_id"], found["state"].get("run_id")), secret_argv)
                result["released_previous"] = outcome
                if not outcome["ok"]:
                    raise GuardError("database %s: the earlier run %s's guard could not release it (post failed) and this "
                                     "run's post failed too (%s); expected the database back in its normal state before a "
                                     "new pre. Bring it back by hand, then run the backup again"
                                     % (gdir.database, found["state"].get("run_id"), outcome["attempts"][-1]),
                                     previous=found["previous"], released_previous=outcome)
            gdir.archive(found["state"])
        armed_epoch = now()
        full = dict(spec, post=post, post_what=describe_post(post), engine=gdir.engine, database=gdir.database,
                    key=gdir.key, armed_epoch=armed_epoch, armed_at=utc_iso(armed_epoch))
        with open(gdir.lease_path, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
        report = _detach.spawn(lambda fd: Guard(gdir, full, secret_argv).run(fd))
        if not report or not report.get("ok"):
            raise GuardError("the guard process for database %s did not start (%s); check that %s is writable"
                             % (gdir.database, (report or {}).get("error", "no report"), gdir.path), retryable=True)
        result.update({"changed": True, "pid": report["state"]["pid"], "armed_at": full["armed_at"]})
        return result


def _archive_own(gdir: GuardDir, run_id: str) -> None:
    with gdir.locked():
        state = gdir.read_state()
        if state and state.get("run_id") == run_id:
            gdir.archive(state)


def disarm(gdir: GuardDir, run_id: str, check_mode: bool, wait: float = 10.0) -> t.Dict[str, t.Any]:
    """The controller's post is done: the guard exits without running post. Reports a guard that already fired."""
    result = {"changed": False, "guard_dir": gdir.path, "fired": None, "disarmed": False}  # type: t.Dict[str, t.Any]
    state = gdir.read_state() if os.path.isdir(gdir.path) else None
    if not state or state.get("run_id") != run_id:
        result["msg"] = "no guard of run %s is armed for database %s" % (run_id, gdir.database)
        return result
    if state.get("state") == PRE_WAIT and not check_mode:
        # The guard fired while pre ran and waits for pre's end mark; pre has ended by now (the controller's post
        # comes after it), so the guard finishes soon: wait for it, then report and archive its record.
        deadline = time.monotonic() + wait
        while _detach.pid_alive(state.get("pid")) and time.monotonic() < deadline:
            time.sleep(0.05)
        state = gdir.read_state() or state
    if state.get("state") in UNREPORTED_STATES:
        # The guard ran post before the controller's post came (the lease ran out): say so, and keep nothing armed.
        result["fired"] = summary(state)
        if not check_mode and state.get("state") in (FIRED, POST_FAILED):
            _archive_own(gdir, run_id)
        return result
    if state.get("state") != ARMED:
        if state.get("state") == DISARMED and not check_mode:
            _archive_own(gdir, run_id)
        return result
    result["changed"] = True
    if check_mode:
        return result
    atomic_write(gdir.disarm_path, (json.dumps({"run_id": run_id, "at": utc_iso(now())}) + "\n").encode("utf-8"), 0o600)
    deadline = time.monotonic() + wait
    pid = state.get("pid")
    while _detach.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with gdir.locked():
        # Under the lock, and only our own record: another run may have armed this database meanwhile.
        final = gdir.read_state() or {}
        if final.get("run_id") != run_id:
            result["disarmed"] = True
            return result
        if final.get("state") in UNREPORTED_STATES:
            result["fired"] = summary(final)
        if final.get("state") in (DISARMED, FIRED, POST_FAILED) or not _detach.pid_alive(pid):
            gdir.archive(final)
        result["disarmed"] = final.get("state") == DISARMED
    return result


def status(gdir: GuardDir) -> t.Dict[str, t.Any]:
    found = inspect(gdir, "") if os.path.isdir(gdir.path) else {"state": None, "live": False, "stale": None, "previous": None}
    return {"changed": False, "guard_dir": gdir.path, "current": summary(found["state"]), "live": found["live"],
            "stale": found["stale"], "previous": found["previous"]}
