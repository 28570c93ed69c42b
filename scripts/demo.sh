#!/usr/bin/env bash
# The main job on a local demo: sets everything up (scripts/setup.sh), starts a PostgreSQL server, writes load
# into it, backs it up with playbooks/backup.yml, restores it with playbooks/restore.yml into a new directory,
# starts the copy and shows that the data matches. Options go to scripts/demo.py (--version 15, --keep, --scale N).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup.sh"
exec "$here/.venv/bin/python" "$here/scripts/demo.py" "$@"
