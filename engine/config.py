"""Engine-wide settings in one place: folders, environment variables, defaults.

Environment variables:
  FARSLIP_HOME        engine data folder (default: the platform's user data folder, `~/.local/share/farslip`)
  FARSLIP_CONFIG_DIR  config folder holding the API token (default: `~/.config/farslip`)
  FARSLIP_GDAL_CACHE_MB  GDAL's raster block cache while segmenting (default 128; GDAL's own default,
                      5% of RAM, would make memory grow with the raster size)
  FARSLIP_GDAL_THREADS  threads GDAL decodes and compresses with (default ALL_CPUS)
  FARSLIP_READ_THREADS  threads reading blocks ahead of the model (default: 0 on a CPU, i.e. blocks are
                      read when needed, else a quarter of the cores, at most 4: GDAL resamples on
                      read in one thread)
  FARSLIP_WRITE_THREADS  1: a thread writes each block's outputs while the next is computed; 0: the
                      computing thread writes them (default: 0 on a CPU, where a writer thread only
                      takes cores from the model, 1 beside a GPU)
  FARSLIP_POLYGON_WORKERS  processes tracing polygons (default: 1, i.e. none, on fewer than 8 cores or
                      under 16 Mpx; else up to half the cores, at most 8)
  FARSLIP_DEVICE      default device: `auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ...
  HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE   honoured as huggingface_hub defines them
"""

from __future__ import annotations

import os
from pathlib import Path

# The model used when a user names none.
DEFAULT_MODEL = "farslip2-vit-b-16"


def user_path(text: str) -> Path:
    """A path a user typed, with `~` / `~name` expanded when that home folder exists (a `~name` that
    names no user, e.g. `~0`, stays as typed instead of raising)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return user_path(value) if value else default


def data_dir() -> Path:
    """Folder for the engine's own state (jobs, results)."""
    xdg = _env_path("XDG_DATA_HOME", Path.home() / ".local" / "share")
    return _env_path("FARSLIP_HOME", xdg / "farslip")


def config_dir() -> Path:
    """Folder for the user's engine configuration (the API token lives here)."""
    xdg = _env_path("XDG_CONFIG_HOME", Path.home() / ".config")
    return _env_path("FARSLIP_CONFIG_DIR", xdg / "farslip")


def default_device() -> str:
    return os.environ.get("FARSLIP_DEVICE", "auto")


def gdal_cache_mb() -> int:
    return int(os.environ.get("FARSLIP_GDAL_CACHE_MB", "128"))


def gdal_threads() -> str:
    """Threads GDAL decodes and compresses rasters with (FARSLIP_GDAL_THREADS: a number or ALL_CPUS)."""
    return os.environ.get("FARSLIP_GDAL_THREADS", "ALL_CPUS")


def _env_count(name: str, least: int = 1) -> int | None:
    """A count of threads or processes set in the environment variable `name` (at least `least`);
    None when it is unset or not a whole number (the default then applies)."""
    value = os.environ.get(name, "").strip()
    return max(least, int(value)) if value.isdigit() else None


def read_threads(device_type: str) -> int:
    """Threads reading (decoding, resampling, stretching) blocks ahead of the model: FARSLIP_READ_THREADS,
    else none on a CPU — each block is read by the computing thread when it is needed, GDAL decoding
    it on all cores, since a reading thread beside the model only takes cores from it (10 % slower
    end to end on 2 cores) — and a quarter of the cores, 1 to 4, beside a GPU."""
    chosen = _env_count("FARSLIP_READ_THREADS", least=0)
    if chosen is not None:
        return chosen
    return 0 if device_type == "cpu" else max(1, min(4, (os.cpu_count() or 1) // 4))


def write_threads(device_type: str) -> int:
    """Threads writing (polygons traced, GeoTIFF blocks compressed) behind the model, 0 or 1:
    FARSLIP_WRITE_THREADS, else none on a CPU — a thread beside the model's OpenMP threads takes a
    core from one of them and stalls them all at their next barrier (on 2 cores a 4096² run took
    0.7 s longer, polygons or not) — and one beside a GPU."""
    chosen = _env_count("FARSLIP_WRITE_THREADS", least=0)
    if chosen is not None:
        return min(chosen, 1)
    return 0 if device_type == "cpu" else 1


def polygon_workers(pixels: int) -> int:
    """Processes tracing a raster's polygons block by block (1: in the writer itself):
    FARSLIP_POLYGON_WORKERS, else half the cores (at most 8) for rasters of 16 Mpx or more on
    machines of 8 or more cores — starting the processes (about a second) is not worth it below."""
    chosen = _env_count("FARSLIP_POLYGON_WORKERS")
    if chosen is not None:
        return chosen
    cores = os.cpu_count() or 1
    return min(8, cores // 2) if cores >= 8 and pixels >= 16_000_000 else 1


def hub_offline() -> bool:
    """True when huggingface_hub must not touch the network (HF_HUB_OFFLINE set to a true value)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
