#!/usr/bin/env bash
# Desktop check: the real QGIS application under Xvfb, with the plugin installed from its zip into a
# fresh profile: Engine tab → Set up… installs an engine environment from a local wheel (no network), then
# finds the real engine → Start engine → segment → label a region → Processing grid, a screenshot of
# each step (NN-step.png) and checks of what a user sees.
#   tests/desktop/check.sh [raster.tif] [output-folder]
# Needs: apt-get install qgis xvfb xauth (setup.sh installs them) and the engine env .venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT=$(realpath -m "${2:-/tmp/farslip-desktop}")
rm -rf "$OUT"; mkdir -p "$OUT"
RASTER=${1:-}
if [ -z "$RASTER" ]; then
  if [ -f ../shared/data/oem_koeln_50.tif ]; then RASTER=$(realpath ../shared/data/oem_koeln_50.tif); else RASTER="$OUT/scene.tif"; fi
fi
# the engine: tiny random checkpoint (the point is the plumbing and the styling, not the classes)
.venv/bin/python - "$OUT" "$RASTER" <<'PY'
import sys, torch
from pathlib import Path
from tests.engine.conftest import make_clip
out, raster = Path(sys.argv[1]), Path(sys.argv[2])
torch.save({"epoch": 1, "name": "tiny", "state_dict": make_clip().state_dict()}, out / "tiny.pt")
if not raster.exists():
    from training.data.synthetic import write_scene_geotiff
    write_scene_geotiff(raster, 800, 1000, road_spacing=400, roof=60)
PY
PORT=$(.venv/bin/python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
# No engine is started here: QGIS finds it (`farslip` on PATH, as after `pip install --user`) and starts it
# from the dock. The set-up's install path is tested in tests/plugin/test_engine_setup.py (local wheel).
# (only the command goes on PATH: the venv's python there would take over QGIS's embedded Python)
mkdir -p "$OUT/bin"; ln -sf "$ROOT/.venv/bin/farslip" "$OUT/bin/farslip"
export FARSLIP_CONFIG_DIR="$OUT/config"
export FARSLIP_DESKTOP_ENGINE="$OUT/bin/farslip" FARSLIP_DESKTOP_PORT="$PORT"
# the local package the set-up installs in the check (the stand-in engine wheel of the plugin tests)
export FARSLIP_DESKTOP_WHEEL=$(python3 -c "import sys; from pathlib import Path; from tests.plugin.stub_engine import build_wheel; print(build_wheel(Path(sys.argv[1])))" "$OUT/wheels")
export FARSLIP_DESKTOP_PYTHON=$(command -v python3)
export FARSLIP_DESKTOP_ENGINE_ARGS="--data-dir $OUT/data --model $OUT/tiny.pt --arch tiny-vit-16 --device cpu --allow-root /"
# a fresh QGIS profile with the plugin installed from its zip and enabled
ZIP=$(python3 -m qgis_farslip.packaging --out "$OUT/dist")
PROFILE="$OUT/qgis-config/profiles/default"
mkdir -p "$PROFILE/python/plugins" "$PROFILE/QGIS"
python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$ZIP" "$PROFILE/python/plugins"
cat > "$PROFILE/QGIS/QGIS3.ini" <<INI
[PythonPlugins]
qgis_farslip=true
[farslip]
engine_url=http://127.0.0.1:$PORT
INI
export FARSLIP_DESKTOP_RASTER="$RASTER" FARSLIP_DESKTOP_SHOT="$OUT/shot.png" FARSLIP_DESKTOP_OUT="$OUT/project"
mkdir -p "$OUT/project"
timeout 420 env -u QT_QPA_PLATFORM PATH="$OUT/bin:$PATH" xvfb-run -a -s "-screen 0 1600x1000x24" qgis --nologo --noversioncheck \
  --profiles-path "$OUT/qgis-config" --code "$ROOT/tests/desktop/startup.py" >"$OUT/qgis.log" 2>&1 || true
STATUS=$(cat "$OUT/shot.png.status" 2>/dev/null || echo "QGIS did not report (see $OUT/qgis.log)")
echo "desktop check: $STATUS; screenshot: $OUT/shot.png"
[ "$STATUS" = "ok" ] && [ -s "$OUT/shot.png" ]
