# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The restore gate: the one check every restore and every drill passes, whatever the engine, before a byte is written.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

A set on a shared medium can be changed by anyone who can write there, and a restore runs as root. So a restore
trusts nothing in the set beyond what its checksums and the engine's own record of the set prove:

* every manifest path is relative and normalised (``path_problem``), names a regular file or a directory of the set
  (lstat, no link followed: ``inspect_tree``), and is in the engine's own record of what the set holds
  (``check_record``: bdb's data files and logs, Btrieve's files, PostgreSQL's data directory);
* every file of that record is there (``require_present``), with its size and SHA-256 (``verify_files``);
* no setuid, setgid or device file, neither in the manifest's mode (``check_entries``) nor on the medium
  (``inspect_tree``); no symlink except where the engine defines one (its ``defined_link``), and then only into
  the target (the engine makes it, never the set);
* configuration carried in the set that names directories (bdb's DB_CONFIG, PostgreSQL's tablespace_map) is rewritten
  by its engine so that each directory is ``inside`` the target, or refused.

``check_set`` runs all of it for an engine whose set is plain files (bdb, Btrieve); the PostgreSQL restore composes
the same pieces with its two links (pg_wal, tablespaces). ``Written`` is what the write step remembers, so a failure
while writing removes what was written and a refused restore leaves the target as it found it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._copy_stream import hash_file

SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
ENTRY_TYPES = ("file", "dir", "symlink")
# The manifest records a file's permission bits as octal text ("0640"); a set that asks for more than the permission
# bits (setuid 04000, setgid 02000) would make the restore hand out privileges, so it is refused.
MODE_TEXT = re.compile(r"^0?[0-7]{1,4}\Z")
SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID


class GateError(Exception):
    """The set does not pass the gate; the message names the set, the file, what was expected and found, what to do."""


def set_problem(set_path: str, what: str) -> GateError:
    return GateError(
        "backup set %s: %s. The set was changed after the backup or the medium is damaged: do not use it; "
        "restore another set" % (set_path, what))


def path_problem(path: t.Any, under: t.Optional[str] = None, under_reason: str = "") -> str:
    """'' when ``path`` is a relative, normalised path (under ``under``/ when given), else what is wrong with it."""
    if not isinstance(path, str) or not path:
        return "it is not a non-empty string"
    if "\0" in path:
        return "it holds a NUL byte"
    if path.startswith("/"):
        return "it is absolute"
    parts = path.split("/")
    if "" in parts:
        return "it has an empty component (a doubled or trailing '/')"
    if "." in parts or ".." in parts:
        return "it has a '.' or '..' component"
    if under and parts[0] != under:
        return "it is not under %s/%s" % (under, " (%s)" % under_reason if under_reason else "")
    return ""


def entry_mode(entry: t.Dict[str, t.Any]) -> t.Optional[int]:
    """The permission bits the manifest records for an entry (None when it records none)."""
    mode = entry.get("mode")
    if mode is None:
        return None
    if isinstance(mode, int) and not isinstance(mode, bool):
        return mode
    if isinstance(mode, str) and MODE_TEXT.match(mode):
        return int(mode, 8)
    return -1


def check_entries(set_path: str, manifest: t.Dict[str, t.Any], under: t.Optional[str] = None,
                  under_reason: str = "") -> t.Dict[str, t.Dict[str, t.Any]]:
    """The manifest's entries by path, each checked: a safe path, a known type, a size and a SHA-256 for a file, and
    no mode beyond the permission bits (no setuid or setgid, no file type)."""
    files = manifest.get("files")
    if not isinstance(files, list):
        raise set_problem(set_path, "manifest.json has no list of files")
    entries: t.Dict[str, t.Dict[str, t.Any]] = {}
    for entry in files:
        path = entry.get("path") if isinstance(entry, dict) else None
        problem = path_problem(path, under, under_reason)
        if problem:
            raise set_problem(set_path, "manifest.json lists the path %r, expected a relative, normalised path%s that stays "
                                        "inside the target, but %s" % (path, " under %s/" % under if under else "", problem))
        kind = entry.get("type")
        if kind not in ENTRY_TYPES:
            raise set_problem(set_path, "manifest.json lists %s with type %r, expected one of %s"
                              % (path, kind, ", ".join(ENTRY_TYPES)))
        if kind == "file":
            size, checksum = entry.get("size"), entry.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(checksum, str) \
                    or not SHA256_HEX.match(checksum):
                raise set_problem(set_path, "manifest.json lists the file %s without a byte size and a SHA-256 (found "
                                            "size %r, sha256 %r)" % (path, size, checksum))
            mode = entry_mode(entry)
            if mode is not None and (mode < 0 or mode & ~0o7777 or mode & SPECIAL_BITS):
                raise set_problem(set_path, "manifest.json gives %s the mode %r, expected permission bits only (no setuid, "
                                            "setgid or file type): a restore never hands out privileges"
                                  % (path, entry.get("mode")))
        if path in entries:
            raise set_problem(set_path, "manifest.json lists %s twice" % path)
        entries[path] = entry
    return entries


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special file (%s)" % stat.filemode(mode)[0]


def walk(root: str) -> t.Iterator[t.Tuple[str, os.stat_result]]:
    """Every entry below ``root`` as (path relative to it with '/', lstat), parents first; links not followed."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as iterator:
            names = sorted(entry.name for entry in iterator)
        for name in reversed(names):
            rel = rel_dir + "/" + name if rel_dir else name
            info = os.lstat(os.path.join(root, rel))
            yield rel, info
            if stat.S_ISDIR(info.st_mode):
                stack.append(rel)


def implied_dirs(paths: t.Iterable[str]) -> t.Set[str]:
    """The directories the manifest's paths lie in (a set of files holds its parents without listing them)."""
    found = set()
    for path in paths:
        parts = path.split("/")
        found.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return found


class Tree(t.NamedTuple):
    dirs: t.List[t.Tuple[str, int]]     # (path, permission bits)
    files: t.List[t.Tuple[str, int]]    # (path, size)
    links: t.List[str]                  # the links the engine defines (never followed, never recreated by the gate)
    found: t.Set[str]


# defined_link(rel, entry, link target) -> True: a link the engine defines (it decides what the target gets);
# a string: why this link is refused; None: not a link the engine knows (refused with the generic reason).
LinkRule = t.Callable[[str, t.Optional[t.Dict[str, t.Any]], str], t.Union[bool, str, None]]
# unlisted(rel, kind) -> True when an entry the manifest does not list is expected there (and skipped).
UnlistedRule = t.Callable[[str, str], bool]


def root_dir(set_path: str, root: str, what: str) -> None:
    """``root`` (the set's data tree) must be a real directory of the set."""
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        raise GateError("backup set %s has no %s directory; it is not %s: restore another set"
                        % (set_path, os.path.relpath(root, set_path), what)) from None
    if not stat.S_ISDIR(info.st_mode):
        raise set_problem(set_path, "%s is a %s, expected a directory" % (root, kind_of(info.st_mode)))


def inspect_tree(set_path: str, root: str, entries: t.Dict[str, t.Dict[str, t.Any]], target: str,
                 defined_link: t.Optional[LinkRule] = None, unlisted: t.Optional[UnlistedRule] = None) -> Tree:
    """Walk the set's data tree (lstat, no link followed) against the manifest's entries.

    Refuses a symlink the engine does not define, a device or other special file, a file with setuid or setgid on the
    medium, an entry the manifest does not list (unless it is a directory the listed paths lie in, or ``unlisted``
    expects it), and an entry of another type or size than the manifest says."""
    implied = implied_dirs(entries)
    dirs: t.List[t.Tuple[str, int]] = []
    files: t.List[t.Tuple[str, int]] = []
    links: t.List[str] = []
    found: t.Set[str] = set()
    for rel, info in walk(root):
        kind = kind_of(info.st_mode)
        source = os.path.join(root, rel)
        entry = entries.get(rel)
        if kind == "symlink":
            link = os.readlink(source)
            verdict = defined_link(rel, entry, link) if defined_link else None
            if verdict is True:
                links.append(rel)
                found.add(rel)
                continue
            raise set_problem(set_path, verdict if isinstance(verdict, str) and verdict else
                              "%s is a symlink to %s; expected no symlink in the set except where its engine defines one: "
                              "a restore never follows a link in a set, and a link in the restored copy would make the "
                              "database read and write outside %s" % (source, link, target))
        if kind not in ("file", "dir"):
            raise set_problem(set_path, "%s is a %s, expected only regular files and directories: a restore never makes "
                                        "a device or special file" % (source, kind))
        if kind == "file" and info.st_mode & SPECIAL_BITS:
            raise set_problem(set_path, "%s has the mode %s (setuid or setgid), expected permission bits only: a restore "
                                        "never hands out privileges" % (source, stat.filemode(info.st_mode)))
        if entry is None:
            if kind == "dir" and rel in implied:
                dirs.append((rel, stat.S_IMODE(info.st_mode) & 0o777))
                continue
            if unlisted and unlisted(rel, kind):
                if kind == "dir":
                    dirs.append((rel, stat.S_IMODE(info.st_mode) & 0o777))
                continue
            raise set_problem(set_path, "%s (a %s) is in the set's data tree but not in its manifest.json; expected only "
                                        "what the backup copied" % (source, kind))
        found.add(rel)
        if entry["type"] != kind:
            raise set_problem(set_path, "%s is a %s in the set, expected a %s (manifest.json)" % (source, kind, entry["type"]))
        if kind == "dir":
            dirs.append((rel, stat.S_IMODE(info.st_mode) & 0o777))
        else:
            if info.st_size != entry["size"]:
                raise set_problem(set_path, "%s is %d bytes, expected %d bytes (manifest.json)" % (source, info.st_size, entry["size"]))
            files.append((rel, info.st_size))
    return Tree(dirs, files, links, found)


def require_present(set_path: str, root: str, entries: t.Dict[str, t.Dict[str, t.Any]], found: t.Set[str]) -> None:
    """Every entry of the manifest is in the set's data tree."""
    missing = sorted(path for path in entries if path not in found)
    if missing:
        listed = entries[missing[0]]
        raise set_problem(set_path, "%s is listed in manifest.json (a %s%s) but missing from the set%s"
                          % (os.path.join(root, missing[0]), listed["type"],
                             ", %d bytes" % listed["size"] if listed["type"] == "file" else "",
                             " (and %d more)" % (len(missing) - 1) if len(missing) > 1 else ""))


def check_record(set_path: str, entries: t.Dict[str, t.Dict[str, t.Any]], recorded: t.Iterable[str],
                 record_name: str, optional: t.Iterable[str] = (), vanished: t.Iterable[str] = ()) -> None:
    """The manifest's files against the engine's own record of what the set holds: every file the manifest lists is
    in the record (or ``optional``), and every recorded file (but those recorded as vanished during the copy) is in
    the manifest. A manifest alone cannot make a restore write a file the engine never backed up."""
    recorded = set(recorded)
    for path in recorded:
        problem = path_problem(path)
        if problem:
            raise set_problem(set_path, "%s names %r, expected a relative, normalised path, but %s" % (record_name, path, problem))
    allowed = recorded | set(optional)
    files = {path for path, entry in entries.items() if entry["type"] == "file"}
    strangers = sorted(files - allowed)
    if strangers:
        raise set_problem(set_path, "manifest.json lists %s%s, which %s does not hold; expected only the files the "
                                    "engine recorded" % (strangers[0], " (and %d more)" % (len(strangers) - 1)
                                                         if len(strangers) > 1 else "", record_name))
    missing = sorted(recorded - set(vanished) - files)
    if missing:
        raise set_problem(set_path, "%s holds %s%s, but manifest.json does not list it: the set is not whole"
                          % (record_name, missing[0], " (and %d more)" % (len(missing) - 1) if len(missing) > 1 else ""))


def open_regular(path: str) -> int:
    """Open a file of the set for reading, never through a link; a descriptor of a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_mode & SPECIAL_BITS:
        os.close(fd)
        raise GateError("%s is no longer a regular file with permission bits only; the set changed during the restore: "
                        "restore another set" % path)
    return fd


def checksum(path: str) -> t.Tuple[int, str]:
    """(bytes, SHA-256) of a file of the set, read without following a link."""
    fd = open_regular(path)
    try:
        digest, size = hash_file(fd)
    finally:
        os.close(fd)
    return size, digest


def verify_files(set_path: str, root: str, entries: t.Dict[str, t.Dict[str, t.Any]], files: t.Iterable[t.Tuple[str, int]]) -> None:
    """Read every file and compare its size and SHA-256 with the manifest."""
    for rel, _size in files:
        source = os.path.join(root, rel)
        size, digest = checksum(source)
        expected = entries[rel]
        if size != expected["size"] or digest != expected["sha256"]:
            raise set_problem(set_path, "%s does not match manifest.json: expected %d bytes with sha256 %s, found %d "
                                        "bytes with sha256 %s" % (source, expected["size"], expected["sha256"], size, digest))


class SetPlan(t.NamedTuple):
    set_path: str
    root: str                                   # the set's data tree
    entries: t.Dict[str, t.Dict[str, t.Any]]    # checked manifest entries by path
    files: t.List[t.Tuple[str, int]]            # (path, size) of every file, each read and matched
    dirs: t.List[t.Tuple[str, int]]


def check_set(set_path: str, manifest: t.Dict[str, t.Any], recorded: t.Iterable[str], record_name: str, what: str,
              under: t.Optional[str] = None, optional: t.Iterable[str] = (), vanished: t.Iterable[str] = ()) -> SetPlan:
    """The whole gate for a set of plain files (no link defined): paths, record, tree, presence, sizes, SHA-256.

    ``recorded`` and ``optional`` are paths below the set's data/ (as the manifest names them); ``what`` says what
    kind of set it should be (for a set without data/)."""
    root = os.path.join(set_path, "data")
    root_dir(set_path, root, what)
    entries = check_entries(set_path, manifest, under)
    check_record(set_path, entries, recorded, record_name, optional, vanished)
    tree = inspect_tree(set_path, root, entries, "the target")
    require_present(set_path, root, entries, tree.found)
    verify_files(set_path, root, entries, tree.files)
    return SetPlan(set_path, root, entries, tree.files, tree.dirs)


def inside(target: str, rel: str, what: str) -> str:
    """``target``/``rel`` when ``rel`` is a relative, normalised path (so it cannot leave ``target``); else refused.
    Engines check each directory a rewritten configuration names with it."""
    problem = path_problem(rel)
    if problem and rel != ".":
        raise GateError("%s names the directory %r, expected a directory inside the restore target %s, but %s; refusing "
                        "the restore" % (what, rel, target, problem))
    return os.path.join(target, rel) if rel != "." else target


# --- the target: as it was found, and put back when a write fails --------------------------------------------------

def check_target(target: str) -> t.Optional[os.stat_result]:
    """A restore target is an absolute path that is absent or an empty directory (not a link); its lstat (None: absent)."""
    if not isinstance(target, str) or not os.path.isabs(target):
        raise GateError("restore target must be an absolute path; found %r" % (target,))
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode) or os.listdir(target):
        raise GateError("restore target %s is not an empty directory (found %s); a restore never writes over files. Give "
                        "a new or empty directory" % (target, "a " + kind_of(info.st_mode) if not stat.S_ISDIR(info.st_mode)
                                                      else "%d entries" % len(os.listdir(target))))
    return info


class Written:
    """What a restore wrote, so that a failure while writing leaves the target as it was found.

    ``target`` (absent, or an empty directory) is removed again or emptied and given back its mode and owner;
    ``files`` and ``dirs`` outside it (a Btrieve restore puts files back in their places) are removed when the
    restore made them."""

    def __init__(self, target: t.Optional[str], before: t.Optional[os.stat_result] = None, checked: bool = False) -> None:
        """``checked``: the caller has already checked the target and passes its lstat as ``before``."""
        self.target = target
        self.before = before if checked or not target else check_target(target)
        self.paths: t.List[str] = []

    def made(self, path: str) -> None:
        self.paths.append(path)

    def makedirs(self, path: str, mode: int = 0o750) -> None:
        """os.makedirs that remembers each directory it made."""
        missing = []
        current = path
        while not os.path.lexists(current):
            missing.append(current)
            current = os.path.dirname(current)
        for directory in reversed(missing):
            os.mkdir(directory, mode)
            self.made(directory)

    def undo(self) -> t.List[str]:
        """Remove what was written (links removed, never followed); the paths that could not be removed."""
        left: t.List[str] = []

        def remove(path: str) -> None:
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                elif os.path.lexists(path):
                    os.unlink(path)
            except OSError:
                left.append(path)

        for path in reversed(self.paths):
            remove(path)
        if self.target:
            if self.before is None:
                remove(self.target)
            elif os.path.isdir(self.target):
                for name in os.listdir(self.target):
                    remove(os.path.join(self.target, name))
                try:
                    os.chown(self.target, self.before.st_uid, self.before.st_gid)
                    os.chmod(self.target, stat.S_IMODE(self.before.st_mode))
                except OSError:
                    left.append(self.target)
        return left


def undo_message(target: str, reason: str, left: t.List[str]) -> str:
    if left:
        return ("restore into %s failed (%s) and what it wrote could not all be removed (%s): remove them by hand before "
                "trying again" % (target, reason, ", ".join(left)))
    return "restore into %s failed: %s. What it wrote was removed; %s is as it was found" % (target, reason, target)
