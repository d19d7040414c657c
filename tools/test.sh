#!/usr/bin/env bash
# README command 2: set up the environments if needed (.venv; .venv-monailabel for the MONAI Label app's test), then
# run the whole test suite (extra args go to pytest).
# pytest exits 5 when it collects no test, so a run that tests nothing fails here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
bash tools/setup_monailabel.sh
exec "${IFIM_VENV:-.venv}/bin/python" -m pytest "$@"
