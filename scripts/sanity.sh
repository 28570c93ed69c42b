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
# ansible-test's --venv mode downloads a pip bootstrap script from a host this machine cannot reach, so sanity
# runs in a virtual environment of its own (.build/sanity-venv) into which ansible-test installs its
# requirements from PyPI (--requirements).
venv="$here/.build/sanity-venv"
if [ ! -x "$venv/bin/ansible-test" ]; then
  "$here/.venv/bin/python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$("$here/.venv/bin/pip" freeze | grep -i '^ansible-core==')"
fi
# ansible-test also bootstraps pip in each per-test venv from that host; give it our offline stand-in.
pip_version=$("$venv/bin/python" - <<'PY'
import re, ansible_test, os
text = open(os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")).read()
print(re.search(r"pip='([0-9.]+)'", text).group(1))
PY
)
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$cache")"
cmp -s "$here/scripts/lib/get_pip_offline.py" "$cache" || cp "$here/scripts/lib/get_pip_offline.py" "$cache"
export PATH="$venv/bin:$PATH"
ansible-test sanity --python 3.11 --requirements --color no "$@"
