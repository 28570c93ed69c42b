# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Small file-system helpers shared by the engines.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
import typing as t

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1024,
    "KIB": 1024,
    "M": 1024 ** 2,
    "MB": 1024 ** 2,
    "MIB": 1024 ** 2,
    "G": 1024 ** 3,
    "GB": 1024 ** 3,
    "GIB": 1024 ** 3,
    "T": 1024 ** 4,
    "TB": 1024 ** 4,
    "TIB": 1024 ** 4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: t.Union[int, str], what: str = "size") -> int:
    """Return a byte count from an int or a size string such as ``20G`` or ``512MiB`` (powers of 1024).

    Raises ValueError with a message that names ``what``, the value found and the accepted forms.
    """
    if isinstance(value, bool):
        raise ValueError("%s must be a byte count or a size like 20G; found %r" % (what, value))
    if isinstance(value, int):
        if value < 0:
            raise ValueError("%s must not be negative; found %d" % (what, value))
        return value
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise ValueError(
            "%s must be a byte count or a size like 512M, 20G or 1.5T (powers of 1024); found %r"
            % (what, value)
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def fsync_dir(path: str) -> None:
    """fsync a directory so that a rename or create inside it is durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644, owner: t.Optional[t.Tuple[int, int]] = None) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename, fsync dir.

    A reader sees either the old file or the whole new one, never a torn write, even after a crash.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, owner[0], owner[1])
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def read_json_object(path: str) -> t.Optional[t.Dict[str, t.Any]]:
    """A JSON object from ``path``, or None when the file is missing, unreadable or not an object (a record that
    cannot vouch for anything)."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def write_json(path: str, document: t.Any, mode: int = 0o600) -> None:
    """A state file: JSON, atomically written (see atomic_write), private by default."""
    atomic_write(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode)


@contextlib.contextmanager
def exclusive_lock(path: str) -> t.Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0600) for the ``with`` block; it ends with the process too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def private_dir_problem(path: str) -> str:
    """Create ``path`` (0700) if it is missing; '' when it is a real directory of ours that nobody else can write,
    else what is wrong with it. An existing directory is never chmod'ed (a runtime_dir of /tmp must not turn /tmp
    private): it is refused instead."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return "%s is not a directory (or is a symlink)" % path
    if info.st_uid != os.geteuid():
        return "%s belongs to uid %d, not to us (uid %d)" % (path, info.st_uid, os.geteuid())
    if info.st_mode & 0o022:
        return "%s is writable by group or others (mode %04o): another user could replace what is kept there" % (
            path, stat.S_IMODE(info.st_mode))
    return ""


OUTPUT_TAIL_CHARS = 1500


def output_tail(text: t.Any, limit: int = OUTPUT_TAIL_CHARS) -> str:
    """The end of a command's output (where its reason usually is), stripped; '' for none."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text).strip()
    return text if len(text) <= limit else "..." + text[-limit:]


# --- sharing extents: a layout that costs no copy where the filesystem allows it -------------------------------------

# FICLONE (linux/fs.h, _IOW(0x94, 9, int)): the destination shares every extent of the source (a reflink). XFS with
# reflink=1, Btrfs, bcachefs, OCFS2; a clone is a snapshot of the source's extents, taken with both inodes locked and
# the source's dirty pages written first, and a later write to either file is copy-on-write.
FICLONE = 0x40049409
# What says "this filesystem (or this pair of filesystems) cannot do that" rather than "the copy failed": the next
# method is tried. Anything else (EIO, ENOSPC, EDQUOT) is the layout's failure and is raised.
_CLONE_REFUSED = frozenset((errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM))
CLONE_METHODS = ("reflink", "copy_file_range")
# Bytes asked of one copy_file_range call (the kernel copies at most about 2 GiB per call anyway).
_COPY_RANGE_CHUNK = 1 << 30


def clone_file(src_fd: int, dst_fd: int, size: int, refused: t.Optional[t.Set[str]] = None) -> str:
    """Make the empty file ``dst_fd`` (open for writing) a copy of the open file ``src_fd`` without passing its bytes
    through this process (``size``, the source's size at open, tells an empty file from a filesystem on which
    copy_file_range copies nothing); the method used: ``reflink`` (FICLONE: shared extents, no new space),
    ``copy_file_range`` (in-kernel copy, which some filesystems turn into a reflink or a server-side copy), or '' when
    neither is possible here, so that the caller copies the bytes itself.

    ``refused`` (shared by the calls of one layout) collects the methods this pair of filesystems refused, so they
    are not tried again for every file. Nothing here checks the bytes: the caller reads the destination back and
    compares it with what it expects (the destination is then the file whose checksum was checked)."""
    refused = set() if refused is None else refused
    if "reflink" not in refused:
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
            return "reflink"
        except OSError as exc:
            if exc.errno not in _CLONE_REFUSED:
                raise
            refused.add("reflink")
    if "copy_file_range" not in refused and hasattr(os, "copy_file_range"):
        offset = 0
        while True:  # to the source's end, as a copy reads it: a file that grew since ``size`` is copied whole
            try:
                done = os.copy_file_range(src_fd, dst_fd, _COPY_RANGE_CHUNK, offset, offset)
            except OSError as exc:
                if offset or exc.errno not in _CLONE_REFUSED:
                    raise
                refused.add("copy_file_range")
                return ""
            if done == 0:
                if offset == 0 and size > 0:  # a filesystem that copies nothing this way (older kernels, some filesystems)
                    refused.add("copy_file_range")
                    return ""
                return "copy_file_range"
            offset += done
    return ""
