#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: tape_changer
short_description: Load the wanted tape volume into a drive with mtx (or unload it), then wait until the drive is online
version_added: 0.2.0
description:
  - Reads the changer with C(LC_ALL=C mtx -f <changer> status) - drives, storage and import/export slots, volume tags
    (trailing blanks removed), a volume loaded from an unknown slot; sense data noise on stderr is ignored when the
    status itself is valid.
  - O(state=loaded) brings the volume of O(slot), or the volume with the tag O(barcode), into O(drive). A different
    volume in the drive is first unloaded to its home slot (its source slot, else the first empty storage slot).
  - O(state=unloaded) returns the drive's volume to its home slot.
  - After the moves it reads the status again and confirms the drive holds the wanted volume; with O(device) it then
    waits (through the tape_status code) until the drive is online.
  - The right volume already in the drive means no move and C(changed=false).
  - mtx's error lines become a structured O(ignore:reason) - the kind of failure and the numbers mtx named.
options:
  changer:
    description: The changer's SCSI generic node, for example V(/dev/sg6) (C(lsscsi -g) lists it).
    type: path
    required: true
  drive:
    description: The drive, counted from 0 as mtx does.
    type: int
    default: 0
  slot:
    description: With O(state=loaded), the storage slot (counted from 1) whose volume is wanted.
    type: int
  barcode:
    description: With O(state=loaded), the volume tag (barcode) of the wanted volume. Wins over O(slot).
    type: str
  state:
    description: V(loaded) or V(unloaded).
    type: str
    choices: [loaded, unloaded]
    default: loaded
  device:
    description:
      - The drive's non-rewinding node. When set and O(state=loaded), the module waits until the drive is online.
    type: path
  wait_timeout:
    description: Seconds to wait for the drive to come online after a load (Bareos waits 300).
    type: int
    default: 300
  mtx:
    description: Path or name of the mtx program.
    type: path
    default: mtx
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all
attributes:
  check_mode:
    support: full
    details: Reads the changer status and reports the moves it would make in RV(moves); moves nothing.
  diff_mode:
    support: none
    details: The moves are in RV(moves).
  idempotent:
    support: full
    details: No move when the drive already holds the wanted volume (or is empty for V(unloaded)).
notes:
  - Needs mtx (Debian package C(mtx)).
seealso:
  - module: consistent.backup.tape_status
  - name: mtx(1)
    description: The media changer control program.
    link: https://linux.die.net/man/1/mtx
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Load the volume LT1001L3 into drive 0 and wait until it is online
  consistent.backup.tape_changer:
    changer: /dev/sg6
    barcode: LT1001L3
    device: /dev/nst0

- name: Load the volume of slot 3
  consistent.backup.tape_changer:
    changer: /dev/sg6
    slot: 3
    drive: 1

- name: Put the volume back
  consistent.backup.tape_changer:
    changer: /dev/sg6
    state: unloaded
'''

RETURN = r'''
moves:
  description: The moves made (or, in check mode, that would be made), in order.
  returned: always
  type: list
  elements: dict
  sample: [{action: unload, slot: 2, drive: 0, tag: LT1000L3}, {action: load, slot: 1, drive: 0, tag: LT1001L3}]
commands:
  description: The mtx command lines run (or, in check mode, that would run).
  returned: always
  type: list
  elements: list
drive:
  description: The drive's entry after the moves - drive, full, tag, source_slot, source_unknown.
  returned: success
  type: dict
changer_status:
  description: The parsed status after the moves - changer, drive_count, slot_count, drives, slots.
  returned: always when the status could be read
  type: dict
reason:
  description: What failed, structured - kind (drive_full, source_empty, slot_full, drive_empty, move_failed,
    no_changer, barcode_not_found, no_such_slot, not_online, unknown), the numbers mtx named, its line and advice.
  returned: failure
  type: dict
tape:
  description: The drive's tape_status facts after the load (with O(device)).
  returned: when O(device) is set and O(state=loaded)
  type: dict
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._mtx import (
    ChangerError, describe_move, find_drive, loaded_problem, parse_error, parse_status, plan_moves,
)
from ansible_collections.consistent.backup.plugins.module_utils._tape import TapeError, default_ops, unmet_needs, wait_status

