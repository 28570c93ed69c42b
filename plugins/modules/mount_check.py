#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
---
module: mount_check
short_description: Verify that a backup destination is on the right mounted, writable filesystem with enough space
version_added: 0.1.0
description:
  - Checks a backup destination directory before anything else of a backup runs, and fails with one message that
    lists every unmet need and what to do about it.
  - Finds the mount the path lives on from C(/proc/self/mountinfo) (longest mount point that contains the path,
    component by component; of several mounts on the same mount point the one mounted last wins), including bind
    mounts and overlay filesystems.
  - Checks that the path is not merely a directory on the root filesystem (the usual sign of a backup disk that is
    not mounted), the expected mount point, filesystem type and mount source, that the mount is read-write, and
    that enough bytes and inodes are available.
  - Proves writability with a write probe - a uniquely named hidden file C(.mount_check.<pid>.<random>) is created
    with O_EXCL, written, fsynced and removed again, and the directory is fsynced.
  - The module only reads. It never creates the destination, never mounts or remounts anything and never reports
    C(changed). A destination that does not exist is a failure - create it on the mounted backup disk first.
options:
  path:
    description:
      - The backup destination directory. Must be an absolute path; symbolic links are resolved.
      - When it does not exist, the module fails, and still reports the mount of the nearest existing parent.
    type: path
    required: true
  mountpoint:
    description:
      - The path must be on exactly this mount point (after resolving symbolic links), for example C(/mnt/backup)
        for a destination C(/mnt/backup/db).
      - When set, it replaces the O(require_mountpoint) test.
    type: path
  require_mountpoint:
    description:
      - The path must not live on the root filesystem C(/). A backup directory that is merely a directory on C(/)
        usually means the backup disk is not mounted, and the backup would fill the root filesystem.
      - Set to V(false) to allow a destination on the root filesystem. Ignored when O(mountpoint) is set.
    type: bool
    default: true
  fstype:
    description:
      - Accepted filesystem types, as the kernel names them in mountinfo (V(ext4), V(xfs), V(btrfs), V(nfs4),
        V(fuse.sshfs), ...). The mount must have one of them.
    type: list
    elements: str
  source:
    description:
      - Expected mount source, for example V(/dev/sdb1), V(/dev/disk/by-uuid/0a1b...), V(/dev/disk/by-label/BACKUP),
        V(UUID=0a1b...), V(LABEL=BACKUP) or V(server:/export/backup).
      - Compared literally and after resolving symbolic links on both sides, so a by-uuid or by-label path matches
        the device node that mountinfo shows.
    type: str
  min_free:
    description:
      - Minimum available space for an unprivileged writer (statvfs C(f_bavail); blocks reserved for root do not
        count).
      - A number of bytes, a size string with a power-of-1024 unit (V(512M), V(20G), V(1.5T)), or a percentage of
        the filesystem size (V(10%)).
    type: raw
    default: 0
  min_free_inodes:
    description:
      - Minimum free inodes (statvfs C(f_favail)), as a number or a percentage of all inodes (V(5%)).
      - Filesystems that report no inode count (btrfs, vfat) pass this check with a warning.
    type: raw
    default: 0
  writable:
    description:
      - The mount must be read-write (neither the mount options, the filesystem's super options nor statvfs say
        read-only) and the write probe must succeed.
      - In check mode the probe is skipped and the read-only flags alone decide, so a read-only mount still fails.
      - Set to V(false) for a destination that is only read, such as the source of a restore.
    type: bool
    default: true
extends_documentation_fragment:
  - consistent.backup._attributes
  - consistent.backup._attributes.actiongroup_all
attributes:
  check_mode:
    support: full
    details: Runs the same checks without the write probe; a read-only mount still fails the writable need.
  diff_mode:
    support: none
    details: The module changes nothing, so there is nothing to show a difference of.
  idempotent:
    support: full
    details: The module only reads facts and never reports changed; the write probe removes its file before returning.
notes:
  - Linux only (C(/proc/self/mountinfo)).
  - V(bind) in the result is V(true) whenever only a subtree of a filesystem is mounted (the mountinfo C(root) field
    is not C(/)); btrfs subvolume mounts look the same way.
  - A mount hidden under a later mount on the same or a parent directory is ignored, as the kernel does.
seealso:
  - name: proc(5), /proc/pid/mountinfo
    description: The format of the mountinfo file this module reads.
    link: https://man7.org/linux/man-pages/man5/proc.5.html
author: consistent.backup developers (@consistent-backup)
'''

EXAMPLES = r'''
- name: Backup disk must be mounted at /mnt/backup, read-write, with 20 GiB free
  consistent.backup.mount_check:
    path: /mnt/backup/postgresql
    mountpoint: /mnt/backup
    fstype: [ext4, xfs]
    min_free: 20G
    min_free_inodes: 1%

- name: The right disk, identified by its filesystem label
  consistent.backup.mount_check:
    path: /srv/backup
    source: LABEL=BACKUP
    min_free: 10%
  register: backup_media

- name: Show where the backup goes
  ansible.builtin.debug:
    msg: "{{ backup_media.mount.source }} on {{ backup_media.mount.mountpoint }}, {{ backup_media.space.available_bytes }} bytes free"

- name: Restore source only needs to be there, read-only is fine, the root filesystem too
  consistent.backup.mount_check:
    path: /var/backups/db
    require_mountpoint: false
    writable: false
