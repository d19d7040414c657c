#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment from the pins in setup.cfg. Idempotent: a stamp keyed on
# setup.cfg's content skips the install when nothing changed. Environment: IFIM_VENV (default .venv), PYTHON
# (default python3.11).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${IFIM_VENV:-.venv}"
python="${PYTHON:-python3.11}"
stamp="$venv/.ifim-installed-$(sha256sum setup.cfg pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
echo "[setup] installing the pinned dependencies of setup.cfg into $venv (about 2 minutes the first time)" >&2
# torch==2.13.0 resolves to the CPU wheel on this machine's local wheel folder (pip's find-links).
if ! "$venv/bin/pip" install --disable-pip-version-check ".[test]" >"$venv/pip-install.log" 2>&1; then
    tail -n 40 "$venv/pip-install.log" >&2
    echo "[setup] pip install failed; full log: $venv/pip-install.log" >&2
    exit 1
fi
# Test data nobody here made: the NIH ChestX-ray14 label files inside torchxrayvision's wheel, read as files. Its
# dependencies are left out (its torchvision does not import beside this CPU torch); nothing imports it.
if ! "$venv/bin/pip" install --disable-pip-version-check --no-deps "torchxrayvision==1.5.7" >>"$venv/pip-install.log" 2>&1; then
    tail -n 20 "$venv/pip-install.log" >&2
    echo "[setup] pip install of torchxrayvision (test data) failed; full log: $venv/pip-install.log" >&2
    exit 1
fi
rm -f "$venv"/.ifim-installed-*
touch "$stamp"
echo "[setup] ready: $venv" >&2
