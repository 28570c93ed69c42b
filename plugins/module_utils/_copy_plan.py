# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""What a copy of ``consistent.backup.aligned_copy`` will copy: requests, plans, the walk, check mode.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

* ``CopyError`` is the copy engine's one error (``_copy_stream``, ``_copy_sink`` and ``_copy`` raise it too).
* ``normalize_sources``, ``validate_request`` and ``check_destination`` refuse a request before the database is
  touched (none of it is retryable).
* ``plan_copy(sources, create_dirs)`` walks the sources (sorted, exclusions applied, symlinks not followed) and
  returns a ``CopyPlan``: the items in copy order (phase 0 sources in list order, then phase 1, ...).
* ``plan_attempt(sources, create_dirs, set_path, run_id)`` is ``plan_copy`` for one attempt of a retried copy: the
  first attempt's list is recorded in ``<set>/.copy-plan.json`` by ``_copy.run_copy``, and a later attempt of the
  same request and run copies that list again (plus files that appeared since), so a file that vanished between
  attempts fails every attempt instead of being forgotten.
* ``load_journal`` reads what a killed copy made durable (``<set>/.copy-journal``, which ``_copy`` appends to).
* ``summarize_plan(plan, set_path)`` answers "what would a copy do?" for check mode; ``check_free_space`` compares
  its bytes to write with the destination's free space.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import hashlib
import json
import os
import stat
import typing as t
from dataclasses import dataclass, field

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write
from ansible_collections.consistent.backup.plugins.module_utils._layout import COMPLETE_NAME, DATA_DIR, InvalidBackupId, check_backup_id, utc_iso
from ansible_collections.consistent.backup.plugins.module_utils._layout import set_path as layout_set_path
from ansible_collections.consistent.backup.plugins.module_utils import _manifest

DEFAULT_BLOCK_SIZE = 8192
DEFAULT_READ_SIZE = 1024 * 1024
# The first attempt's list of a retried copy, in the set directory (never in data/); removed on success.
PLAN_NAME = ".copy-plan.json"
PLAN_FORMAT = 1

# Page sizes: a multiple of 512 (the sector size O_DIRECT aligns to), not necessarily a power of two,
# because Btrieve 6 files use 1536, 2560, 3072 and 3584 byte pages; at most 1 MiB, far above any database page.
BLOCK_SIZE_UNIT = 512
BLOCK_SIZE_MAX = 1024 * 1024
BLOCK_SIZE_RULE = "a multiple of %d from %d to %d bytes" % (BLOCK_SIZE_UNIT, BLOCK_SIZE_UNIT, BLOCK_SIZE_MAX)

# What a change of a source while it is read does: fail the copy, or record it as a warning.
CHANGES_FAIL = "fail"
CHANGES_WARN = "warn"
CHANGES_CHOICES = (CHANGES_FAIL, CHANGES_WARN)
DEFAULT_FREE_SPACE_MARGIN = 10
# The resume journal of a killed copy, in the set directory (written by ``_copy``, read here and there).
JOURNAL_NAME = ".copy-journal"

# Errors a retry cannot fix: the same request would meet them again.
_PERMANENT_ERRNOS = frozenset((errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS))


class CopyError(Exception):
    """A copy that cannot go on; the message names the object, what was found and what to do.

    ``retryable`` is False when the same call would fail the same way (invalid input, no space, permission
    denied, a file that vanished and may not, a released lease), so callers do not retry it. ``facts`` are
    return values the failure still has (for example ``changed_during_copy``).
    """

    def __init__(self, message: str, retryable: bool = True, facts: t.Optional[t.Dict[str, t.Any]] = None) -> None:
        super(CopyError, self).__init__(message)
        self.retryable = retryable
        self.facts = dict(facts or {})


def retryable_errno(exc: OSError) -> bool:
    """Whether a retry may get past this OSError (I/O errors may; permissions and a full medium do not)."""
    return exc.errno not in _PERMANENT_ERRNOS


