# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The Berkeley DB engine behind ``bdb_checkpoint`` and ``bdb_verify``: one place for what the collection knows
about a transactional Berkeley DB environment.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

Shape:

* ``find_utilities`` finds db5.3_X, then db_X (or a prefix or directory the operator names);
* ``Environment`` describes a live environment (DB_CONFIG directories, data files, logs, page sizes, the last
  checkpoint, whether one is due) and checkpoints it; ``archivable_in_set`` picks the logs that may be removed;
* ``previous_set`` finds the newest COMPLETE set of the same host and environment (the base of an incremental), and
  ``plan_backup`` decides before pre whether the run is full or incremental, with the whole chain resolved;
* ``resolve_chain``, ``lay_out``, ``recover`` and ``verify_databases`` verify a set, or a chain of a full set
  and its incrementals, on a copy: the same steps, kept in a target directory, are the restore.

Facts the engine relies on (checked with db5.3-util on Debian 12, see docs/bdb.md):

* ``db_stat -t`` and ``db_stat -l`` need the environment's region files (__db.*); without them the last
  checkpoint is found in the last log file with ``db_printlog``.
* ``db_archive -a`` prints absolute paths; ``-s`` lists only database files opened during the current logs, so
  the data directories are listed too.
* ``db_recover -c`` with data files and no logs returns 0 and makes a new log.0000000001: a false pass. So a
  verification checks that the logs are there, contiguous, and that recovery reached the source's checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils import _backup_set
from ansible_collections.consistent.backup.plugins.module_utils import _restore_gate as _gate
from ansible_collections.consistent.backup.plugins.module_utils import _sets
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import read_json_object
from ansible_collections.consistent.backup.plugins.module_utils._layout import (
    COMPLETE_NAME, MANIFEST_NAME, REPORT_NAME, backup_id_problem)

Runner = t.Callable[[t.List[str]], t.Tuple[int, str, str]]
Which = t.Callable[[str], t.Optional[str]]

UTILITIES = ("archive", "checkpoint", "recover", "stat", "verify", "printlog")
DEFAULT_PREFIXES = ("db5.3_", "db_")
# Where an environment's files go in a set: data/<SET_PREFIX>/<path relative to the home>.
SET_PREFIX = "env"
# A data or log directory outside the home (DB_CONFIG set_data_dir /srv/db-data, set_lg_dir /srv/db-logs: logs on
# another disk, as the Berkeley DB guide advises for catastrophic recovery) keeps its absolute path under this name:
# /srv/db-logs/log.0000000001 is data/env/_outside_home/srv/db-logs/log.0000000001 in the set, and a copy laid out
# from the set (the proof, a restore) holds it there too, with its DB_CONFIG rewritten to point at it.
OUTSIDE_DIR = "_outside_home"
LOG_RE = re.compile(r"^log\.(\d{10})$")
# The first 24 bytes of a database file: LSN file, LSN offset, page number, magic, version, page size (u32 each).
MAGICS = {0x053162: "btree", 0x061561: "hash", 0x042253: "queue", 0x074582: "heap"}
_STAT_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


class BdbError(Exception):
    """A refusal or failure; the message names the object, what was expected, what was found and what to do."""

    def __init__(self, msg: str, retryable: bool = False, **facts: t.Any) -> None:
        super().__init__(msg)
        self.retryable = retryable
        self.facts = facts


# --- small parsers -------------------------------------------------------------------------------------------

