# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tape drive double for the injectable kernel layer of plugins/module_utils/_tape.py (never used in production).

Selected by the test seam (docs/tape.md): its ``make_ops`` replaces _tape.OPS_FACTORY, in a playbook run through
tape_seam/sitecustomize.py (CONSISTENT_BACKUP_TEST_TAPE_DOUBLE=<this file>). The "device" is a directory:

    <drive>/state.json           the drive: loaded, volume, write_protected, loading_polls, block_size, density,
                                 file/offset (position), open_errno (an errno the next opens fail with)
    <drive>/volumes/<vol>/file.N the tape files of each volume (a filemark ends each file)
    <drive>/records.log          one line per write(2): "<volume> <file> <bytes>" (so tests see every record's size)

State is kept in state.json between calls and between processes (the changer double, files/mtx.py, loads and
unloads volumes by editing it). Each behaviour follows ../shared/reference/tape.md:
* O_NONBLOCK open always succeeds on a drive; a blocking open without a tape fails ENOMEDIUM, a blocking O_RDWR
  open of a write-protected tape EROFS ("errno" section);
* MTIOCGET: DR_OPEN|IM_REP_EN and file/block -1 without a tape ("no tape" output of mt), IM_REP_EN alone while
  loading ("loading"), ONLINE|IM_REP_EN with BOT at file 0 block 0, EOF just after a filemark ("after one file"),
  WR_PROT when write-protected; dsreg = density << 24 | block size;
* MTIOCTOP: MTREW, MTFSF (EIO past end of data), MTEOM, MTWEOF, MTSETBLK (st(4));
* write(2) in fixed-block mode must be a multiple of the block size (EINVAL, st(4)); a write erases everything
  after it (tape semantics); EACCES on a write-protected tape ("errno" section);
* read(2) returns at most the rest of the current file; at a filemark it returns 0 and moves past it (st(4)).
Fault injection (no source; a damaged medium): "flip_at": {"volume", "file", "offset"} stores that byte inverted;
"eio_after_offset": N fails every write that would go past byte N of a tape file with EIO.
"""

from __future__ import annotations

import errno
import json
import os
import struct

MTGET_FORMAT = "@5l2i"
MTOP_FORMAT = "@hi"
GMT_EOF, GMT_BOT, GMT_EOD, GMT_WR_PROT, GMT_ONLINE = 0x80000000, 0x40000000, 0x08000000, 0x04000000, 0x01000000
GMT_DR_OPEN, GMT_IM_REP_EN = 0x00040000, 0x00010000
MTFSF, MTWEOF, MTREW, MTEOM, MTSETBLK = 1, 5, 6, 12, 20


def _ioc(direction, number, size):
    return (direction << 30) | (size << 16) | (ord("m") << 8) | number


MTIOCTOP = _ioc(1, 1, struct.calcsize(MTOP_FORMAT))
MTIOCGET = _ioc(2, 2, struct.calcsize(MTGET_FORMAT))

DEFAULT_STATE = {"loaded": True, "volume": "LT1000L3", "write_protected": False, "loading_polls": 0, "block_size": 0,
                 "density": 0x46, "file": 0, "offset": 0, "open_errno": None, "soft_errors": 0}


def create(drive, **state):
    """Make a drive directory (tests call this); returns its path."""
    os.makedirs(drive, exist_ok=True)
    merged = dict(DEFAULT_STATE, **state)
    save(drive, merged)
    return drive


def load(drive):
    with open(os.path.join(drive, "state.json"), encoding="utf-8") as handle:
        return json.load(handle)


def save(drive, state):
    temp = os.path.join(drive, "state.json.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True)
    os.rename(temp, os.path.join(drive, "state.json"))


def volume_dir(drive, volume):
    path = os.path.join(drive, "volumes", volume or "unlabelled")
    os.makedirs(path, exist_ok=True)
    return path


def tape_file(drive, volume, number):
    return os.path.join(volume_dir(drive, volume), "file.%d" % number)


def file_count(drive, volume):
    count = 0
    while os.path.exists(tape_file(drive, volume, count)):
        count += 1
    return count


class FakeTapeOps:
    def __init__(self):
        self.drives = {}  # fd -> drive directory

    def open(self, path, flags):
        if not os.path.isdir(path):
            return os.open(path, flags)  # a real file or node: the real kernel answers (ENOTTY for /dev/null)
        state = load(path)
        if state.get("open_errno"):
            raise OSError(state["open_errno"], os.strerror(state["open_errno"]), path)
        blocking = not flags & os.O_NONBLOCK
        if blocking and not state["loaded"]:
            raise OSError(errno.ENOMEDIUM, os.strerror(errno.ENOMEDIUM), path)
        if blocking and flags & os.O_ACCMODE != os.O_RDONLY and state["write_protected"]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        fd = os.open(os.path.join(path, "state.json"), os.O_RDONLY)  # a real descriptor as the handle
        self.drives[fd] = path
        return fd

    def close(self, fd):
        self.drives.pop(fd, None)
        os.close(fd)

    def ioctl(self, fd, request, arg):
        drive = self.drives.get(fd)
        if drive is None:
            import fcntl  # pylint: disable=import-outside-toplevel
            return fcntl.ioctl(fd, request, arg)
        state = load(drive)
        if request == MTIOCGET:
            return self._mtget(drive, state)
        if request == MTIOCTOP:
            operation, count = struct.unpack(MTOP_FORMAT, arg)
            self._op(drive, state, operation, count)
            save(drive, state)
            return arg
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    @staticmethod
    def _mtget(drive, state):
        if not state["loaded"]:
            return struct.pack(MTGET_FORMAT, 0x72, 0, 0, GMT_DR_OPEN | GMT_IM_REP_EN, 0, -1, -1)
        if state["loading_polls"] > 0:
            state["loading_polls"] -= 1
            save(drive, state)
            return struct.pack(MTGET_FORMAT, 0x72, 0, 0, GMT_IM_REP_EN, 0, -1, -1)
        gstat = GMT_ONLINE | GMT_IM_REP_EN
        if state["write_protected"]:
            gstat |= GMT_WR_PROT
        if state["offset"] == 0 and state["file"] == 0:
            gstat |= GMT_BOT
        elif state["offset"] == 0:
            gstat |= GMT_EOF
        if state["offset"] == 0 and state["file"] >= file_count(drive, state["volume"]):
            gstat |= GMT_EOD
        block = state["offset"] // state["block_size"] if state["block_size"] else (0 if state["offset"] == 0 else -1)
        dsreg = (state["density"] << 24) | state["block_size"]
        return struct.pack(MTGET_FORMAT, 0x72, 0, dsreg, gstat, state["soft_errors"], state["file"], block)

    @staticmethod
    def _op(drive, state, operation, count):
        if not state["loaded"]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        files = file_count(drive, state["volume"])
        if operation == MTREW:
            state["file"], state["offset"] = 0, 0
        elif operation == MTFSF:
            if state["file"] + count > files:
                state["file"], state["offset"] = files, 0
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            state["file"], state["offset"] = state["file"] + count, 0
        elif operation == MTEOM:
            state["file"], state["offset"] = files, 0
        elif operation == MTWEOF:
            if state["write_protected"]:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            path = tape_file(drive, state["volume"], state["file"])
            if not os.path.exists(path):
                open(path, "wb").close()  # pylint: disable=consider-using-with
            _erase_after(drive, state["volume"], state["file"])
            state["file"], state["offset"] = state["file"] + count, 0
        elif operation == MTSETBLK:
            state["block_size"] = count
        else:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def read(self, fd, size):
        drive = self.drives.get(fd)
        if drive is None:
            return os.read(fd, size)
        state = load(drive)
        if state["block_size"] and size % state["block_size"]:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        path = tape_file(drive, state["volume"], state["file"])
        if not os.path.exists(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # reading at end of data
        with open(path, "rb") as handle:
            handle.seek(state["offset"])
            data = handle.read(size)
        if data:
            state["offset"] += len(data)
        else:
            state["file"], state["offset"] = state["file"] + 1, 0  # the filemark
        save(drive, state)
        return data

    def write(self, fd, data):
        drive = self.drives.get(fd)
        if drive is None:
            return os.write(fd, data)
        state = load(drive)
        if state["write_protected"]:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        if state["block_size"] and len(data) % state["block_size"]:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if state.get("eio_after_offset") is not None and state["offset"] + len(data) > state["eio_after_offset"]:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # fault injection: a medium error at that offset
        path = tape_file(drive, state["volume"], state["file"])
        _erase_after(drive, state["volume"], state["file"])
        data = bytearray(data)
        flip = state.get("flip_at")  # fault injection (tests only): the medium keeps one byte wrong
        if flip and flip["volume"] == state["volume"] and flip["file"] == state["file"] \
                and state["offset"] <= flip["offset"] < state["offset"] + len(data):
            data[flip["offset"] - state["offset"]] ^= 0xFF
        with open(path, "r+b" if os.path.exists(path) else "wb") as handle:
            handle.truncate(state["offset"])
            handle.seek(state["offset"])
            handle.write(bytes(data))
        state["offset"] += len(data)
        save(drive, state)
        with open(os.path.join(drive, "records.log"), "a", encoding="utf-8") as log:
            log.write("%s %d %d\n" % (state["volume"], state["file"], len(data)))
        return len(data)


def _erase_after(drive, volume, number):
    later = number + 1
    while os.path.exists(tape_file(drive, volume, later)):
        os.unlink(tape_file(drive, volume, later))
        later += 1


def make_ops():
    return FakeTapeOps()