MTX_ENV = {"LC_ALL": "C", "LANG": "C"}


class Changer:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.changer = module.params["changer"]
        self.mtx = module.get_bin_path(module.params["mtx"], required=False) or module.params["mtx"]
        self.commands = []  # type: list

    def fail(self, msg: str, reason: dict, **facts: object) -> None:
        facts["commands"] = self.commands
        self.module.fail_json(msg=msg, reason=reason, **facts)

    def run(self, *args: str) -> str:
        command = [self.mtx, "-f", self.changer] + list(args)
        self.commands.append(command)
        try:
            rc, out, err = self.module.run_command(command, environ_update=MTX_ENV)
        except OSError as exc:
            self.fail("cannot run %s: %s; install mtx or set the mtx option" % (self.mtx, exc), {"kind": "no_mtx"})
        if rc != 0:
            reason = parse_error(err, out)
            self.fail("mtx %s on changer %s failed (rc %d): %s; %s" % (" ".join(args), self.changer, rc, reason["line"], reason["advice"]),
                      reason, rc=rc, stdout=out, stderr=err)
        return out

    def status(self) -> dict:
        out = self.run("status")
        try:
            return parse_status(out)
        except ChangerError as exc:
            self.fail(str(exc), exc.reason, stdout=out)
        raise AssertionError("unreachable")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            changer=dict(type="path", required=True),
            drive=dict(type="int", default=0),
            slot=dict(type="int"),
            barcode=dict(type="str"),
            state=dict(type="str", choices=["loaded", "unloaded"], default="loaded"),
            device=dict(type="path"),
            wait_timeout=dict(type="int", default=300),
            mtx=dict(type="path", default="mtx"),
        ),
        required_if=[("state", "loaded", ("slot", "barcode"), True)],
        supports_check_mode=True,
    )
    # mtx: a bare program name is looked up on PATH; slots count from 1 (mtx).
    check_options(module, command_ok=("mtx",), minimum=dict(slot=1), units=dict(wait_timeout="seconds"))
    params = module.params
    changer = Changer(module)
    status = changer.status()
    barcode = (params["barcode"] or "").strip() or None
    try:
        moves = plan_moves(status, params["drive"], params["state"], params["slot"], barcode)
    except ChangerError as exc:
        changer.fail(str(exc), exc.reason, changer_status=status, moves=[])
    if module.check_mode:
        for move in moves:
            changer.commands.append([changer.mtx, "-f", changer.changer, move["action"], str(move["slot"]), str(move["drive"])])
        module.exit_json(changed=bool(moves), moves=moves, commands=changer.commands, changer_status=status,
                         would=[describe_move(m, changer.changer) for m in moves], drive=find_drive(status, params["drive"]))
    for move in moves:
        changer.run(move["action"], str(move["slot"]), str(move["drive"]))
    if moves:
        status = changer.status()
    result = dict(changed=bool(moves), moves=moves, commands=changer.commands, changer_status=status)
    if params["state"] == "unloaded":
        module.exit_json(drive=find_drive(status, params["drive"]), **result)
    problem = loaded_problem(status, params["drive"], params["slot"], barcode)
    if problem:
        changer.fail(problem + "; run mtx status and check the changer's inventory", {"kind": "wrong_volume"}, **result)
    if params["device"]:
        try:
            tape = wait_status(params["device"], default_ops(), float(params["wait_timeout"]))
        except TapeError as exc:
            changer.fail(str(exc), {"kind": "tape", "state": exc.state}, **result)
        unmet = unmet_needs(params["device"], tape, ["loaded", "online"], float(params["wait_timeout"]))
        if unmet:
            changer.fail("; ".join(unmet), {"kind": "not_online", "state": tape["state"]}, tape=tape, **result)
        result["tape"] = tape
    module.exit_json(drive=find_drive(status, params["drive"]), **result)


if __name__ == "__main__":
    main()
