#!/usr/bin/env bash
# Create (or refresh) .venv-monailabel, the MONAI Label app's own environment (monailabel 0.8.5 needs numpy < 2 and
# pydicom < 3), from the pins in monailabel_app/requirements.txt. Idempotent: a stamp keyed on the pins and this
# script skips the install when nothing changed. About 4 minutes and 3.7 GB the first time. Environment:
# IFIM_MONAILABEL_VENV (default .venv-monailabel), PYTHON (default python3.11).
#
# CPU only: torch 2.13.0 (the CPU wheel on this machine's disk) with torchvision 0.28.0 only so that sam2, a
# monailabel dependency, resolves without pulling a CUDA torch; sam2 is built without CUDA; then torchvision is
# removed again (that wheel is a CUDA build and fails to import beside the CPU torch). The app needs neither.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${IFIM_MONAILABEL_VENV:-.venv-monailabel}"
python="${PYTHON:-python3.11}"
pins=monailabel_app/requirements.txt
stamp="$venv/.ifim-installed-$(sha256sum "$pins" monailabel_app/constraints.txt tools/setup_monailabel.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "[setup-monailabel] creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
log="$venv/pip-install.log"
pip=("$venv/bin/pip" install --disable-pip-version-check)
step() {
    echo "[setup-monailabel] $1" >&2
    shift
    if ! "$@" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "[setup-monailabel] failed; full log: $log" >&2
        exit 1
    fi
}
: >"$log"
step "torch 2.13.0 (CPU) and build tools" "${pip[@]}" torch==2.13.0 torchvision==0.28.0 setuptools wheel
step "sam2 1.1.0, built without CUDA" env SAM2_BUILD_CUDA=0 "${pip[@]}" --no-build-isolation sam2==1.1.0
step "monailabel and the bundle's imports (pins: $pins)" "${pip[@]}" -r "$pins" -c monailabel_app/constraints.txt
step "removing torchvision (a CUDA build that fails to import beside the CPU torch)" \
    "$venv/bin/pip" uninstall --disable-pip-version-check -y torchvision
step "checking that the server and the app's imports load" \
    "$venv/bin/python" -c "import monailabel, monailabel.interfaces.app, monailabel.datastore.local, torch, monai, nibabel"
rm -f "$venv"/.ifim-installed-*
touch "$stamp"
echo "[setup-monailabel] ready: $venv ($(du -sh "$venv" | cut -f1))" >&2
