#!/usr/bin/env bash
# Runs the whole test suite: engine/training tests in .venv, plugin tests in .venv-qgis.
# Extra arguments go to both pytest runs (e.g. -x, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen PYTHONDONTWRITEBYTECODE=1
status=0
.venv/bin/python -m pytest tests --ignore=tests/plugin -q "$@" || status=$?
.venv-qgis/bin/python -m pytest tests/plugin -q -p no:cacheprovider "$@" || status=$?
exit $status
