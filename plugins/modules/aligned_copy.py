#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: aligned_copy
short_description: Copy database files with page-aligned reads, SHA-256 checksums and a manifest
version_added: 0.1.0
description:
  - Copies files and directory trees into a backup set C(<dest>/<backup_id>/data/) and records every file,
    directory and symlink with its size, SHA-256, mtime and mode in C(<dest>/<backup_id>/manifest.json).
  - Every read request is a whole multiple of O(block_size), the database page size, from a page-aligned offset,
    so no read splits a page that the database writes at the same time.
  - Sources are copied in phases, phase 0 first, each phase's sources in list order and each tree in sorted
    order. That is how a caller copies Berkeley DB data files before their logs, or PostgreSQL's
    C(global/pg_control) strictly last (exclude it from the data directory source and add it as its own source
    with O(sources[].phase=1)).
  - Each regular file is written atomically (temporary file in the target directory, mode, owner and mtime set,
    writeback started, rename) and its SHA-256 is computed in the same pass as the copy. Files are made durable in
    batches (one barrier per phase and at least every second - C(syncfs) for large batches, C(fsync) of each file and
    directory for small ones) before anything vouches for them (a later phase, the resume journal, C(manifest.json)).
    A failed write removes the temporary file, so no partial file is ever left under its final name.
  - A killed copy leaves no manifest; the next call for the same set resumes from its journal C(.copy-journal),
    without copying again the files a barrier had made durable.
  - Symlinks inside a tree are recreated as symlinks, never followed. Directories keep the source mode, empty
    ones included.
  - Several calls can add to one set; the manifest is merged by path.
  - Memory use is bounded whatever the file size (a ring of at most four buffers of O(read_size), plus one buffer per
    worker; two workers copy small files side by side).
  - B(A retry copies the same list.) Before it copies anything, the first attempt records its list of the sources (type,
    source path, path in the set, size, mtime) in C(<dest>/<backup_id>/.copy-plan.json) (mode 0600). A later call with the
    same sources, O(create_dirs) and O(run_id) lists the sources again and copies that list plus every file the
    first attempt listed; a listed file that is gone now fails the task on every attempt, before anything is copied,
    unless its source has O(sources[].allow_vanished). Files that appeared since are copied too. The record is removed
    when the copy succeeds (the manifest is then the truth), and it is never in C(data/) or in the manifest.
  - B(A file that changed while it was read is caught.) The source is C(fstat)ed at open and after its last read, and
    the bytes read are compared with its size at open. A size or mtime that moved, or a file that gave more or fewer
    bytes than its size (truncated or extended during the copy), is a change, handled as O(changes) says and returned
    in RV(changed_during_copy).
  - B(Failures say whether a retry can help.) A failed task returns RV(retryable), and the roles retry a step until it succeeds or
    returns RV(retryable=false).
  - B(Check mode is the preflight before the database is touched.) It refuses, naming the option, an invalid
    O(backup_id), O(block_size) or O(read_size), a missing or relative source, O(dest) inside a source or a source
    inside the set, a missing O(dest), and a plan whose bytes to write plus O(free_space_margin) exceed the free space
    of O(dest); it writes nothing.
