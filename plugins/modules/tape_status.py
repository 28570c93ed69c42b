#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: tape_status
short_description: Read a tape drive's state with the MTIOCGET ioctl and require it to be loaded, online and writable
version_added: 0.2.0
description:
  - Opens the drive's non-rewinding node read-only and non-blocking, asks the st driver for its status with the
    C(MTIOCGET) ioctl (no external tool) and decodes C(struct mtget) with sizes computed from its struct format.
  - Reports whether a tape is loaded, online, write-protected, at BOT, at a filemark (EOF), at end of data (EOD), the
    file, block and partition numbers (V(-1) when the driver does not know), the density code and name, the block
    size (V(0) is variable) and the soft error count.
  - Reads C(/sys/class/scsi_tape/<node>) for vendor, model, default block size, C(position_lost_in_reset) and the
    drive's sg node; with O(alerts) asks C(tapeinfo) for TapeAlert flags (cleaning needed).
  - O(require) turns each unmet need into a failure that says what to do. A drive that is still loading (neither
    ONLINE nor DR_OPEN) is polled until O(wait_timeout).
  - Errors at open or ioctl become plain states - busy, not a tape (ENOTTY, for example C(/dev/null) or a regular
    file), no device, no medium, not ready.
  - Never changes anything and never reports C(changed).
options:
  device:
    description:
      - The drive's non-rewinding node, for example V(/dev/nst0) or V(/dev/tape/by-id/scsi-3500110a0012345-nst).
      - A rewinding node (V(/dev/st0), or a character device of the st driver without the no-rewind minor bit) is
        refused with an explanation - closing it rewinds the tape.
    type: path
    required: true
  require:
    description:
      - Needs the drive must meet, else the module fails with one sentence per unmet need.
      - V(loaded) a tape is in the drive; V(online) the drive is ready; V(writable) the tape is not
        write-protected; V(bot) the tape is at its beginning; V(no_cleaning) no cleaning request (CLN, or
        TapeAlert 20/21 with O(alerts)).
    type: list
    elements: str
    choices: [loaded, online, writable, bot, no_cleaning]
    default: []
  wait_timeout:
    description:
      - Seconds to keep polling a drive that is still loading (or busy, or not ready) before the needs are judged.
      - Amanda waits 120 seconds, Bareos 300.
    type: int
    default: 0
  alerts:
    description:
      - Also run C(tapeinfo -f <sg node>) (LC_ALL=C) and report its TapeAlert flags.
    type: bool
    default: false
  sg_device:
    description:
      - The drive's SCSI generic node for O(alerts). Default - the one sysfs names for the drive.
    type: path
  tapeinfo:
    description:
      - Path or name of the C(tapeinfo) program (from mtx).
    type: path
    default: tapeinfo
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode does exactly what a normal run does.
  diff_mode:
    support: none
    details: The module changes nothing.
  idempotent:
    support: full
    details: Never changed.
notes:
  - Linux st driver only. Each check opens a fresh descriptor - the driver probes the drive at open.
  - The kernel calls go through an injectable layer; the tests put a tape double there from tests/ only (docs/tape.md).
    The module reads no environment variable to choose it.
seealso:
  - module: consistent.backup.tape_changer
  - name: st(4)
    description: The Linux SCSI tape driver, MTIOCGET and the GMT_ status bits.
    link: https://man7.org/linux/man-pages/man4/st.4.html
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: The tape must be loaded, online and writable before pre
  consistent.backup.tape_status:
    device: /dev/nst0
    require: [loaded, online, writable]
    wait_timeout: 300

- name: Read the state only, with TapeAlert flags
  consistent.backup.tape_status:
    device: /dev/tape/by-id/scsi-3500110a0012345-nst
    alerts: true
  register: drive
'''

RETURN = r'''
state:
  description: V(ready), V(loading), V(no_medium), V(busy), V(not_a_tape), V(no_device), V(not_ready) or V(error).
  returned: always
  type: str
  sample: ready
loaded:
  description: A tape is in the drive (DR_OPEN not set).
  returned: when MTIOCGET answered
  type: bool
online:
  description: The drive is ready for I/O (ONLINE set).
  returned: when MTIOCGET answered
  type: bool
write_protected:
  description: WR_PROT is set.
  returned: when MTIOCGET answered
  type: bool
bot:
  description: The tape is at its beginning.
  returned: when MTIOCGET answered
  type: bool
eof:
  description: The tape is just after a filemark.
  returned: when MTIOCGET answered
  type: bool
eod:
  description: The tape is at end of recorded data.
  returned: when MTIOCGET answered
  type: bool
