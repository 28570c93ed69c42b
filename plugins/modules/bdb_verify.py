#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: bdb_verify
short_description: Prove a Berkeley DB backup set by recovering a copy of it (or restore it into a target)
version_added: 0.2.0
description:
  - Lays out a Berkeley DB set - a full set, or a full set and the incremental sets after it up to O(backup_id) - into
    a scratch directory, never the live environment, checking every file against its set's C(manifest.json) (size and
    SHA-256) again as it is laid out.
  - "Where the filesystem allows it (XFS with reflink, Btrfs) each file is a reflink clone (FICLONE) of the set's file:
    the copy shares the set's extents, costs no space and no write, and recovery's writes to it are copy-on-write, so
    they never reach the set's bytes. The clone is then read back and checked against the manifest before it is
    named. Elsewhere C(copy_file_range), then a plain copy checked as it is copied. RV(layout_method) says which."
  - "Before a byte is written every set passes the restore gate, as every restore of every engine does: each manifest
    path relative and normalised, a regular file in the set (no symlink, device, setuid or setgid file) and in the
    set's own record (the facts' C(data_files), the logs from C(first_log) to C(last_log), DB_CONFIG); every recorded
    file present (but data files recorded as vanished) with its size and SHA-256. The set's DB_CONFIG must name the
    directories the set recorded, and the copy's DB_CONFIG names each of them inside the copy. A refusal writes
    nothing; with O(target), a failure after writing (a proof that fails included) removes what was written."
  - "Then proves it: the logs are present and contiguous (no missing C(log.NNNNNNNNNN)), the log holding the
    source's checkpoint is there, catastrophic recovery (C(db_recover -c -v)) succeeds, recovery read the logs at
    least up to the source's checkpoint LSN (recorded in the set when it was taken), every database the set records is
    in the copy, and C(db_verify) passes on exactly those databases, at least one (V(0 of 0) fails). Each result is
    returned in RV(checks) and RV(databases)."
  - A copy without logs fails - C(db_recover -c) alone would return 0 and start a new, empty log.
  - With O(target) the recovered copy is kept there - that is the restore (C(playbooks/restore.yml) with
    C(backup_engine=bdb)). Without it the scratch copy is removed at the end.
  - Incremental sets name the set they follow; the chain is followed back to its full set. Every set of the chain
    must be C(COMPLETE) (the newest one too, unless O(head_complete=false), which the backup's own verification uses
    before its set is closed).
options:
  backup_dest:
    description:
      - The backup destination root that holds the sets.
    type: path
    required: true
  backup_id:
    description:
      - The newest set of the chain to verify or restore, or V(latest) for the newest C(COMPLETE) Berkeley DB set.
    type: str
    default: latest
  target:
    description:
      - Restore into this directory (new or empty) and keep it. Without it a scratch directory is used and removed.
    type: path
  scratch_dir:
    description:
      - Where the scratch copy is made (a new directory C(.bdb-verify-*) in it), when O(target) is not given.
      - Default - O(backup_dest) (the copy needs as much room as the chain's files, unless it is a reflink clone of
        them, which needs room only for what recovery writes).
      - Created (mode 0700, with its parents) when it does not exist.
    type: path
  keep_dir:
    description:
      - Recover as you go - keep the recovered copy in this directory. When it already holds the chain up to the set
        before O(backup_id) (an incremental), only the new set's files are laid out over it (its logs replace the
        copies of the same logs) before catastrophic recovery runs, so each run replays the new logs only once, and
        the directory always holds a recovered environment up to the newest set.
      - Otherwise (a new full set, another chain) the directory is emptied and the whole chain is laid out. A
        non-empty directory this module did not make is refused. A proof that fails leaves it to be rebuilt next time.
      - Not with O(target).
    type: path
  head_complete:
    description:
      - Whether the set O(backup_id) itself must be C(COMPLETE). The sets before it must always be.
    type: bool
    default: true
extends_documentation_fragment:
  - consistent.backup._bdb
  - consistent.backup._job
  - consistent.backup._set.select
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all_job
attributes:
  check_mode:
    support: full
    details: Resolves the chain, runs the restore gate on every set (reads every file) and checks the logs listed in the
      manifests (present, contiguous) and that the set records a database; copies and recovers nothing.
  diff_mode:
    support: none
    details: The checks describe the result.
  idempotent:
    support: partial
    details: A verification writes only a scratch copy that it removes; a restore refuses a target that is not empty.
