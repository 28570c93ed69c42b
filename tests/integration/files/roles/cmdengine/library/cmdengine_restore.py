# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test engine's restore: the set reader picks the set, the collection's restore gate checks it against the
engine's own record (manifest facts cmdengine.files), and only then are the files written under the target. A real
third-party engine would do the same over the collection's module_utils."""

from __future__ import annotations

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.consistent.backup.plugins.module_utils import _restore_gate as _gate
from ansible_collections.consistent.backup.plugins.module_utils import _sets
from ansible_collections.consistent.backup.plugins.module_utils._manifest import load_manifest

DOCUMENTATION = r'''
module: cmdengine_restore
short_description: Restore a set of the tests' command-driven engine through the restore gate
options:
  backup_dest: {type: path, required: true, description: Where the sets are.}
  backup_id: {type: str, default: latest, description: The set, or latest.}
  set_host: {type: str, description: With latest, only this host's sets.}
  target: {type: path, required: true, description: An empty or new directory.}
'''


def main() -> None:
    module = AnsibleModule(argument_spec=dict(backup_dest=dict(type='path', required=True),
                                              backup_id=dict(type='str', default='latest'),
                                              set_host=dict(type='str'), target=dict(type='path', required=True)))
    params = module.params
    try:
        found = _sets.resolve(params['backup_dest'], params['backup_id'], 'cmdengine', params['set_host'])
        manifest = load_manifest(found['path'])
        facts = (manifest.get('facts') or {}).get('cmdengine') or {}
        # the copy names each file by its absolute path without the leading '/'
        recorded = [path.lstrip('/') for path in facts.get('files') or []]
        plan = _gate.check_set(found['path'], manifest, recorded, 'the facts cmdengine.files', 'a cmdengine set')
        _gate.check_target(params['target'])
    except (_sets.SetError, _gate.GateError, ValueError) as exc:
        module.fail_json(msg='%s. Nothing was written' % exc)
    written = []
    for rel, _size in sorted(plan.files):
        destination = os.path.join(params['target'], rel)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(os.path.join(found['path'], 'data', rel), destination)
        written.append(rel)
    module.exit_json(changed=True, restored={'backup_id': found['backup_id'], 'files': written, 'target': params['target']})


if __name__ == '__main__':
    main()
