# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The tape drive behind ``tape_status``, ``tape_changer`` and ``tape_set``: MTIOCGET, mt operations, volume labels, catalog.

This is a private module_utils file of consistent.backup: it is not part of the collection's public API and may
change without notice.

Everything the kernel is asked goes through ``TapeOps`` (open, ioctl, read, write, close), made by ``default_ops``
from ``OPS_FACTORY``: the real thing (``os.open`` and ``fcntl.ioctl`` on a real node). Nothing here reads the
environment or knows about a tape double: tests pass their own ops, or replace ``OPS_FACTORY`` from tests/ (a
playbook run loads that replacement through a ``sitecustomize`` the test helpers put on PYTHONPATH; docs/tape.md).

Facts (../shared/reference/tape.md): ``struct mtget`` is ``"@5l2i"`` (mt_type, mt_resid = partition on st, mt_dsreg,
mt_gstat, mt_erreg = soft errors, mt_fileno, mt_blkno); ioctl numbers are derived from the struct sizes, not copied.
A status is read from a fresh descriptor of the non-rewinding node opened O_RDONLY|O_NONBLOCK: the st driver probes
the drive at open, and closing a rewinding node (/dev/stN) rewinds the tape, so a status never opens one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import struct
import time
import typing as t

from ansible_collections.consistent.backup.plugins.module_utils._fsutil import atomic_write, exclusive_lock
from ansible_collections.consistent.backup.plugins.module_utils._layout import parse_utc_iso, utc_iso

# --------------------------------------------------------------------------------------------
# The kernel interface (include/uapi/linux/mtio.h), sizes from the struct formats
# --------------------------------------------------------------------------------------------

MTGET_FORMAT = "@5l2i"
MTGET_SIZE = struct.calcsize(MTGET_FORMAT)
MTOP_FORMAT = "@hi"  # short mt_op; int mt_count
MTOP_SIZE = struct.calcsize(MTOP_FORMAT)
MTPOS_FORMAT = "@l"
MTPOS_SIZE = struct.calcsize(MTPOS_FORMAT)

