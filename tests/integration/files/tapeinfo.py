# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tapeinfo double: ``tapeinfo -f SG`` where SG is a drive directory of files/fake_tape.py.

Output lines as quoted in ../shared/reference/tape.md: "Ready: yes"; "WriteProtect: yes" printed only when set;
"TapeAlert[20]:     Clean Now: ..." and "TapeAlert[21]:     Clean Periodic: ..." for the flags listed in the
drive's state under "tape_alerts".
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_tape  # noqa: E402  pylint: disable=wrong-import-position

ALERTS = {20: "Clean Now: The tape drive needs cleaning NOW.",
          21: "Clean Periodic: The tape drive needs to be cleaned at next opportunity."}


def main(argv):
    if len(argv) != 2 or argv[0] != "-f":
        sys.stderr.write("Usage: tapeinfo -f <generic-device>\n")
        sys.exit(1)
    state = fake_tape.load(argv[1])
    lines = ["Product Type: Tape Drive", "Vendor ID: 'HP      '", "Product ID: 'Ultrium 4-SCSI  '",
             "Ready: %s" % ("yes" if state["loaded"] and not state["loading_polls"] else "no")]
    if state["write_protected"]:
        lines.append("WriteProtect: yes")
    for flag in state.get("tape_alerts", []):
        lines.append("TapeAlert[%d]:     %s" % (flag, ALERTS[flag]))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