file_number:
  description: Tape file number; V(-1) when unknown.
  returned: when MTIOCGET answered
  type: int
  sample: 0
block_number:
  description: Block number inside the file; V(-1) when unknown.
  returned: when MTIOCGET answered
  type: int
partition:
  description: Partition number.
  returned: when MTIOCGET answered
  type: int
density_code:
  description: The SCSI density code in hex.
  returned: when MTIOCGET answered
  type: str
  sample: "0x46"
density:
  description: The density's name.
  returned: when MTIOCGET answered
  type: str
  sample: LTO-4
block_size:
  description: The drive's block size in bytes; V(0) is variable block mode.
  returned: when MTIOCGET answered
  type: int
soft_errors:
  description: Soft errors since the last status (mt_erreg).
  returned: when MTIOCGET answered
  type: int
status_bits:
  description: The names of the GMT_ bits that are set, as mt prints them.
  returned: when MTIOCGET answered
  type: list
  elements: str
  sample: [BOT, ONLINE, IM_REP_EN]
polls:
  description: How many times the drive was probed.
  returned: always
  type: int
waited:
  description: Seconds spent polling.
  returned: always
  type: float
sysfs:
  description: Vendor, model, rev, default_block_size, default_density, position_lost_in_reset, sg_device; empty
    when the device has no sysfs entry.
  returned: always
  type: dict
tape_alerts:
  description: TapeAlert flags from tapeinfo (number and text).
  returned: with O(alerts)
  type: list
  elements: dict
cleaning_needed:
  description: CLN is set, or TapeAlert 20 (Clean Now) or 21 (Clean Periodic) is up.
  returned: always
  type: bool
unmet:
  description: One sentence per unmet need of O(require).
  returned: always
  type: list
  elements: str
'''

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._tape import (
    NEEDS, TapeError, default_ops, parse_tapeinfo, rewinding_node_problem, sysfs_facts, unmet_needs, wait_status,
)


def tape_alerts(module: AnsibleModule, sg_device: str) -> dict:
    tapeinfo = module.get_bin_path(module.params["tapeinfo"], required=False) or module.params["tapeinfo"]
    if not os.path.exists(tapeinfo):
        module.fail_json(msg="alerts: true needs tapeinfo (from mtx); %s was not found: install mtx or set tapeinfo" % tapeinfo)
    rc, out, err = module.run_command([tapeinfo, "-f", sg_device], environ_update={"LC_ALL": "C", "LANG": "C"})
    if rc != 0 and not out:
        module.fail_json(msg="tapeinfo -f %s failed (rc %d): %s; check the sg node (sg_device) of the drive"
                         % (sg_device, rc, err.strip()), rc=rc, stderr=err)
    return parse_tapeinfo(out)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            device=dict(type="path", required=True),
            require=dict(type="list", elements="str", choices=list(NEEDS), default=[]),
            wait_timeout=dict(type="int", default=0),
            alerts=dict(type="bool", default=False),
            sg_device=dict(type="path"),
            tapeinfo=dict(type="path", default="tapeinfo"),
        ),
        supports_check_mode=True,
    )
    check_options(module, command_ok=("tapeinfo",), units=dict(wait_timeout="seconds"))  # tapeinfo: a bare name is looked up on PATH
    device = module.params["device"]
    problem = rewinding_node_problem(device)
    if problem:
        module.fail_json(msg=problem, state="rewinding_node", unmet=[problem])
    try:
        ops = default_ops()
    except TapeError as exc:
        module.fail_json(msg=str(exc), state=exc.state)
    began = time.monotonic()
    status = wait_status(device, ops, float(module.params["wait_timeout"]))
    waited = round(time.monotonic() - began, 3)
    result = dict(status, changed=False, waited=waited, sysfs=sysfs_facts(device), device=device)
    result["cleaning_needed"] = bool(status.get("cleaning"))
    if module.params["alerts"]:
        sg_device = module.params["sg_device"] or result["sysfs"].get("sg_device")
        if not sg_device:
            module.fail_json(msg="alerts: true needs the drive's sg node; sysfs names none for %s: set sg_device" % device, **result)
        alerts = tape_alerts(module, sg_device)
        result["tape_alerts"] = alerts["tape_alerts"]
        result["cleaning_needed"] = result["cleaning_needed"] or alerts["cleaning_needed"]
        status["cleaning_needed"] = result["cleaning_needed"]
    unmet = unmet_needs(device, status, module.params["require"], waited)
    result["unmet"] = unmet
    if unmet:
        module.fail_json(msg="; ".join(unmet), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
