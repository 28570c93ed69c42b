# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Mount facts and backup-destination checks for the mount_check module.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

The engine answers one question: is this path a safe place to write a backup to right now?
It reads /proc/self/mountinfo (format in proc(5)), finds the mount the path lives on, takes
statvfs(3) numbers, optionally proves writability with a probe file, and turns every unmet need
into a failure message that says what was expected, what was found and what to do.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
import typing as t
import uuid

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import fsync_dir, parse_size

MOUNTINFO = "/proc/self/mountinfo"
PROBE_PREFIX = ".mount_check."
_PROBE_DATA = b"consistent.backup mount_check write probe\n"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")
# fstab-style source specifications and the udev directory that names them.
_SOURCE_TAGS = {
    "UUID": "/dev/disk/by-uuid",
    "LABEL": "/dev/disk/by-label",
    "PARTUUID": "/dev/disk/by-partuuid",
    "PARTLABEL": "/dev/disk/by-partlabel",
}


class MountinfoError(ValueError):
    """A mountinfo line that does not follow the format of proc(5)."""


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, with escapes already decoded."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mountpoint: str
    options: t.Tuple[str, ...]
    optional_fields: t.Tuple[str, ...]
    fstype: str
    source: str
    super_options: t.Tuple[str, ...]

    @property
    def bind(self) -> bool:
        """True when only a subtree of the filesystem is mounted here (bind mount, btrfs subvolume)."""
        return self.root != "/"

    @property
    def read_only(self) -> bool:
        """True when the mount (per-mount options) or the whole filesystem (super options) is read-only."""
        return "ro" in self.options or "ro" in self.super_options

    def as_dict(self, statvfs_read_only: bool = False) -> t.Dict[str, t.Any]:
        return {
            "mountpoint": self.mountpoint,
            "source": self.source,
            "fstype": self.fstype,
            "options": list(self.options),
            "super_options": list(self.super_options),
            "root": self.root,
            "bind": self.bind,
            "read_only": self.read_only or statvfs_read_only,
            "mount_id": self.mount_id,
            "major_minor": self.major_minor,
        }


@dataclasses.dataclass(frozen=True)
class ResolvedPath:
    """A requested path after realpath; ``existing`` is the path itself or its nearest existing parent."""

    requested: str
    resolved: str
    existing: str
    exists: bool


@dataclasses.dataclass(frozen=True)
class MountMatch:
    """The mount a path lives on."""

    path: ResolvedPath
    entry: MountEntry


@dataclasses.dataclass(frozen=True)
class SpaceFacts:
    """statvfs numbers of the filesystem a path lives on."""

    total_bytes: int
    free_bytes: int
    available_bytes: int
    total_inodes: int
    free_inodes: int
    read_only: bool

    def as_dict(self) -> t.Dict[str, int]:
        return {
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "available_bytes": self.available_bytes,
            "total_inodes": self.total_inodes,
            "free_inodes": self.free_inodes,
        }