seealso:
  - module: consistent.backup.bdb_checkpoint
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Prove the newest set by recovering a scratch copy
  consistent.backup.bdb_verify:
    backup_dest: /backup
  register: proof

- name: Restore a chain (full set and its incrementals) into an empty directory
  consistent.backup.bdb_verify:
    backup_dest: /backup
    backup_id: db1-20261122T040000Z
    target: /srv/restore/inventory
'''

RETURN = r'''
backup_id:
  description: The newest set of the chain (V(latest) resolved).
  returned: success
  type: str
  sample: db1-20261122T040000Z
chain:
  description: The sets laid out, the full set first.
  returned: success
  type: list
  elements: str
  sample: [db1-20261122T020000Z, db1-20261122T030000Z, db1-20261122T040000Z]
target:
  description: Where the recovered copy is (kept only with O(target)).
  returned: success
  type: str
  sample: /srv/restore/inventory
laid_out:
  description: The sets laid out by this call (with O(keep_dir), only the newest when the kept copy held the rest).
  returned: success, not in check mode
  type: list
  elements: str
  sample: [db1-20261122T040000Z]
kept:
  description: Whether the recovered copy was kept (a restore, or O(keep_dir)).
  returned: success
  type: bool
  sample: true
files:
  description: Files laid out.
  returned: success, not in check mode
  type: int
  sample: 12
bytes:
  description: Bytes laid out.
  returned: success, not in check mode
  type: int
  sample: 1048576
config_rewritten:
  description:
    - The lines of the laid-out C(DB_CONFIG) that named a directory outside the source's home, as backed up and as
      rewritten to point at the copy's own C(_outside_home/<absolute path>); the file as backed up is kept as
      C(DB_CONFIG.original). Empty when every directory is inside the home.
  returned: success, not in check mode
  type: dict
  sample: {set_lg_dir /srv/db-logs: set_lg_dir _outside_home/srv/db-logs}
source_checkpoint_lsn:
  description: The checkpoint LSN the newest set recorded when it was taken.
  returned: always
  type: str
  sample: 9/1221