# --------------------------------------------------------------------------------------------
# Requests and plans
# --------------------------------------------------------------------------------------------


@dataclass
class Source:
    """One entry of the module's ``sources`` option, validated."""

    path: str
    dest: str
    exclude: t.List[str] = field(default_factory=list)
    phase: int = 0
    allow_vanished: bool = False


@dataclass
class Item:
    """One thing to copy: a regular file, a directory or a symlink, as found by the walk."""

    kind: str  # "file", "dir" or "symlink"
    src: str
    rel: str  # path relative to data/
    phase: int
    allow_vanished: bool
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    mode: int = 0
    uid: int = -1
    gid: int = -1
    target: str = ""


@dataclass
class PlanKey:
    """Which request a recorded plan belongs to: the digest of the normalised sources and create_dirs, and the run."""

    request: str
    run_id: str = ""


@dataclass
class CopyPlan:
    """What a copy will do, in order. ``vanished`` lists paths already gone during the walk.

    ``key`` set (by ``plan_attempt``) makes ``_copy.run_copy`` record the list before it copies and remove the
    record once the copy succeeded; ``resumed`` says the list is a recorded first attempt's (plus new files).
    """

    items: t.List[Item] = field(default_factory=list)
    create_dirs: t.List[str] = field(default_factory=list)
    vanished: t.List[str] = field(default_factory=list)
    warnings: t.List[str] = field(default_factory=list)
    key: t.Optional[PlanKey] = None
    resumed: bool = False


def mode_string(mode: int) -> str:
    """Permission bits as the manifest stores them, e.g. ``0600``."""
    return "%04o" % stat.S_IMODE(mode)


def set_path_for(dest: str, backup_id: str) -> str:
    """The backup set directory of ``backup_id`` under ``dest`` for messages, without validation (``_layout.set_path``
    validates; ``validate_request`` and ``check_destination`` go through it)."""
    return os.path.join(dest, backup_id)


def _has_parent_reference(path: str) -> bool:
    return any(part == ".." for part in path.split("/"))