_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    """The Linux _IOC() encoding: direction (2 bits), size (14 bits), type (8 bits), number (8 bits)."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


MTIOCTOP = _ioc(_IOC_WRITE, "m", 1, MTOP_SIZE)
MTIOCGET = _ioc(_IOC_READ, "m", 2, MTGET_SIZE)
MTIOCPOS = _ioc(_IOC_READ, "m", 3, MTPOS_SIZE)

# mt_op values (mtio.h)
MTFSF = 1
MTBSF = 2
MTWEOF = 5
MTREW = 6
MTEOM = 12
MTSETBLK = 20

# mt_gstat bits (GMT_* in mtio.h)
GMT_EOF = 0x80000000
GMT_BOT = 0x40000000
GMT_EOT = 0x20000000
GMT_SM = 0x10000000
GMT_EOD = 0x08000000
GMT_WR_PROT = 0x04000000
GMT_ONLINE = 0x01000000
GMT_D_6250 = 0x00800000
GMT_D_1600 = 0x00400000
GMT_D_800 = 0x00200000
GMT_DR_OPEN = 0x00040000
GMT_IM_REP_EN = 0x00010000
GMT_CLN = 0x00008000

GSTAT_BITS = (
    ("EOF", GMT_EOF), ("BOT", GMT_BOT), ("EOT", GMT_EOT), ("SM", GMT_SM), ("EOD", GMT_EOD), ("WR_PROT", GMT_WR_PROT),
    ("ONLINE", GMT_ONLINE), ("D_6250", GMT_D_6250), ("D_1600", GMT_D_1600), ("D_800", GMT_D_800),
    ("DR_OPEN", GMT_DR_OPEN), ("IM_REP_EN", GMT_IM_REP_EN), ("CLN", GMT_CLN),
)

# SCSI density codes of the drives people back up to (SSC; mt-st prints the same names).
DENSITY_NAMES = {
    0x00: "default", 0x40: "LTO-1", 0x42: "LTO-2", 0x44: "LTO-3", 0x46: "LTO-4", 0x58: "LTO-5", 0x5A: "LTO-6",
    0x5C: "LTO-7", 0x5D: "LTO-M8", 0x5E: "LTO-8", 0x60: "LTO-9", 0x25: "DDS-3", 0x26: "DDS-4", 0x47: "DAT-72",
}

# errno -> the plain state an operator understands (reference/tape.md, "errno").
ERRNO_STATES = {
    errno.EBUSY: "busy",
    errno.ENOTTY: "not_a_tape",
    errno.ENOENT: "no_device",
    errno.ENXIO: "no_device",
    errno.ENODEV: "no_device",
    errno.ENOMEDIUM: "no_medium",
    errno.EIO: "not_ready",
    errno.EACCES: "write_protected",
    errno.EROFS: "write_protected",
}

STATE_ADVICE = {
    "busy": "another program has the drive open (a running backup, mt, or a restore); wait for it or stop it, then run again",
    "not_a_tape": "the path is not a tape drive (ENOTTY): point it at the drive's non-rewinding node, such as /dev/nst0 "
                  "or /dev/tape/by-id/<drive>-nst",
    "no_device": "no such device: check the path (ls -l /dev/tape/by-id/), that the st driver is loaded and the drive "
                 "is powered on and cabled",
    "no_medium": "no tape is in the drive: load one (tape_changer, or by hand)",
    "not_ready": "the drive is not ready (I/O error at open): wait for it to finish loading, or look at the drive's "
                 "display and the kernel log",
    "write_protected": "the tape is write-protected: load a writable volume or slide the write-protect tab",
}

DEFAULT_WAIT_TIMEOUT = 0
POLL_INTERVAL = 2.0

NEEDS = ("loaded", "online", "writable", "bot", "no_cleaning")

# Rewinding nodes: closing them rewinds the tape. st minor numbers: bit 7 set = non-rewinding.
_REWINDING_NAME = re.compile(r"^(/dev/)?(st\d+[lma]?|tape/by-id/.*-st|tape/by-path/.*-st)$")
ST_MAJOR = 9


class TapeError(Exception):
    """A tape problem; the message names the device, what was expected, what was found and what to do."""

    def __init__(self, message: str, state: str = "error", facts: t.Optional[t.Dict[str, t.Any]] = None) -> None:
        super(TapeError, self).__init__(message)
        self.state = state
        self.facts = dict(facts or {})


class TapeOps:
    """The kernel calls a tape needs. The default is the real kernel; tests pass a double."""

    def open(self, path: str, flags: int) -> int:  # pylint: disable=no-self-use
        return os.open(path, flags)

    def ioctl(self, fd: int, request: int, arg: bytes) -> bytes:  # pylint: disable=no-self-use
        import fcntl  # pylint: disable=import-outside-toplevel
        return fcntl.ioctl(fd, request, arg)

    def read(self, fd: int, size: int) -> bytes:  # pylint: disable=no-self-use
        return os.read(fd, size)

    def write(self, fd: int, data: t.Any) -> int:  # pylint: disable=no-self-use
        return os.write(fd, data)

    def close(self, fd: int) -> None:  # pylint: disable=no-self-use
        os.close(fd)


# What makes the kernel layer: the real kernel. The one seam for tape doubles, which only tests/ replace.
OPS_FACTORY = TapeOps  # type: t.Callable[[], TapeOps]


def default_ops() -> TapeOps:
    """The kernel calls a tape module uses (``OPS_FACTORY``: the real kernel)."""
    return OPS_FACTORY()


# --------------------------------------------------------------------------------------------
# struct mtget
# --------------------------------------------------------------------------------------------


def pack_mtget(mt_type: int = 0x72, resid: int = 0, dsreg: int = 0, gstat: int = 0, erreg: int = 0,
               fileno: int = -1, blkno: int = -1) -> bytes:
    """The bytes the kernel returns for MTIOCGET (tests and tape doubles build them with this)."""
    return struct.pack(MTGET_FORMAT, mt_type, resid, dsreg, gstat, erreg, fileno, blkno)


def decode_mtget(raw: bytes) -> t.Dict[str, t.Any]:
    """Decode MTIOCGET's answer into facts; -1 (the driver does not know) stays -1."""
    if len(raw) != MTGET_SIZE:
        raise TapeError("MTIOCGET returned %d bytes, struct mtget is %d here; this is not a Linux st driver answer"
                        % (len(raw), MTGET_SIZE))
    mt_type, resid, dsreg, gstat, erreg, fileno, blkno = struct.unpack(MTGET_FORMAT, raw)
    gstat &= 0xFFFFFFFF
    density = (dsreg >> 24) & 0xFF
    online = bool(gstat & GMT_ONLINE)
    door_open = bool(gstat & GMT_DR_OPEN)
    return {
        "mt_type": mt_type,
        "gstat": "%x" % gstat,
        "status_bits": [name for name, bit in GSTAT_BITS if gstat & bit],
        "loaded": not door_open,
        "online": online,
        "ready": online and not door_open,
        "loading": not online and not door_open,
        "write_protected": bool(gstat & GMT_WR_PROT),
        "bot": bool(gstat & GMT_BOT),
        "eof": bool(gstat & GMT_EOF),
        "eot": bool(gstat & GMT_EOT),
        "eod": bool(gstat & GMT_EOD),
        "cleaning": bool(gstat & GMT_CLN),
        "file_number": fileno,
        "block_number": blkno,
        "partition": resid,
        "density_code": "0x%x" % density,
        "density": DENSITY_NAMES.get(density, "unknown (0x%x)" % density),
        "block_size": dsreg & 0xFFFFFF,
        "soft_errors": erreg,
    }


