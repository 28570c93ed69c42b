# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A media changer double for tape_changer: ``mtx -f CHANGER status|load SLOT DRIVE|unload SLOT DRIVE``.

CHANGER is a JSON state file standing in for the changer's sg node (kept between calls):

    {"name": "/dev/sg6", "slots": {"1": "LT1001L3", "2": null}, "import_export": [5],
     "drives": {"0": {"tag": "LT1000L3", "source": 2, "device": "<fake_tape drive dir>"}, "1": {"tag": null}},
     "sense_noise": false, "fail_next_move": false, "loading_polls": 0}

Each output is the verbatim mtx 1.3.12 wording quoted in ../shared/reference/tape.md:
* status: "  Storage Changer /dev/sg6:2 Drives, 38 Slots ( 36 Import/Export )", "Data Transfer Element 0:Full
  (Storage Element 2 Loaded):VolumeTag = LT1000L3", "Data Transfer Element 1:Empty", "      Storage Element
  1:Full :VolumeTag=LT1001L3", "      Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=LT1002L3"; volume tags are
  padded with blanks to 32 characters (the reference: "volume tags carry trailing blanks"); a drive with
  "source": null prints "Full (Unknown Storage Element Loaded)";
* sense_noise: request-sense lines on stderr while stdout is a valid status ("sense data noise can arrive on stderr");
* load: "Loading media from Storage Element 1 into drive 0...done"; unload: "Unloading drive 0 into Storage
  Element 2...done";
* errors, on stderr with exit 1: "Drive 0 Full (Storage Element 2 loaded)", "Source Element Address 1 is Empty",
  "Storage Element 2 is Already Full", "Data Transfer Element 0 is Empty", "MOVE MEDIUM from Element Address %d to
  %d Failed" (fail_next_move), "cannot open SCSI device '/dev/x' - No such file or directory" (no state file).
A load also loads the volume into the drive double named by "device" (tests/integration/files/fake_tape.py), with
"loading_polls" polls of IM_REP_EN only before it is ONLINE; an unload empties it.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_tape  # noqa: E402  pylint: disable=wrong-import-position

DRIVE_ADDRESS = 500  # element addresses: drives from 500, slots from 1000 (the changer's own numbering)
SLOT_ADDRESS = 1000


def tag_text(tag):
    return tag.ljust(32)


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def save(path, state):
    temp = path + ".tmp"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, sort_keys=True)
    os.rename(temp, path)


def status(state):
    slots = sorted(state["slots"], key=int)
    ie = state.get("import_export", [])
    out = ["  Storage Changer %s:%d Drives, %d Slots ( %d Import/Export )" % (state["name"], len(state["drives"]), len(slots), len(ie))]
    for number in sorted(state["drives"], key=int):
        drive = state["drives"][number]
        if drive.get("tag") is None:
            out.append("Data Transfer Element %s:Empty" % number)
        else:
            source = "Storage Element %d" % drive["source"] if drive.get("source") else "Unknown Storage Element"
            out.append("Data Transfer Element %s:Full (%s Loaded):VolumeTag = %s" % (number, source, tag_text(drive["tag"])))
    for number in slots:
        kind = " IMPORT/EXPORT" if int(number) in ie else ""
        tag = state["slots"][number]
        if tag is None:
            out.append("      Storage Element %s%s:Empty" % (number, kind))
        else:
            out.append("      Storage Element %s%s:Full :VolumeTag=%s" % (number, kind, tag_text(tag)))
    if state.get("sense_noise"):
        sys.stderr.write("mtx: Request Sense: Long Report=yes\nmtx: Request Sense: Valid Residual=no\n"
                         "mtx: Request Sense: Sense Key=Unit Attention\n")
    print("\n".join(out))


def move_failed(state, source, target):
    if state.get("fail_next_move"):
        state["fail_next_move"] = False
        return "MOVE MEDIUM from Element Address %d to %d Failed" % (source, target)
    return ""


def load(path, state, slot, drive_number):
    drive = state["drives"][drive_number]
    if drive.get("tag") is not None:
        fail("Drive %s Full (Storage Element %s loaded)" % (drive_number, drive.get("source") or 0))
    tag = state["slots"].get(slot)
    if tag is None:
        fail("Source Element Address %d is Empty" % (SLOT_ADDRESS + int(slot)))
    failure = move_failed(state, SLOT_ADDRESS + int(slot), DRIVE_ADDRESS + int(drive_number))
    if failure:
        save(path, state)
        fail(failure)
    print("Loading media from Storage Element %s into drive %s...done" % (slot, drive_number))
    state["slots"][slot] = None
    drive.update(tag=tag, source=int(slot))
    if drive.get("device"):
        tape = fake_tape.load(drive["device"])
        tape.update(loaded=True, volume=tag, file=0, offset=0, loading_polls=state.get("loading_polls", 0),
                    write_protected=tag in state.get("write_protected_tags", []))
        fake_tape.save(drive["device"], tape)
    save(path, state)


def unload(path, state, slot, drive_number):
    drive = state["drives"][drive_number]
    if drive.get("tag") is None:
        fail("Data Transfer Element %s is Empty" % drive_number)
    slot = slot or str(drive.get("source"))
    if state["slots"].get(slot) is not None:
        fail("Storage Element %s is Already Full" % slot)
    failure = move_failed(state, DRIVE_ADDRESS + int(drive_number), SLOT_ADDRESS + int(slot))
    if failure:
        save(path, state)
        fail(failure)
    print("Unloading drive %s into Storage Element %s...done" % (drive_number, slot))
    state["slots"][slot] = drive["tag"]
    drive.update(tag=None, source=None)
    if drive.get("device"):
        tape = fake_tape.load(drive["device"])
        tape.update(loaded=False, file=-1, offset=0)
        fake_tape.save(drive["device"], tape)
    save(path, state)


def main(argv):
    if len(argv) < 3 or argv[0] != "-f":
        fail("Usage: mtx [ -f <loader-dev> ] command [ command ... ]")
    path, command, args = argv[1], argv[2], argv[3:]
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except OSError:
        fail("cannot open SCSI device '%s' - No such file or directory" % path)
    with open(path + ".calls", "a", encoding="utf-8") as log:
        log.write(" ".join([command] + args) + "\n")
    if command == "status":
        status(state)
    elif command == "load":
        load(path, state, args[0], args[1] if len(args) > 1 else "0")
    elif command == "unload":
        unload(path, state, args[0] if args else None, args[1] if len(args) > 1 else "0")
    else:
        fail("mtx: unknown command %s" % command)


if __name__ == "__main__":
    main(sys.argv[1:])