@dataclasses.dataclass(frozen=True)
class Threshold:
    """A minimum: an absolute amount, or a percentage of the filesystem's total."""

    amount: int = 0
    percent: t.Optional[float] = None

    @property
    def is_set(self) -> bool:
        return bool(self.amount or self.percent)

    def required(self, total: int) -> int:
        if self.percent is None:
            return self.amount
        # Round up: "10%" of an odd total must not be satisfied by a byte less than a tenth.
        return int(math.ceil(total * self.percent / 100))

    def describe(self, total: int, unit: t.Callable[[int], str]) -> str:
        if self.percent is None:
            return unit(self.amount)
        return "%s (%s%% of %s)" % (unit(self.required(total)), _format_number(self.percent), unit(total))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Outcome of the write probe; ``reason`` says why it was not performed."""

    performed: bool = False
    ok: bool = False
    error: t.Optional[str] = None
    reason: t.Optional[str] = None

    def as_dict(self) -> t.Dict[str, t.Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Needs:
    """What the backup destination must satisfy (the module options)."""

    mountpoint: t.Optional[str] = None
    require_mountpoint: bool = True
    fstype: t.Tuple[str, ...] = ()
    source: t.Optional[str] = None
    min_free: Threshold = Threshold()
    min_free_inodes: Threshold = Threshold()
    writable: bool = True


@dataclasses.dataclass(frozen=True)
class Facts:
    """Everything observed about the destination; the input of :func:`evaluate`."""

    path: ResolvedPath
    is_dir: bool
    entry: MountEntry
    space: SpaceFacts
    probe: ProbeResult


@dataclasses.dataclass(frozen=True)
class Failure:
    """One unmet need: a short id for ``failed_checks`` and the sentence for ``msg``."""

    check: str
    message: str


@dataclasses.dataclass(frozen=True)
class CheckResult:
    facts: Facts
    failures: t.Tuple[Failure, ...]
    warnings: t.Tuple[str, ...]

    @property
    def msg(self) -> str:
        if not self.failures:
            return "%s meets every need: on %s (%s, source %s), %s available" % (
                self.facts.path.resolved, self.facts.entry.mountpoint, self.facts.entry.fstype,
                self.facts.entry.source, format_bytes(self.facts.space.available_bytes))
        return "; ".join(failure.message for failure in self.failures)

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "path": self.facts.path.resolved,
            "exists": self.facts.path.exists,
            "existing_path": self.facts.path.existing,
            "mount": self.facts.entry.as_dict(self.facts.space.read_only),
            "space": self.facts.space.as_dict(),
            "probe": self.facts.probe.as_dict(),
            "failed_checks": [failure.check for failure in self.failures],
            "msg": self.msg,
        }


# ---------------------------------------------------------------------------------------------
# mountinfo


def unescape(field: str) -> str:
    r"""Decode the octal escapes the kernel writes for space, tab, newline and backslash (``\040``)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo_line(line: str, lineno: int = 0) -> MountEntry:
    """Parse one line of mountinfo.

    ``36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue``:
    mount ID, parent ID, major:minor, root, mount point, mount options, zero or more optional
    fields, the separator ``-``, filesystem type, mount source, super options.
    """
    fields = line.rstrip("\n").split(" ")
    where = "mountinfo line %d" % lineno if lineno else "mountinfo line"
    try:
        separator = fields.index("-", 6)
    except ValueError:
        raise MountinfoError("%s has no ' - ' separator after the optional fields: %r" % (where, line)) from None
    if len(fields) < separator + 3:
        raise MountinfoError("%s has fewer than 3 fields after the ' - ' separator: %r" % (where, line))
    try:
        mount_id = int(fields[0])
        parent_id = int(fields[1])
    except ValueError:
        raise MountinfoError("%s does not start with a mount ID and a parent ID: %r" % (where, line)) from None
    super_options = fields[separator + 3] if len(fields) > separator + 3 else ""
    return MountEntry(
        mount_id=mount_id,
        parent_id=parent_id,
        major_minor=fields[2],
        root=unescape(fields[3]),
        mountpoint=unescape(fields[4]),
        options=tuple(option for option in fields[5].split(",") if option),
        optional_fields=tuple(fields[6:separator]),
        fstype=fields[separator + 1],
        source=unescape(fields[separator + 2]),
        super_options=tuple(option for option in super_options.split(",") if option),
    )