def errno_state(exc: OSError) -> str:
    return ERRNO_STATES.get(exc.errno or 0, "error")


def explain_errno(device: str, exc: OSError, doing: str) -> TapeError:
    state = errno_state(exc)
    advice = STATE_ADVICE.get(state, "check the drive and the kernel log")
    return TapeError("tape %s: %s failed with [Errno %s] %s (%s); %s"
                     % (device, doing, exc.errno, exc.strerror, state.replace("_", " "), advice), state=state)


def rewinding_node_problem(device: str, lstat: t.Callable[[str], os.stat_result] = os.stat) -> str:
    """Why ``device`` must not be opened for a status (a rewinding node), or ''."""
    if _REWINDING_NAME.match(device):
        return ("%s is a rewinding node: closing it rewinds the tape, so a status check would move the tape under a "
                "backup; use the non-rewinding node (/dev/nst%s or /dev/tape/by-id/<drive>-nst)"
                % (device, re.sub(r"\D", "", os.path.basename(device)) or "N"))
    try:
        st = lstat(device)
    except OSError:
        return ""
    if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == ST_MAJOR and not os.minor(st.st_rdev) & 0x80:
        return ("%s is the rewinding st node (char %d:%d): closing it rewinds the tape; use the non-rewinding node "
                "(minor %d, /dev/nstN)" % (device, ST_MAJOR, os.minor(st.st_rdev), os.minor(st.st_rdev) | 0x80))
    return ""


def read_mtget(ops: TapeOps, fd: int) -> t.Dict[str, t.Any]:
    return decode_mtget(bytes(ops.ioctl(fd, MTIOCGET, bytes(MTGET_SIZE))))


def mt_op(ops: TapeOps, fd: int, operation: int, count: int = 1) -> None:
    ops.ioctl(fd, MTIOCTOP, struct.pack(MTOP_FORMAT, operation, count))


