#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: tape_set
short_description: Backup sets on tape - check the volume and position it, read a set back, copy a COMPLETE disk set to tape
version_added: 0.2.0
description:
  - O(state=positioned) (before pre) reads the volume label this collection writes as tape file 0, checks it is the
    expected volume and that its record size is the one asked for, then finds where the next set goes. It appends -
    spaces to end of data and checks that the tape's file number there equals the number of files the volume's
    catalog records (the tape and its catalog must agree, or nothing is written) - or, only with O(overwrite) and
    when every set the catalog records on the volume has expired, rewinds and relabels the volume. A blank tape is
    labelled O(volume).
  - O(state=verified) after a copy that failed (the ledger says so) reads nothing back; when the failed copy left a
    partial tape file, it is recorded in the catalog (expired, never verified), so the tape and its catalog agree.
  - O(state=verified) reads the set in tape file O(file_number) back - record by record, every record of
    O(record_size) bytes - and compares every member with the set's manifest (size and SHA-256) and the stream's
    manifest with the one on disk. Only then it writes C(<set>/tape.json), which backup_set requires before COMPLETE
    for tape media. The file is recorded in the volume's catalog either way.
  - O(state=copied) (disk, then tape) streams a COMPLETE disk set to the tape as one tar stream, after post, checks
    each file against the disk manifest while it reads it, reads the stream back and writes C(<set>/tape.json) with the
    tape verdict and the disk verdict.
options:
  state:
    description: What to do.
    type: str
    choices: [positioned, verified, copied]
    required: true
  device:
    description: The drive's non-rewinding node.
    type: path
    required: true
  catalog:
    description: The directory of the volume catalogs (one JSON file per volume), on disk beside the sets.
    type: path
    required: true
  volume:
    description:
      - The expected volume (its barcode or its label). With O(state=positioned) a labelled tape with another name is
        refused; a blank tape is labelled with this name.
    type: str
    default: ''
  record_size:
    description: Bytes per tape record of this volume; a multiple of 512 and of O(block_size).
    type: int
    default: 262144
  block_size:
    description: The volume's block size (V(0) variable), recorded in the label.
    type: int
    default: 0
  overwrite:
    description: With O(state=positioned), rewind and relabel the volume when every set on it has expired.
    type: bool
    default: false
  retention_days:
    description: Days a set written to the volume is kept before it may be overwritten (recorded in the catalog).
    type: int
    default: 28
  set_path:
    description:
      - The backup set directory on disk (O(state=verified) and O(state=copied)); defaults to the set of O(job). One of
        the two is required for those states.
    type: path
  file_number:
    description: With O(state=verified), the tape file the set was written to (from O(state=positioned)); V(-1) (the default) when not known.
    type: int
    default: -1
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details: >-
      positioned reads the label and spaces to end of data (the tape moves, nothing is written) and reports what it
      would label or overwrite; verified and copied report what they would read or write and touch nothing.
  diff_mode:
    support: none
    details: The catalog entry is returned.
  idempotent:
    support: partial
    details: positioned on a labelled volume is not changed; verified and copied read or write the tape every time.
notes:
  - The kernel calls go through an injectable layer; the tape double the tests put there, from tests/ only, is described in docs/tape.md.
seealso:
  - module: consistent.backup.tape_status
  - module: consistent.backup.aligned_copy
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: The expected volume, and the file the set goes to
  consistent.backup.tape_set:
    state: positioned
    device: /dev/nst0
    catalog: /srv/backup/.tape-catalog
    volume: LT1001L3
  register: position

- name: Read the set back before it is closed
  consistent.backup.tape_set:
    state: verified
    device: /dev/nst0
    catalog: /srv/backup/.tape-catalog
    volume: LT1001L3
    set_path: /srv/backup/db1-20261122T020000Z
    file_number: "{{ position.file_number }}"
'''

RETURN = r'''
volume:
  description: The volume's name (its label).
  returned: always
  type: str
file_number:
  description: The tape file the set goes to (positioned) or was read from (verified, copied).
  returned: success
  type: int
record_size:
  description: The volume's record size.
  returned: always
  type: int
labelled:
  description: positioned wrote (or would write) a new label.
  returned: state=positioned
  type: bool
catalog_path:
  description: The volume's catalog file.
  returned: always
  type: str
partial_file:
  description: The tape file a failed copy left and that was recorded in the catalog, or null.
  returned: state=verified, when the copy did not succeed
  type: int
read_back:
  description: verified, problems (one sentence each), files_checked, members, records, file_number, record_size.
  returned: state=verified or state=copied, when the set was read
  type: dict
tape_record:
  description: What C(<set>/tape.json) holds.
  returned: state=verified or state=copied, on success
  type: dict
