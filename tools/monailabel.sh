#!/usr/bin/env bash
# Serve the iFIM review app (monailabel_app/) for a local studies folder on 127.0.0.1, from .venv-monailabel
# (tools/setup_monailabel.sh builds it). Usage: tools/monailabel.sh STUDIES_DIR [extra start_server args], e.g.
#   tools/monailabel.sh /data/studies --port 8001 --conf top_percent 10
# Environment: IFIM_MONAILABEL_VENV (default .venv-monailabel), PORT (default 8000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ $# -lt 1 ] || [ ! -d "$1" ]; then
    echo "usage: tools/monailabel.sh STUDIES_DIR [start_server args]; ${1:-STUDIES_DIR} is not a folder" >&2
    exit 2
fi
studies="$(cd "$1" && pwd)"
shift
venv="${IFIM_MONAILABEL_VENV:-.venv-monailabel}"
bash tools/setup_monailabel.sh
export PATH="$PWD/$venv/bin:$PATH"  # monailabel runs `python` from PATH
exec monailabel start_server --app monailabel_app --studies "$studies" --host 127.0.0.1 --port "${PORT:-8000}" "$@"
