# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Btrieve / Pervasive.SQL / Actian Zen continuous operation through ``butil``, for the btrieve_continuous module.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Continuous operation (Pervasive/Zen docs; Goldstar Software's "Using Continuous Operations Mode to Attain Database
Integrity", "the article" below): ``butil -startbu @LIST`` puts every listed file into continuous operation at one
instant, all or nothing; from then on the engine writes each file's changes to a delta file beside it (same base name,
extension ``.^^^``) and leaves the data file as it was, so a copy of the data files is a snapshot of the whole database
at the start. ``butil -endbu @LIST`` rolls each delta back into its file and deletes it; the roll-in can take long on a
busy database, so stopping waits until the deltas are gone. After a crash the deltas stay and the next start fails until
every file has been opened and rolled in; deleting them loses every change since the interrupted start.

The module calls butil with the documented command line only (``-startbu @LIST``, ``-endbu @LIST``, ``-stat FILE``,
each with the login ``-UID -PWD [-DB]`` on a secured engine) and relies on exit codes and status numbers, never on whole
message texts. butil may echo its command line in an error, so everything it printed is masked for the password before
it is kept. What butil does not tell (is this file in
continuous operation?) the module answers from the filesystem (a delta beside the file) and from its own record of
what it started (``<state_dir>/<key>.json``, in the runtime directory: a reboot, which ends continuous operation,
clears it).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _detach
from ansible_collections.consistent.backup.plugins.module_utils import _restore_gate as _gate
from ansible_collections.consistent.backup.plugins.module_utils import _sets
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, fsync_dir, output_tail, write_json
from ansible_collections.consistent.backup.plugins.module_utils._layout import DATA_DIR, MANIFEST_NAME, default_runtime_dir, utc_iso
from ansible_collections.consistent.backup.plugins.module_utils._mounts import MountinfoError, mount_for, read_mountinfo
from ansible_collections.consistent.backup.plugins.module_utils._secrets import mask, mask_data

DELTA_EXTENSION = ".^^^"
# Zen on Linux, then the older Pervasive PSQL location (btrievepython setup.py; Zen install docs).
BUTIL_LOCATIONS = ("/usr/local/actianzen/bin/butil", "/usr/local/psql/bin/butil")
# Filesystems whose files live on another server: continuous operation needs "the database to reside completely on a
# single server" (the article), and the engine only acts on local files (PSQL v11 docs: "only a local engine").
NETWORK_FSTYPES = frozenset((
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs",
    "sshfs", "lustre", "gpfs", "davfs", "fuse.s3fs", "beegfs", "ocfs2", "gfs2", "fuse.ceph", "coda",
))
POLL_SECONDS = 0.1

# butil's exit codes (Pervasive.SQL 2000 and v12 guides).
EXIT_MEANING = {0: "success", 1: "completed with errors (some files were not processed)", 2: "did not complete",
                3: "syntax error (butil did not accept the command line)"}

# Status numbers (9.1 guide; PSQL v11 Continuous Operation page; btrieveC.h): what it means, whether a retry can help,
# what to do.
_START_ENGINE = "start the engine (the zenengine or psql service) and run the backup again"
_SERVICE_USER = "run butil as the engine's service user (zen-svc, formerly psql) or root"
_LOGIN = ("login failed", False, "check backup_btrieve_user and backup_btrieve_password")
STATUS = {
    2: ("an I/O error", True, "check the disk and the engine's log"),
    11: ("an invalid file name", False, "give fully qualified local paths without wildcards"),
    12: ("file not found", False, "remove the file from backup_btrieve_files or restore it"),
    20: ("the MicroKernel (record manager) is inactive: the Btrieve/Zen engine is not running", True, _START_ENGINE),
    46: ("access to the file denied", False, _SERVICE_USER),
    85: ("file in use (locked), or two files with the same base name in one directory", True,
         "let the application release the file; keep files that share a base name in different directories"),
    88: ("incompatible mode: the file is already in continuous operation", False,
         "the client that began continuous operation must end it (butil -endbu); then run the backup again"),
    94: ("a permission error", False, _SERVICE_USER),
    170: _LOGIN,
    171: _LOGIN,
    3012: ("the local Btrieve/Zen engine is not accessible (not running or not installed)", True, _START_ENGINE),
    3014: ("the Btrieve/Zen engine was not found", True, _START_ENGINE),
}
# Error lines look like "BUTIL-100: MicroKernel error = 12" (reference: an assumption, so only the number is read).
_STATUS_RE = re.compile(r"(?:MicroKernel error|[Ss]tatus(?: [Cc]ode)?)\s*[=:]?\s*(\d+)")

