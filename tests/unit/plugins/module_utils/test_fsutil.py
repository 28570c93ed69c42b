# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Specification of clone_file, the layout that shares extents where the filesystem allows it: FICLONE, then
copy_file_range, then '' (the caller copies). The ioctl and copy_file_range are replaced by doubles that refuse as
the kernel does (ioctl_ficlone(2): EOPNOTSUPP without reflink, EXDEV across filesystems, EINVAL for ranges the
filesystem cannot share; copy_file_range(2): EXDEV across filesystems since Linux 5.19)."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from ansible_collections.consistent.backup.plugins.module_utils import _fsutil
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import FICLONE, clone_file

CONTENT = os.urandom(300_000)


@pytest.fixture
def files(tmp_path):
    source = tmp_path / "source.db"
    source.write_bytes(CONTENT)
    src_fd = os.open(str(source), os.O_RDONLY)
    dst_fd = os.open(str(tmp_path / "clone.db"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    yield src_fd, dst_fd, tmp_path / "clone.db"
    os.close(src_fd)
    os.close(dst_fd)


def refuse(code, calls=None):
    def double(*args):
        if calls is not None:
            calls.append(args)
        raise OSError(code, os.strerror(code))
    return double


def test_a_clone_the_filesystem_makes_is_a_reflink(monkeypatch, files):
    src_fd, dst_fd, _clone = files
    calls = []
    monkeypatch.setattr(fcntl, "ioctl", lambda fd, request, arg: calls.append((fd, request, arg)) or 0)
    assert clone_file(src_fd, dst_fd, len(CONTENT)) == "reflink"
    assert calls == [(dst_fd, FICLONE, src_fd)]  # the destination's fd asks for the source's extents


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL])
def test_a_refused_reflink_falls_back_to_copy_file_range(monkeypatch, files, code):
    src_fd, dst_fd, clone = files
    monkeypatch.setattr(fcntl, "ioctl", refuse(code))
    refused = set()
    assert clone_file(src_fd, dst_fd, len(CONTENT), refused) == "copy_file_range"
    assert clone.read_bytes() == CONTENT and refused == {"reflink"}


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL])
def test_a_refused_copy_file_range_leaves_the_copy_to_the_caller_with_nothing_written(monkeypatch, files, code):
    src_fd, dst_fd, clone = files
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", refuse(code))
    refused = set()
    assert clone_file(src_fd, dst_fd, len(CONTENT), refused) == ""
    assert clone.read_bytes() == b"" and refused == {"reflink", "copy_file_range"}


def test_without_copy_file_range_the_copy_is_the_callers(monkeypatch, files):
    src_fd, dst_fd, _clone = files
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    monkeypatch.delattr(os, "copy_file_range")  # Python 3.7, or not Linux
    assert clone_file(src_fd, dst_fd, len(CONTENT)) == ""


def test_a_method_refused_once_is_not_tried_again_in_the_same_layout(monkeypatch, files):
    src_fd, dst_fd, _clone = files
    ioctl_calls, range_calls = [], []
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP, ioctl_calls))
    monkeypatch.setattr(os, "copy_file_range", refuse(errno.EXDEV, range_calls))
    refused = set()
    assert clone_file(src_fd, dst_fd, len(CONTENT), refused) == ""
    assert clone_file(src_fd, dst_fd, len(CONTENT), refused) == ""
    assert (len(ioctl_calls), len(range_calls)) == (1, 1)


def test_copy_file_range_that_copies_nothing_of_a_non_empty_file_is_a_refusal(monkeypatch, files):
    src_fd, dst_fd, _clone = files
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "copy_file_range", lambda *args: 0)
    assert clone_file(src_fd, dst_fd, len(CONTENT)) == ""


def test_an_empty_file_is_copied_by_copy_file_range(monkeypatch, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    src_fd = os.open(str(tmp_path / "empty"), os.O_RDONLY)
    dst_fd = os.open(str(tmp_path / "copy"), os.O_WRONLY | os.O_CREAT, 0o600)
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    try:
        assert clone_file(src_fd, dst_fd, 0) == "copy_file_range"
    finally:
        os.close(src_fd)
        os.close(dst_fd)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_failure_of_the_medium_is_raised_not_taken_for_a_refusal(monkeypatch, files, code):
    src_fd, dst_fd, _clone = files
    monkeypatch.setattr(fcntl, "ioctl", refuse(code))
    with pytest.raises(OSError) as raised:
        clone_file(src_fd, dst_fd, len(CONTENT))
    assert raised.value.errno == code


def test_a_copy_file_range_that_fails_after_copying_is_raised(monkeypatch, files):
    src_fd, dst_fd, _clone = files
    monkeypatch.setattr(fcntl, "ioctl", refuse(errno.EOPNOTSUPP))
    done = []

    def half_then_fail(_src, _dst, _count, offset_src, _offset_dst):
        if done:
            raise OSError(errno.EXDEV, "refused late")
        done.append(offset_src)
        return 4096
    monkeypatch.setattr(os, "copy_file_range", half_then_fail)
    with pytest.raises(OSError):  # a partial copy is never left for the caller to take as a refusal
        clone_file(src_fd, dst_fd, len(CONTENT))


def test_ficlone_is_the_request_number_of_linux_fs_h():
    assert _fsutil.FICLONE == (1 << 30) | (4 << 16) | (0x94 << 8) | 9  # _IOW(0x94, 9, int)
