#!/usr/bin/env bash
# The plugin tests on another QGIS release than the QGIS env's (Debian 12: QGIS 3.22), in a Debian chroot
# that holds that release's QGIS: `tests/other_qgis.sh trixie` (QGIS 3.40 LTR), `tests/other_qgis.sh forky`
# (3.44). The engine still runs from .venv (its Python is bound into the chroot at the same path).
# Needs root, debootstrap and ~1.5 GB in $FARSLIP_CHROOTS (default /var/tmp/farslip-chroots); the first run of a
# suite builds its chroot (a few minutes), later runs reuse it. Extra arguments go to pytest (e.g. -x, -k name).
# While it runs the chroot holds binds of /dev and of this repository: do not delete the chroot then.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:?usage: tests/other_qgis.sh SUITE [pytest arguments] (SUITE: a Debian suite, e.g. trixie, forky)}
shift
root=${FARSLIP_CHROOTS:-/var/tmp/farslip-chroots}/$suite
repo=$(pwd)
engine_python=$(readlink -f .venv/bin/python)
engine_prefix=$(dirname "$(dirname "$engine_python")")
# QGIS (qgis_process, the desktop for test_desktop under Xvfb), pytest, pytest-qt, venv and pip (engine set-up)
packages="python3-qgis qgis python3-pytest python3-pytestqt python3-pytest-timeout python3-venv python3-pip xvfb xauth"

if [ ! -x "$root/usr/bin/python3" ]; then
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    script=/usr/share/debootstrap/scripts/$suite
    [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid  # a suite newer than this debootstrap
    mkdir -p "$root"
    debootstrap --variant=minbase --include="${packages// /,}" "$suite" "$root" http://deb.debian.org/debian "$script"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"

mounted=()
bind() {  # bind $1 (and what is mounted below it) at the same path inside the chroot, undone on exit
    mkdir -p "$root$1"
    mountpoint -q "$root$1" || { mount --rbind "$1" "$root$1"; mounted+=("$root$1"); }
}
cleanup() { for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[i]}" || true; done; }
trap cleanup EXIT
mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; mounted+=("$root/proc"); }
bind /dev
bind "$repo"
bind "$engine_prefix"

chroot "$root" bash -c "apt-get install -y -qq $packages >/dev/null || { apt-get update -qq && apt-get install -y -qq $packages >/dev/null; }"

chroot "$root" python3 -c "import qgis.core as q; print('QGIS', q.Qgis.QGIS_VERSION)"
chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root HF_HUB_OFFLINE=1 QT_QPA_PLATFORM=offscreen \
    PYTHONDONTWRITEBYTECODE=1 FARSLIP_ENGINE_PYTHON="$repo/.venv/bin/python" \
    bash -c "cd '$repo' && python3 -m pytest tests/plugin -q -p no:cacheprovider $(printf '%q ' "$@")"
