#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: pg_restore
short_description: Prepare a PostgreSQL data directory from a backup set for archive recovery
version_added: 0.1.0
description:
  - The file work of a PostgreSQL restore, in two steps like a split backup. First the label (from the label store
    O(label_dest) when given, else from the set), then the data set it names.
  - Refuses a set that is not C(COMPLETE), a set without C(backup_label) (PostgreSQL would otherwise run crash
    recovery from the copied C(pg_control) and could come up silently corrupt), and a non-empty O(target).
  - O(backup_id) must follow the collection's one backup id rule (letters, digits and C(._:@+-), 1-128 characters,
    not starting with C(.)) or be C(latest); it is checked before any path is built from it.
  - Before anything is written to O(target), the whole set is checked and the restore is refused, naming the file,
    when any check fails. Every C(manifest.json) path is relative, normalised (no C(.), C(..), empty component or
    NUL) and under C(pgdata/), so it stays inside O(target). Every listed file is in the set with its size, and with
    O(verify) every listed file is read and its SHA-256 compared. Everything in the set's C(data/) tree is listed in
    the manifest (the server-written C(backup_label), C(tablespace_map) and C(backup_manifest) next to the copy
    excepted; they are not copied). There is no symlink in the set's C(data/) tree, and symlinks are never followed
    or recreated, with two exceptions PostgreSQL defines. A C(pg_wal) link is replaced by an empty directory.
    Tablespaces are C(pg_tblspc/<oid>) directories in the set and each C(tablespace_map) line needs a numeric OID
    and that directory; they are restored to O(tablespace_dir)C(/<oid>) and nowhere else, whatever path the map
    names.
  - A refused restore has written nothing. When writing fails after the checks (a full disk, the set changing
    underneath), what was written is removed, so O(target) is left as it was found (an existing empty O(target)
    keeps its mode and owner); the message says so, or names what could not be removed.
  - Then copies C(<set>/data/pgdata) into O(target) owned by O(owner) with mode 0700, never through a link and never
    onto an existing name, checking each file's SHA-256 again while copying; puts C(backup_label) in place
    byte-exact; puts tablespaces into O(tablespace_dir) with a C(pg_tblspc/<oid>) link to each and rewrites
    C(tablespace_map) for their new places; leaves C(pg_wal) empty; writes
    C(recovery.signal) and the recovery settings (C(restore_command) from O(wal_archive), the recovery target,
    C(recovery_target_action), C(archive_mode=off), O(port)) into C(postgresql.auto.conf).
  - With O(start), it then starts the restored server as O(owner) (C(pg_ctl -w) with the binaries of the set's major
    version, O(bindir)), waits until recovery is over and the server is promoted (at most O(start_timeout) seconds),
    and returns RV(started) - the new timeline, the current WAL position, and from the server's log where redo
    started and where recovery became consistent. A server that does not come up fails with the last lines of its
    log (C(<target>/restore.log)). The server is left running; stop it with C(pg_ctl -D <target> stop).
