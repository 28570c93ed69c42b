# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Small file-system helpers shared by the engines.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.
"""

from __future__ import annotations

import contextlib
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
