#!/usr/bin/env bash
# README command 2: set up the environment if needed, then run the whole test suite (extra args go to pytest).
# pytest exits 5 when it collects no test, so a run that tests nothing fails here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
exec "${IFIM_VENV:-.venv}/bin/python" -m pytest "$@"
