# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real XFS filesystem with reflink (``mkfs.xfs -m reflink=1``) on a loop device, made in a sparse file: where the
tests and the Berkeley DB benchmark see a layout share extents with the set (FICLONE). Root only; xfsprogs is
installed by scripts/setup.sh.

    with XfsLoop("/var/tmp/x.img", "/var/tmp/x") as xfs:   # or xfs = XfsLoop(...).mount() ... xfs.umount()
        xfs.used_bytes()
"""

from __future__ import annotations

import os
import shutil
import subprocess
import typing as t


def unavailable() -> str:
    """Why an XFS loop mount cannot be made here ('' when it can): not root, no loop devices, no mkfs.xfs."""
    if os.geteuid() != 0:
        return "an XFS loop mount needs root (losetup, mount)"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices here (/dev/loop-control is missing: a container without them?)"
    for tool in ("mkfs.xfs", "losetup", "xfs_io"):
        if shutil.which(tool) is None:
            return "%s is not installed (scripts/setup.sh installs xfsprogs and util-linux)" % tool
    return ""


class XfsLoop:
    """``image`` (a sparse file of ``size_mib``) formatted XFS with reflink, attached to a loop device and mounted on
    ``mountpoint``; ``umount`` undoes each step that was done (umount, losetup -d, the image removed), even after a
    step that failed."""

    def __init__(self, image: str, mountpoint: str, size_mib: int = 600) -> None:
        self.image = image
        self.path = mountpoint
        self.size_mib = size_mib
        self.device = ""
        self.mounted = False

    def mount(self) -> "XfsLoop":
        try:
            with open(self.image, "wb") as handle:
                handle.truncate(self.size_mib << 20)
            subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.image], check=True, capture_output=True)
            self.device = subprocess.run(["losetup", "--find", "--show", self.image], check=True, capture_output=True,
                                         text=True).stdout.strip()
            os.makedirs(self.path, exist_ok=True)
            subprocess.run(["mount", "-t", "xfs", self.device, self.path], check=True, capture_output=True)
            self.mounted = True
        except BaseException:
            self.umount()
            raise
        return self

    def umount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", self.path], check=False)
            self.mounted = False
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=False)
            self.device = ""
        if os.path.exists(self.image):
            os.unlink(self.image)

    def __enter__(self) -> "XfsLoop":
        return self.mount()

    def __exit__(self, *_exc: t.Any) -> None:
        self.umount()

    def used_bytes(self) -> int:
        """Bytes of the filesystem in use (statvfs: blocks less free blocks), after a sync of the filesystem, so
        that delayed allocations are counted."""
        subprocess.run(["sync", "-f", self.path], check=True)
        info = os.statvfs(self.path)
        return (info.f_blocks - info.f_bfree) * info.f_frsize


def shared_bytes(path: str) -> int:
    """Bytes of ``path`` in extents shared with another file (FIEMAP's FIEMAP_EXTENT_SHARED, via ``xfs_io -c
    'fiemap -v'``: flag 0x2000)."""
    out = subprocess.run(["xfs_io", "-r", "-c", "fiemap -v", path], check=True, capture_output=True, text=True).stdout
    shared = 0
    for line in out.splitlines():
        fields = line.split()
        # "   0: [0..2047]:       96..2143          2048 0x2000" (512-byte blocks)
        if len(fields) >= 5 and fields[0].rstrip(":").isdigit() and fields[2] != "hole":
            if int(fields[-1], 16) & 0x2000:
                shared += int(fields[-2]) * 512
    return shared