options:
  dest:
    description:
      - Absolute path of the backup destination root (the job variable C(backup_dest)). It must exist (mount and
        check the medium first, for example with M(consistent.backup.mount_check)) and must not be inside a source.
      - The set is C(<dest>/<backup_id>/), files go to C(<dest>/<backup_id>/data/<source dest>/...).
      - Defaults to O(job.dest); one of the two is required.
    type: path
  backup_id:
    description:
      - Defaults to O(job.backup_id); one of the two is required.
  sources:
    description:
      - What to copy, as files or directory trees.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description:
          - Absolute path of a file or a directory. A symlink given here is followed; symlinks inside a tree are not.
        type: path
        required: true
      dest:
        description:
          - Path relative to the set's C(data/) directory where this source goes.
          - Defaults to O(sources[].path) without its leading C(/).
        type: str
      exclude:
        description:
          - fnmatch patterns matched against the path relative to this source's root (C(*) also matches C(/)),
            for example C(pg_wal/*), C(postmaster.pid), C(*/pgsql_tmp*).
          - A pattern without C(/) is also matched against the basename, so it excludes that name at any depth.
            A leading C(/) anchors a pattern at the source root.
          - An excluded directory is neither descended nor created.
        type: list
        elements: str
        default: []
      phase:
        description:
          - Copy phase. All sources of phase 0 are copied before any of phase 1, and so on.
        type: int
        default: 0
      allow_vanished:
        description:
          - When V(true), files that disappear between listing and copy are recorded in RV(vanished) and are not
            fatal (PostgreSQL drops relations during a hot backup). A missing source root is then not an error either.
          - When V(false), a vanished file or a missing source fails the task (not retryable), also when the file
            vanished between a first attempt and a retry.
        type: bool
        default: false
  create_dirs:
    description:
      - Empty directories to create, relative to the set's C(data/) directory (mode 0700), for example
        C(pgdata/pg_wal/archive_status) for a PostgreSQL data directory whose C(pg_wal/*) was excluded.
    type: list
    elements: str
    default: []
  block_size:
    description:
      - The database page size in bytes (PostgreSQL 8192, Berkeley DB the database's page size).
      - Must be a multiple of 512 from 512 to 1048576. Not necessarily a power of two, because Btrieve 6 files use
        pages of 1536, 2560, 3072 and 3584 bytes; 512 is the sector size that O(direct) reads align to.
    type: int
    default: 8192
  read_size:
    description:
      - Bytes per read request, as a byte count or a size string such as V(1M) or V(4MiB) (powers of 1024).
      - Must be a positive multiple of O(block_size).
    type: raw
    default: 1MiB
  direct:
    description:
      - Open sources with C(O_DIRECT) (reads bypass the page cache into page-aligned buffers).
      - When the filesystem refuses C(O_DIRECT) (for example tmpfs) the copy goes on through the page cache and
        the module warns; RV(direct) then returns V(false).
    type: bool
    default: false
  engine:
    description:
      - The database engine recorded in the manifest (V(postgresql), V(bdb), V(btrieve), V(files), ...).
    type: str
    default: files
  facts:
    description:
      - Facts merged into the manifest's top-level C(facts) key (for example start LSN, timeline, versions).
    type: dict
    default: {}
  preserve_owner:
    description:
      - When running as root, give copies the source's uid and gid.
    type: bool
    default: true
  changes:
    description:
      - What a source file that changed while it was read (size or mtime moved, or more or fewer bytes read than its
        size at open) does.
      - V(fail) fails the task naming the file and what changed; the partial copy of that file is removed.
      - V(warn) keeps the copy, records the change in RV(changed_during_copy), in the manifest's
        C(changed_during_copy) and as a warning. Only for engines whose recovery repairs such changes from their log
        (PostgreSQL, Berkeley DB).
    type: str
    choices: [fail, warn]
    default: fail
  run_id:
    description:
      - The identity of the job run this call belongs to (the playbook's C(backup_run_id)). The first attempt's
        recorded list is used again only by a call of the same run with the same sources; a list recorded by another
        run (a failed earlier run of the same O(backup_id)) is replaced by a new listing.
      - Defaults to O(job.run_id). When empty, any recorded list of the same sources is used again until a copy
        succeeds.
    type: str
    default: ''
  free_space_margin:
    description:
      - Percent added to the bytes to write for growth of the sources during the copy, when check mode compares
        them with the free space of O(dest) (what an unprivileged writer may use). V(0) compares the bytes alone.
      - Only check mode refuses for lack of space; a real run that fills the medium fails with "no space left"
        (not retryable) and leaves no partial file.
    type: int
    default: 10
  lease_file:
    description:
      - The lease file of the on-host guard (the C(lease_file) the guard module returns when it arms).
        While the copy makes progress the module renews it (sets its mtime to now, at most once per second). When
        the lease file is missing, or a file named C(fired) is in its directory (the guard released the database
        because the lease ran out), the copy fails at once, not retryable.
      - "The failure message is then 'the guard released the database (see <dir>/state.json): this copy is not consistent;
        run the backup again'."
      - Not used in check mode.
    type: path
  sink:
    description:
      - Where the files go. Default - the directory C(<dest>/<backup_id>/data/).
      - With O(sink.kind=tar) the files are written as one POSIX tar stream (C(data/<path>) members, then
        C(manifest.json)) to a tape, in records of exactly O(sink.record_size) bytes, and the tape file is ended with
        a filemark. The manifest is also written to C(<dest>/<backup_id>/manifest.json), the set's catalog entry on
        disk. Files are written one at a time, and a file that changes while it is read always fails the copy (its tar
        header already declared its size).
    type: dict
    suboptions:
      kind:
        description: V(directory) or V(tar).
        type: str
        choices: [directory, tar]
        default: directory
      device:
        description: The tape drive's non-rewinding node (V(/dev/nst0)). Required with V(tar).
        type: path
      record_size:
        description:
          - Bytes per record (per write). A multiple of 512 and of the volume's O(sink.block_size); bytes or a size
            like V(256KiB).
        type: raw
        default: '262144'
      file_number:
        description:
          - The tape file the set must start at (the media role's positioning); the tape is moved there when it is
            elsewhere (a retry). V(-1) writes wherever the tape is.
        type: int
        default: -1
      volume:
        description: The volume's name, recorded in RV(tape).
        type: str
        default: ''
      block_size:
        description: The volume's block size (V(0) variable); a record size that is not a multiple of it is refused.
        type: int
        default: 0
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
  - consistent.backup._set
  - consistent.backup._job
attributes:
  check_mode:
    support: full
    details: Walks the sources and returns RV(plan) (files, bytes, free space needed) without writing anything.
  diff_mode:
    support: none
    details: The manifest and the per-phase counts describe the change; there is no diff of file contents.
  idempotent:
    support: full
    details: >-
      A file already in the set's manifest with the source's size, mtime and mode, whose copy has that size and
      whose source still has the recorded SHA-256, is not copied again.
notes:
  - The module refuses a set that already holds a C(COMPLETE) file.
  - Reads use C(preadv) of exactly O(read_size) bytes; only the last read of a file returns short.
  - Option errors that Ansible itself reports (a wrong type, a value outside O(changes)) carry no RV(retryable) and
    are retried by a role that defaults it to true.
  - Check mode does not re-read sources to compare checksums (an audit should not read a whole database); it counts a
    file as identical from the manifest's size, mtime and mode and the copy's size.
  - Directories get their source mode after their contents are copied, so a read-only source directory can be copied.
  - Special files (sockets, FIFOs, devices) are skipped with a warning.
seealso:
  - module: consistent.backup.mount_check
  - module: consistent.backup.pg_backup_session
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Copy a PostgreSQL data directory, pg_control last
  consistent.backup.aligned_copy:
    dest: "{{ backup_dest }}"
    backup_id: "{{ backup_id }}"
    engine: postgresql
    block_size: 8192
    sources:
      - path: /var/lib/postgresql/15/main
        dest: pgdata
        allow_vanished: true
        exclude:
          - pg_wal/*
          - postmaster.pid
          - postmaster.opts
          - pgsql_tmp*
          - pg_internal.init*
          - /global/pg_control
      - path: /var/lib/postgresql/15/main/global/pg_control
        dest: pgdata/global/pg_control
        phase: 1
    create_dirs:
      - pgdata/pg_wal/archive_status
    facts:
      start_lsn: "{{ pg_session.start_lsn }}"
  register: copy

- name: Copy a Berkeley DB environment, data files before logs
  consistent.backup.aligned_copy:
    dest: /backup
    backup_id: "{{ backup_id }}"
    engine: bdb
    block_size: 4096
    read_size: 4M
    sources:
      - path: /srv/bdb/data
        dest: env/data
      - path: /srv/bdb/logs
        dest: env/logs
        phase: 1

- name: How much space would the copy need? (writes nothing)
  consistent.backup.aligned_copy:
    dest: /backup
    backup_id: "{{ backup_id }}"
    sources:
      - path: /srv/app/files
  check_mode: true
  register: copy_plan
'''

RETURN = r'''
tape:
  description:
    - With O(sink.kind=tar) - device, volume, file_number, record_size, block_size, records, stream_bytes, members and
      manifest_sha256 of the stream written. Empty otherwise.
  returned: always
  type: dict
set_path:
  description: The backup set directory C(<dest>/<backup_id>).
  returned: always
  type: str
  sample: /backup/20240101T020000
manifest_path:
  description: Path of the set's manifest.json.
  returned: always
  type: str
  sample: /backup/20240101T020000/manifest.json
files:
  description: Regular files recorded by this call (copied plus found identical; vanished files not included).
  returned: always
  type: int
  sample: 1532
copied:
  description: Regular files written by this call.
  returned: always
  type: int
  sample: 1530
skipped_identical:
  description: Regular files already in the set, unchanged and with the same SHA-256, not copied again.
  returned: always
  type: int
  sample: 2
bytes_copied:
  description: Bytes written by this call.
  returned: always
  type: int
  sample: 73400320
bytes_total:
  description: Bytes of all regular files recorded by this call (copied and identical).
  returned: always
  type: int
  sample: 73408512
dirs_created:
  description: Directories created by this call, including the set directory, C(data/) and missing parents.
  returned: always
  type: int
  sample: 24
symlinks:
  description: Symlinks recorded by this call (recreated or already in place).
  returned: always
  type: int
  sample: 0
vanished:
  description: Paths (relative to C(data/)) that disappeared before they could be copied (only with allow_vanished).
  returned: always
  type: list
  elements: str
  sample: [pgdata/base/16384/16440]
engine_seconds:
  description: Wall time of the module's whole work (checks, listing, copy, manifest write) in seconds.
  returned: success, not in check mode
  type: float
  sample: 1.92
seconds:
  description: Wall time of the copy itself in seconds (not the listing, not the manifest write); 0 in check mode.
  returned: always
  type: float
  sample: 1.42
read_size:
  description: Bytes per read request used.
  returned: always
  type: int
  sample: 1048576
block_size:
  description: The page size the reads were aligned to.
  returned: always
  type: int
  sample: 8192
direct:
  description: Whether sources were read with O_DIRECT in the end (false after a fallback).
  returned: always
  type: bool
  sample: false
changed_during_copy:
  description:
    - Source files that changed while they were read (see O(changes)); with V(fail) the file that failed the task.
    - Paths are relative to C(data/); C(source) is the source file; mtimes are seconds (and nanoseconds) since the epoch.
  returned: always (also on failure when a change failed the copy)
  type: list
  elements: dict
  contains:
    path:
      description: The file's path relative to C(data/).
      type: str
    source:
      description: The source file.
      type: str
    size_before:
      description: Its size when it was opened.
      type: int
    size_after:
      description: Its size after the last read.
      type: int
    bytes_read:
      description: Bytes read (and copied) from it.
      type: int
    mtime_before:
      description: Its mtime when it was opened.
      type: float
    mtime_after:
      description: Its mtime after the last read.
      type: float
    mtime_ns_before:
      description: O(changes) compares nanoseconds; the mtime at open in nanoseconds.
      type: int
    mtime_ns_after:
      description: The mtime after the last read in nanoseconds.
      type: int
  sample: [{path: pgdata/base/5/16384, source: /var/lib/postgresql/15/main/base/5/16384, size_before: 268435456,
            size_after: 104857600, bytes_read: 104857600, mtime_before: 1700000000.5, mtime_after: 1700000003.25,
            mtime_ns_before: 1700000000500000000, mtime_ns_after: 1700000003250000000}]
retryable:
  description:
    - Whether running the same task again may succeed. V(false) for invalid input (options, backup id, a missing or
      relative source, O(dest) inside a source, a missing O(dest)), a set already C(COMPLETE), too little free space
      (check mode) or no space left, permission denied, a read-only medium, a file that vanished and is not allowed to,
      and a lease the guard released; V(true) for what may be transient (I/O errors, a file that changed while it was
      read).
  returned: failure
  type: bool
  sample: false
lease_renewals:
  description: How many times the copy renewed O(lease_file) (0 without one).
  returned: success, not in check mode
  type: int
  sample: 42
phases:
  description: Per-phase counts of this call, in phase order.
  returned: always
  type: list
  elements: dict
  contains:
    phase:
      description: The phase number.
      type: int
    files:
      description: Regular files recorded in this phase.
      type: int
    bytes:
      description: Their bytes.
      type: int
    copied:
      description: Files written in this phase.
      type: int
    skipped_identical:
      description: Files found identical in this phase.
      type: int
    bytes_copied:
      description: Bytes written in this phase.
      type: int
  sample: [{phase: 0, files: 1531, bytes: 73400320, copied: 1531, skipped_identical: 0, bytes_copied: 73400320}]
plan:
  description:
    - What the copy needs, from the listing of the sources (also returned outside check mode, computed before copying).
  returned: always
  type: dict
  contains:
    files:
      description: Regular files listed.
      type: int
    bytes:
      description: Their bytes.
      type: int
    dirs:
      description: Directories listed (including O(create_dirs)).
      type: int
    symlinks:
      description: Symlinks listed.
      type: int
    to_copy:
      description: Files that would be written (not identical to the set's copy).
      type: int
    identical_files:
      description: Files the manifest and the copy already match (size, mtime, mode).
      type: int
    dirs_to_create:
      description: Directories that do not exist yet in the set.
      type: int
    symlinks_to_create:
      description: Symlinks missing or pointing elsewhere in the set.
      type: int
    free_needed:
      description: Bytes still to write (listed bytes minus identical files).
      type: int
    free_space_margin:
      description: The O(free_space_margin) percent used.
      type: int
    free_required:
      description: RV(plan.free_needed) plus O(free_space_margin) percent; check mode refuses when it exceeds RV(plan.free_available).
      type: int
    free_available:
      description: Free bytes of the filesystem of O(dest) for an unprivileged writer (statvfs C(f_bavail * f_frsize)).
      type: int
    resumed:
      description: The list is the one a first attempt of this run recorded (plus files that appeared since).
      type: bool
    vanished:
      description: Paths already gone while listing (only with allow_vanished).
      type: list
      elements: str
    phases:
      description: Per phase, C(phase), C(files), C(bytes), C(dirs), C(symlinks), C(to_copy), C(bytes_to_copy).
      type: list
      elements: dict
  sample: {files: 3, bytes: 24576, dirs: 2, symlinks: 0, to_copy: 3, identical_files: 0, dirs_to_create: 2,
           symlinks_to_create: 0, free_needed: 24576, free_space_margin: 10, free_required: 27034, free_available: 52428800,
           resumed: false, vanished: [], phases: [{phase: 0, files: 3, bytes: 24576, dirs: 2, symlinks: 0, to_copy: 3,
           bytes_to_copy: 24576}]}
'''

import time
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import PhaseLedger, apply_job_defaults, job_argument_spec, job_ledger
from ansible_collections.consistent.backup.plugins.module_utils._copy import run_copy
from ansible_collections.consistent.backup.plugins.module_utils._copy_plan import (
    CHANGES_CHOICES,
    CHANGES_FAIL,
    CopyError,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FREE_SPACE_MARGIN,
    add_free_space,
    check_free_space,
    normalize_sources,
    plan_attempt,
    set_path_for,
    summarize_plan,
    validate_block_sizes,
    validate_request,
)
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import parse_size
from ansible_collections.consistent.backup.plugins.module_utils._lease import Lease
from ansible_collections.consistent.backup.plugins.module_utils._manifest import manifest_path
from ansible_collections.consistent.backup.plugins.module_utils._tape_stream import TarTapeSink
from ansible_collections.consistent.backup.plugins.module_utils._tar_sink import DEFAULT_RECORD_SIZE, TarSpec, record_size_problem


def argument_spec() -> dict:
    return dict(
        dest=dict(type="path"),
        backup_id=dict(type="str"),
        sources=dict(
            type="list", elements="dict", required=True,
            options=dict(
                path=dict(type="path", required=True),
                dest=dict(type="str"),
                exclude=dict(type="list", elements="str", default=[]),
                phase=dict(type="int", default=0),
                allow_vanished=dict(type="bool", default=False),
            ),
        ),
        create_dirs=dict(type="list", elements="str", default=[]),
        block_size=dict(type="int", default=DEFAULT_BLOCK_SIZE),
        read_size=dict(type="raw", default="1MiB"),
        direct=dict(type="bool", default=False),
        engine=dict(type="str", default="files"),
        facts=dict(type="dict", default={}),
        preserve_owner=dict(type="bool", default=True),
        changes=dict(type="str", choices=list(CHANGES_CHOICES), default=CHANGES_FAIL),
        run_id=dict(type="str", default=""),
        free_space_margin=dict(type="int", default=DEFAULT_FREE_SPACE_MARGIN),
        lease_file=dict(type="path"),
        sink=dict(
            type="dict",
            options=dict(
                kind=dict(type="str", choices=["directory", "tar"], default="directory"),
                device=dict(type="path"),
                record_size=dict(type="raw", default=str(DEFAULT_RECORD_SIZE)),
                file_number=dict(type="int", default=-1),
                volume=dict(type="str", default=""),
                block_size=dict(type="int", default=0),
            ),
            required_if=[("kind", "tar", ("device",))],
        ),
        **job_argument_spec()
    )


def tar_spec(module: AnsibleModule) -> t.Optional[TarSpec]:
    """The tape stream of O(sink), or None for the directory sink."""
    sink = module.params["sink"]
    if not sink or sink["kind"] != "tar":
        return None
    try:
        record_size = parse_size(sink["record_size"], "sink.record_size")
    except ValueError as exc:
        module.fail_json(msg=str(exc), retryable=False)
    problem = record_size_problem(record_size, sink["block_size"])
    if problem:
        module.fail_json(msg="tape %s: %s" % (sink["device"], problem), retryable=False)
    return TarSpec(device=sink["device"], record_size=record_size, file_number=sink["file_number"], volume=sink["volume"],
                   block_size=sink["block_size"])


def ledger_facts(result: dict) -> dict:
    """What report.json's copy phase keeps of a successful attempt."""
    return {"bytes": result.get("bytes_total"), "copy_seconds": result.get("seconds"),
            "copy_engine_seconds": result.get("engine_seconds"), "changed_during_copy": result.get("changed_during_copy") or []}


def main() -> None:
    began = time.monotonic()
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_one_of=[("dest", "job"), ("backup_id", "job")])
    PhaseLedger(module, job_ledger(module), ledger_facts)
    # run_id: empty is documented (any recorded list of the same sources is used again); sink.volume: its default '',
    # only recorded; sink.file_number: -1 (the default) is "not known", the sink asks the drive.
    check_options(module, empty_ok=("run_id", "sink.volume"), minimum={"sink.file_number": -1},
                  units={"free_space_margin": "percent", "block_size": "bytes", "sink.block_size": "bytes"})
    params = module.params
    apply_job_defaults(module)  # the job handle gives the set and the run; an option of the call's own takes precedence
    dest = params["dest"]
    backup_id = params["backup_id"]
    try:
        read_size = parse_size(params["read_size"], "read_size")
    except ValueError as exc:
        module.fail_json(msg=str(exc), retryable=False)
    # The guard's lease is only kept by a real copy; check mode (the preflight before pre) has none to keep.
    lease = Lease(params["lease_file"]) if params["lease_file"] and not module.check_mode else None
    tar = tar_spec(module)
    try:
        if lease is not None:
            lease.check()  # renewed before the listing too, and a guard that already released the database stops us here
        validate_block_sizes(params["block_size"], read_size)
        sources = normalize_sources(params["sources"])
        set_path = validate_request(dest, backup_id, sources, params["create_dirs"])
        plan = plan_attempt(sources, params["create_dirs"], set_path, params["run_id"])
        summary = add_free_space(summarize_plan(plan, set_path), dest, params["free_space_margin"])
        if module.check_mode and tar is None:
            check_free_space(summary, dest)
    except CopyError as exc:
        module.fail_json(msg=str(exc), retryable=exc.retryable, set_path=set_path_for(dest or "", backup_id or ""), **exc.facts)
    for warning in plan.warnings:
        module.warn(warning)
    changed_if_run = summary.pop("changed")
    if module.check_mode:
        module.exit_json(
            changed=changed_if_run, plan=summary, set_path=set_path, manifest_path=manifest_path(set_path),
            files=0, copied=0, skipped_identical=0, bytes_copied=0, bytes_total=0, dirs_created=0, symlinks=0,
            vanished=list(plan.vanished), seconds=0.0, read_size=read_size, block_size=params["block_size"],
            direct=params["direct"], phases=[], changed_during_copy=[], tape={},
        )
    try:
        if lease is not None:
            lease.check()
        result = run_copy(
            plan, dest, backup_id, block_size=params["block_size"], read_size=read_size, direct=params["direct"],
            engine=params["engine"], facts=params["facts"], preserve_owner=params["preserve_owner"],
            changes=params["changes"], progress=lease, stream=TarTapeSink(tar) if tar is not None else None,
        )
    except CopyError as exc:
        facts = dict(changed_during_copy=[])
        facts.update(exc.facts)
        module.fail_json(msg=str(exc), retryable=exc.retryable, set_path=set_path, manifest_path=manifest_path(set_path),
                         plan=summary, **facts)
    for warning in result.warnings:
        if warning not in plan.warnings:
            module.warn(warning)
    module.exit_json(changed=result.changed, plan=summary, engine_seconds=round(time.monotonic() - began, 6),
                     lease_renewals=lease.renewals if lease is not None else 0, **result.as_dict())


if __name__ == "__main__":
    main()
