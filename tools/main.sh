#!/usr/bin/env bash
# README command 1: set up the environment if needed, then run the main job on the offline default task.
# Extra args go to the job (see `python tools/demo.py --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
exec "${IFIM_VENV:-.venv}/bin/python" tools/demo.py "$@"
