#!/usr/bin/env bash
# Regenerates constraints.txt: the exact versions of every package `make install` installs
# (omnipush with its dev extra), resolved in a fresh environment to the newest releases that
# pyproject.toml allows. `make install`, the image and CI install with `-c constraints.txt`.
#   scripts/lock.sh            # then run `make test` and commit constraints.txt
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip
"$work/venv/bin/pip" install --quiet -e '.[dev]'
{
  echo "# The exact versions omnipush is tested with: \`make install\` and the image install with"
  echo "# \`pip install -c constraints.txt\`. Regenerate with \`make lock\` (scripts/lock.sh)."
  # --all keeps setuptools (a dev dependency); pip itself is upgraded by `make install`.
  "$work/venv/bin/pip" freeze --all --exclude-editable | grep -v '^pip=='
} > constraints.txt
echo "lock: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