def validate_block_sizes(block_size: int, read_size: int) -> None:
    """Refuse a block size or read size that would break page alignment (not retryable)."""
    if block_size < BLOCK_SIZE_UNIT or block_size > BLOCK_SIZE_MAX or block_size % BLOCK_SIZE_UNIT:
        raise CopyError(
            "block_size must be the database page size, %s; found %d; give the page size of the database "
            "(PostgreSQL: 8192, see SHOW block_size; Berkeley DB: the environment's page size)" % (BLOCK_SIZE_RULE, block_size),
            retryable=False)
    if read_size <= 0 or read_size % block_size:
        raise CopyError(
            "read_size %d is not a positive multiple of block_size %d: every read must cover whole pages; "
            "choose read_size = N * %d (e.g. %d)" % (read_size, block_size, block_size, max(1, DEFAULT_READ_SIZE // block_size) * block_size),
            retryable=False)


def validate_changes(changes: str) -> None:
    """Refuse an unknown ``changes`` policy (not retryable)."""
    if changes not in CHANGES_CHOICES:
        raise CopyError("changes must be one of %s; found %r" % (", ".join(CHANGES_CHOICES), changes), retryable=False)


def normalize_sources(raw: t.Sequence[t.Dict[str, t.Any]]) -> t.List[Source]:
    """Validate the ``sources`` option and fill in defaults."""
    if not raw:
        raise CopyError("sources is empty: give at least one {path: /absolute/path} to copy", retryable=False)
    sources = []
    for index, entry in enumerate(raw):
        path = entry.get("path")
        if not path or not os.path.isabs(path):
            raise CopyError(
                "sources[%d].path must be an absolute path; found %r; write it from / (e.g. /var/lib/postgresql/15/main)" % (index, path),
                retryable=False)
        path = os.path.normpath(path)
        dest = entry.get("dest")
        if dest is None or dest == "":
            dest = path.lstrip("/") or "root"
        dest = str(dest)
        if os.path.isabs(dest) or _has_parent_reference(dest):
            raise CopyError(
                "sources[%d].dest must be a path relative to the set's data/ directory without '..'; found %r; "
                "write e.g. pgdata" % (index, dest), retryable=False)
        dest = os.path.normpath(dest)
        if dest in (".", ""):
            raise CopyError("sources[%d].dest must name a path inside data/; found %r; write e.g. pgdata" % (index, entry.get("dest")),
                            retryable=False)
        phase = entry.get("phase", 0)
        phase = 0 if phase is None else int(phase)
        if phase < 0:
            raise CopyError("sources[%d].phase must be 0 or more; found %d" % (index, phase), retryable=False)
        exclude = [str(p) for p in (entry.get("exclude") or [])]
        sources.append(Source(path=path, dest=dest, exclude=exclude, phase=phase, allow_vanished=bool(entry.get("allow_vanished", False))))
    return sources


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def validate_request(dest: str, backup_id: str, sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> str:
    """Check the destination, the id and the sources against each other; return the set path.

    Everything refused here is refused before the database is touched (the roles run aligned_copy in check
    mode before pre) and is not retryable: the same request fails the same way.
    """
    if not dest or not os.path.isabs(dest):
        raise CopyError("dest must be an absolute path (the backup destination root); found %r" % (dest,), retryable=False)
    try:
        check_backup_id(backup_id)
    except InvalidBackupId as exc:
        raise CopyError(str(exc), retryable=False)
    for rel in create_dirs:
        if not rel or os.path.isabs(rel) or _has_parent_reference(rel):
            raise CopyError("create_dirs entry %r must be a path relative to data/ without '..'; write e.g. pgdata/pg_wal/archive_status" % (rel,),
                            retryable=False)
    real_dest = os.path.realpath(dest)
    real_set = os.path.join(real_dest, backup_id)
    for index, source in enumerate(sources):
        if not source.allow_vanished and not os.path.exists(source.path):
            raise CopyError(
                "sources[%d].path: source %s does not exist; check the path (is the database on this host?), or set "
                "allow_vanished: true for this source if it may be absent" % (index, source.path), retryable=False)
        real_source = os.path.realpath(source.path)
        if _inside(real_dest, real_source):
            raise CopyError(
                "backup destination %s (real path %s) is inside source %s: the copy would copy itself; "
                "choose a destination outside every source" % (dest, real_dest, source.path), retryable=False)
        if _inside(real_source, real_set):
            raise CopyError(
                "sources[%d].path %s is inside the backup set %s (dest %s, backup_id %s): the copy would copy itself; "
                "copy the database's files, not the set" % (index, source.path, real_set, dest, backup_id), retryable=False)
    return check_destination(dest, backup_id)


def check_destination(dest: str, backup_id: str) -> str:
    """The destination root exists and the set is not COMPLETE yet; return the set path.

    A missing root is refused rather than created: an unmounted medium would otherwise be
    filled on the root filesystem under its mount point.
    """
    if not os.path.isdir(dest):
        raise CopyError(
            "backup destination %s does not exist or is not a directory; mount the medium (consistent.backup.mount_check) "
            "or create the directory first" % dest, retryable=False)
    try:
        set_path = layout_set_path(dest, backup_id)
    except ValueError as exc:
        raise CopyError(str(exc), retryable=False)
    if os.path.exists(os.path.join(set_path, COMPLETE_NAME)):
        raise CopyError(
            "backup set %s is already marked COMPLETE by an earlier run; choose a new backup_id or remove the set" % set_path,
            retryable=False)
    return set_path


# --------------------------------------------------------------------------------------------
# Walking
# --------------------------------------------------------------------------------------------


def is_excluded(rel: str, patterns: t.Sequence[str]) -> bool:
    """Whether ``rel`` (relative to its source root) matches one of the exclusion patterns.

    A pattern with a ``/`` is matched against the whole relative path (``*`` spans ``/``, so
    ``*/pgsql_tmp*`` matches at any depth); a pattern without one is also matched against the
    basename, so ``postmaster.pid`` excludes that name anywhere. A leading ``/`` anchors a pattern at
    the source root (``/postmaster.pid`` only at the top).
    """
    base = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if not pattern:
            continue
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(rel, pattern.lstrip("/")):
                return True
            continue
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(base, pattern):
            return True
    return False


def _item_from_stat(kind: str, src: str, rel: str, source: Source, st: os.stat_result, target: str = "") -> Item:
    return Item(
        kind=kind, src=src, rel=rel, phase=source.phase, allow_vanished=source.allow_vanished,
        size=st.st_size if kind == "file" else (len(os.fsencode(target)) if kind == "symlink" else 0),
        mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns, mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid, gid=st.st_gid, target=target,
    )


class _Walker:
    def __init__(self, plan: CopyPlan) -> None:
        self.plan = plan

    def _gone(self, source: Source, path: str, rel: str, what: str) -> None:
        if source.allow_vanished:
            self.plan.vanished.append(rel)
            return
        raise CopyError(
            "%s %s vanished while the sources were listed; the source is changing under the copy: set allow_vanished: true "
            "for this source if files may disappear (e.g. dropped relations), or quiesce the database first" % (what, path),
            retryable=False)

    def walk_source(self, source: Source) -> None:
        try:
            st = os.stat(source.path)
        except FileNotFoundError:
            if source.allow_vanished:
                self.plan.vanished.append(source.dest)
                return
            raise CopyError(
                "source %s does not exist; check the path (is the database on this host?), or set allow_vanished: true "
                "for this source if it may be absent" % source.path, retryable=False)
        except OSError as exc:
            raise CopyError("cannot stat source %s: %s; check its permissions" % (source.path, exc.strerror), retryable=retryable_errno(exc))
        if stat.S_ISDIR(st.st_mode):
            self.plan.items.append(_item_from_stat("dir", source.path, source.dest, source, st))
            self._walk_dir(source, source.path, "")
        elif stat.S_ISREG(st.st_mode):
            if not is_excluded(os.path.basename(source.path), source.exclude):
                self.plan.items.append(_item_from_stat("file", source.path, source.dest, source, st))
        else:
            raise CopyError(
                "source %s is neither a regular file nor a directory (mode %s); name a file or a directory tree"
                % (source.path, stat.filemode(st.st_mode)), retryable=False)

    def _walk_dir(self, source: Source, directory: str, rel_dir: str) -> None:
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda e: e.name)
        except FileNotFoundError:
            self._gone(source, directory, self._dest_rel(source, rel_dir), "directory")
            return
        except OSError as exc:
            raise CopyError("cannot list directory %s: %s; check its permissions" % (directory, exc.strerror), retryable=retryable_errno(exc))
        for entry in entries:
            rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
            if is_excluded(rel, source.exclude):
                continue
            dest_rel = self._dest_rel(source, rel)
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path)
                    self.plan.items.append(_item_from_stat("symlink", entry.path, dest_rel, source, st, target))
                elif stat.S_ISDIR(st.st_mode):
                    self.plan.items.append(_item_from_stat("dir", entry.path, dest_rel, source, st))
                    self._walk_dir(source, entry.path, rel)
                elif stat.S_ISREG(st.st_mode):
                    self.plan.items.append(_item_from_stat("file", entry.path, dest_rel, source, st))
                else:
                    self.plan.warnings.append(
                        "skipped %s: a %s is not copied (only files, directories and symlinks are)" % (entry.path, stat.filemode(st.st_mode)[0])
                    )
            except FileNotFoundError:
                self._gone(source, entry.path, dest_rel, "file")
            except OSError as exc:
                raise CopyError("cannot read %s: %s; check its permissions" % (entry.path, exc.strerror), retryable=retryable_errno(exc))

    @staticmethod
    def _dest_rel(source: Source, rel: str) -> str:
        return source.dest if not rel else source.dest + "/" + rel


def plan_copy(sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> CopyPlan:
    """Walk the sources and return the items in copy order.

    Order: every source of phase 0 in list order, each tree in sorted pre-order, then phase 1, ...
    That is how callers say "data files before logs" (Berkeley DB: a log copied after the data
    covers every change made during the data copy) or "global/pg_control strictly last"
    (PostgreSQL: the control file must be no newer than anything else in the copy).
    """
    plan = CopyPlan(create_dirs=[os.path.normpath(d) for d in create_dirs])
    walker = _Walker(plan)
    ordered = sorted(enumerate(sources), key=lambda pair: (pair[1].phase, pair[0]))
    for _index, source in ordered:
        walker.walk_source(source)
    return plan


# --------------------------------------------------------------------------------------------
# What an earlier attempt left: its list and its journal
# --------------------------------------------------------------------------------------------


def request_digest(sources: t.Sequence[Source], create_dirs: t.Sequence[str] = ()) -> str:
    """SHA-256 of the normalised sources and create_dirs: what decides the list of a copy."""
    request = {"sources": [dataclasses.asdict(source) for source in sources],
               "create_dirs": [os.path.normpath(d) for d in create_dirs]}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()


def plan_path(set_path: str) -> str:
    """Where the first attempt's list of the set's current copy is recorded."""
    return os.path.join(set_path, PLAN_NAME)


_ITEM_FIELDS = frozenset(f.name for f in dataclasses.fields(Item))


def load_recorded_plan(set_path: str, key: PlanKey) -> t.Optional[CopyPlan]:
    """The plan a first attempt of the same request and run recorded, or None (none, another request or run)."""
    path = plan_path(set_path)
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CopyError("the recorded copy plan %s cannot be read (%s); remove it to list the sources again" % (path, exc),
                        retryable=False)
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        return None
    if data.get("request") != key.request or data.get("run_id", "") != key.run_id:
        return None
    try:
        items = [Item(**dict((k, v) for k, v in entry.items() if k in _ITEM_FIELDS)) for entry in data.get("items", [])]
    except (TypeError, AttributeError) as exc:
        raise CopyError("the recorded copy plan %s is not a plan this module wrote (%s); remove it to list the sources again"
                        % (path, exc), retryable=False)
    return CopyPlan(items=items, create_dirs=list(data.get("create_dirs", [])), vanished=list(data.get("vanished", [])), key=key)


def record_plan(plan: CopyPlan, set_path: str) -> None:
    """Write the plan's list to ``<set>/.copy-plan.json`` atomically, mode 0600 (it names the source files)."""
    if plan.key is None:
        return
    document = {"format": PLAN_FORMAT, "request": plan.key.request, "run_id": plan.key.run_id,
                "recorded": utc_iso(), "create_dirs": list(plan.create_dirs), "vanished": list(plan.vanished),
                "items": [dataclasses.asdict(item) for item in plan.items]}
    atomic_write(plan_path(set_path), (json.dumps(document, sort_keys=True) + "\n").encode("utf-8"), mode=0o600)


def discard_plan(set_path: str) -> bool:
    """Remove the recorded plan (the copy succeeded: the manifest is the truth now); True when one was removed."""
    try:
        os.unlink(plan_path(set_path))
    except FileNotFoundError:
        return False
    return True


def plan_attempt(sources: t.Sequence[Source], create_dirs: t.Sequence[str], set_path: str, run_id: str = "") -> CopyPlan:
    """The list one attempt of a retried copy must copy (read-only; ``_copy.run_copy`` records it).

    The first attempt walks the sources. A later attempt of the same request (same normalised sources and
    create_dirs) and the same ``run_id`` walks again and adds every item of the recorded list: files that
    appeared since are copied too (extra files do no harm), and a recorded file that is gone now fails at once,
    on every attempt, unless its source allows vanished files. A plan recorded by another request or run is
    ignored and replaced when this attempt copies.
    """
    key = PlanKey(request_digest(sources, create_dirs), run_id or "")
    plan = plan_copy(sources, create_dirs)
    plan.key = key
    recorded = load_recorded_plan(set_path, key)
    if recorded is None:
        return plan
    plan.resumed = True
    # A file listed again is held to what the first attempt listed: a file truncated between two attempts changed
    # during this copy, so the copy checks it against the first listing, not against a fresh one.
    first = dict((item.rel, item) for item in recorded.items)
    for item in plan.items:
        was = first.get(item.rel)
        if was is not None and was.kind == item.kind == "file":
            item.size, item.mtime_ns = was.size, was.mtime_ns
    listed = set(item.rel for item in plan.items)
    gone = []
    for item in recorded.items:
        if item.rel in listed:
            continue
        if os.path.lexists(item.src):
            plan.items.append(item)  # still there but no longer listed as it was (e.g. now a socket): the copy says why
        elif item.allow_vanished:
            if item.rel not in plan.vanished:
                plan.vanished.append(item.rel)
        else:
            gone.append(item)
    if gone:
        shown = ", ".join("%s %s" % (item.kind, item.src) for item in gone[:10])
        more = " and %d more" % (len(gone) - 10) if len(gone) > 10 else ""
        raise CopyError(
            "%s%s listed by the first attempt of this copy (recorded in %s) %s gone; a file that is not allowed to vanish "
            "must be in the copy, so every attempt fails: find out what removed it (is the database quiesced by pre?) and "
            "run the backup again, or set allow_vanished: true for its source if files may disappear"
            % (shown, more, plan_path(set_path), "is" if len(gone) == 1 else "are"), retryable=False)
    plan.items.sort(key=lambda item: item.phase)  # stable: recorded items join the end of their phase
    return plan


def journal_path(set_path: str) -> str:
    """Where a copy into the set journals the files a barrier made durable."""
    return os.path.join(set_path, JOURNAL_NAME)


def load_journal(set_path: str) -> t.Tuple[bool, t.Dict[str, t.Dict[str, t.Any]]]:
    """(whether a journal is there, its file entries by path). A torn last line (a crash while appending) is ignored."""
    try:
        with open(journal_path(set_path), "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return False, {}
    except OSError as exc:
        raise CopyError("the copy journal %s cannot be read (%s); remove it to copy every file again" % (journal_path(set_path), exc),
                        retryable=False)
    entries = {}
    for line in raw.split(b"\n"):
        try:
            entry = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("type") == "file" and isinstance(entry.get("path"), str) \
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int):
            entries[entry["path"]] = entry
    return True, entries


# --------------------------------------------------------------------------------------------
# Check mode
# --------------------------------------------------------------------------------------------


def entry_matches_item(entry: t.Optional[t.Dict[str, t.Any]], item: Item) -> bool:
    """A manifest entry describes the same source file (size, mtime, mode) as ``item``."""
    if not entry or entry.get("type") != "file" or entry.get("size") != item.size:
        return False
    if entry.get("mode") != mode_string(item.mode):
        return False
    if "mtime_ns" in entry:
        return entry["mtime_ns"] == item.mtime_ns
    return entry.get("mtime") == item.mtime_ns / 1e9


def target_has_size(path: str, size: int) -> bool:
    """The medium holds a regular file of ``size`` bytes at ``path`` (a resumed copy may skip it)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def phase_row(rows: t.Dict[int, t.Dict[str, t.Any]], phase: int, template: t.Dict[str, int]) -> t.Dict[str, t.Any]:
    if phase not in rows:
        row = {"phase": phase}
        row.update(template)
        rows[phase] = row
    return rows[phase]


def summarize_plan(plan: CopyPlan, set_path: str) -> t.Dict[str, t.Any]:
    """What ``_copy.run_copy`` would do, without writing anything (check mode).

    A file counts as identical when the set's manifest (or a killed run's journal) has it with the source's size, mtime and
    mode and the copy on the medium has that size. Unlike a real run, check mode does not re-read
    the source to compare checksums (an audit should not read a whole database), so a file changed
    without a new mtime is only caught by the real run.
    """
    try:
        known = _manifest.entries_by_path(_manifest.load_manifest(set_path))
    except ValueError as exc:
        raise CopyError(str(exc))
    known.update(load_journal(set_path)[1])  # what a killed run made durable is not written again either
    data_root = os.path.join(set_path, DATA_DIR)
    rows = {}  # type: t.Dict[int, t.Dict[str, t.Any]]
    template = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "to_copy": 0, "bytes_to_copy": 0}
    summary = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "to_copy": 0, "identical_files": 0,
               "dirs_to_create": 0, "symlinks_to_create": 0, "free_needed": 0}
    for item in plan.items:
        row = phase_row(rows, item.phase, template)
        target = os.path.join(data_root, item.rel)
        if item.kind == "dir":
            summary["dirs"] += 1
            row["dirs"] += 1
            if not os.path.isdir(target) or os.path.islink(target):
                summary["dirs_to_create"] += 1
        elif item.kind == "symlink":
            summary["symlinks"] += 1
            row["symlinks"] += 1
            if not os.path.islink(target) or os.readlink(target) != item.target:
                summary["symlinks_to_create"] += 1
        else:
            summary["files"] += 1
            summary["bytes"] += item.size
            row["files"] += 1
            row["bytes"] += item.size
            if entry_matches_item(known.get(item.rel), item) and target_has_size(target, item.size):
                summary["identical_files"] += 1
            else:
                summary["to_copy"] += 1
                summary["free_needed"] += item.size
                row["to_copy"] += 1
                row["bytes_to_copy"] += item.size
    for rel in plan.create_dirs:
        summary["dirs"] += 1
        if not os.path.isdir(os.path.join(data_root, rel)):
            summary["dirs_to_create"] += 1
    summary["phases"] = [rows[p] for p in sorted(rows)]
    summary["vanished"] = list(plan.vanished)
    summary["changed"] = bool(summary["to_copy"] or summary["dirs_to_create"] or summary["symlinks_to_create"]
                              or not os.path.isdir(data_root))
    summary["resumed"] = plan.resumed
    return summary


def _human(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return ("%d %s" % (count, unit)) if unit == "bytes" else ("%.1f %s" % (value, unit))
        value /= 1024
    return "%d bytes" % count  # not reached


def add_free_space(summary: t.Dict[str, t.Any], dest: str, margin: int = DEFAULT_FREE_SPACE_MARGIN) -> t.Dict[str, t.Any]:
    """Add ``free_required`` (bytes to write plus ``margin`` percent for growth), ``free_available`` and the margin.

    ``free_available`` is what an unprivileged writer may use (statvfs f_bavail): the blocks reserved for root
    are not counted on, so a copy run as root does not eat the root reserve of a shared filesystem.
    """
    if margin < 0:
        raise CopyError("free_space_margin must be a percentage of 0 or more; found %d" % margin, retryable=False)
    needed = int(summary.get("free_needed", 0))
    summary["free_space_margin"] = margin
    summary["free_required"] = needed + (needed * margin + 99) // 100
    try:
        st = os.statvfs(dest)
    except OSError as exc:
        raise CopyError("cannot read the free space of %s: [Errno %s] %s; check the medium" % (dest, exc.errno, exc.strerror),
                        retryable=retryable_errno(exc))
    summary["free_available"] = st.f_bavail * st.f_frsize
    return summary


def check_free_space(summary: t.Dict[str, t.Any], dest: str) -> None:
    """Refuse (not retryable) a copy whose bytes to write plus the margin do not fit the destination's free space."""
    required, available = summary["free_required"], summary["free_available"]
    if required > available:
        raise CopyError(
            "not enough free space on %s (dest) for the copy: it needs %s (%d bytes to write + %d%% free_space_margin "
            "for growth = %d bytes) but the filesystem has %s (%d bytes) free; free space on the medium or choose a larger "
            "one (dest), or lower free_space_margin if the sources cannot grow during the copy"
            % (dest, _human(required), summary["free_needed"], summary["free_space_margin"], required, _human(available), available),
            retryable=False)
