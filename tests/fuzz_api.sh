#!/usr/bin/env bash
# The long API fuzz run (CI runs a short, fixed-seed one: tests/engine/test_api_fuzz.py).
# Starts `farslip serve` on a temporary folder with a tiny random checkpoint and a test raster, then
# runs schemathesis with every check and N examples per operation against it; exits non-zero on any
# failure of any check. Usage: tests/fuzz_api.sh [EXAMPLES=300] [extra schemathesis options]
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-300}"
shift || true
work="$(mktemp -d -t farslip-fuzz-XXXXXX)"
trap 'kill "$engine" 2>/dev/null || true; wait "$engine" 2>/dev/null || true; rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 FARSLIP_CONFIG_DIR="$work/config"
.venv/bin/python - "$work" <<'PY'
import sys, torch
from pathlib import Path
from tests.engine.conftest import make_clip
from tests.engine.rasters import scene, write_raster
folder = Path(sys.argv[1])
torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, folder / "tiny.pt")
write_raster(folder / "tile.tif", scene(128, 128)[0])
PY
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/python -m engine.cli serve --port "$port" --data-dir "$work/data" --allow-root "$work" \
    --model "$work/tiny.pt" --arch tiny-vit-16 --device cpu --max-queue 4 2>"$work/engine.log" &
engine=$!
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break
    sleep 0.5
done
token=$(cat "$work/config/token")
status=0
.venv/bin/schemathesis --config-file tests/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" -H "Authorization: Bearer $token" \
    --checks all --max-examples "$examples" --suppress-health-check all --workers 1 \
    --request-timeout 120 "$@" || status=$?
if grep -q "Traceback\| 500 " "$work/engine.log"; then
    echo "the engine logged a traceback or a 500:"; grep -B2 -A20 "Traceback\| 500 " "$work/engine.log" | head -80
    status=1
fi
exit $status