def parse_mountinfo(text: str) -> t.List[MountEntry]:
    """Parse the whole text of a mountinfo file, in file order (the order mounts were made)."""
    return [parse_mountinfo_line(line, lineno) for lineno, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_mountinfo(path: str = MOUNTINFO) -> t.List[MountEntry]:
    # surrogateescape keeps non-UTF-8 path bytes round-trippable instead of failing the read.
    with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
        return parse_mountinfo(handle.read())


# ---------------------------------------------------------------------------------------------
# path -> mount


def is_under(path: str, mountpoint: str) -> bool:
    """Component-wise prefix test: /backup/x is under /backup, /backup2 is not."""
    if mountpoint == "/":
        return path.startswith("/")
    return path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")


def _ancestors(entry: MountEntry, by_id: t.Dict[int, MountEntry]) -> t.Set[int]:
    seen: t.Set[int] = set()
    current = by_id.get(entry.parent_id)
    while current is not None and current.mount_id not in seen:
        seen.add(current.mount_id)
        current = by_id.get(current.parent_id)
    return seen


def _uncovered(candidates: t.Sequence[MountEntry], by_id: t.Dict[int, MountEntry]) -> t.List[MountEntry]:
    """Drop mounts hidden by a later mount on the same mount point or on a parent directory.

    A mount made on top of an existing mount point (or of one of its parents) covers what was
    there; it is listed later in mountinfo and the covered mount is not one of its ancestors.
    """
    visible = []
    for index, entry in enumerate(candidates):
        ancestors = _ancestors(entry, by_id)
        covered = any(
            is_under(entry.mountpoint, later.mountpoint) and later.mount_id not in ancestors
            for later in candidates[index + 1:]
        )
        if not covered:
            visible.append(entry)
    return visible


def mount_for(path: str, entries: t.Sequence[MountEntry]) -> MountEntry:
    """The mount an absolute, already resolved path lives on.

    The longest mount point that is a component-wise prefix of the path wins; of several mounts on
    the same mount point the last one listed wins, because it is mounted on top of the others.
    """
    # Only mounts containing the path matter: a mount that covers one of them contains the path too.
    candidates = [entry for entry in entries if is_under(path, entry.mountpoint)]
    best: t.Optional[MountEntry] = None
    for entry in _uncovered(candidates, {entry.mount_id: entry for entry in entries}):
        if best is None or len(entry.mountpoint) >= len(best.mountpoint):
            best = entry
    if best is None:
        raise MountinfoError("no mount in mountinfo contains %s; is /proc mounted in this namespace?" % path)
    return best


def resolve_path(path: str) -> ResolvedPath:
    """realpath ``path``; when it does not exist, resolve its nearest existing parent instead."""
    absolute = os.path.abspath(path)
    existing = absolute
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    existing_real = os.path.realpath(existing)
    rest = os.path.relpath(absolute, existing)
    resolved = existing_real if rest == "." else os.path.normpath(os.path.join(existing_real, rest))
    return ResolvedPath(requested=path, resolved=resolved, existing=existing_real, exists=existing == absolute)


def find_mount(path: str, entries: t.Sequence[MountEntry]) -> MountMatch:
    """The mount ``path`` lives on (or, when it does not exist yet, the mount of its nearest existing parent)."""
    resolved = resolve_path(path)
    return MountMatch(path=resolved, entry=mount_for(resolved.existing, entries))


# ---------------------------------------------------------------------------------------------
# space, thresholds


def statvfs_facts(path: str) -> SpaceFacts:
    stat = os.statvfs(path)
    return SpaceFacts(
        total_bytes=stat.f_blocks * stat.f_frsize,
        free_bytes=stat.f_bfree * stat.f_frsize,
        # f_bavail, not f_bfree: blocks reserved for root are not ours to fill with a backup.
        available_bytes=stat.f_bavail * stat.f_frsize,
        total_inodes=stat.f_files,
        free_inodes=stat.f_favail,
        read_only=bool(stat.f_flag & os.ST_RDONLY),
    )


def _parse_percent(value: t.Any, what: str) -> t.Optional[Threshold]:
    match = _PERCENT.match(value) if isinstance(value, str) else None
    if not match:
        return None
    percent = float(match.group(1))
    if percent > 100:
        raise ValueError("%s must be a percentage between 0%% and 100%%; found %r" % (what, value))
    return Threshold(percent=percent)


def parse_min_free(value: t.Any, what: str = "min_free") -> Threshold:
    """Bytes (int), a size string (``20G``) or a percentage of the filesystem size (``10%``)."""
    if value is None:
        return Threshold()
    threshold = _parse_percent(value, what)
    if threshold is not None:
        return threshold
    try:
        return Threshold(amount=parse_size(value, what))
    except ValueError as exc:
        raise ValueError("%s; a percentage of the filesystem size such as 10%% is also accepted" % exc) from None


def parse_min_free_inodes(value: t.Any, what: str = "min_free_inodes") -> Threshold:
    """A number of inodes (int or digits) or a percentage of the filesystem's inodes (``5%``)."""
    if value is None:
        return Threshold()
    threshold = _parse_percent(value, what)
    if threshold is not None:
        return threshold
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Threshold(amount=value)
    if isinstance(value, str) and value.strip().isdigit():
        return Threshold(amount=int(value.strip()))
    raise ValueError("%s must be a number of inodes such as 10000 or a percentage such as 5%%; found %r" % (what, value))


def _format_number(number: float) -> str:
    return ("%.1f" % number).rstrip("0").rstrip(".")


def format_bytes(count: int) -> str:
    """Human size in powers of 1024 with one decimal: ``1.0 MiB``, ``20.0 GiB``."""
    if count < 1024:
        return "%d B" % count
    size = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        size /= 1024
        if size < 1024 or unit == "PiB":
            break
    return "%.1f %s" % (size, unit)


def format_inodes(count: int) -> str:
    return "%d inodes" % count


# ---------------------------------------------------------------------------------------------
# write probe


def _os_error_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "errno %s" % exc.errno)
    return "%s (%s)" % (exc.strerror or str(exc), name)