last_valid_lsn:
  description: The end of the logs recovery read (db_recover's last valid LSN) - how far the environment was recovered.
  returned: success, not in check mode
  type: str
  sample: 9/1277
recovery_checkpoint_lsn:
  description: The checkpoint db_recover wrote at the end of recovery.
  returned: success, not in check mode
  type: str
  sample: 9/1277
first_log:
  description: The first log file of the copy.
  returned: always
  type: str
  sample: log.0000000001
last_log:
  description: The last log file of the copy (recovery went up to it).
  returned: always
  type: str
  sample: log.0000000009
layout_method:
  description:
    - How the files were laid out - V(reflink) (FICLONE - the copy shares the set's extents and costs no space until
      recovery writes to it, copy-on-write), V(copy_file_range) (an in-kernel copy), or V(copy) (read and written by
      the module). When files were laid out differently, the one that shared least.
    - Whatever the method, every file laid out is checked against its manifest entry (size and SHA-256) - a clone by
      reading the clone itself back, a copy as it is copied - before it is named.
  returned: success, not in check mode
  type: str
  choices: [reflink, copy_file_range, copy]
  sample: reflink
bytes_cloned:
  description: Bytes laid out by reflink (shared with the set, no new space).
  returned: success, not in check mode
  type: int
  sample: 104857600
layout_bytes:
  description: Bytes laid out by each method.
  returned: success, not in check mode
  type: dict
  sample: {reflink: 104857600}
layout_seconds:
  description: Seconds spent laying the sets out (clone or copy, and SHA-256 check of every file).
  returned: success, not in check mode
  type: float
  sample: 3.2
recover_seconds:
  description: Seconds db_recover -c took.
  returned: success, not in check mode
  type: float
  sample: 0.4
db_verify_seconds:
  description: Seconds db_verify took over all databases (run side by side, one per core).
  returned: success, not in check mode
  type: float
  sample: 6.1
checks:
  description: Each check with its result and detail, in order.
  returned: always
  type: list
  elements: dict
  sample: [{check: logs contiguous, ok: false, detail: missing log.0000000005}]
databases:
  description: Each database the set records, with its page size, access method and db_verify result.
  returned: success, not in check mode
  type: list
  elements: dict
  sample: [{file: data/parts.db, ok: true, page_size: 4096, access_method: btree, detail: BDB5105 Verification of data/parts.db succeeded.}]
removed_by_recovery:
  description: Databases the set records that catastrophic recovery removed from the copy (their removal is in the logs); not verified.
  returned: success, not in check mode
  type: list
  elements: str
  sample: []
verification:
  description:
    - A passed proof as C(report.json) records it (the bdb section's C(verification)) - C(ok), C(chain), C(checks),
      C(databases), C(last_valid_lsn), C(laid_out), C(seconds) (C(layout), C(recover), C(db_verify)), C(recover_dir)
      and C(recovery_checkpoint_lsn).
  returned: success, not in check mode
  type: dict
ok:
  description: Whether every check passed (the module fails otherwise).
  returned: always
  type: bool
  sample: true
retryable:
  description: Whether running the same task again may succeed (false for a set that does not verify).
  returned: failure
  type: bool
  sample: false
'''

import os
import stat
import tempfile
import threading
import time
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._backup_set import PhaseLedger, job_ledger
from ansible_collections.consistent.backup.plugins.module_utils._bdb import (
    BdbError, chain_logs, check_logs, check_target, find_utilities, lay_out, module_environment, plan_chain, plan_kept,
    record_kept, recorded_databases, remove_regions, remove_tree, resolve_chain, utility_argument_spec, verify_copy)
from ansible_collections.consistent.backup.plugins.module_utils._restore_gate import GateError, Written
from ansible_collections.consistent.backup.plugins.module_utils._copy_sink import DirectorySink, FileMeta, copy_file
from ansible_collections.consistent.backup.plugins.module_utils._copy_stream import hash_file
from ansible_collections.consistent.backup.plugins.module_utils._fsutil import CLONE_METHODS, clone_file


# Bytes per read of the layout (a whole multiple of every Berkeley DB page size, up to 64 KiB).
LAYOUT_READ_SIZE = 4 * 1024 * 1024


class Layout:
    """How the files of one layout were made: bytes and files per method (the two layout threads add to it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.refused = set()  # type: t.Set[str]
        self.bytes = {}  # type: t.Dict[str, int]
        self.files = {}  # type: t.Dict[str, int]

    def add(self, method: str, size: int) -> None:
        with self.lock:
            self.bytes[method] = self.bytes.get(method, 0) + size
            self.files[method] = self.files.get(method, 0) + 1

    def facts(self) -> t.Dict[str, t.Any]:
        """The method of the layout - the one that shared least among those used, so ``reflink`` means every file
        shares its extents with the set - and the bytes of each."""
        used = [method for method in LAYOUT_METHODS if self.files.get(method)]
        return {'layout_method': used[-1] if used else 'copy', 'bytes_cloned': self.bytes.get('reflink', 0),
                'layout_bytes': dict(self.bytes)}


# From most to least shared: a reflink costs no space, copy_file_range copies in the kernel, copy through this process.
LAYOUT_METHODS = CLONE_METHODS + ('copy',)


def copy_checked(source: str, destination: str, entry: dict, sink: DirectorySink, layout: Layout, replace: bool = False) -> None:
    """One file of a set into the copy through the copy engine's ``sink``; refused unless it matches the manifest.
    With ``replace`` (a kept copy) the file takes the place of an older copy of it (a log that has grown since).

    Where the filesystem allows it the file is cloned (its extents shared with the set's file, see clone_file), and
    then the clone itself is read back and checked: the bytes checked are the bytes recovery will read, in a file
    of ours that nobody else writes, whatever happens to the set's file on its shared medium meanwhile. Elsewhere it
    is copied, and checked as it is copied (the bytes hashed are the bytes written)."""
    if replace and os.path.lexists(destination):
        os.unlink(destination)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0))
    except OSError as exc:
        raise BdbError('%s is listed in its set\'s manifest.json but cannot be read (%s): the set was changed or the medium '
                       'is damaged; restore another set' % (source, exc.strerror)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            raise BdbError('%s is not a regular file with permission bits only; the set was changed after it was checked: '
                           'restore another set' % source)

        def check(size: int, checksum: str) -> None:
            if size != entry.get('size') or checksum != entry.get('sha256'):
                raise BdbError('%s does not match its manifest.json (expected %s bytes with sha256 %s, found %d bytes with '
                               'sha256 %s): the set was changed or the medium is damaged; restore another set'
                               % (source, entry.get('size'), entry.get('sha256'), size, checksum))
        meta = FileMeta(stat.S_IMODE(info.st_mode) & 0o777, -1, -1, info.st_atime_ns, info.st_mtime_ns)
        method = _clone_checked(fd, destination, info.st_size, meta, check, sink, layout.refused)
        if not method:
            method = 'copy'
            copy_file(fd, destination, meta, read_size=LAYOUT_READ_SIZE, chown=False, check=check, sink=sink)
        layout.add(method, int(entry.get('size') or 0))
    finally:
        os.close(fd)


def _clone_checked(src_fd: int, destination: str, size: int, meta: FileMeta, check: t.Callable[[int, str], None],
                   sink: DirectorySink, refused: t.Set[str]) -> str:
    """Clone ``src_fd`` to ``destination`` through ``sink`` (temporary name, renamed once checked) and check the clone
    (its size and SHA-256, read back from the clone); the method, or '' when this filesystem cannot clone (nothing is
    left behind: the caller copies)."""
    sink_file = sink.open_file(destination)
    try:
        method = clone_file(src_fd, sink_file.fd, size, refused)
        if method:
            clone_fd = os.open(sink_file.temp, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0))
            try:
                checksum, length = hash_file(clone_fd, LAYOUT_READ_SIZE)
            finally:
                os.close(clone_fd)
            check(length, checksum)
            sink.commit(sink_file, meta, no_replace=True)
            return method
    except BaseException:
        sink.abort(sink_file)
        raise
    sink.abort(sink_file)
    return ''


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            backup_dest=dict(type='path', required=True),
            backup_id=dict(type='str', default='latest'),
            target=dict(type='path'),
            scratch_dir=dict(type='path'),
            keep_dir=dict(type='path'),
            head_complete=dict(type='bool', default=True),
            set_host=dict(type='str'),
            set_database=dict(type='str'),
            **utility_argument_spec()
        ),
        supports_check_mode=True,
        mutually_exclusive=[('target', 'keep_dir')],
    )
    PhaseLedger(module, job_ledger(module), facts=lambda result: {
        'verified': result.get('ok'), 'last_valid_lsn': result.get('last_valid_lsn')})
    check_options(module)
    params = module.params
    result = {'ok': False, 'checks': []}
    scratch = None
    written = None
    try:
        find_utilities(module.get_bin_path, params['utility_prefix'], params['bindir'])  # refused before anything is laid out
        chain = resolve_chain(params['backup_dest'], params['backup_id'], params['head_complete'], params['set_host'],
                              params['set_database'])
        head = chain[-1]
        result.update(backup_id=head['backup_id'], chain=[link['backup_id'] for link in chain],
                      source_checkpoint_lsn=head.get('checkpoint_lsn'), kept=bool(params['target'] or params['keep_dir']))
        if params['target']:
            check_target(params['target'])
        to_lay_out = plan_kept(params['keep_dir'], chain, check_mode=True) if params['keep_dir'] else chain
        # The restore gate, for every set to lay out, before a byte is written (check mode too): the whole set checked
        # against the engine's record, and the copy's DB_CONFIG settled inside the copy.
        plan = plan_chain(to_lay_out, params['target'] or params['keep_dir'] or 'the scratch copy')
        databases = recorded_databases(chain)
        if module.check_mode:
            logs = chain_logs(chain)
            result['checks'] = check_logs(logs, head.get('checkpoint_lsn'))
            result['checks'].append({'check': 'recorded databases present', 'ok': bool(databases),
                                     'detail': '%d recorded databases in the set' % len(databases) if databases else
                                     'the set records no database, so there is nothing to prove'})
            result.update(ok=all(c['ok'] for c in result['checks']), target=params['target'],
                          first_log=os.path.basename(logs[0]) if logs else None, last_log=os.path.basename(logs[-1]) if logs else None)
            module.exit_json(changed=bool(params['target']), **result)
        if params['target']:
            written = Written(params['target'])
            written.makedirs(params['target'])
            home = params['target']
        elif params['keep_dir']:
            home = params['keep_dir']
            to_lay_out = plan_kept(home, chain)
            record_kept(home, None)  # until this proof passes
        else:
            if params['scratch_dir']:
                os.makedirs(params['scratch_dir'], mode=0o700, exist_ok=True)
            scratch = tempfile.mkdtemp(prefix='.bdb-verify-', dir=params['scratch_dir'] or params['backup_dest'])
            home = scratch
        result['target'] = home
        # One batch: a restore target is made durable by one barrier at the end; a scratch copy, thrown away after
        # the proof, is never synced and not even written back (its bytes only have to reach db_recover and db_verify
        # through the page cache; removed before the kernel flushes them, they never cost the disk a write).
        sink = DirectorySink(home, home, chown=False, writeback=not scratch)
        began = time.monotonic()
        layout = Layout()
        result.update(lay_out(plan, home, lambda source, destination, entry: copy_checked(
            source, destination, entry, sink, layout, replace=bool(params['keep_dir'])), written))
        result.update(layout.facts())
        result['laid_out'] = [link['backup_id'] for link in to_lay_out]
        result['layout_seconds'] = round(time.monotonic() - began, 3)
        if params['target']:
            sink.barrier()
        del result['logs']
        proof = verify_copy(module_environment(module, home), head.get('checkpoint_lsn'), databases)
        del proof['logs']
        result.update(proof)
        remove_regions(home)
        if params['keep_dir'] and result['ok']:
            record_kept(home, result['chain'])
    except (BdbError, GateError) as exc:
        undone = _undo(written, scratch)
        if written is None and params['target'] and isinstance(exc, GateError):
            undone = '. Nothing was written to %s' % params['target']
        module.fail_json(msg=str(exc) + undone, retryable=getattr(exc, 'retryable', False), **result)
    except OSError as exc:
        # Failed, and said so (the ledger records it): the proof of this set was not made, so it is not COMPLETE.
        undone = _undo(written, scratch)
        module.fail_json(msg='the copy of backup set %s in %s could not be made or checked: %s [Errno %s] %s; check that the '
                         'directory exists, is writable by this user and has room for the chain\'s files%s'
                         % (result.get('backup_id', params['backup_id']), result.get('target') or params['target']
                            or params['keep_dir'] or params['scratch_dir'] or params['backup_dest'],
                            exc.filename or '', exc.errno, exc.strerror, undone), retryable=False, **result)
    if scratch:
        remove_tree(scratch)
    if not result['ok']:
        failed = ['%s (%s)' % (c['check'], c['detail']) for c in result['checks'] if not c['ok']]
        bad = [db['file'] for db in result.get('databases', []) if not db['ok']]
        module.fail_json(msg='backup set %s does not verify: %s%s. Do not rely on it; take a full backup%s'
                         % (result.get('backup_id'), '; '.join(failed), (' (failed databases: %s)' % ', '.join(bad)) if bad else '',
                            _undo(written, None)),
                         retryable=False, **result)
    result['verification'] = verification_record(result, params['keep_dir'])
    module.exit_json(changed=bool(params['target']), **result)


def verification_record(result: dict, keep_dir) -> dict:
    """What report.json records of a passed proof (the bdb section's verification), from the proof's result."""
    return {'ok': result.get('ok'), 'chain': result.get('chain'), 'checks': result.get('checks', []),
            'databases': result.get('databases', []), 'last_valid_lsn': result.get('last_valid_lsn'),
            'laid_out': result.get('laid_out'),
            'layout': {'method': result.get('layout_method'), 'bytes_cloned': result.get('bytes_cloned')},
            'seconds': {'layout': result.get('layout_seconds'), 'recover': result.get('recover_seconds'),
                        'db_verify': result.get('db_verify_seconds')},
            'recover_dir': keep_dir or None, 'recovery_checkpoint_lsn': result.get('recovery_checkpoint_lsn')}


def _undo(written, scratch):
    """Remove a scratch copy, or what a restore wrote into its target (the target is left as it was found); the
    sentence that says so, for the failure message."""
    if scratch:
        remove_tree(scratch)
    if written is None:
        return ''
    left = written.undo()
    if left:
        return '. What the restore wrote could not all be removed (%s): remove it by hand before trying again' % ', '.join(left)
    return '. What the restore wrote was removed; %s is as it was found' % written.target


if __name__ == '__main__':
    main()
