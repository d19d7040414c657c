#!/usr/bin/env bash
# README command 1: set up the environment if needed, then the main job on the offline default task: iFIM inference
# with the shipped model (bundle/models/model.pt), training it first only when it is missing. Extra args go to the
# inference run (e.g. --n_images 32 --rho 0.95).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
python="${IFIM_VENV:-.venv}/bin/python"
if [ ! -f bundle/models/model.pt ]; then
    echo "[main] no bundle/models/model.pt: training it first (about 12 minutes on 2 CPU cores)" >&2
    "$python" -m monai.bundle run --config_file bundle/configs/train.yaml --install_model true
fi
exec "$python" -m monai.bundle run inference --config_file bundle/configs/inference.yaml "$@"
