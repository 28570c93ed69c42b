#!/usr/bin/env bash
# The changelog is antsibull-changelog's: one YAML fragment per change in changelogs/fragments/, CHANGELOG.md
# generated from them. Never edit CHANGELOG.md by hand.
#
#   scripts/changelog.sh lint       check the fragments (what CI should run)
#   scripts/changelog.sh preview    regenerate CHANGELOG.md with the unreleased fragments, headed "(unreleased)";
#                                   nothing under changelogs/ changes
#   scripts/changelog.sh release    at release time, with galaxy.yml's version: moves the fragments into
#                                   changelogs/changelog.yaml and writes CHANGELOG.md (commit both)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
tool="${ANTSIBULL_CHANGELOG:-$here/.venv/bin/antsibull-changelog}"
if [ ! -x "$tool" ]; then
  echo "antsibull-changelog is not in .venv; run scripts/setup.sh (or .venv/bin/pip install antsibull-changelog)" >&2
  exit 2
fi
version=$("$here/.venv/bin/python" -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')
# antsibull-changelog finds the modules (for "New Modules") with ansible-doc, which needs the collection on its path.
export ANSIBLE_COLLECTIONS_PATH="$here/.build/collections" PATH="$here/.venv/bin:$PATH"
case "${1:-lint}" in
  lint)
    "$tool" lint
    ;;
  preview)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    copy="$work/ansible_collections/consistent/backup"
    mkdir -p "$copy"
    cp -r galaxy.yml changelogs plugins meta "$copy/"
    (cd "$copy" && ANSIBLE_COLLECTIONS_PATH="$work" "$tool" release --version "$version" --date "$(date -u +%F)" \
      --ansible-doc-bin "$here/.venv/bin/ansible-doc" >/dev/null)
    sed "s/^## v${version//./\\\\.}\$/& (unreleased)/" "$copy/CHANGELOG.md" > CHANGELOG.md
    echo "CHANGELOG.md: preview of $version from changelogs/fragments/"
    ;;
  release)
    "$tool" release --version "$version" --ansible-doc-bin "$here/.venv/bin/ansible-doc"
    ;;
  *)
    echo "usage: $0 [lint|preview|release]" >&2
    exit 2
    ;;
esac