'''

RETURN = r'''
path:
  description:
    - The destination with symbolic links resolved.
    - Because the result has a C(path), Ansible also adds the usual file facts of it (C(owner), C(mode), C(state), ...).
  returned: always
  type: str
  sample: /mnt/backup/postgresql
exists:
  description: Whether the destination exists. When it does not, the facts describe its nearest existing parent.
  returned: always
  type: bool
  sample: true
existing_path:
  description: The path the facts were taken on - the destination itself, or its nearest existing parent.
  returned: always
  type: str
  sample: /mnt/backup/postgresql
mount:
  description: The mount the destination lives on, from C(/proc/self/mountinfo).
  returned: always
  type: dict
  contains:
    mountpoint:
      description: Mount point.
      type: str
      sample: /mnt/backup
    source:
      description: Mount source (device, C(server:/export), or the filesystem name for virtual filesystems).
      type: str
      sample: /dev/sdb1
    fstype:
      description: Filesystem type.
      type: str
      sample: ext4
    options:
      description: Per-mount options.
      type: list
      elements: str
      sample: [rw, relatime]
    super_options:
      description: Per-filesystem (super block) options.
      type: list
      elements: str
      sample: [rw, errors=remount-ro]
    root:
      description: The directory of the filesystem that is mounted here; not C(/) for bind mounts.
      type: str
      sample: /
    bind:
      description: Whether only a subtree is mounted (C(root) is not C(/)).
      type: bool
      sample: false
    read_only:
      description: Whether the mount options, super options or statvfs flags say read-only.
      type: bool
      sample: false
    mount_id:
      description: The kernel's mount ID.
      type: int
      sample: 61
    major_minor:
      description: Device number of the filesystem, C(major:minor).
      type: str
      sample: "8:17"
space:
  description: statvfs numbers of the filesystem.
  returned: always
  type: dict
  contains:
    total_bytes:
      description: Filesystem size.
      type: int
      sample: 1000203837440
    free_bytes:
      description: Free bytes including blocks reserved for root (C(f_bfree)).
      type: int
      sample: 512110190592
    available_bytes:
      description: Bytes available to an unprivileged writer (C(f_bavail)); what O(min_free) is compared with.
      type: int
      sample: 461288521728
    total_inodes:
      description: Number of inodes (0 for filesystems without an inode count).
      type: int
      sample: 61054976
    free_inodes:
      description: Inodes available to an unprivileged writer (C(f_favail)).
      type: int
      sample: 60997612
probe:
  description: The write probe.
  returned: always
  type: dict
  contains:
    performed:
      description: Whether the probe ran. It does not run in check mode, with O(writable=false), on a read-only mount
        or when the destination is not an existing directory.
      type: bool
      sample: true
    ok:
      description: Whether the probe ran and succeeded.
      type: bool
      sample: true
    error:
      description: The step that failed and the OS error, when the probe failed.
      type: str
      sample: "cannot create /mnt/backup/.mount_check.4242.1f2e3d4c5b6a: Permission denied (EACCES)"
    reason:
      description: Why the probe was not performed.
      type: str
      sample: "check mode: no write probe; writability judged from the read-only flags only"
failed_checks:
  description:
    - Short ids of the unmet needs, in the order of RV(msg). Empty on success.
    - V(exists), V(directory), V(mounted) (lives on the root filesystem), V(mountpoint), V(fstype), V(source),
      V(writable) (read-only mount), V(write_probe), V(min_free), V(min_free_inodes).
  returned: always
  type: list
  elements: str
  sample: [mounted, min_free]
msg:
  description: A summary on success; on failure every unmet need with what to do, joined with C(; ).
  returned: always
  type: str
  sample: "/mnt/backup/postgresql has 1.0 MiB available, min_free needs 20.0 GiB. Free space on /mnt/backup or lower min_free"
'''


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils._options import check_options
from ansible_collections.consistent.backup.plugins.module_utils._mounts import (
    MountinfoError,
    Needs,
    check,
    parse_min_free,
    parse_min_free_inodes,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            mountpoint=dict(type='path'),
            require_mountpoint=dict(type='bool', default=True),
            fstype=dict(type='list', elements='str'),
            source=dict(type='str'),
            min_free=dict(type='raw', default=0),
            min_free_inodes=dict(type='raw', default=0),
            writable=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    check_options(module)
    params = module.params
    try:
        needs = Needs(
            mountpoint=params['mountpoint'],
            require_mountpoint=params['require_mountpoint'],
            fstype=tuple(params['fstype'] or ()),
            source=params['source'],
            min_free=parse_min_free(params['min_free']),
            min_free_inodes=parse_min_free_inodes(params['min_free_inodes']),
            writable=params['writable'],
        )
    except ValueError as exc:
        module.fail_json(msg=str(exc))

    try:
        result = check(params['path'], needs, check_mode=module.check_mode)
    except (OSError, MountinfoError) as exc:
        module.fail_json(msg="cannot inspect backup destination %s: %s. Check that /proc is mounted and the path is readable"
                         % (params['path'], exc))

    for warning in result.warnings:
        module.warn(warning)
    facts = result.as_dict()
    if result.failures:
        module.fail_json(changed=False, **facts)
    module.exit_json(changed=False, **facts)


if __name__ == '__main__':
    main()
