#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite:
#   build  - ansible-galaxy collection build + install, ansible-doc renders every module
#   sanity - ansible-test sanity inside ansible_collections/consistent/backup (no ignore files)
#   unit   - pytest tests/unit
#   integration - pytest tests/integration (real tmpfs mounts, real PostgreSQL 15 and 18 servers); needs root
#   lint   - ansible-lint, production profile
# Every step runs; the summary lists each step's result and time; the exit code is non-zero if any failed.
# Run a subset with: scripts/test.sh unit integration
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# The job mounts tmpfs, installs Debian packages and runs PostgreSQL as the postgres user: it needs root.
# As root it runs as is (root has no sudo here); as a user with sudo it runs itself again through sudo.
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "$0: run this as root, or as a user with sudo" >&2; exit 1; }
  exec sudo -E "$here/scripts/$(basename "$0")" "$@"
fi
cd "$here" || exit 1
scripts/setup.sh || exit 1
export PATH="$here/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$here/.build/collections"
steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(build sanity unit integration lint)

step_build() {
  local dist=.build/dist
  rm -rf "$dist" .build/installed && mkdir -p "$dist" .build/installed
  ansible-galaxy collection build --force --output-path "$dist" . &&
  ansible-galaxy collection install --force -p .build/installed "$dist"/consistent-backup-*.tar.gz &&
  for module in plugins/modules/*.py; do
    name=$(basename "$module" .py)
    ANSIBLE_COLLECTIONS_PATH=.build/installed ansible-doc "consistent.backup.$name" > /dev/null ||
      { echo "ansible-doc consistent.backup.$name failed"; return 1; }
    echo "ansible-doc consistent.backup.$name: ok"
  done
}
step_sanity() {
  if ls tests/sanity/ignore-*.txt >/dev/null 2>&1 && [ -n "$(cat tests/sanity/ignore-*.txt)" ]; then
    echo "tests/sanity/ignore-*.txt is not empty: fix the code instead"; return 1
  fi
  scripts/sanity.sh
}
step_unit() { pytest -q -p no:cacheprovider tests/unit; }
# Two workers (pytest-xdist), each running whole test files (--dist loadfile): the tests are CPU-bound playbook runs,
# isolated by their own tmp_path, tmpfs mounts, runtime directories and PostgreSQL port range (helpers.first_port).
step_integration() { pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=15 tests/integration; }
step_lint() { ansible-lint --nocolor; }

run_step() {
  case "$1" in
    build) step_build ;;
    sanity) step_sanity ;;
    unit) step_unit ;;
    integration) step_integration ;;
    lint) step_lint ;;
    *) echo "unknown step $1 (steps: build sanity unit integration lint)"; return 2 ;;
  esac
}

declare -A result seconds
failed=0
for step in "${steps[@]}"; do
  echo "=== $step"
  start=$(date +%s)
  if run_step "$step"; then result[$step]=passed; else result[$step]=FAILED; failed=1; fi
  seconds[$step]=$(( $(date +%s) - start ))
done
echo "=== summary"
for step in "${steps[@]}"; do printf '%-12s %-7s %5ss\n' "$step" "${result[$step]}" "${seconds[$step]}"; done
exit $failed
