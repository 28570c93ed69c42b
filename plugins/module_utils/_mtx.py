# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The media changer behind ``tape_changer``: ``mtx status`` parsing, error lines as reasons, move planning.

This is a private module_utils file of consistent.backup: it is not part of the collection's public API and may
change without notice.

Facts (../shared/reference/tape.md, mtx 1.3.12): drives count from 0 and slots from 1; volume tags carry trailing
blanks; a drive can be "Full (Unknown Storage Element Loaded)"; sense data can arrive on stderr while stdout is a
valid status, so stdout is parsed whatever stderr holds and an error is taken from the exit status.
"""

from __future__ import annotations

import re
import typing as t

_HEADER = re.compile(r"^\s*Storage Changer (?P<device>\S+?):(?P<drives>\d+) Drives?, (?P<slots>\d+) Slots?"
                     r"(?: \( (?P<ie>\d+) Import/Export \))?")
_DRIVE = re.compile(r"^\s*Data Transfer Element (?P<drive>\d+):(?P<full>Full|Empty)"
                    r"(?: \((?:Storage Element (?P<source>\d+)|(?P<unknown>Unknown Storage Element)) Loaded\))?"
                    r"(?::VolumeTag\s*=\s*(?P<tag>.*?))?\s*$")
_SLOT = re.compile(r"^\s*Storage Element (?P<slot>\d+)(?P<ie> IMPORT/EXPORT)?:(?P<full>Full|Empty)"
                   r"(?:\s*:VolumeTag\s*=\s*(?P<tag>.*?))?\s*$")

# mtx's error lines (stderr, exit 1) and the reason each one is.
_ERRORS = (
    (re.compile(r"Drive (?P<drive>\d+) Full \(Storage Element (?P<slot>\d+) loaded\)", re.I), "drive_full",
     "drive %(drive)s already holds the volume of slot %(slot)s; unload it first"),
    (re.compile(r"Source Element Address (?P<address>\d+) is Empty"), "source_empty",
     "the source (element address %(address)s) holds no volume; check the slot or barcode with mtx status"),
    (re.compile(r"Storage Element (?P<slot>\d+) is Already Full"), "slot_full",
     "slot %(slot)s already holds a volume; unload into an empty slot"),
    (re.compile(r"Data Transfer Element (?P<drive>\d+) is Empty"), "drive_empty",
     "drive %(drive)s holds no volume; nothing to unload"),
    (re.compile(r"MOVE MEDIUM from Element Address (?P<source>\d+) to (?P<target>\d+) Failed"), "move_failed",
     "the changer failed to move the volume (element %(source)s to %(target)s); look at the changer's display, "
     "open/close its door or re-inventory it, and run again"),
    (re.compile(r"cannot open SCSI device '(?P<device>[^']*)' - (?P<why>.*)"), "no_changer",
     "cannot open changer %(device)s (%(why)s); check backup_tape_changer (the changer's sg node, lsscsi -g)"),
)


class ChangerError(Exception):
    """A changer problem; ``reason`` is structured (kind plus the numbers mtx named)."""

    def __init__(self, message: str, reason: t.Optional[t.Dict[str, t.Any]] = None) -> None:
        super(ChangerError, self).__init__(message)
        self.reason = dict(reason or {})


def clean_tag(tag: t.Optional[str]) -> t.Optional[str]:
    """A volume tag without the blanks mtx pads it with; None when there is none."""
    tag = (tag or "").strip()
    return tag or None


def parse_status(stdout: str) -> t.Dict[str, t.Any]:
    """The drives and slots of ``mtx status``; lines that are not part of the status (noise) are ignored."""
    status = {"changer": None, "drive_count": None, "slot_count": None, "import_export_count": None,
              "drives": [], "slots": []}  # type: t.Dict[str, t.Any]
    for line in stdout.splitlines():
        match = _HEADER.match(line)
        if match:
            status["changer"] = match.group("device")
            status["drive_count"] = int(match.group("drives"))
            status["slot_count"] = int(match.group("slots"))
            status["import_export_count"] = int(match.group("ie") or 0)
            continue
        match = _DRIVE.match(line)
        if match:
            full = match.group("full") == "Full"
            status["drives"].append({
                "drive": int(match.group("drive")), "full": full, "tag": clean_tag(match.group("tag")) if full else None,
                "source_slot": int(match.group("source")) if match.group("source") else None,
                "source_unknown": bool(match.group("unknown")),
            })
            continue
        match = _SLOT.match(line)
        if match:
            full = match.group("full") == "Full"
            status["slots"].append({"slot": int(match.group("slot")), "full": full,
                                    "tag": clean_tag(match.group("tag")) if full else None,
                                    "import_export": bool(match.group("ie"))})
    if status["changer"] is None and not status["drives"]:
        raise ChangerError("mtx status printed no changer status (no 'Storage Changer' line); check that the changer "
                           "node is the changer's sg device", {"kind": "no_status"})
    return status


def parse_error(stderr: str, stdout: str = "") -> t.Dict[str, t.Any]:
    """The first mtx error line that is known, as {kind, what to do, the numbers}; kind 'unknown' otherwise."""
    for text in (stderr, stdout):
        for line in text.splitlines():
            for pattern, kind, advice in _ERRORS:
                match = pattern.search(line)
                if match:
                    return dict(match.groupdict(), kind=kind, line=line.strip(), advice=advice % match.groupdict())
    last = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    return {"kind": "unknown", "line": last[-1] if last else "", "advice": "run mtx status by hand and look at the changer"}


def find_drive(status: t.Dict[str, t.Any], drive: int) -> t.Dict[str, t.Any]:
    for entry in status["drives"]:
        if entry["drive"] == drive:
            return entry
    raise ChangerError("changer %s has no drive %d (drives: %s); set backup_tape_drive to one of them (counted from 0)"
                       % (status["changer"], drive, ", ".join(str(d["drive"]) for d in status["drives"]) or "none"),
                       {"kind": "no_such_drive", "drive": drive})


def find_slot(status: t.Dict[str, t.Any], slot: int) -> t.Optional[t.Dict[str, t.Any]]:
    for entry in status["slots"]:
        if entry["slot"] == slot:
            return entry
    return None


def _home_slot(status: t.Dict[str, t.Any], drive: t.Dict[str, t.Any]) -> int:
    """Where the volume in ``drive`` goes back to: its source slot, else the first empty storage slot."""
    if drive["source_slot"] is not None:
        return int(drive["source_slot"])
    for entry in status["slots"]:
        if not entry["full"] and not entry["import_export"]:
            return int(entry["slot"])
    raise ChangerError("drive %d of changer %s holds %s from an unknown slot and no storage slot is empty; free a slot "
                       "(mtx transfer, or the changer's mail slot) and run again"
                       % (drive["drive"], status["changer"], drive["tag"] or "a volume without a tag"),
                       {"kind": "no_home_slot", "drive": drive["drive"]})


def plan_moves(status: t.Dict[str, t.Any], drive: int, state: str, slot: t.Optional[int] = None,
               barcode: t.Optional[str] = None) -> t.List[t.Dict[str, t.Any]]:
    """The moves that bring ``drive`` to ``state`` (``loaded`` with ``slot`` or ``barcode``, or ``unloaded``)."""
    entry = find_drive(status, drive)
    if state == "unloaded":
        if not entry["full"]:
            return []
        return [{"action": "unload", "slot": _home_slot(status, entry), "drive": drive, "tag": entry["tag"]}]
    if barcode:
        if entry["full"] and entry["tag"] == barcode:
            return []
        holders = [s for s in status["slots"] if s["full"] and s["tag"] == barcode]
        if not holders:
            elsewhere = [d["drive"] for d in status["drives"] if d["full"] and d["tag"] == barcode]
            where = ("it is in drive %s" % elsewhere[0]) if elsewhere else "no slot holds it"
            raise ChangerError("changer %s: expected volume %s for drive %d, found none (%s); put the volume in the "
                               "changer (import/export slot) or change backup_tape_barcode"
                               % (status["changer"], barcode, drive, where), {"kind": "barcode_not_found", "barcode": barcode})
        source = int(holders[0]["slot"])
    else:
        if slot is None:
            raise ChangerError("state loaded needs slot or barcode", {"kind": "invalid"})
        if entry["full"] and entry["source_slot"] == slot:
            return []
        found = find_slot(status, slot)
        if found is None:
            raise ChangerError("changer %s has no slot %d (slots 1 to %s); set backup_tape_slot to one of them"
                               % (status["changer"], slot, status["slot_count"]), {"kind": "no_such_slot", "slot": slot})
        if not found["full"]:
            raise ChangerError("changer %s: expected a volume in slot %d for drive %d, found the slot empty; load a volume "
                               "into slot %d or choose another slot" % (status["changer"], slot, drive, slot),
                               {"kind": "source_empty", "slot": slot})
        source = slot
    moves = []
    if entry["full"]:
        moves.append({"action": "unload", "slot": _home_slot(status, entry), "drive": drive, "tag": entry["tag"]})
    wanted = find_slot(status, source)
    moves.append({"action": "load", "slot": source, "drive": drive, "tag": wanted["tag"] if wanted else None})
    return moves


def describe_move(move: t.Dict[str, t.Any], changer: str) -> str:
    if move["action"] == "unload":
        return "unload %s from drive %d into slot %d of %s" % (move["tag"] or "the volume", move["drive"], move["slot"], changer)
    return "load %s from slot %d into drive %d of %s" % (move["tag"] or "the volume", move["slot"], move["drive"], changer)


def loaded_problem(status: t.Dict[str, t.Any], drive: int, slot: t.Optional[int], barcode: t.Optional[str]) -> str:
    """After the moves: '' when the drive holds what was wanted, else what was found."""
    entry = find_drive(status, drive)
    if not entry["full"]:
        return "drive %d of changer %s: expected %s, found the drive empty" % (drive, status["changer"], barcode or "slot %s" % slot)
    if barcode and entry["tag"] != barcode:
        return ("drive %d of changer %s: expected volume %s, found %s" % (drive, status["changer"], barcode, entry["tag"]))
    if not barcode and slot is not None and entry["source_slot"] != slot:
        return ("drive %d of changer %s: expected the volume of slot %d, found the volume of slot %s"
                % (drive, status["changer"], slot, entry["source_slot"] if entry["source_slot"] is not None else "unknown"))
    return ""
