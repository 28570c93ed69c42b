#!/usr/bin/env bash
# The main job on a local demo: sets everything up (scripts/setup.sh), starts a PostgreSQL server, writes load
# into it, backs it up with playbooks/backup.yml, restores it with playbooks/restore.yml into a new directory,
# starts the copy and shows that the data matches. Options go to scripts/demo.py (--version 15, --keep, --scale N).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# The job mounts tmpfs, installs Debian packages and runs PostgreSQL as the postgres user: it needs root.
# As root it runs as is (root has no sudo here); as a user with sudo it runs itself again through sudo.
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "$0: run this as root, or as a user with sudo" >&2; exit 1; }
  exec sudo -E "$here/scripts/$(basename "$0")" "$@"
fi
"$here/scripts/setup.sh"
exec "$here/.venv/bin/python" "$here/scripts/demo.py" "$@"