def parse_lsn(text: str) -> t.Optional[t.Tuple[int, int]]:
    """'9/1221' or '[9][1221]' -> (9, 1221); None for anything else."""
    match = re.match(r"^\s*\[?(\d+)\]?\s*[/\[]\s*(\d+)\]?\s*$", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def format_lsn(lsn: t.Optional[t.Sequence[int]]) -> t.Optional[str]:
    return "%d/%d" % (lsn[0], lsn[1]) if lsn else None


def parse_stat_bytes(text: str) -> int:
    """db_stat's byte counts: '0', '637B', '497KB 637B', '2MB 12KB 5B' -> bytes."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    total = 0
    for number, unit in re.findall(r"(\d+)\s*([KMGT]?B)", text, re.IGNORECASE):
        total += int(number) * _STAT_UNITS[unit.upper()]
    return total


def stat_values(output: str) -> t.Dict[str, str]:
    """db_stat's '<value>\\t<description>' lines as {description: value}."""
    values = {}
    for line in output.splitlines():
        if "\t" in line:
            value, description = line.split("\t", 1)
            values[description.strip()] = value.strip()
    return values


def log_number(name: str) -> t.Optional[int]:
    match = LOG_RE.match(os.path.basename(name))
    return int(match.group(1)) if match else None


def log_name(number: int) -> str:
    return "log.%010d" % number


def log_gaps(numbers: t.Iterable[int]) -> t.List[int]:
    """The log numbers missing between the lowest and the highest of ``numbers``."""
    present = sorted(set(numbers))
    if not present:
        return []
    return sorted(set(range(present[0], present[-1] + 1)) - set(present))


def page_size(path: str) -> t.Optional[t.Tuple[int, str, str]]:
    """(page size, access method, byte order) from a database file's header, or None when it is not a database.

    The header is in the byte order of the machine that created the file; both are tried, so a set copied between
    machines of either order is read the same way.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(24)
    except OSError:
        return None
    if len(header) < 24:
        return None
    for order, name in (("<", "little"), (">", "big")):
        _lsn_file, _lsn_offset, _pgno, magic, _version, size = struct.unpack(order + "6I", header)
        if magic in MAGICS and 512 <= size <= 65536 and size % 512 == 0:
            return size, MAGICS[magic], name
    return None


def read_db_config(home: str) -> t.Tuple[t.List[str], str]:
    """The data directories (set_data_dir, in order; the home when none) and the log directory (set_lg_dir) of
    DB_CONFIG, as paths relative to the home."""
    data_dirs: t.List[str] = []
    log_dir = "."
    try:
        with open(os.path.join(home, "DB_CONFIG"), "r", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] in ("set_data_dir", "add_data_dir"):
            data_dirs.append(words[1])
        elif len(words) >= 2 and words[0] == "set_lg_dir":
            log_dir = words[1]
    return [os.path.normpath(d) for d in data_dirs] or ["."], os.path.normpath(log_dir)


def place(home: str, path: str) -> str:
    """A path of the environment as the engine names it: relative to the home when it is inside the home, else
    absolute (a directory outside the home)."""
    full = os.path.normpath(os.path.join(home, path))
    rel = os.path.relpath(full, home)
    return full if rel == ".." or rel.startswith("../") else rel


def set_rel(path: str) -> str:
    """Where a file of the environment (``place``'s name for it) is in a set, below data/<SET_PREFIX>/, and in a copy
    laid out from the set: its path relative to the home, or OUTSIDE_DIR and its absolute path."""
    return OUTSIDE_DIR + path if os.path.isabs(path) else path


# The DB_CONFIG directives that name a directory (Berkeley DB 5.3's env_config.c; set_metadata_dir and set_blob_dir
# are later releases'). A copy laid out from a set must have each of them inside itself.
DIR_DIRECTIVES = ("set_data_dir", "add_data_dir", "set_create_dir", "set_lg_dir", "set_tmp_dir", "set_metadata_dir",
                  "set_blob_dir")


def rewrite_db_config(text: str, source_home: str, target: str) -> t.Tuple[str, t.Dict[str, str]]:
    """The DB_CONFIG of a copy laid out from a set, from the DB_CONFIG as backed up (``text``) in the environment
    ``source_home``: every directory it names points at the copy's own directory, inside ``target``.

    A directory inside the source's home keeps its relative path; one outside it (an absolute path, or a relative
    path with '..' that leaves the home, such as set_lg_dir ../logs) is OUTSIDE_DIR/<its absolute path> in the copy,
    where the set keeps its files. Returns (the copy's DB_CONFIG, {directive as backed up: as rewritten}; empty when
    nothing had to change). A directive line that is not 'directive directory' is refused (restore gate: nothing in a
    set may name a directory outside the target)."""
    if not os.path.isabs(source_home) or os.path.normpath(source_home) != source_home:
        raise _gate.GateError("the set records the environment home %r, expected an absolute, normalised path; its "
                              "DB_CONFIG cannot be placed inside the target: restore another set" % (source_home,))
    rewritten, out = {}, []
    for line in text.splitlines(True):
        words = line.split()
        if words and words[0] in DIR_DIRECTIVES:
            if len(words) != 2:
                raise _gate.GateError("DB_CONFIG line %r: expected '%s <directory>' (one word); refusing the restore: its "
                                      "directory cannot be placed inside the target %s" % (line.strip(), words[0], target))
            new_dir = os.path.normpath(set_rel(place(source_home, words[1])))
            _gate.inside(target, new_dir, "DB_CONFIG line %r" % line.strip())
            if new_dir != os.path.normpath(words[1]):
                new = "%s %s\n" % (words[0], new_dir)
                rewritten[line.strip()] = new.strip()
                line = new
        out.append(line)
    return "".join(out), rewritten


def absolute_outside_dirs(text: str, home: str) -> str:
    """DB_CONFIG ``text`` of the environment ``home`` with each relative directory that leaves the home ('..') named
    by its absolute path, and nothing else changed: the same directories, seen from anywhere."""
    out = []
    for line in text.splitlines(True):
        words = line.split()
        if len(words) == 2 and words[0] in DIR_DIRECTIVES and not os.path.isabs(words[1]) \
                and os.path.isabs(place(home, words[1])):
            line = "%s %s\n" % (words[0], place(home, words[1]))
        out.append(line)
    return "".join(out)


def is_region_file(name: str) -> bool:
    return os.path.basename(name).startswith("__db.")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- utilities -----------------------------------------------------------------------------------------------

def find_utilities(which: Which, prefix: t.Optional[str] = None, bindir: t.Optional[str] = None,
                   names: t.Sequence[str] = UTILITIES) -> t.Dict[str, str]:
    """{name: path} for every utility: <bindir>/<prefix>X when bindir is given, else <prefix>X on the PATH, else
    db5.3_X then db_X. Raises BdbError naming what is missing."""
    prefixes = (prefix,) if prefix else DEFAULT_PREFIXES
    found, missing = {}, []
    for name in names:
        for candidate_prefix in prefixes:
            if bindir:
                path = os.path.join(bindir, candidate_prefix + name)
                path = path if os.access(path, os.X_OK) else None
            else:
                path = which(candidate_prefix + name)
            if path:
                found[name] = path
                break
        else:
            missing.append(name)
    if missing:
        looked = " or ".join(p + "X" for p in prefixes) + (" in " + bindir if bindir else " on the PATH")
        raise BdbError("Berkeley DB utilities %s not found (looked for %s); install them (Debian: apt-get install "
                       "db5.3-util) or set utility_prefix or bindir" % (", ".join(missing), looked))
    return found


def utility_argument_spec() -> t.Dict[str, t.Dict[str, str]]:
    """The options every bdb module takes (documented once in doc_fragments/_bdb.py and _job.py)."""
    return dict(utility_prefix=dict(type="str"), bindir=dict(type="path"), **_backup_set.job_argument_spec())


def module_environment(module: t.Any, home: str) -> "Environment":
    """The environment ``home`` seen through the utilities the module's options name (utility_prefix, bindir), each
    run with AnsibleModule.run_command under LC_ALL=C: the one runner of both bdb modules."""
    utilities = find_utilities(module.get_bin_path, module.params["utility_prefix"], module.params["bindir"])

    def run(argv: t.List[str]) -> t.Tuple[int, str, str]:
        return module.run_command(argv, environ_update={"LC_ALL": "C", "LANG": "C"})
    return Environment(home, utilities, run)


def _utility_failure(argv: t.List[str], rc: int, err: str, home: str) -> BdbError:
    text = (err or "").strip()
    if "Permission denied" in text or "EACCES" in text:
        return BdbError("environment %s: %s was refused access (%s); run as the environment's owner (become_user) "
                        "or give this user read access to the home, its data and log directories"
                        % (home, os.path.basename(argv[0]), text[-300:]))
    missing = re.search(r"^\S+: (/\S*): No such file or directory$", text, re.MULTILINE)
    if missing and "DB_RUNRECOVERY" in text:
        # The utility could not open a directory DB_CONFIG names and reports it as DB_RUNRECOVERY; the environment is
        # not damaged, and telling the operator to recover it would send them the wrong way.
        return BdbError("environment %s: %s cannot open the environment because %s does not exist; it is a directory the "
                        "environment's DB_CONFIG names (set_data_dir, add_data_dir, set_lg_dir), seen from %s. This layout "
                        "cannot be read as configured: create the directory or correct DB_CONFIG. The environment itself "
                        "is not damaged, so recovery would not help"
                        % (home, os.path.basename(argv[0]), missing.group(1), argv[argv.index("-h") + 1] if "-h" in argv
                           else home))
    return BdbError("environment %s: %s exited with %d (%s)" % (home, " ".join(argv), rc, text[-500:] or "no output"),
                    retryable=True)


# --- the live environment ------------------------------------------------------------------------------------

class Environment:
    """A transactional environment on this host, seen through the db_* utilities (LC_ALL=C)."""

    def __init__(self, home: str, utilities: t.Dict[str, str], run: Runner) -> None:
        self.home = os.path.normpath(home)
        # The home the utilities' reads are pointed at: the home itself, or a shadow of it (see reading_aside).
        self.read_home = self.home
        self.utilities = utilities
        self._run = run

    @contextlib.contextmanager
    def reading_aside(self) -> t.Iterator[None]:
        """Point the utilities' reads at a shadow home: a private directory of symlinks to every entry of the home
        but its __db.* region files. A utility run with -h on the home itself joins the environment and so writes
        to its region files (mutex and statistics counters); in the shadow it finds no regions, builds a private
        one in memory and only reads the logs and databases. Check mode and the preflight read this way, so they
        leave every file of the environment as it was."""
        shadow = tempfile.mkdtemp(prefix="consistent-backup-bdb-")
        try:
            for name in os.listdir(self.home):
                if name == "DB_CONFIG" and os.path.isfile(os.path.join(self.home, name)):
                    # A relative directory that leaves the home (set_lg_dir ../logs) would leave the shadow instead:
                    # the shadow's DB_CONFIG names it by its absolute path.
                    with open(os.path.join(self.home, name), "r", encoding="utf-8", errors="surrogateescape") as handle:
                        text = absolute_outside_dirs(handle.read(), self.home)
                    with open(os.path.join(shadow, name), "w", encoding="utf-8", errors="surrogateescape") as handle:
                        handle.write(text)
                elif not is_region_file(name):
                    os.symlink(os.path.join(self.home, name), os.path.join(shadow, name))
            self.read_home = shadow
            yield
        finally:
            self.read_home = self.home
            shutil.rmtree(shadow, ignore_errors=True)

    def run_raw(self, argv: t.List[str]) -> t.Tuple[int, str, str]:
        return self._run(argv)

    def run(self, name: str, *args: str) -> str:
        argv = [self.utilities[name]] + list(args)
        rc, out, err = self._run(argv)
        if rc != 0:
            raise _utility_failure(argv, rc, err, self.home)
        return out

    # what it is
    def check(self) -> None:
        """Refuse what is not a readable transactional environment."""
        home = self.home
        if not os.path.isabs(home):
            raise BdbError("home must be an absolute path; found %r" % home)
        if not os.path.isdir(home):
            raise BdbError("environment home %s does not exist or is not a directory; expected the directory given to "
                           "DB_ENV->open (the one holding DB_CONFIG and the __db.* region files)" % home)
        if not os.access(home, os.R_OK | os.X_OK):
            raise BdbError("environment home %s: permission denied for uid %d; run as the environment's owner "
                           "(become_user) or give this user read access" % (home, os.geteuid()))
        data_dirs, log_dir = self.directories()
        names = os.listdir(home)
        has_env_files = "DB_CONFIG" in names or any(is_region_file(name) for name in names)
        logs = self.log_names(log_dir)
        if not has_env_files and not logs:
            raise BdbError("%s is not a Berkeley DB environment: found no DB_CONFIG, no __db.* region files and no "
                           "log files; give the environment's home directory as home" % home)
        if not logs:
            raise BdbError("environment %s has no log files in %s: expected a transactional environment "
                           "(DB_INIT_TXN and DB_INIT_LOG); without logs there is nothing to recover from, so a hot "
                           "backup is impossible. Open the environment with transactions, or back it up with the files "
                           "engine while it is stopped" % (home, os.path.join(home, log_dir)))
        for directory in data_dirs + [log_dir]:
            full = os.path.join(home, directory)
            if os.path.isdir(full) and not os.access(full, os.R_OK | os.X_OK):
                raise BdbError("environment %s: permission denied on %s for uid %d; run as the environment's owner"
                               % (home, full, os.geteuid()))

    def directories(self) -> t.Tuple[t.List[str], str]:
        """The data directories and the log directory: relative to the home, or absolute outside it."""
        data_dirs, log_dir = read_db_config(self.home)
        return [place(self.home, d) for d in data_dirs], place(self.home, log_dir)

    def log_names(self, log_dir: str) -> t.List[str]:
        try:
            return sorted(name for name in os.listdir(os.path.join(self.home, log_dir)) if LOG_RE.match(name))
        except FileNotFoundError:
            return []

    def has_regions(self) -> bool:
        return any(is_region_file(name) for name in os.listdir(self.read_home))

    def _archive(self, *flags: str) -> t.List[str]:
        """db_archive's list, as ``place`` names them: relative to the home, or absolute outside it."""
        out = self.run("archive", "-h", self.read_home, "-a", *flags)
        return [place(self.read_home, os.path.normpath(line.strip())) for line in out.splitlines() if line.strip()]

    def checkpoint_state(self) -> t.Tuple[t.Optional[t.Tuple[int, int]], t.Optional[int]]:
        """(last checkpoint LSN, log bytes written since it). Without region files (no process has the environment
        open) db_stat cannot join it: the last log file's records say the same."""
        if self.has_regions():
            lsn_line = self.run("stat", "-h", self.read_home, "-t").splitlines()
            lsn = parse_lsn(lsn_line[0].split("\t")[0]) if lsn_line else None
            since = stat_values(self.run("stat", "-h", self.read_home, "-l")).get("Log bytes written since last checkpoint")
            lsn = lsn if lsn and lsn != (0, 0) else None
            return lsn, (parse_stat_bytes(since) if since is not None else None)
        return self._checkpoint_from_log()

    def _checkpoint_from_log(self) -> t.Tuple[t.Optional[t.Tuple[int, int]], t.Optional[int]]:
        _data_dirs, log_dir = self.directories()
        logs = self.log_names(log_dir)
        last = log_number(logs[-1])
        out = self.run("printlog", "-h", self.read_home, "-b", "%d/0" % last)
        records = [(parse_lsn(m.group(1)), m.group(2)) for m in re.finditer(r"^(\[\d+\]\[\d+\])(\S+):", out, re.MULTILINE)]
        checkpoints = [lsn for lsn, kind in records if kind == "__txn_ckp"]
        if not checkpoints:
            return None, None  # unknown: a checkpoint is due
        after = [lsn for lsn, kind in records if lsn > checkpoints[-1]]
        return checkpoints[-1], (1 if after else 0)

    def describe(self) -> t.Dict[str, t.Any]:
        """Everything a backup of this environment needs to know, read-only."""
        data_dirs, log_dir = self.directories()
        on_disk = {os.path.join(log_dir, n) if log_dir != "." else n for n in self.log_names(log_dir)}
        log_files = sorted(set(self._archive("-l")) | on_disk, key=_log_sort_key)
        listed = set(self._archive("-s"))
        data_files = set()
        for directory in data_dirs:
            full = os.path.join(self.home, directory)
            for name in sorted(os.listdir(full)) if os.path.isdir(full) else []:
                rel = os.path.normpath(os.path.join(directory, name))
                info = os.lstat(os.path.join(self.home, rel))
                if stat.S_ISREG(info.st_mode) and not is_region_file(name) and not LOG_RE.match(name) and name != "DB_CONFIG":
                    data_files.add(rel)
        # A database db_archive knows about outside the data directories (opened with a path) is copied too.
        data_files |= {rel for rel in listed if os.path.isfile(os.path.join(self.home, rel))}
        page_sizes = {}
        for rel in sorted(data_files):
            header = page_size(os.path.join(self.home, rel))
            if header:
                page_sizes[rel] = header[0]
        lsn, since = self.checkpoint_state()
        config = ["DB_CONFIG"] if os.path.isfile(os.path.join(self.home, "DB_CONFIG")) else []
        return {
            "home": self.home,
            "data_dirs": data_dirs,
            "log_dir": log_dir,
            "data_files": sorted(data_files),
            "unlisted_data_files": sorted(data_files - listed),
            "log_files": log_files,
            "archivable_logs": sorted(self._archive(), key=_log_sort_key),
            "page_sizes": page_sizes,
            "block_size": max(page_sizes.values()) if page_sizes else 4096,
            "checkpoint_lsn": format_lsn(lsn),
            "log_bytes_since_checkpoint": since,
            "checkpoint_due": since is None or since > 0 or lsn is None,
            "config_file": config[0] if config else None,
            # each file as a copy source: where it is, and where it goes in the set
            "copy_sources": {rel: {"path": os.path.join(self.home, rel), "dest": SET_PREFIX + "/" + set_rel(rel)}
                             for rel in sorted(data_files) + log_files + config},
        }

    def checkpoint(self) -> None:
        # -1: once, then exit (without it db_checkpoint stays as a daemon)
        self.run("checkpoint", "-1", "-h", self.home)


def _log_sort_key(path: str) -> t.Tuple[int, str]:
    return (log_number(path) or 0, path)


def lsn_tuple(text: t.Optional[str]) -> t.Optional[t.Tuple[int, int]]:
    return parse_lsn(text) if text else None


# --- sets: the chain of a full set and its incrementals ------------------------------------------------------

def set_facts(set_path: str) -> t.Dict[str, t.Any]:
    """The bdb facts a set's manifest records (written by the role's copy through aligned_copy's facts)."""
    manifest = read_json_object(os.path.join(set_path, MANIFEST_NAME)) or {}
    facts = manifest.get("facts") or {}
    return facts.get("bdb") or {}


def _from_reader(call: t.Callable[[], t.Any]) -> t.Any:
    try:
        return call()
    except _sets.SetError as exc:
        raise BdbError(str(exc)) from None


def previous_set(backup_dest: str, home: str, host: t.Optional[str] = None) -> t.Optional[t.Dict[str, t.Any]]:
    """The newest COMPLETE bdb set of the environment ``home`` (and ``host``, when given) in ``backup_dest``, through
    the set reader, with its recorded facts, or None."""
    if not os.path.isdir(backup_dest):
        return None
    found = _from_reader(lambda: _sets.select_latest(backup_dest, "bdb", host, os.path.normpath(home), required=False))
    if found is None:
        return None
    report = read_json_object(os.path.join(found["path"], REPORT_NAME)) or {}
    return dict(set_facts(found["path"]), backup_id=found["backup_id"], set_path=found["path"], host=found["host"],
                verified=bool(((report.get("bdb") or {}).get("verification") or {}).get("ok")))


def resolve_chain(backup_dest: str, backup_id: str, head_complete: bool = True, set_host: t.Optional[str] = None,
                  set_database: t.Optional[str] = None) -> t.List[t.Dict[str, t.Any]]:
    """The sets to lay out for ``backup_id``, oldest (the full set) first: each incremental names the set before it.

    ``latest`` is the set reader's (the newest COMPLETE bdb set of ``set_host`` and ``set_database``, the
    environment's home). Every set but the head must be COMPLETE; the head too unless ``head_complete`` is false (the
    backup's own verification runs before its set is closed). Every set of the chain must be of the head's host and
    environment: a chain never crosses into another host's or environment's sets."""
    if not os.path.isdir(backup_dest):
        raise BdbError("backup_dest %s is not a directory; give the backup destination that holds the sets" % backup_dest)
    database = os.path.normpath(set_database) if set_database else None
    head = _from_reader(lambda: _sets.resolve(backup_dest, backup_id, "bdb", set_host, database,
                                              database_option="backup_bdb_home (set_database: the environment's home)",
                                              require_complete=head_complete))
    chain: t.List[t.Dict[str, t.Any]] = []
    current: t.Optional[str] = head["backup_id"]
    while current:
        problem = backup_id_problem(current)
        if problem:
            raise BdbError(problem + ", or latest for the newest COMPLETE set")
        path = os.path.join(backup_dest, current)
        if not os.path.isdir(path):
            raise BdbError("backup set %s does not exist%s; check backup_dest and backup_id"
                           % (path, " (named as the previous set of %s)" % chain[0]["backup_id"] if chain else ""))
        if (chain or head_complete) and not os.path.isfile(os.path.join(path, COMPLETE_NAME)):
            raise BdbError("backup set %s is not marked COMPLETE; refusing to restore from it. Restore an earlier COMPLETE "
                           "set" % path)
        facts = set_facts(path)
        if not facts:
            raise BdbError("backup set %s has no Berkeley DB facts in its manifest.json; it is not a bdb set (or its copy "
                           "did not finish): restore another set" % path)
        if any(link["backup_id"] == current for link in chain):
            raise BdbError("backup set %s: its chain of previous sets loops; restore another set" % path)
        if chain:
            link = _sets.read_set(backup_dest, current)
            expected = (head["host"], head["database"])
            if link["engine"] != "bdb" or (link["host"], link["database"]) != expected \
                    or os.path.normpath(str(facts.get("home"))) != os.path.normpath(str(chain[0].get("home"))):
                raise BdbError("backup set %s, named as the previous set of %s, is the %s set of host %s and environment %s "
                               "(home %s), expected a bdb set of host %s and environment %s: a chain never crosses into "
                               "another host's or environment's sets. Restore another set, or take a full set"
                               % (path, chain[0]["backup_id"], link["engine"], link["host"], link["database"],
                                  facts.get("home"), expected[0], expected[1]))
        chain.insert(0, dict(facts, backup_id=current, set_path=path))
        current = facts.get("previous_set") if facts.get("mode") == "incremental" else None
    return chain


def plan_backup(backup_dest: str, home: str, host: t.Optional[str], backup_id: str, requested_mode: str,
                full_every: int, bulk_loaded: bool, live_logs: t.Sequence[str],
                previous: t.Optional[t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
    """Full or incremental, decided before pre: the whole chain an incremental would build on is resolved first.

    An incremental builds on the newest COMPLETE set of this host and environment. It becomes a full set (the reason
    is recorded as ``full_reason``) when that set's chain is broken (a set of it gone, not COMPLETE, of another host
    or environment), when the logs from that set's last log on are no longer all in the environment (the incremental
    starts at that log again: records were appended to it after the set copied it), every ``full_every`` runs, and
    after a bulk load. Without any set to build on, an incremental is refused (BdbError): take a full set first.
    ``previous`` is previous_set(backup_dest, home, host), which the caller has read already."""
    if requested_mode not in ("hot", "offline", "incremental"):
        raise BdbError("backup_bdb_mode must be hot, offline or incremental; found %r. Set backup_bdb_mode" % requested_mode)
    if full_every < 1:
        raise BdbError("backup_bdb_full_every must be 1 or more; found %r. Set it to the number of runs between full sets"
                       % full_every)
    plan: t.Dict[str, t.Any] = {"requested_mode": requested_mode, "mode": "offline" if requested_mode == "offline" else "hot",
                                "full_reason": None, "previous_set": None, "base_set": backup_id, "runs_since_full": 0,
                                "incremental_from": 0, "chain": []}
    if requested_mode != "incremental":
        return plan
    if previous is None:
        raise BdbError("backup_bdb_mode is incremental, but %s holds no COMPLETE set of the environment %s%s to build on; "
                       "an incremental set holds only the logs written since the last set. Take a full set first "
                       "(backup_bdb_mode=hot or offline)" % (backup_dest, home, " of host %s" % host if host else ""))
    plan["previous_set"] = previous["backup_id"]
    reason = None
    try:
        chain = resolve_chain(backup_dest, previous["backup_id"], True, host, os.path.normpath(home))
    except BdbError as exc:
        chain, reason = [], "the chain of %s is broken (%s)" % (previous["backup_id"], exc)
    last_log = log_number(str(previous.get("last_log") or ""))
    live = sorted(number for number in (log_number(os.path.basename(path)) for path in live_logs) if number is not None)
    if reason is None and bulk_loaded:
        reason = "backup_bdb_bulk_loaded is true: a bulk (non-logged) load is not in the logs, so only a full set holds it"
    if reason is None and int(previous.get("runs_since_full") or 0) + 1 >= full_every:
        reason = "a full set every %d runs (backup_bdb_full_every)" % full_every
    if reason is None and last_log is None:
        reason = "%s records no last log to continue from" % previous["backup_id"]
    if reason is None and (not live or live[0] > last_log or log_gaps([n for n in live if n >= last_log])):
        reason = ("the logs from %s (the last log of %s) on are not all in the environment (its logs: %s)"
                  % (log_name(last_log), previous["backup_id"],
                     "%s to %s" % (log_name(live[0]), log_name(live[-1])) if live else "none"))
    if reason is not None:
        plan.update(full_reason=reason, previous_set=None)
        return plan
    plan.update(mode="incremental", base_set=previous.get("base_set") or previous["backup_id"],
                runs_since_full=int(previous.get("runs_since_full") or 0) + 1, incremental_from=last_log,
                chain=[link["backup_id"] for link in chain])
    return plan


def manifest_files(set_path: str) -> t.Dict[str, t.Dict[str, t.Any]]:
    """The files a set's manifest lists below data/<SET_PREFIX>/, by their path there (check mode's log listing)."""
    manifest = read_json_object(os.path.join(set_path, MANIFEST_NAME))
    if manifest is None:
        raise BdbError("backup set %s has no readable %s; the set cannot vouch for its files: restore another set"
                       % (set_path, MANIFEST_NAME))
    prefix = SET_PREFIX + "/"
    files = {}
    for entry in manifest.get("files", []):
        path = entry.get("path", "") if isinstance(entry, dict) else ""
        if entry.get("type", "file") == "file" and path.startswith(prefix):
            rel = os.path.normpath(path[len(prefix):])
            if rel.startswith("..") or os.path.isabs(rel):
                raise BdbError("backup set %s: manifest.json lists %r, which leaves the environment; restore another set"
                               % (set_path, path))
            files[rel] = entry
    return files


def chain_logs(chain: t.List[t.Dict[str, t.Any]]) -> t.List[str]:
    """Every log the chain's manifests list, relative to the home, in log order."""
    return sorted({rel for link in chain for rel in manifest_files(link["set_path"]) if log_number(rel) is not None},
                  key=_log_sort_key)


# --- the restore gate for a bdb set ----------------------------------------------------------------------------

RECORD_NAME = "the set's Berkeley DB record (manifest.json facts: data_files, and first_log to last_log in log_dir)"


def set_record(facts: t.Dict[str, t.Any], manifest: t.Dict[str, t.Any]) -> t.Tuple[t.List[str], t.List[str], t.List[str]]:
    """What a bdb set holds by the engine's own record, as paths below the set's data/: (recorded files, optional
    files, files recorded as vanished during the copy).

    Recorded: every data file of a full set (``data_files``: relative to the home, or absolute outside it) and every
    log from ``first_log`` to ``last_log`` in ``log_dir``; optional: the full set's DB_CONFIG; vanished: the data files
    the copy found removed (``vanished`` in the manifest; their removal is in the logs)."""
    prefix = SET_PREFIX + "/"
    data_files = facts.get("data_files") or []
    log_dir = facts.get("log_dir") or "."
    if not isinstance(data_files, list) or not all(isinstance(rel, str) and rel for rel in data_files) \
            or not isinstance(log_dir, str):
        raise _gate.GateError("the set's Berkeley DB facts hold data_files %r and log_dir %r, expected a list of paths and "
                              "a path; the set cannot say what it holds: restore another set" % (data_files, log_dir))
    recorded = [prefix + set_rel(rel) for rel in data_files]
    first, last = log_number(str(facts.get("first_log") or "")), log_number(str(facts.get("last_log") or ""))
    if first is not None and last is not None:
        recorded += [prefix + set_rel(log_name(number) if log_dir == "." else os.path.join(log_dir, log_name(number)))
                     for number in range(first, last + 1)]
    optional = [prefix + "DB_CONFIG"] if facts.get("mode") != "incremental" else []
    vanished = [path for path in manifest.get("vanished") or [] if isinstance(path, str)]
    return recorded, optional, vanished


def plan_chain(chain: t.List[t.Dict[str, t.Any]], target: str) -> t.Dict[str, t.Any]:
    """Every set of ``chain`` through the restore gate, before anything is laid out: paths, the engine's record (every
    recorded data file and log present, nothing else), no link, no setuid or device file, sizes and SHA-256. The
    DB_CONFIG the copy will get is settled here too (every directory inside ``target``), so a refusal comes before the
    first byte is written. Returns {files: {path below env/: (source, entry)}, config: ...}."""
    prefix = SET_PREFIX + "/"
    chosen: t.Dict[str, t.Tuple[str, t.Dict[str, t.Any]]] = {}
    config = None
    config_facts: t.Dict[str, t.Any] = {}
    for link in chain:
        set_path = link["set_path"]
        manifest = read_json_object(os.path.join(set_path, MANIFEST_NAME))
        if manifest is None:
            raise _gate.GateError("backup set %s has no readable %s; the set cannot vouch for its files: restore another "
                                  "set" % (set_path, MANIFEST_NAME))
        facts = (manifest.get("facts") or {}).get("bdb") or {}
        recorded, optional, vanished = set_record(facts, manifest)
        plan = _gate.check_set(set_path, manifest, recorded, RECORD_NAME, "a Berkeley DB set", under=SET_PREFIX,
                               optional=optional, vanished=vanished)
        for rel, _size in plan.files:
            chosen[rel[len(prefix):]] = (os.path.join(plan.root, rel), plan.entries[rel])
        if prefix + "DB_CONFIG" in plan.entries:
            config = (facts.get("home"), os.path.join(plan.root, prefix + "DB_CONFIG"), plan.entries[prefix + "DB_CONFIG"])
            config_facts = facts
        elif facts.get("mode") != "incremental":
            config = None  # a full set without DB_CONFIG: every directory is the home, as the set must have recorded
            if facts.get("data_dirs", ["."]) != ["."] or facts.get("log_dir", ".") != ".":
                raise _gate.set_problem(set_path, "the set recorded the data directories %s and the log directory %s, "
                                                  "which only a DB_CONFIG names, but it holds no DB_CONFIG"
                                        % (facts.get("data_dirs"), facts.get("log_dir")))
    plan_config = None
    if config is not None:
        home, source, entry = config
        fd = _gate.open_regular(source)
        with os.fdopen(fd, "rb") as handle:
            original = handle.read()
        if len(original) != entry["size"] or hashlib.sha256(original).hexdigest() != entry["sha256"]:
            raise _gate.set_problem(os.path.dirname(os.path.dirname(os.path.dirname(source))),
                                    "%s changed while the set was checked; something writes into the set" % source)
        home = home if isinstance(home, str) else ""
        text, rewritten = rewrite_db_config(original.decode("utf-8", "surrogateescape"), home, target)
        _config_agrees(source, original.decode("utf-8", "surrogateescape"), home, config_facts)
        plan_config = {"source": source, "entry": entry, "original": original, "text": text, "rewritten": rewritten}
    return {"files": chosen, "config": plan_config}


def _config_agrees(source: str, text: str, home: str, facts: t.Dict[str, t.Any]) -> None:
    """The set's DB_CONFIG names the directories the set recorded when it was taken (data_dirs, log_dir): a DB_CONFIG
    changed on the medium (its manifest entry changed with it) is refused before anything is laid out."""
    data_dirs: t.List[str] = []
    log_dir = "."
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("set_data_dir", "add_data_dir"):
            data_dirs.append(words[1])
        elif len(words) == 2 and words[0] == "set_lg_dir":
            log_dir = words[1]
    named = ([place(home, d) for d in data_dirs] or ["."], place(home, log_dir))
    recorded = (facts.get("data_dirs"), facts.get("log_dir"))
    if recorded != (None, None) and named != (list(recorded[0] or []), recorded[1]):
        raise _gate.set_problem(os.path.dirname(os.path.dirname(os.path.dirname(source))),
                                "%s names the data directories %s and the log directory %s, but the set recorded %s and %s "
                                "when it was taken (manifest.json facts: data_dirs, log_dir)"
                                % (source, named[0], named[1], recorded[0], recorded[1]))


def recorded_databases(chain: t.List[t.Dict[str, t.Any]]) -> t.List[t.Tuple[str, t.Optional[int]]]:
    """The databases the chain's full set records (its data files, but those recorded as vanished), as paths in a copy
    laid out from it, each with the page size the set recorded (None: not recorded as a database)."""
    full = chain[0]
    manifest = read_json_object(os.path.join(full["set_path"], MANIFEST_NAME)) or {}
    facts = (manifest.get("facts") or {}).get("bdb") or {}
    vanished = set(manifest.get("vanished") or [])
    page_sizes = facts.get("page_sizes") or {}
    return [(set_rel(rel), page_sizes.get(rel)) for rel in facts.get("data_files") or []
            if SET_PREFIX + "/" + set_rel(rel) not in vanished]


def lay_out(plan: t.Dict[str, t.Any], target: str, copy_one: t.Callable[[str, str, t.Dict[str, t.Any]], None],
            written: t.Optional[_gate.Written] = None) -> t.Dict[str, t.Any]:
    """Copy the files ``plan_chain`` passed (the full set, then each incremental's logs) into ``target``; each is checked
    again against its manifest entry (size and SHA-256) by ``copy_one(source, destination, entry)`` as it is copied.

    A log present in two sets comes from the later one (it was copied later, so it is as long or longer). DB_CONFIG
    is written as ``plan_chain`` settled it; when a directory had to move inside the copy, the file as backed up is
    kept beside it as DB_CONFIG.original."""
    chosen = plan["files"]
    config = plan["config"]
    for rel in chosen:
        directory = os.path.dirname(os.path.join(target, rel))
        if written is not None:
            written.makedirs(directory)
        else:
            os.makedirs(directory, mode=0o750, exist_ok=True)
    copies = [rel for rel in chosen if not (config and rel == "DB_CONFIG")]

    def copy_rel(rel: str) -> None:
        copy_one(chosen[rel][0], os.path.join(target, rel), chosen[rel][1])
    # Two files side by side, largest first (hashlib and the reads and writes release the GIL, as in the copy engine).
    order = sorted(copies, key=lambda rel: -int(chosen[rel][1].get("size") or 0))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(copy_rel, order))  # list(): the first failure is raised here
    if config:
        if config["rewritten"]:
            copy_one(config["source"], os.path.join(target, "DB_CONFIG.original"), config["entry"])
            path = os.path.join(target, "DB_CONFIG")
            with open(path + ".tmp", "w", encoding="utf-8", errors="surrogateescape") as handle:
                handle.write(config["text"])
            os.replace(path + ".tmp", path)
        else:
            copy_one(config["source"], os.path.join(target, "DB_CONFIG"), config["entry"])
    return {"files": len(chosen), "bytes": sum(int(entry.get("size") or 0) for _s, entry in chosen.values()),
            "logs": sorted((rel for rel in chosen if log_number(rel) is not None), key=_log_sort_key),
            "config_rewritten": config["rewritten"] if config else {}}


# "Recover as you go": a kept, recovered copy of a chain, extended by each new incremental set.
KEPT_STATE = ".bdb-kept.json"


def plan_kept(keep_dir: str, chain: t.List[t.Dict[str, t.Any]], check_mode: bool = False) -> t.List[t.Dict[str, t.Any]]:
    """The sets to lay out into the kept copy ``keep_dir``: only the newest when the copy already holds the chain up
    to the set before it; else the whole chain, into a directory emptied first (it must be empty or ours; with
    ``check_mode`` it is only said which, nothing is emptied)."""
    state = read_json_object(os.path.join(keep_dir, KEPT_STATE)) if os.path.isdir(keep_dir) else None
    ids = [link["backup_id"] for link in chain]
    if state and state.get("chain") == ids[:-1] and len(ids) > 1:
        return chain[-1:]
    if os.path.isdir(keep_dir) and os.listdir(keep_dir) and state is None:
        raise BdbError("keep_dir %s is not empty and holds no %s: it is not a copy this module keeps. Give an empty or new "
                       "directory" % (keep_dir, KEPT_STATE))
    if check_mode:
        return chain
    if os.path.isdir(keep_dir):
        for name in os.listdir(keep_dir):
            path = os.path.join(keep_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    else:
        os.makedirs(keep_dir, mode=0o750)
    return chain


def record_kept(keep_dir: str, ids: t.Optional[t.List[str]]) -> None:
    """Record which chain the kept copy holds (None: the copy is not to be trusted; the next call rebuilds it)."""
    path = os.path.join(keep_dir, KEPT_STATE)
    if ids is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"chain": ids}, handle)
    os.replace(path + ".tmp", path)


def check_target(target: str) -> t.Optional[os.stat_result]:
    """The restore gate's rule: an absolute path, absent or an empty directory (its lstat; None: absent)."""
    try:
        return _gate.check_target(target)
    except _gate.GateError as exc:
        raise BdbError(str(exc)) from None


# --- recovery and verification on a copy ---------------------------------------------------------------------

def check_logs(logs: t.List[str], source_checkpoint: t.Optional[str]) -> t.List[t.Dict[str, t.Any]]:
    """The checks before recovery: logs present, contiguous, and holding the source's checkpoint."""
    numbers = [log_number(rel) for rel in logs]
    numbers = [n for n in numbers if n is not None]
    checks = [{"check": "logs present", "ok": bool(numbers),
               "detail": "%d log files, %s to %s" % (len(numbers), log_name(min(numbers)), log_name(max(numbers)))
               if numbers else "no log files in the copy: catastrophic recovery would start a new, empty log and "
                               "pass without proving anything"}]
    gaps = log_gaps(numbers)
    checks.append({"check": "logs contiguous", "ok": bool(numbers) and not gaps,
                   "detail": ("missing " + ", ".join(log_name(n) for n in gaps)) if gaps else
                   ("no gap" if numbers else "no logs")})
    ckp = lsn_tuple(source_checkpoint)
    if ckp is not None:
        holds = bool(numbers) and min(numbers) <= ckp[0] <= max(numbers)
        checks.append({"check": "checkpoint log present", "ok": holds,
                       "detail": "the source checkpoint %s is in %s, %s" % (
                           source_checkpoint, log_name(ckp[0]), "in the copy" if holds else "not in the copy")})
    return checks


def parse_recovery(output: str) -> t.Dict[str, t.Optional[str]]:
    """db_recover -v: the last valid LSN it found and the checkpoint it wrote at the end."""
    last = re.search(r"Finding last valid log LSN: file: (\d+) offset (\d+)", output)
    ckp = re.search(r"recovery checkpoint \[(\d+)\]\[(\d+)\]", output)
    return {"last_valid_lsn": "%s/%s" % last.groups() if last else None,
            "recovery_checkpoint_lsn": "%s/%s" % ckp.groups() if ckp else None}


def verify_copy(copy: Environment, source_checkpoint: t.Optional[str],
                databases: t.Sequence[t.Tuple[str, t.Optional[int]]]) -> t.Dict[str, t.Any]:
    """Catastrophic recovery, then db_verify of exactly the databases the set records (``recorded_databases``), on a
    copy (never on the live environment). The proof fails when a recorded database is not in the copy, when a file the
    set records as a database is not one, and when there is no database at all: "0 of 0 databases verify" proves
    nothing."""
    _data_dirs, log_dir = copy.directories()
    logs = [os.path.join(log_dir, n) if log_dir != "." else n for n in copy.log_names(log_dir)]
    checks = check_logs(logs, source_checkpoint)
    result: t.Dict[str, t.Any] = {"checks": checks, "databases": [], "logs": logs,
                                  "first_log": os.path.basename(logs[0]) if logs else None,
                                  "last_log": os.path.basename(logs[-1]) if logs else None}
    if not all(check["ok"] for check in checks):
        result["ok"] = False
        return result
    present_before = {rel for rel, _size in databases if os.path.isfile(os.path.join(copy.home, rel))}
    argv = [copy.utilities["recover"], "-c", "-v", "-h", copy.home]
    began = time.monotonic()
    rc, out, err = copy.run_raw(argv)
    result["recover_seconds"] = round(time.monotonic() - began, 3)
    recovered = parse_recovery(out + "\n" + err)
    result.update(recovered)
    checks.append({"check": "catastrophic recovery", "ok": rc == 0,
                   "detail": "db_recover -c exited with %d%s" % (rc, (": " + err.strip()[-400:]) if rc else "")})
    reached = lsn_tuple(recovered["last_valid_lsn"])
    wanted = lsn_tuple(source_checkpoint)
    if wanted is not None:
        checks.append({"check": "recovery reached the source checkpoint", "ok": rc == 0 and reached is not None and reached >= wanted,
                       "detail": "recovery read the logs up to %s; the source's checkpoint was %s"
                       % (recovered["last_valid_lsn"], source_checkpoint)})
    to_verify, missing, not_databases, removed = [], [], [], []
    for rel, recorded_page_size in databases:
        full = os.path.join(copy.home, rel)
        if not os.path.isfile(full):
            # a database the copy held and recovery removed: its removal (DB_ENV->dbremove) is in the logs
            (removed if rel in present_before else missing).append(rel)
            continue
        header = page_size(full)
        if header:
            to_verify.append((rel, header))
        elif recorded_page_size:
            not_databases.append(rel)
    result["removed_by_recovery"] = removed
    checks.append({"check": "recorded databases present", "ok": not missing and not not_databases,
                   "detail": "; ".join(part for part in (
                       ("missing from the copy: " + ", ".join(missing)) if missing else "",
                       ("recorded with a page size but not a database file: " + ", ".join(not_databases)) if not_databases else "")
                       if part) or "%d recorded databases in the copy" % len(to_verify)})

    def verify_one(database: t.Tuple[str, t.Tuple[int, str, str]]) -> t.Dict[str, t.Any]:
        rel, header = database
        rc_v, out_v, err_v = copy.run_raw([copy.utilities["verify"], "-h", copy.home, rel])
        return {"file": rel, "ok": rc_v == 0, "page_size": header[0], "access_method": header[1],
                "detail": (out_v + err_v).strip()[-300:]}
    # db_verify is CPU-bound and reads each file once: one per core, side by side (results in file order)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(to_verify), os.cpu_count() or 1))) as pool:
        began = time.monotonic()
        result["databases"] = list(pool.map(verify_one, sorted(to_verify)))
        result["db_verify_seconds"] = round(time.monotonic() - began, 3)
    verified = sum(1 for db in result["databases"] if db["ok"])
    checks.append({"check": "databases verify", "ok": bool(result["databases"]) and verified == len(result["databases"]),
                   "detail": "%d of %d databases verify%s" % (
                       verified, len(result["databases"]),
                       "" if result["databases"] else ": the set records no database, so there is nothing to prove")})
    result["ok"] = all(check["ok"] for check in checks)
    return result


def remove_regions(home: str) -> None:
    for name in os.listdir(home):
        if is_region_file(name):
            os.unlink(os.path.join(home, name))


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- log archival --------------------------------------------------------------------------------------------

def archivable_in_set(env_info: t.Dict[str, t.Any], set_path: str) -> t.Tuple[t.List[str], t.List[t.Dict[str, str]]]:
    """(logs that may be removed, logs kept with why): an archivable log may go only when the COMPLETE, verified
    set holds it with the same size and SHA-256 as the live file."""
    if not os.path.isfile(os.path.join(set_path, COMPLETE_NAME)):
        raise BdbError("backup set %s is not COMPLETE; logs are only archived from a COMPLETE, verified set" % set_path)
    report = read_json_object(os.path.join(set_path, REPORT_NAME)) or {}
    if not ((report.get("bdb") or {}).get("verification") or {}).get("ok"):
        raise BdbError("backup set %s has no passed verification in its report.json; logs are only archived from a set "
                       "whose copy was recovered and verified. Run a backup with verification first" % set_path)
    if set_facts(set_path).get("home") != env_info["home"]:
        raise BdbError("backup set %s is not a set of the environment %s; archive with a set of this environment"
                       % (set_path, env_info["home"]))
    in_set = manifest_files(set_path)
    remove, kept = [], []
    for rel in env_info["archivable_logs"]:
        entry = in_set.get(set_rel(rel))
        live = os.path.join(env_info["home"], rel)
        if entry is None:
            kept.append({"log": rel, "why": "not in the set"})
        elif os.path.getsize(live) != entry.get("size") or sha256_of(live) != entry.get("sha256"):
            kept.append({"log": rel, "why": "the set's copy differs from the live file (size or SHA-256)"})
        else:
            remove.append(rel)
    return remove, kept