def write_probe(directory: str) -> ProbeResult:
    """Prove that ``directory`` takes a durable write: create a unique hidden file, write, fsync, remove.

    O_EXCL guarantees the probe never touches an existing file; the directory fsync makes sure the
    create and unlink both reached the medium (a disk that drops directory updates fails here).
    """
    name = os.path.join(directory, "%s%d.%s" % (PROBE_PREFIX, os.getpid(), uuid.uuid4().hex[:12]))
    step = "create %s" % name
    created = False
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        created = True
        try:
            step = "write to %s" % name
            os.write(fd, _PROBE_DATA)
            step = "fsync %s" % name
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "remove %s" % name
        os.unlink(name)
        created = False
        step = "fsync directory %s" % directory
        fsync_dir(directory)
    except OSError as exc:
        if created:
            try:
                os.unlink(name)
            except OSError:
                pass
        return ProbeResult(performed=True, ok=False, error="cannot %s: %s" % (step, _os_error_text(exc)))
    return ProbeResult(performed=True, ok=True)


# ---------------------------------------------------------------------------------------------
# checks


def _source_candidates(source: str, resolve: t.Callable[[str], str]) -> t.Set[str]:
    names = {source}
    tag, sep, value = source.partition("=")
    if sep and tag.upper() in _SOURCE_TAGS:
        names.add(os.path.join(_SOURCE_TAGS[tag.upper()], value))
    for name in list(names):
        if name.startswith("/"):
            names.add(resolve(name))
    return names


def source_matches(expected: str, found: str, resolve: t.Callable[[str], str] = os.path.realpath) -> bool:
    """Compare literally and after realpath (``/dev/disk/by-uuid/...`` -> ``/dev/sdb1``); UUID=/LABEL= are understood."""
    return bool(_source_candidates(expected, resolve) & _source_candidates(found, resolve))


def _where(facts: Facts) -> str:
    entry = facts.entry
    return "%s (%s, source %s)" % (entry.mountpoint, entry.fstype, entry.source)


def _read_only_reasons(facts: Facts) -> t.List[str]:
    reasons = []
    if "ro" in facts.entry.options:
        reasons.append("options ro")
    if "ro" in facts.entry.super_options:
        reasons.append("super options ro")
    if facts.space.read_only and not reasons:
        reasons.append("statvfs ST_RDONLY")
    return reasons


