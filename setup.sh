#!/usr/bin/env bash
# Sets up everything a developer needs on a fresh Debian/Ubuntu machine:
#   .venv       engine env (torch, open_clip, rasterio, FastAPI, ...) + the `farslip` command
#   .venv-qgis  QGIS env: Debian's python3 with python3-qgis (system site-packages) + pytest-qt
# Re-running it is safe and quick. Set FARSLIP_SKIP_APT=1 to skip apt-get (no root).
set -euo pipefail
cd "$(dirname "$0")"

ENGINE_PYTHON=${ENGINE_PYTHON:-python3}
QGIS_PYTHON=${QGIS_PYTHON:-/usr/bin/python3}

# pip prints a warning per package for this machine's local index folders; keep the log readable.
pip_quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "${FARSLIP_SKIP_APT:-0}" != "1" ]; then
  echo "==> apt packages (QGIS Python bindings and desktop, Xvfb for the desktop check, venv)"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if_needed apt-get update -qq
  sudo_if_needed apt-get install -y -qq --no-install-recommends \
    python3-qgis qgis xvfb xauth python3-venv python3-pip >/dev/null
fi

echo "==> engine env .venv ($($ENGINE_PYTHON --version))"
[ -x .venv/bin/python ] || "$ENGINE_PYTHON" -m venv .venv
pip_quiet .venv/bin/python -m pip install -q --upgrade pip
pip_quiet .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
pip_quiet .venv/bin/python -m pip install -q -e '.[dev,ray]'

echo "==> QGIS env .venv-qgis ($($QGIS_PYTHON --version))"
[ -x .venv-qgis/bin/python ] || "$QGIS_PYTHON" -m venv --system-site-packages .venv-qgis
# Never let pip pull PyQt5 or numpy 2 into the QGIS env: Debian's own ones must stay.
pip_quiet .venv-qgis/bin/python -m pip install -q --no-deps 'pytest>=8,<9' 'pytest-qt==4.5.*' \
  'pytest-timeout>=2.3' 'pluggy>=1.5' 'iniconfig' 'packaging' 'typing_extensions>=4.6'
.venv-qgis/bin/python -c "import qgis.core, pytest, pytestqt; print('QGIS', qgis.core.Qgis.QGIS_VERSION)"

echo "==> done. Run the tests with: tests/run.sh"