'''

import json
import os
import time
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import (
    PhaseLedger, job_argument_spec, job_ledger, job_set_path, phases_from_ledger, read_ledger)
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import CopyError
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import write_json
from ansible_collections.consistent.backup.plugins.module_utils._layout import COMPLETE_NAME, REPORT_NAME, utc_iso
from ansible_collections.consistent.backup.plugins.module_utils._manifest import manifest_path
from ansible_collections.consistent.backup.plugins.module_utils._tape import (
    Drive, TapeError, TapeOps, catalog_end_of_data, catalog_path, default_ops, expected_volume_problem, label_record,
    load_catalog, parse_label, unexpired_sets, update_catalog,
)
from ansible_collections.consistent.backup.plugins.module_utils._tape_stream import stream_set_to_tape
from ansible_collections.consistent.backup.plugins.module_utils._tar_sink import (
    RECORD_SIZE_MAX, TarSinkError, TarSpec, read_back, record_size_problem,
)

TAPE_RECORD_NAME = "tape.json"


def read_first_record(device: str, ops: TapeOps) -> t.Tuple[str, t.Optional[t.Dict[str, t.Any]]]:
    """('blank' | 'label' | 'foreign', label) of tape file 0."""
    with Drive(device, ops) as drive:
        drive.rewind()
        try:
            record = drive.read(RECORD_SIZE_MAX)
        except TapeError as exc:
            if exc.state in ("not_ready",):  # EIO reading at end of data: nothing was ever written
                return "blank", None
            raise
    if not record:
        return "blank", None
    label = parse_label(record)
    return ("label", label) if label else ("foreign", None)


def write_label(device: str, ops: TapeOps, volume: str, record_size: int, block_size: int) -> None:
    with Drive(device, ops, write=True) as drive:
        drive.rewind()
        written = drive.write(label_record(volume, record_size, block_size))
        if written != record_size:
            raise TapeError("tape %s: the label record was written as %d bytes, not %d" % (device, written, record_size))
        drive.filemark()


def fresh_catalog(volume: str, record_size: int, block_size: int) -> t.Callable[[t.Dict[str, t.Any]], None]:
    def change(catalog: t.Dict[str, t.Any]) -> None:
        catalog.clear()
        catalog.update({"volume": volume, "record_size": record_size, "block_size": block_size, "labelled": utc_iso(),
                        "files": [{"file_number": 0, "kind": "label", "written": utc_iso()}]})
    return change


def positioned(module: AnsibleModule, ops: TapeOps) -> None:
    p = module.params
    device, wanted = p["device"], (p["volume"] or "").strip()
    result = {"changed": False, "record_size": p["record_size"], "block_size": p["block_size"], "labelled": False}
    kind, label = read_first_record(device, ops)
    if kind == "foreign" and not p["overwrite"]:
        module.fail_json(msg="tape %s: expected a volume labelled by consistent.backup, found other data in file 0; load "
                             "another volume, or set backup_tape_overwrite to relabel it (its data is lost)" % device, **result)
    if kind != "label" or p["overwrite"] and label and not unexpired_sets(load_catalog(p["catalog"], label["volume"])):
        volume = wanted or (label or {}).get("volume")
        if not volume:
            module.fail_json(msg="tape %s is blank: name the volume to label it (backup_tape_barcode or backup_tape_volume)"
                             % device, **result)
        result.update(volume=volume, file_number=1, labelled=True, changed=True, catalog_path=catalog_path(p["catalog"], volume),
                      why="blank tape" if kind == "blank" else "overwrite: every set on the volume has expired")
        if not module.check_mode:
            write_label(device, ops, volume, p["record_size"], p["block_size"])
            update_catalog(p["catalog"], volume, fresh_catalog(volume, p["record_size"], p["block_size"]))
        module.exit_json(**result)
    volume = label["volume"]
    result.update(volume=volume, catalog_path=catalog_path(p["catalog"], volume), label=label)
    problem = expected_volume_problem(device, wanted, volume)
    if problem:
        module.fail_json(msg=problem, **result)
    if int(label.get("record_size") or 0) != p["record_size"] or int(label.get("block_size") or 0) != p["block_size"]:
        module.fail_json(msg="tape %s: volume %s was labelled with record size %s and block size %s, not %d and %d; a set is "
                             "never written with another record size: set backup_tape_record_size and backup_tape_block_size "
                             "to the volume's" % (device, volume, label.get("record_size"), label.get("block_size"),
                                                  p["record_size"], p["block_size"]), **result)
    catalog = load_catalog(p["catalog"], volume)
    if p["overwrite"]:
        result["overwrite_refused"] = unexpired_sets(catalog)
    with Drive(device, ops) as drive:
        at_end = drive.to_end_of_data()
    expected = catalog_end_of_data(catalog)
    if at_end != expected:
        module.fail_json(msg="tape %s: volume %s ends at file %d, its catalog %s records %d files; the tape and its catalog "
                             "disagree, so nothing is written (a set would land where the catalog does not expect it): "
                             "restore the catalog, or relabel the volume with backup_tape_overwrite once its sets have "
                             "expired" % (device, volume, at_end, result["catalog_path"], expected),
                         tape_end_of_data=at_end, catalog_end_of_data=expected, **result)
    result["file_number"] = at_end
    module.exit_json(**result)


def copy_result(set_path: str, run_id: str) -> t.Optional[str]:
    """The copy phase's last result in this run's ledger: 'ok', 'failed', or None when it was never attempted."""
    return phases_from_ledger(read_ledger(set_path, run_id)).get("copy", {}).get("result")


def record_partial(module: AnsibleModule, ops: TapeOps) -> t.Optional[int]:
    """A copy that failed after it began writing left a tape file the catalog does not know; record it (expired at once,
    never verified), so the next job's end of data agrees with the catalog. Returns its file number, or None."""
    p = module.params
    if p["file_number"] < 0 or module.check_mode:
        return None
    try:
        with Drive(p["device"], ops) as drive:
            at_end = drive.to_end_of_data()
    except TapeError:
        return None  # the drive itself failed: the next job's positioning says what it finds
    if at_end <= p["file_number"]:
        return None
    now = utc_iso()
    entry = {"file_number": p["file_number"], "kind": "partial", "backup_id": os.path.basename(p["set_path"].rstrip("/")),
             "written": now, "expires": now, "verified": False}

    def add(catalog: t.Dict[str, t.Any]) -> None:
        catalog["files"] = [f for f in catalog.get("files", []) if int(f["file_number"]) < p["file_number"]] + [entry]

    update_catalog(p["catalog"], p["volume"], add)
    return p["file_number"]


def check_and_record(module: AnsibleModule, ops: TapeOps, set_path: str, file_number: int, volume: str,
                     written: t.Dict[str, t.Any], extra: t.Dict[str, t.Any]) -> None:
    """Read the set back, record the tape file in the catalog, write tape.json when it verified."""
    p = module.params
    with open(manifest_path(set_path), "rb") as handle:
        manifest_bytes = handle.read()
    try:
        verdict = read_back(p["device"], ops, file_number, p["record_size"], json.loads(manifest_bytes.decode("utf-8")), manifest_bytes)
    except (TapeError, TarSinkError) as exc:
        verdict = {"verified": False, "problems": [str(exc)], "file_number": file_number, "record_size": p["record_size"]}
    backup_id = os.path.basename(set_path.rstrip("/"))
    now = time.time()
    entry = {"file_number": file_number, "kind": "set", "backup_id": backup_id, "written": utc_iso(now),
             "expires": utc_iso(now + 86400 * p["retention_days"]), "verified": verdict["verified"],
             "records": verdict.get("records")}

    def add(catalog: t.Dict[str, t.Any]) -> None:
        catalog["files"] = [f for f in catalog.get("files", []) if int(f["file_number"]) != file_number] + [entry]
        catalog["files"].sort(key=lambda f: int(f["file_number"]))

    update_catalog(p["catalog"], volume, add)
    if not verdict["verified"]:
        module.fail_json(msg="set %s read back from tape %s (volume %s, file %d) does not match its manifest: %s; the set is "
                             "not COMPLETE: check the drive (cleaning?) and the volume, and run the backup again"
                             % (backup_id, p["device"], volume, file_number, "; ".join(verdict["problems"][:5])),
                         changed=True, read_back=verdict, volume=volume, file_number=file_number, record_size=p["record_size"],
                         catalog_path=catalog_path(p["catalog"], volume), **extra)
    record = dict(written, volume=volume, device=p["device"], file_number=file_number, record_size=p["record_size"],
                  block_size=p["block_size"], records=verdict["records"], files_checked=verdict["files_checked"],
                  verified=utc_iso(), verdict="success", **extra)
    write_json(os.path.join(set_path, TAPE_RECORD_NAME), record, mode=0o640)
    module.exit_json(changed=True, read_back=verdict, tape_record=record, volume=volume, file_number=file_number,
                     record_size=p["record_size"], catalog_path=catalog_path(p["catalog"], volume), **extra)


def verified(module: AnsibleModule, ops: TapeOps) -> None:
    p = module.params
    set_path, ledger = p["set_path"], job_ledger(module)
    copied_result = copy_result(set_path, ledger.get("run_id", "")) if ledger else "ok"
    if copied_result != "ok":
        partial = record_partial(module, ops) if copied_result == "failed" else None
        module.exit_json(changed=partial is not None, partial_file=partial, volume=p["volume"], record_size=p["record_size"],
                         skipped_reason="the copy did not succeed; there is no set on tape to read back%s"
                         % ("" if partial is None else " (its partial tape file %s is recorded in the catalog, expired)" % partial),
                         catalog_path=catalog_path(p["catalog"], p["volume"]))
    PhaseLedger(module, ledger)
    if module.check_mode:
        module.exit_json(changed=False, volume=p["volume"], file_number=p["file_number"], record_size=p["record_size"],
                         catalog_path=catalog_path(p["catalog"], p["volume"]),
                         would="read file %d of %s back and compare it with %s" % (p["file_number"], p["volume"], manifest_path(set_path)))
    if not os.path.exists(manifest_path(set_path)):
        module.fail_json(msg="set %s has no manifest; nothing was written to tape to read back" % set_path)
    check_and_record(module, ops, set_path, p["file_number"], p["volume"], {"written_by": "copy"}, {})


def copied(module: AnsibleModule, ops: TapeOps) -> None:
    p = module.params
    set_path = p["set_path"]
    if not os.path.exists(os.path.join(set_path, COMPLETE_NAME)):
        module.fail_json(msg="disk set %s is not COMPLETE; only a COMPLETE set is copied to tape" % set_path)
    try:
        with open(os.path.join(set_path, REPORT_NAME), encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        report = {}
    position = positioned_file(module, ops)
    if module.check_mode:
        module.exit_json(changed=True, volume=p["volume"], file_number=position, record_size=p["record_size"],
                         catalog_path=catalog_path(p["catalog"], p["volume"]),
                         would="write %s to file %d of %s and read it back" % (set_path, position, p["volume"]))
    started = time.time()
    spec = TarSpec(device=p["device"], record_size=p["record_size"], file_number=position, volume=p["volume"],
                   block_size=p["block_size"])
    try:
        result = stream_set_to_tape(set_path, spec, ops)
    except CopyError as exc:
        module.fail_json(msg=str(exc), changed=True, tape_verdict="failed", disk_verdict=report.get("verdict"))
    ended = time.time()
    post_end = (report.get("phases") or {}).get("post", {}).get("end")
    extra = {"disk_verdict": report.get("verdict"), "tape_verdict": "success", "post_end": post_end,
             "tape_start": started, "tape_end": ended, "tape_seconds": round(ended - started, 3)}
    check_and_record(module, ops, set_path, position, p["volume"], dict(result.stream, written_by="disk_then_tape"), extra)


def positioned_file(module: AnsibleModule, ops: TapeOps) -> int:
    """Where a disk-then-tape copy goes: the end of data, which must agree with the catalog (the media role checked it)."""
    p = module.params
    if p["file_number"] >= 0:
        return int(p["file_number"])
    catalog = load_catalog(p["catalog"], p["volume"])
    with Drive(p["device"], ops) as drive:
        at_end = drive.to_end_of_data()
    if at_end != catalog_end_of_data(catalog):
        module.fail_json(msg="tape %s: volume %s ends at file %d, its catalog records %d files; nothing is written"
                         % (p["device"], p["volume"], at_end, catalog_end_of_data(catalog)))
    return at_end


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["positioned", "verified", "copied"], required=True),
            device=dict(type="path", required=True),
            catalog=dict(type="path", required=True),
            volume=dict(type="str", default=""),
            record_size=dict(type="int", default=262144),
            block_size=dict(type="int", default=0),
            overwrite=dict(type="bool", default=False),
            retention_days=dict(type="int", default=28),
            set_path=dict(type="path"),
            file_number=dict(type="int", default=-1),
            **job_argument_spec()
        ),
        required_if=[("state", "verified", ("set_path", "job"), True), ("state", "copied", ("set_path", "job"), True),
                     ("state", "verified", ("volume",)), ("state", "copied", ("volume",))],
        supports_check_mode=True,
    )
    # volume: '' (the default) takes any labelled volume; file_number: -1 (the default) is "not known" (copied spaces
    # to the end of data).
    check_options(module, empty_ok=("volume",), minimum=dict(file_number=-1),
                  units=dict(retention_days="days", record_size="bytes", block_size="bytes"))
    module.params["set_path"] = module.params["set_path"] or job_set_path(module)
    problem = record_size_problem(module.params["record_size"], module.params["block_size"])
    if problem:
        module.fail_json(msg="tape %s: %s" % (module.params["device"], problem))
    try:
        ops = default_ops()
        {"positioned": positioned, "verified": verified, "copied": copied}[module.params["state"]](module, ops)
    except TapeError as exc:
        module.fail_json(msg=str(exc), state_found=exc.state)
    except OSError as exc:
        module.fail_json(msg="tape set: %s (%s); check the catalog directory and the set on disk"
                         % (exc.strerror or exc, getattr(exc, "filename", "") or ""))


if __name__ == "__main__":
    main()
