#!/usr/bin/env bash
# Runs `ansible-test sanity` the way it must run: inside ansible_collections/consistent/backup.
# The collection's files (tracked and untracked-but-not-ignored) are mirrored into
# .build/sanity/ansible_collections/consistent/backup, which is a git work tree of its own so that
# ansible-test sees exactly the collection's files. Extra arguments go to ansible-test
# (e.g. `scripts/sanity.sh --test validate-modules plugins/modules/mount_check.py`).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
mkdir -p .build
# One run at a time: parallel runs would share the mirrored tree.
exec 9>.build/sanity.lock
flock 9
tree=.build/sanity/ansible_collections/consistent/backup
stage=.build/sanity-stage
rm -rf "$stage"
mkdir -p "$stage" "$tree"
git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ "$stage/"
rsync -a --delete --exclude=/.git --exclude=/tests/output "$stage/" "$tree/"
cd "$tree"
if [ ! -d .git ]; then git init -q . ; fi
git add -A >/dev/null 2>&1
git -c user.email=ci@localhost -c user.name=ci commit -qm sanity --allow-empty >/dev/null
export PATH="$here/.venv/bin:$PATH"
ansible-test sanity --venv --python 3.11 --color no "$@"