options:
  backup_dest:
    description: Where the backup sets are (C(<backup_dest>/<backup_id>)). May be left out when the label store names the set.
    type: path
  backup_id:
    description: The set to restore, or C(latest) for the newest C(COMPLETE) set in O(backup_dest).
    type: str
    default: latest
  label_dest:
    description: The label store (C(<label_dest>/<backup_id>/backup_label)); looked at before the set.
    type: path
  target:
    description: The new data directory. Must not exist or be empty.
    type: path
    required: true
  tablespace_dir:
    description: Where tablespaces are restored (one directory per tablespace OID). Defaults to C(<target>_tablespaces).
    type: path
  owner:
    description: The server's operating system user; it owns everything restored.
    type: str
    default: postgres
  port:
    description: The port the restored server listens on (at least 1).
    type: int
    required: true
  socket_dir:
    description: The restored server's Unix socket directory. TCP is off (C(listen_addresses='')).
    type: path
    default: /tmp
  wal_archive:
    description: Directory of archived WAL read by C(restore_command).
    type: path
    required: true
  recovery_target:
    description:
      - C(immediate) stops as soon as the backup is consistent; C(name), C(lsn), C(time) or C(xid) stop at
        O(recovery_target_value); C(latest) replays all archived WAL.
    type: str
    choices: [immediate, name, lsn, time, xid, latest]
    default: immediate
  recovery_target_value:
    description: The restore point name, LSN, time or transaction id for O(recovery_target).
    type: str
  recovery_target_action:
    description: What the server does at the target. C(promote) opens it; C(pause) looks like a hang to most callers.
    type: str
    choices: [promote, pause, shutdown]
    default: promote
  settings:
    description: More server settings for the restored copy (written to C(postgresql.auto.conf)).
    type: dict
    default: {}
  verify:
    description:
      - Read every file the set's C(manifest.json) lists and compare its SHA-256 before anything is written (and again
        while copying). C(false) skips only the checksums; paths, types, sizes, extra files and symlinks are always checked.
    type: bool
    default: true
  data_present:
    description:
      - The second step of a split backup's restore. Third-party backup software has already restored the data directory
        into O(target); only the label comes from the label store O(label_dest) (required, with O(backup_id)).
      - C(postmaster.pid), C(postmaster.opts) and the WAL files in C(pg_wal) of that copy are removed (recovery reads WAL
        from the archive), everything is chowned to O(owner), and the label, map, settings and C(recovery.signal) are
        put in place. Tablespaces stay where the backup software restored them (the paths in C(tablespace_map)).
    type: bool
    default: false
  start:
    description: Start the restored server and wait for its promotion (see the description). Not in check mode.
    type: bool
    default: false
  bindir:
    description: The server binaries (C(pg_ctl), C(psql)); default C(/usr/lib/postgresql/<major>/bin) of the set's version.
    type: path
  start_timeout:
    description: Seconds the start and the recovery may take together, with O(start).
    type: int
    default: 600
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all
  - consistent.backup._set.backup_id
  - consistent.backup._set.select
attributes:
  check_mode:
    support: full
    details: Check mode finds the set and its label, checks the target and checks the whole set as a restore does
      (with O(verify), every listed file is read); nothing is copied or written.
  diff_mode:
    support: none
    details: A restore writes a whole data directory; there is no useful diff.
  idempotent:
    support: none
    details: A second run finds the target no longer empty and refuses, rather than overwrite it.
notes:
  - Restores must run as root (the files are chowned to O(owner)).
  - A restore reads each file twice with O(verify) (the check before writing, the copy), so a damaged set is refused
    before the target is touched.
  - With O(data_present) the set's checks do not apply (the backup software restored the files); only the label comes
    from the label store.
seealso:
  - module: consistent.backup.pg_backup_session
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Prepare the newest complete set for a drill on port 5499
  consistent.backup.pg_restore:
    backup_dest: /backup
    backup_id: latest
    target: /srv/drill/pgdata
    port: 5499
    wal_archive: /backup/wal

- name: Two-step restore of a split backup (label store first)
  consistent.backup.pg_restore:
    backup_dest: /restore/bareos
    backup_id: job-4711
    label_dest: /backup/labels
    target: /srv/pg/15/main
    port: 5432
    wal_archive: /backup/wal
    recovery_target: name
    recovery_target_value: before-upgrade
'''

RETURN = r'''
backup_id:
  description: The set restored (resolved when O(backup_id=latest)).
  returned: always
  type: str
set_path:
  description: The set directory.
  returned: always
  type: str
label_source:
  description: The directory the backup_label came from (label store or set).
  returned: always
  type: str
label:
  description: The backup_label's fields (C(START WAL LOCATION), C(CHECKPOINT LOCATION), C(START TIMELINE), C(LABEL), ...).
  returned: always
  type: dict
server_version_num:
  description: The backed-up server's version (from the set's manifest), to pick matching binaries.
  returned: always
  type: int
  sample: 150018
system_identifier:
  description: The backed-up cluster's system identifier.
  returned: always
  type: str
files:
  description: Files restored (in check mode, that would be restored).
  returned: success, without data_present
  type: int