def evaluate(facts: Facts, needs: Needs, resolve: t.Callable[[str], str] = os.path.realpath) -> t.List[Failure]:
    """Every unmet need, in the order an operator would fix them."""
    failures = []
    path = facts.path.resolved
    entry = facts.entry
    if not facts.path.exists:
        failures.append(Failure("exists", "backup destination %s does not exist; create it on the mounted backup disk first" % path))
    elif not facts.is_dir:
        failures.append(Failure("directory", "backup destination %s is not a directory; give the path of a directory on the backup disk" % path))

    # The nearest existing parent is what lives on a mount when the path itself is missing.
    subject = path if facts.path.exists else "%s (nearest existing parent %s)" % (path, facts.path.existing)
    if needs.mountpoint is not None:
        expected = os.path.normpath(resolve(needs.mountpoint))
        if entry.mountpoint != expected:
            failures.append(Failure(
                "mountpoint",
                "%s is on %s, expected mount point %s. Mount the right disk at %s or fix mountpoint"
                % (subject, _where(facts), expected, expected)))
    elif needs.require_mountpoint and entry.mountpoint == "/":
        if path == "/":
            message = "/ is the root filesystem (%s, source %s), not a backup disk. Choose a path on the mounted backup disk" % (
                entry.fstype, entry.source)
        else:
            message = ("%s is not a mount point; %s lives on the root filesystem / (%s, source %s). "
                       "Mount the backup disk or set mountpoint (or require_mountpoint=false if / is really meant)"
                       % (path, subject, entry.fstype, entry.source))
        failures.append(Failure("mounted", message))

    if needs.fstype and entry.fstype not in needs.fstype:
        failures.append(Failure(
            "fstype",
            "%s is on %s with filesystem type %s, expected %s. Mount the right disk or add %s to fstype"
            % (subject, entry.mountpoint, entry.fstype, " or ".join(needs.fstype), entry.fstype)))

    if needs.source is not None and not source_matches(needs.source, entry.source, resolve):
        failures.append(Failure(
            "source",
            "%s is on %s from source %s, expected source %s. Mount the right disk at %s or fix source"
            % (subject, entry.mountpoint, entry.source, needs.source, entry.mountpoint)))

    if needs.writable:
        reasons = _read_only_reasons(facts)
        if reasons:
            failures.append(Failure(
                "writable",
                "%s is on a read-only mount (%s, %s, %s). Remount it read-write or choose another destination"
                % (subject, entry.mountpoint, entry.fstype, ", ".join(reasons))))
        elif facts.probe.performed and not facts.probe.ok:
            failures.append(Failure(
                "write_probe",
                "write probe in %s failed: %s. Check the directory's owner and permissions and the disk's health, "
                "or choose another destination" % (path, facts.probe.error)))

    space = facts.space
    needed = needs.min_free.required(space.total_bytes)
    if space.available_bytes < needed:
        failures.append(Failure(
            "min_free",
            "%s has %s available, min_free needs %s. Free space on %s or lower min_free"
            % (subject, format_bytes(space.available_bytes), needs.min_free.describe(space.total_bytes, format_bytes),
               entry.mountpoint)))

    needed_inodes = needs.min_free_inodes.required(space.total_inodes)
    # A filesystem with no inode table (btrfs, vfat report 0 total) cannot run out of inodes.
    if space.total_inodes and space.free_inodes < needed_inodes:
        failures.append(Failure(
            "min_free_inodes",
            "%s has %s free, min_free_inodes needs %s. Remove files on %s or lower min_free_inodes"
            % (subject, format_inodes(space.free_inodes), needs.min_free_inodes.describe(space.total_inodes, format_inodes),
               entry.mountpoint)))
    return failures


def _probe_or_skip(facts_path: ResolvedPath, is_dir: bool, read_only: bool, needs: Needs, check_mode: bool) -> ProbeResult:
    if not needs.writable:
        return ProbeResult(reason="writable is false: no write probe wanted")
    if check_mode:
        return ProbeResult(reason="check mode: no write probe; writability judged from the read-only flags only")
    if not facts_path.exists or not is_dir:
        return ProbeResult(reason="the destination is not an existing directory")
    if read_only:
        return ProbeResult(reason="the mount is read-only")
    return write_probe(facts_path.resolved)


def check(path: str, needs: Needs, check_mode: bool = False, mountinfo: str = MOUNTINFO) -> CheckResult:
    """Gather the facts about ``path`` and evaluate ``needs`` against them. Never changes anything it leaves behind."""
    match = find_mount(path, read_mountinfo(mountinfo))
    is_dir = os.path.isdir(match.path.resolved)
    space = statvfs_facts(match.path.existing)
    read_only = match.entry.read_only or space.read_only
    probe = _probe_or_skip(match.path, is_dir, read_only, needs, check_mode)
    facts = Facts(path=match.path, is_dir=is_dir, entry=match.entry, space=space, probe=probe)
    warnings = []
    if needs.min_free_inodes.is_set and not space.total_inodes:
        warnings.append("%s (%s) reports no inode count; min_free_inodes was not checked" % (match.entry.mountpoint, match.entry.fstype))
    return CheckResult(facts=facts, failures=tuple(evaluate(facts, needs)), warnings=tuple(warnings))