def probe(device: str, ops: TapeOps) -> t.Dict[str, t.Any]:
    """One status from a fresh descriptor (O_RDONLY|O_NONBLOCK); an errno becomes ``state``, never an exception."""
    try:
        fd = ops.open(device, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return {"state": errno_state(exc), "errno": exc.errno, "error": "%s: %s" % (os.strerror(exc.errno or 0), device)}
    try:
        try:
            status = read_mtget(ops, fd)
        except OSError as exc:
            return {"state": errno_state(exc), "errno": exc.errno, "error": "MTIOCGET: %s" % os.strerror(exc.errno or 0)}
    finally:
        ops.close(fd)
    if not status["loaded"]:
        status["state"] = "no_medium"
    elif status["loading"]:
        status["state"] = "loading"
    else:
        status["state"] = "ready"
    return status


def wait_status(device: str, ops: TapeOps, wait_timeout: float, clock: t.Callable[[], float] = time.monotonic,
                sleep: t.Callable[[float], None] = time.sleep, interval: t.Optional[float] = None) -> t.Dict[str, t.Any]:
    """Probe until the drive is no longer loading (or busy/not ready) or ``wait_timeout`` seconds passed."""
    interval = POLL_INTERVAL if interval is None else interval
    deadline = clock() + max(0.0, wait_timeout)
    polls = 0
    while True:
        status = probe(device, ops)
        polls += 1
        if status["state"] not in ("loading", "not_ready", "busy") or clock() >= deadline:
            status["polls"] = polls
            return status
        sleep(min(interval, max(0.0, deadline - clock())))


def unmet_needs(device: str, status: t.Dict[str, t.Any], require: t.Sequence[str], waited: float) -> t.List[str]:
    """Each need of ``require`` the status does not meet, as a sentence that says what to do."""
    state = status["state"]
    if state not in ("ready", "loading", "no_medium"):
        advice = STATE_ADVICE.get(state, "check the drive and the kernel log")
        return ["tape %s: %s (%s); %s" % (device, state.replace("_", " "), status.get("error", ""), advice)]
    problems = []
    for need in require:
        if need == "loaded" and not status["loaded"]:
            problems.append("tape %s: expected a loaded tape, found none (DR_OPEN set); load a volume (tape_changer, or by hand)"
                            % device)
        elif need == "online" and status["loaded"] and not status["online"]:
            problems.append("tape %s: expected the drive online, found it still loading after %.0f s (ONLINE not set); "
                            "raise wait_timeout or check the drive" % (device, waited))
        elif need == "writable" and status["loaded"] and status["write_protected"]:
            problems.append("tape %s: expected a writable tape, found it write-protected (WR_PROT set); load a writable "
                            "volume or remove the write tab" % device)
        elif need == "bot" and status["loaded"] and not status["bot"]:
            problems.append("tape %s: expected the tape at its beginning, found file %s block %s; rewind it (mt -f %s rewind)"
                            % (device, status["file_number"], status["block_number"], device))
        elif need == "no_cleaning" and (status["cleaning"] or status.get("cleaning_needed")):
            problems.append("tape %s: the drive asks for cleaning (TapeAlert 20/21 or CLN); run a cleaning cartridge "
                            "before writing" % device)
    return problems


# --------------------------------------------------------------------------------------------
# sysfs and tapeinfo
# --------------------------------------------------------------------------------------------

SYSFS_ROOT = "/sys/class/scsi_tape"


def _read_text(path: str) -> t.Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _int_or_none(text: t.Optional[str]) -> t.Optional[int]:
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def sysfs_facts(device: str, root: str = SYSFS_ROOT) -> t.Dict[str, t.Any]:
    """Vendor, model, default block size, position_lost_in_reset and the sg node of the drive behind ``device``."""
    name = os.path.basename(os.path.realpath(device))
    base = os.path.join(root, name)
    if not os.path.isdir(base):
        return {}
    sg = None
    try:
        sgs = os.listdir(os.path.join(base, "device", "scsi_generic"))
        sg = "/dev/" + sorted(sgs)[0] if sgs else None
    except OSError:
        pass
    return {
        "name": name,
        "vendor": _read_text(os.path.join(base, "device", "vendor")),
        "model": _read_text(os.path.join(base, "device", "model")),
        "rev": _read_text(os.path.join(base, "device", "rev")),
        "default_block_size": _int_or_none(_read_text(os.path.join(base, "default_blksize"))),
        "default_density": _read_text(os.path.join(base, "default_density")),
        "position_lost_in_reset": _int_or_none(_read_text(os.path.join(base, "position_lost_in_reset"))) == 1,
        "sg_device": sg,
    }


_TAPEALERT = re.compile(r"^TapeAlert\[(\d+)\]:\s*(.*?)\s*$")


def parse_tapeinfo(text: str) -> t.Dict[str, t.Any]:
    """``tapeinfo -f /dev/sgN`` output: Ready, WriteProtect (printed only when set), TapeAlert flags."""
    facts = {"ready": None, "write_protected": False, "tape_alerts": [], "cleaning_needed": False}  # type: t.Dict[str, t.Any]
    for line in text.splitlines():
        line = line.strip()
        match = _TAPEALERT.match(line)
        if match:
            number = int(match.group(1))
            facts["tape_alerts"].append({"flag": number, "text": match.group(2)})
            if number in (20, 21):  # Clean Now, Clean Periodic: Bacula disables the drive on 20, LTFS refuses on both
                facts["cleaning_needed"] = True
        elif line.startswith("Ready:"):
            facts["ready"] = line.split(":", 1)[1].strip().lower() == "yes"
        elif line.startswith("WriteProtect:"):
            facts["write_protected"] = line.split(":", 1)[1].strip().lower() == "yes"
    return facts


# --------------------------------------------------------------------------------------------
# A drive opened for positioning, reading and writing
# --------------------------------------------------------------------------------------------


class Drive:
    """An open non-rewinding tape node; every failure is a TapeError that names the device."""

    def __init__(self, device: str, ops: TapeOps, write: bool = False) -> None:
        self.device = device
        self.ops = ops
        problem = rewinding_node_problem(device)
        if problem:
            raise TapeError(problem, state="rewinding_node")
        try:
            self.fd = ops.open(device, (os.O_RDWR if write else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise explain_errno(device, exc, "opening for %s" % ("writing" if write else "reading"))

    def status(self) -> t.Dict[str, t.Any]:
        try:
            return read_mtget(self.ops, self.fd)
        except OSError as exc:
            raise explain_errno(self.device, exc, "MTIOCGET")

    def op(self, operation: int, count: int, what: str) -> None:
        try:
            mt_op(self.ops, self.fd, operation, count)
        except OSError as exc:
            raise explain_errno(self.device, exc, what)

    def rewind(self) -> None:
        self.op(MTREW, 1, "rewind")

    def to_file(self, number: int) -> None:
        """Rewind, then skip ``number`` filemarks: the start of tape file ``number`` (counted from 0)."""
        self.rewind()
        if number > 0:
            self.op(MTFSF, number, "skipping %d filemarks" % number)

    def to_end_of_data(self) -> int:
        self.op(MTEOM, 1, "spacing to end of data")
        return int(self.status()["file_number"])

    def filemark(self) -> None:
        self.op(MTWEOF, 1, "writing a filemark")

    def read(self, size: int) -> bytes:
        try:
            return self.ops.read(self.fd, size)
        except OSError as exc:
            raise explain_errno(self.device, exc, "reading")

    def write(self, data: t.Any) -> int:
        try:
            return self.ops.write(self.fd, data)
        except OSError as exc:
            raise explain_errno(self.device, exc, "writing")

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.ops.close(self.fd)
            finally:
                self.fd = -1

    def __enter__(self) -> "Drive":
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# The volume label (tape file 0) and the catalog (on disk, beside the sets)
# --------------------------------------------------------------------------------------------

LABEL_MAGIC = b"CONSISTENT.BACKUP VOLUME LABEL 1\n"
CATALOG_DIR = ".tape-catalog"


def label_record(volume: str, record_size: int, block_size: int) -> bytes:
    """Tape file 0: one record holding the magic line and a JSON description, zero-padded to the record size."""
    body = LABEL_MAGIC + json.dumps({"volume": volume, "record_size": record_size, "block_size": block_size,
                                     "labelled": utc_iso()}, sort_keys=True).encode("utf-8") + b"\n"
    if len(body) > record_size:
        raise TapeError("the volume label of %s needs %d bytes, more than the record size %d; use a larger record size"
                        % (volume, len(body), record_size))
    return body + bytes(record_size - len(body))


def parse_label(record: bytes) -> t.Optional[t.Dict[str, t.Any]]:
    """The label in a first record, or None when the record is not one of ours."""
    if not record.startswith(LABEL_MAGIC):
        return None
    try:
        return json.loads(record[len(LABEL_MAGIC):].split(b"\n", 1)[0].decode("utf-8"))
    except ValueError:
        return None


def catalog_path(catalog_dir: str, volume: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.+-]{1,64}\Z", volume) or volume.startswith("."):
        raise TapeError("volume name %r cannot name a catalog file; use letters, digits, '.', '_', '+' or '-'" % volume)
    return os.path.join(catalog_dir, volume + ".json")


def load_catalog(catalog_dir: str, volume: str) -> t.Dict[str, t.Any]:
    path = catalog_path(catalog_dir, volume)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"volume": volume, "files": []}
    except (OSError, ValueError) as exc:
        raise TapeError("the catalog of volume %s (%s) cannot be read: %s; restore it from a copy or relabel the volume"
                        % (volume, path, exc))


def save_catalog(catalog_dir: str, catalog: t.Dict[str, t.Any]) -> None:
    os.makedirs(catalog_dir, mode=0o700, exist_ok=True)
    atomic_write(catalog_path(catalog_dir, catalog["volume"]), (json.dumps(catalog, indent=1, sort_keys=True) + "\n").encode("utf-8"),
                 mode=0o600)


def update_catalog(catalog_dir: str, volume: str, change: t.Callable[[t.Dict[str, t.Any]], None]) -> t.Dict[str, t.Any]:
    os.makedirs(catalog_dir, mode=0o700, exist_ok=True)
    with exclusive_lock(os.path.join(catalog_dir, ".lock")):
        catalog = load_catalog(catalog_dir, volume)
        change(catalog)
        save_catalog(catalog_dir, catalog)
        return catalog


def catalog_end_of_data(catalog: t.Dict[str, t.Any]) -> int:
    """The file number the tape should show at end of data: one past the last file the catalog records."""
    numbers = [int(entry["file_number"]) for entry in catalog.get("files", [])]
    return max(numbers) + 1 if numbers else 0


def unexpired_sets(catalog: t.Dict[str, t.Any], now: t.Optional[float] = None) -> t.List[str]:
    now = time.time() if now is None else now
    alive = []
    for entry in catalog.get("files", []):
        if entry.get("kind") != "set":
            continue
        expires = parse_utc_iso(entry.get("expires"))
        if expires is None or expires.timestamp() > now:
            alive.append("%s (file %s, expires %s)" % (entry.get("backup_id"), entry.get("file_number"), entry.get("expires") or "never"))
    return alive


def expected_volume_problem(device: str, wanted: str, have: t.Optional[str]) -> str:
    """Bareos's wording, with what to do."""
    if not wanted or wanted == have:
        return ""
    return ("Wrong Volume mounted on device %s: Wanted %s have %s; load %s (backup_tape_barcode or backup_tape_slot) "
            "or change the expected volume" % (device, wanted, have or "an unlabelled tape", wanted))