bytes:
  description: Bytes restored (in check mode, that would be restored).
  returned: success, without data_present
  type: int
verified:
  description: C(true) when every file the manifest lists was read and its size and SHA-256 matched; C(false) with O(verify=false).
  returned: success, without data_present
  type: bool
removed:
  description: With O(data_present), the files of the third party's copy removed before recovery (C(postmaster.pid), WAL files).
  returned: when data_present, not in check mode
  type: list
  elements: str
tablespaces:
  description: Tablespaces restored to their locations in O(tablespace_dir) (oid, original, location); in check mode, where they would go.
  returned: success, without data_present
  type: list
  elements: dict
settings:
  description: The recovery settings written to postgresql.auto.conf.
  returned: always
  type: dict
started:
  description:
    - With O(start), what the promoted server reports - C(timeline) (the new timeline), C(current_lsn), C(walfile),
      C(first_lsn_replayed) and C(consistent_at) (from its log; empty when the log lacks those lines), and C(bindir).
  returned: when start is true and not in check mode
  type: dict
  sample: {timeline: 2, current_lsn: 0/3000148, walfile: 000000020000000000000003, first_lsn_replayed: 0/2000028,
           consistent_at: 0/2000138, bindir: /usr/lib/postgresql/15/bin}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._pg_restore import (
    RestoreError, prepare, prepare_in_place, recovery_settings, server_bindir, start_server)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            backup_dest=dict(type='path'),
            backup_id=dict(type='str', default='latest'),
            label_dest=dict(type='path'),
            target=dict(type='path', required=True),
            tablespace_dir=dict(type='path'),
            owner=dict(type='str', default='postgres'),
            port=dict(type='int', required=True),
            socket_dir=dict(type='path', default='/tmp'),
            wal_archive=dict(type='path', required=True),
            recovery_target=dict(type='str', default='immediate', choices=['immediate', 'name', 'lsn', 'time', 'xid', 'latest']),
            recovery_target_value=dict(type='str'),
            recovery_target_action=dict(type='str', default='promote', choices=['promote', 'pause', 'shutdown']),
            settings=dict(type='dict', default={}),
            verify=dict(type='bool', default=True),
            data_present=dict(type='bool', default=False),
            set_host=dict(type='str'),
            set_database=dict(type='str'),
            start=dict(type='bool', default=False),
            bindir=dict(type='path'),
            start_timeout=dict(type='int', default=600),
        ),
        required_one_of=[('backup_dest', 'label_dest')],
        required_if=[('data_present', True, ('label_dest',))],
        supports_check_mode=True,
    )
    check_options(module, minimum=dict(port=1))  # a TCP port counts from 1
    params = module.params
    try:
        settings = recovery_settings(params['port'], params['wal_archive'], params['socket_dir'], params['recovery_target'],
                                     params['recovery_target_value'], params['recovery_target_action'], params['settings'])
        if params['data_present']:
            result = prepare_in_place(params['backup_id'], params['label_dest'], params['target'], params['owner'], settings,
                                      module.check_mode)
        else:
            result = prepare(params['backup_dest'], params['backup_id'], params['label_dest'], params['target'],
                             params['tablespace_dir'] or params['target'].rstrip('/') + '_tablespaces', params['owner'],
                             settings, params['verify'], module.check_mode, params['set_host'], params['set_database'])
        if params['start'] and result.get('server_version_num'):
            bindir = server_bindir(result['server_version_num'], params['bindir'])
            if not module.check_mode:
                result['started'] = dict(start_server(
                    params['target'], bindir, params['owner'], params['port'], params['socket_dir'],
                    params['start_timeout'], lambda argv: module.run_command(argv, environ_update={'LANG': 'C', 'LC_ALL': 'C'})),
                    bindir=bindir)
                result['changed'] = True
    except RestoreError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        # Only the data_present path can get here: a restore from a set undoes its own writes (RestoreError).
        module.fail_json(msg='restore into %s failed at %s: %s; the target is incomplete, remove it before trying again'
                         % (params['target'], exc.filename or '?', exc.strerror or exc))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