Runner = t.Callable[[t.List[str]], t.Tuple[int, str, str]]


class BtrieveError(Exception):
    """A failure with what happened and what to do; ``retryable`` says whether the same call may succeed later."""

    def __init__(self, msg: str, retryable: bool = False, **facts: t.Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.retryable = retryable
        self.facts = facts


# ---------------------------------------------------------------------------------------------------------------
# files, deltas, the list file

def delta_path(path: str) -> str:
    """The delta of a data file: same directory, same base name, extension .^^^ (INVOICE.HDR -> INVOICE.^^^)."""
    return os.path.splitext(path)[0] + DELTA_EXTENSION


def expand_files(patterns: t.Sequence[str], ddf_dir: t.Optional[str]) -> t.Tuple[t.List[str], t.List[str]]:
    """(files, problems): globs expanded here, never by butil (it refuses wildcards); DDF files of ``ddf_dir`` added
    (the article: "remember to include any data dictionary (DDF) files")."""
    files, problems = [], []  # type: t.List[str], t.List[str]
    for pattern in patterns:
        if not os.path.isabs(pattern):
            problems.append("%s is not an absolute path; list the database files with fully qualified local paths" % pattern)
            continue
        if glob.has_magic(pattern):
            matched = [path for path in sorted(glob.glob(pattern)) if not path.endswith(DELTA_EXTENSION)]
            if not matched:
                problems.append("no file matches %s; check backup_btrieve_files" % pattern)
            files.extend(matched)
        else:
            files.append(os.path.normpath(pattern))
    if ddf_dir:
        if not os.path.isdir(ddf_dir):
            problems.append("ddf_dir %s is not a directory; give the directory of the data dictionary (FILE.DDF, ...)" % ddf_dir)
        else:
            ddfs = sorted(os.path.join(ddf_dir, name) for name in os.listdir(ddf_dir) if name.lower().endswith(".ddf"))
            if not ddfs:
                problems.append("ddf_dir %s holds no .DDF file; give the directory of the data dictionary (FILE.DDF, ...)" % ddf_dir)
            files.extend(ddfs)
    unique = []  # type: t.List[str]
    for path in files:
        if path not in unique:
            unique.append(path)
    return unique, problems


def file_problems(files: t.Sequence[str], mountinfo: t.Optional[str] = None) -> t.List[str]:
    """Everything that makes a start fail or unsafe, found before butil is called: each file exists, is a regular file,
    is local, has a name a list file can hold, and no two files share a base name in one directory."""
    problems = []
    try:
        mounts = read_mountinfo(mountinfo) if mountinfo else read_mountinfo()
    except (OSError, MountinfoError) as exc:
        mounts = []
        problems.append("cannot read the mount table (%s); continuous operation needs local files, so it is not started" % exc)
    by_delta = {}  # type: t.Dict[str, str]
    for path in files:
        if "\r" in path or "\n" in path:
            problems.append("%r has a line break in its name; a butil list file cannot hold it: rename the file" % path)
            continue
        if not os.path.lexists(path):
            problems.append("%s does not exist; the article: make sure that no path in the list does not refer to a real file. "
                            "Fix backup_btrieve_files" % path)
            continue
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            problems.append("%s is not a regular file; list the database's data files only" % path)
            continue
        if mounts:
            try:
                entry = mount_for(real, mounts)
            except MountinfoError as exc:
                problems.append(str(exc))
            else:
                if entry.fstype in NETWORK_FSTYPES or entry.fstype.startswith("nfs"):
                    problems.append(
                        "%s is on a network filesystem (%s %s mounted on %s); the engine puts only its own local files into "
                        "continuous operation (the database must reside completely on a single server): run the backup on "
                        "the host that holds the files" % (path, entry.fstype, entry.source, entry.mountpoint))
        other = by_delta.get(delta_path(real))
        if other is not None:
            problems.append("%s and %s share the base name %s in one directory: both would use the delta %s (status 85); "
                            "continuous operation cannot hold both. Move one into another directory"
                            % (other, path, os.path.basename(os.path.splitext(path)[0]), delta_path(path)))
        else:
            by_delta[delta_path(real)] = path
    return problems


def list_file_bytes(files: t.Sequence[str]) -> bytes:
    """The list file: fully qualified paths, one per line, CR/LF (PSQL v11-v13 docs)."""
    return "".join(path + "\r\n" for path in files).encode("utf-8")


def database_key(files: t.Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(files)).encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# butil

def find_butil(given: t.Optional[str], path_lookup: t.Callable[[str], t.Optional[str]]) -> str:
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise BtrieveError("butil %s is not an executable file; set backup_btrieve_butil to the engine's butil" % given)
        return given
    for candidate in BUTIL_LOCATIONS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = path_lookup("butil")
    if found:
        return found
    raise BtrieveError("butil was not found in %s nor on PATH; is the Btrieve/Zen engine installed on this host? Set "
                       "backup_btrieve_butil to its path" % " or ".join(BUTIL_LOCATIONS))


def parse_statuses(text: str) -> t.List[int]:
    return [int(number) for number in _STATUS_RE.findall(text or "")]


def login_argv(user: str, password: str, db: str) -> t.List[str]:
    """The login arguments every butil call carries on a secured engine: ``/UID<name> /PWD<word> [/DB<name>]``, written
    with ``-`` on Linux (Zen v14 butil reference). Pervasive.SQL's butil synopsis gives them to -startbu, -endbu and
    -stat alike, and butil takes them on its command line only (docs/btrieve.md, "A secured engine")."""
    if not user:
        return []
    return ["-UID" + user, "-PWD" + password] + (["-DB" + db] if db else [])


@dataclasses.dataclass
class ButilResult:
    argv: t.List[str]  # as shown: the password masked
    rc: int
    stdout: str  # masked: butil may echo its command line, password included
    stderr: str
    seconds: float

    @property
    def statuses(self) -> t.List[int]:
        return parse_statuses(self.stdout + "\n" + self.stderr)

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {"argv": self.argv, "rc": self.rc, "statuses": self.statuses, "seconds": self.seconds,
                "stdout": self.stdout, "stderr": self.stderr}


class Butil:
    """Runs butil with the documented command line and the login on every call (a secured engine refuses any call
    without it: status 170/171); remembers each call, password masked in its argv and in what butil printed."""

    def __init__(self, path: str, runner: Runner, user: str = "", password: str = "", db: str = "") -> None:
        self.path = path
        self.runner = runner
        self.login = login_argv(user, password, db)
        self.secrets = [password] if user and password else []
        self.calls = []  # type: t.List[t.Dict[str, t.Any]]

    def run(self, *args: str, login: bool = True) -> ButilResult:
        extra = self.login if login else []
        argv = [self.path] + list(args) + extra
        began = time.monotonic()
        rc, stdout, stderr = self.runner(argv)
        result = ButilResult(mask_data(argv, self.secrets), rc, mask(stdout or "", self.secrets),
                             mask(stderr or "", self.secrets), round(time.monotonic() - began, 3))
        self.calls.append(result.as_dict())
        return result


def describe(result: ButilResult, what: str) -> t.Tuple[str, bool]:
    """(message, retryable) for a butil call that failed: exit code, each status with its meaning and what to do."""
    statuses = sorted(set(result.statuses))
    parts = ["%s: butil %s exited with %d (%s)" % (what, " ".join(result.argv[1:]), result.rc,
                                                   EXIT_MEANING.get(result.rc, "unknown exit code"))]
    retryable = result.rc not in (3,)
    for status in statuses:
        meaning, can_retry, todo = STATUS.get(status, ("an undocumented status", True, "see the engine's status code reference"))
        parts.append("status %d: %s; %s" % (status, meaning, todo))
        retryable = retryable and can_retry
    if result.rc == 3:
        parts.append("this butil does not accept the documented command line; check backup_btrieve_butil")
    said = output_tail(result.stdout) or output_tail(result.stderr)
    if said:
        parts.append("butil said: %s" % said.replace("\n", " | "))
    return ". ".join(parts), retryable


# ---------------------------------------------------------------------------------------------------------------
# the module's record of what it started

class Record:
    """``<state_dir>/<key>.json`` and the list file ``<state_dir>/<key>.lst`` for one set of files."""

    def __init__(self, state_dir: t.Optional[str], files: t.Sequence[str]) -> None:
        self.state_dir = state_dir or os.path.join(default_runtime_dir(), "btrieve")
        key = database_key(files)
        self.path = os.path.join(self.state_dir, key + ".json")
        self.list_file = os.path.join(self.state_dir, key + ".lst")

    def read(self) -> t.Optional[t.Dict[str, t.Any]]:
        """What this module started, or None; a record from before the last boot is void (a reboot ended it)."""
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("boot_id") != _detach.boot_id():
            return None
        return record

    def prepare(self, files: t.Sequence[str]) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        atomic_write(self.list_file, list_file_bytes(files), 0o600)

    def write(self, record: t.Dict[str, t.Any]) -> None:
        write_json(self.path, dict(record, boot_id=_detach.boot_id()))

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------------------------
# waiting for deltas

def wait_gone(deltas: t.Sequence[str], timeout: float) -> t.Dict[str, t.Any]:
    """Wait until none of ``deltas`` exists, at most ``timeout`` s; progress is one entry per change of the count."""
    began = time.monotonic()
    progress = []  # type: t.List[t.Dict[str, t.Any]]
    last = -1
    while True:
        remaining = [delta for delta in deltas if os.path.exists(delta)]
        elapsed = round(time.monotonic() - began, 3)
        if len(remaining) != last:
            progress.append({"seconds": elapsed, "remaining": len(remaining), "at": utc_iso()})
            last = len(remaining)
        if not remaining or elapsed >= timeout:
            return {"seconds": elapsed, "remaining": remaining, "progress": progress}
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------------------------------------------------------
# the engine's view of a set of files

@dataclasses.dataclass
class Files:
    files: t.List[str]
    record: Record
    started: t.Optional[t.Dict[str, t.Any]]  # this module's record, when it started these files

    @property
    def deltas(self) -> t.Dict[str, str]:
        """file -> its delta, for the files that have one."""
        return {path: delta_path(path) for path in self.files if os.path.exists(delta_path(path))}

    @property
    def ours(self) -> t.List[str]:
        """Files in continuous operation that this module started (its record, and their deltas are there)."""
        started = set((self.started or {}).get("files") or [])
        return [path for path in self.deltas if path in started]

    @property
    def stale(self) -> t.List[str]:
        """Deltas this module did not start: a crash's leftovers (or another client's continuous operation)."""
        ours = set(self.ours)
        return [delta for path, delta in self.deltas.items() if path not in ours]


def look(files: t.Sequence[str], state_dir: t.Optional[str]) -> Files:
    record = Record(state_dir, files)
    return Files(list(files), record, record.read())


STALE_OPTIONS = (
    "Two ways out (the article): let the engine roll each delta in (backup_btrieve_stale_deltas=rollin: each file is "
    "opened through the engine and the backup waits until the deltas are gone), or delete the deltas, losing every "
    "change made since the interrupted start (backup_btrieve_stale_deltas=discard with "
    "backup_btrieve_discard_acknowledged=true; the deltas are copied aside first)")


def stale_message(stale: t.Sequence[str]) -> str:
    return ("%d delta file(s) left by an interrupted continuous operation (a crash): %s. The next start fails until every "
            "file has been rolled in. %s" % (len(stale), ", ".join(stale), STALE_OPTIONS))


def roll_in_stale(view: Files, butil: Butil, timeout: float) -> t.Dict[str, t.Any]:
    """Open each file with a delta through the engine (butil -stat) so that it rolls the delta in; wait for them."""
    stale_files = [path for path, delta in view.deltas.items() if delta in view.stale]
    for path in stale_files:
        result = butil.run("-stat", path)
        if result.rc != 0:
            msg, retryable = describe(result, "opening %s to roll its delta in failed" % path)
            raise BtrieveError(msg, retryable, rc=result.rc, stdout=result.stdout, stderr=result.stderr)
    waited = wait_gone([delta_path(path) for path in stale_files], timeout)
    if waited["remaining"]:
        raise BtrieveError(
            "the deltas %s are still there %.0f s after each file was opened (butil -stat): newer engines (Pervasive.SQL 2000 "
            "and later) roll a delta in only while its file is held open. Hold each file open until its delta is gone (the "
            "article: the Function Executor, HoldOpen, or open, read and update the first record), raise "
            "backup_btrieve_timeout if it is still rolling in, or discard the deltas (backup_btrieve_stale_deltas=discard)"
            % (", ".join(waited["remaining"]), waited["seconds"]), False, progress=waited["progress"])
    return {"rolled_in": [delta_path(path) for path in stale_files], "rollin_seconds": waited["seconds"],
            "progress": waited["progress"]}


def discard_stale(stale: t.Sequence[str], discard_dir: str) -> t.List[t.Dict[str, str]]:
    """Copy each delta aside (``<discard_dir>/<UTC time>/<its path>``), make the copy durable, then delete the delta."""
    aside_root = os.path.join(discard_dir, utc_iso().replace(":", ""))
    kept = []
    for delta in stale:
        aside = os.path.join(aside_root, delta.lstrip("/"))
        os.makedirs(os.path.dirname(aside), mode=0o700, exist_ok=True)
        shutil.copy2(delta, aside)
        with open(aside, "rb") as handle:
            os.fsync(handle.fileno())
        fsync_dir(os.path.dirname(aside))
        kept.append({"delta": delta, "kept": aside})
    for entry in kept:
        os.unlink(entry["delta"])
        fsync_dir(os.path.dirname(entry["delta"]))
    return kept


def start(view: Files, butil: Butil, check_mode: bool, stale_deltas: str, acknowledged: bool, discard_dir: str,
          timeout: float, run_id: str) -> t.Dict[str, t.Any]:
    """Put every file into continuous operation (after the checks and the stale deltas' policy).

    Idempotent for this run (``run_id``): its own earlier start is kept. Continuous operation recorded by another run
    (a dead one: the guard's lock lets only one run at a time near the database) is ended first, never adopted.
    """
    result = {"files": view.files, "list_file": view.record.list_file, "stale_deltas": view.stale,
              "changed": False}  # type: t.Dict[str, t.Any]
    ours = view.ours
    if ours and (view.started or {}).get("run_id") != run_id:
        # A run never takes another run's continuous operation as its own pre: a dead run's start holds the files at
        # its own instant, and a write made since then (before this run) is in the deltas, not in the files this run
        # would copy. End it first, as that run's guard would (-endbu, wait for the roll-in), then start our own.
        earlier = {"run_id": view.started.get("run_id"), "started_at": view.started.get("started_at"), "files": ours}
        if check_mode:
            return dict(result, changed=True, ended_earlier=dict(earlier, would=True),
                        msg="%d files are in continuous operation started %s by run %s, not by this run %s: would end it "
                            "(butil -endbu @%s, wait for the roll-in), then run butil -startbu for this run"
                            % (len(ours), earlier["started_at"], earlier["run_id"], run_id, view.record.list_file))
        try:
            ended = stop(view, butil, False, timeout)
        except BtrieveError as exc:
            msg = ("%d files are in continuous operation started %s by run %s, not by this run %s; ending it before this "
                   "run's start failed: %s" % (len(ours), earlier["started_at"], earlier["run_id"], run_id, exc.msg))
            raise BtrieveError(msg, exc.retryable, **exc.facts)
        earlier.update({key: ended.get(key) for key in ("continuous_seconds", "rollin_seconds", "quiesce_end")})
        result.update(changed=True, ended_earlier=earlier)
        view = look(view.files, view.record.state_dir)
        result["stale_deltas"] = view.stale
        ours = view.ours
    if ours and set(ours) == set(view.files) and not view.stale:
        return dict(result, msg="every file is already in continuous operation (started %s by run %s)"
                    % (view.started.get("started_at"), view.started.get("run_id")), started_at=view.started.get("started_at"),
                    quiesce_start=view.started.get("started_epoch"))
    if ours:
        raise BtrieveError("%s are in continuous operation (started %s by run %s) but %s are not; end it first (state=stopped)"
                           % (", ".join(ours), view.started.get("started_at"), view.started.get("run_id"),
                              ", ".join(sorted(set(view.files) - set(ours)))), False, **result)
    stale = view.stale
    if stale:
        if stale_deltas == "fail" or (stale_deltas == "discard" and not acknowledged):
            extra = "" if stale_deltas == "fail" else (
                " stale_deltas=discard needs the acknowledgement (backup_btrieve_discard_acknowledged=true), because "
                "it loses every change made since the interrupted start.")
            raise BtrieveError(stale_message(stale) + "." + extra, False, **result)
        if check_mode:
            action = "roll them in (open each file through the engine)" if stale_deltas == "rollin" else (
                "copy them aside to %s and delete them" % discard_dir)
            return dict(result, changed=True, msg="%d stale delta(s): would %s, then start continuous operation of %d files"
                        % (len(stale), action, len(view.files)))
        if stale_deltas == "rollin":
            result.update(roll_in_stale(view, butil, timeout))
        else:
            result["discarded"] = discard_stale(stale, discard_dir)
        result["changed"] = True
    if check_mode:
        return dict(result, changed=True, msg="would run butil -startbu @%s (%d files)" % (view.record.list_file, len(view.files)))
    view.record.prepare(view.files)
    began = time.time()
    ran = butil.run("-startbu", "@" + view.record.list_file)
    facts = dict(result, rc=ran.rc, stdout=ran.stdout, stderr=ran.stderr, statuses=ran.statuses)
    if ran.rc != 0:
        if ran.rc == 1:
            # Start is all-or-nothing (PSQL docs); a partial start is undone so that no file stays alone.
            undo = butil.run("-endbu", "@" + view.record.list_file)
            facts["undo"] = undo.as_dict()
        msg, retryable = describe(ran, "starting continuous operation failed (no file was put into continuous operation)")
        raise BtrieveError(msg, retryable, **facts)
    view.record.write({"files": view.files, "list_file": view.record.list_file, "started_at": utc_iso(began),
                       "started_epoch": began, "run_id": run_id, "start_seconds": ran.seconds})
    missing = [path for path in view.files if not os.path.exists(delta_path(path))]
    return dict(facts, changed=True, start_seconds=ran.seconds, started_at=utc_iso(began), quiesce_start=began, missing_deltas=missing,
                msg="%d files in continuous operation; the start took %.3f s (that is how long rolling the database into "
                    "continuous operation takes)" % (len(view.files), ran.seconds))


def stop(view: Files, butil: Butil, check_mode: bool, timeout: float) -> t.Dict[str, t.Any]:
    """End the continuous operation this module started and wait until every delta is rolled in."""
    result = {"files": view.files, "list_file": view.record.list_file, "stale_deltas": view.stale,
              "changed": False}  # type: t.Dict[str, t.Any]
    ours = view.ours
    left_alone = (" Deltas this module did not start were left alone: %s" % ", ".join(view.stale)) if view.stale else ""
    if not ours:
        if not check_mode:
            view.record.remove()
        return dict(result, msg="no file is in continuous operation by this module: nothing to end." + left_alone)
    if check_mode:
        return dict(result, changed=True, msg="would run butil -endbu @%s and wait for %d deltas" % (view.record.list_file, len(ours)))
    started_epoch = float(view.started.get("started_epoch") or time.time())
    if not os.path.exists(view.record.list_file):
        view.record.prepare(view.started.get("files") or view.files)
    began = time.time()
    ran = butil.run("-endbu", "@" + view.record.list_file)
    facts = dict(result, rc=ran.rc, stdout=ran.stdout, stderr=ran.stderr, statuses=ran.statuses, endbu_seconds=ran.seconds,
                 continuous_seconds=round(began - started_epoch, 3))
    warnings = []
    if ran.rc != 0:
        if set(ran.statuses) == {88}:
            # ENDBU of a file no longer in continuous operation (the guard ended it, or the engine restarted): its delta
            # may still be rolling in, so wait for it like any other.
            warnings.append("butil -endbu said some files were not in continuous operation (status 88); waiting for their deltas")
        else:
            msg, retryable = describe(ran, "ending continuous operation failed")
            raise BtrieveError(msg, retryable, **facts)
    waited = wait_gone([delta_path(path) for path in ours], timeout)
    ended = time.time()
    facts.update(progress=waited["progress"], rollin_seconds=round(ended - began, 3), warnings=warnings)
    if waited["remaining"]:
        raise BtrieveError(
            "continuous operation ended, but %d delta(s) are still being rolled in after %.0f s (%s). The engine goes on "
            "rolling them in (a busy database takes long); raise backup_btrieve_timeout, and do not start the next backup "
            "before they are gone" % (len(waited["remaining"]), waited["seconds"], ", ".join(waited["remaining"])), True, **facts)
    view.record.remove()
    return dict(facts, changed=True, quiesce_end=ended,
                msg="continuous operation ended after %.3f s; the roll-in of %d deltas took %.3f s"
                    % (facts["continuous_seconds"], len(ours), facts["rollin_seconds"]))


# ---------------------------------------------------------------------------------------------------------------
# restore: the files of a COMPLETE set back into place, only when the engine holds none of them

RECORD_NAME = "the set's Btrieve record (manifest.json facts: files)"


def _set_entries(set_path: str) -> t.List[t.Dict[str, t.Any]]:
    """The set's files through the restore gate: every manifest path relative, normalised and one of the files the
    engine recorded (the facts' ``files``, the absolute paths that were in continuous operation); every recorded file
    present, a regular file in the set with the manifest's size and SHA-256; no link, no device, no setuid or setgid."""
    try:
        with open(os.path.join(set_path, MANIFEST_NAME), "r", encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as exc:
        raise BtrieveError("%s/%s cannot be read (%s); restore another set" % (set_path, MANIFEST_NAME, exc))
    if not isinstance(manifest, dict) or manifest.get("engine") != "btrieve":
        raise BtrieveError("set %s was made by the %s engine, not btrieve; restore it with its own engine"
                           % (set_path, manifest.get("engine") if isinstance(manifest, dict) else None))
    recorded = (manifest.get("facts") or {}).get("files")
    if not isinstance(recorded, list) or not recorded or not all(
            isinstance(path, str) and os.path.isabs(path) and os.path.normpath(path) == path and path != "/" for path in recorded):
        raise BtrieveError("set %s records the files %r (manifest.json facts: files), expected the absolute, normalised paths "
                           "that were in continuous operation; the set cannot say what it holds: restore another set"
                           % (set_path, recorded))
    try:
        plan = _gate.check_set(set_path, manifest, [path[1:] for path in recorded], RECORD_NAME, "a Btrieve set")
    except _gate.GateError as exc:
        raise BtrieveError("%s. Nothing was written" % exc) from None
    return [plan.entries[rel] for rel, _size in sorted(plan.files)]


def resolve_complete_set(backup_dest: str, backup_id: str, set_host: t.Optional[str] = None,
                         set_database: t.Optional[str] = None) -> str:
    """The set a restore means, through the set reader (latest: the newest COMPLETE Btrieve set of the host and
    database)."""
    try:
        return _sets.resolve(backup_dest, backup_id, "btrieve", set_host, set_database,
                             database_option="set_database (the set's files, joined by ':')")["path"]
    except _sets.SetError as exc:
        raise BtrieveError(str(exc)) from None


def _engine_holds(targets: t.Sequence[str], butil: Butil) -> t.List[str]:
    """Why the engine may hold a target: a delta beside it (continuous operation, or a crash's leftover), or -stat
    refusing it as in use (85) or in continuous operation (88). An engine that is not running holds nothing."""
    held = ["%s (its delta %s exists)" % (target, delta_path(target)) for target in targets if os.path.exists(delta_path(target))]
    if held:
        return held
    for target in targets:
        if os.path.exists(target):
            ran = butil.run("-stat", target)
            if ran.rc != 0 and set(ran.statuses) & {85, 88}:
                held.append("%s (butil -stat: status %s)" % (target, ", ".join(str(status) for status in ran.statuses)))
    return held


def restore(backup_dest: str, backup_id: str, restore_root: str, butil: Butil, check_mode: bool,
            set_host: t.Optional[str] = None, set_database: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    path = resolve_complete_set(backup_dest, backup_id, set_host, set_database)
    if not os.path.isabs(restore_root):
        raise BtrieveError("restore_root must be an absolute path; found %r" % restore_root)
    entries = _set_entries(path)
    targets = [os.path.join(restore_root, entry["path"]) for entry in entries]
    held = _engine_holds(targets, butil)
    if held:
        raise BtrieveError("the engine may hold %s; end continuous operation and roll every delta in (state=stopped, or "
                           "stale_deltas=rollin) and stop the application before restoring over the files. Nothing was written"
                           % "; ".join(held))
    for target in targets:
        if os.path.lexists(target) and not os.path.isfile(target) or os.path.islink(target):
            raise BtrieveError("%s is not a regular file (a link, directory or device); a restore puts files back only over "
                               "files or into free places, never through a link: move it aside. Nothing was written" % target)
    restored = {"backup_id": os.path.basename(path), "set_path": path, "files": targets, "restore_root": restore_root,
                "bytes": sum(int(entry.get("size") or 0) for entry in entries), "verified": True}
    if check_mode:
        return {"changed": True, "restored": restored, "msg": "would put %d verified files back under %s" % (len(targets), restore_root)}
    # Every file is written and checked under a temporary name first; only when all are, each takes its place. A
    # failure before that removes every temporary file and every directory the restore made: nothing changed.
    written = _gate.Written(None)
    temporaries = []
    try:
        for entry, target in zip(entries, targets):
            written.makedirs(os.path.dirname(target))
            temporary = os.path.join(os.path.dirname(target), ".%s.restoring" % os.path.basename(target))
            written.made(temporary)
            _put_back(os.path.join(path, DATA_DIR, entry["path"]), temporary, entry)
            temporaries.append((temporary, target))
    except (OSError, BtrieveError, _gate.GateError) as exc:
        reason = "%s: %s" % (exc.filename or "?", exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
        left = written.undo()
        raise BtrieveError("restore under %s failed before any file was put back (%s); %s"
                           % (restore_root, reason, "the temporary files and directories it made could not all be removed "
                              "(%s): remove them by hand" % ", ".join(left) if left else "what it wrote was removed, every "
                              "file is as it was"), True) from None
    for temporary, target in temporaries:
        os.rename(temporary, target)
    for directory in sorted({os.path.dirname(target) for target in targets}):
        fsync_dir(directory)
    return {"changed": True, "restored": restored, "msg": "put %d files back under %s from %s" % (len(targets), restore_root, path)}


def _put_back(source: str, temporary: str, entry: t.Dict[str, t.Any]) -> None:
    """Copy a file of the set to ``temporary`` (a new name beside its target), check the SHA-256 again, give it the
    manifest's read and write permission bits only (never execute, setuid or setgid), fsync."""
    digest = hashlib.sha256()
    fd = _gate.open_regular(source)
    with os.fdopen(fd, "rb") as reader, open(temporary, "xb") as writer:
        for chunk in iter(lambda: reader.read(1 << 20), b""):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        mode = _gate.entry_mode(entry)
        os.fchmod(writer.fileno(), (mode if mode is not None and mode >= 0 else 0o640) & 0o666)
        os.fsync(writer.fileno())
    if digest.hexdigest() != entry.get("sha256"):
        raise BtrieveError("%s changed while it was restored (SHA-256 %s, manifest %s); restore again"
                           % (source, digest.hexdigest(), entry.get("sha256")), True)
