"""Finding or creating the engine's own Python environment (never QGIS's Python).

Pure logic, no widgets: which engine is already there (a configured `farslip`, the plugin's own
environment, `farslip` on PATH), which Pythons could host a new one, CPU or CUDA torch, and the
commands that build it. `setup_task.py` runs these commands in a QgsTask.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TORCH_INDEX = {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": "https://download.pytorch.org/whl/cu126"}
TORCH_CHOICES = ("auto", "cpu", "cuda", "none")  # none: torch comes with the engine's own dependencies
MIN_PYTHON = (3, 10)
_BIN = "Scripts" if os.name == "nt" else "bin"
_EXE = ".exe" if os.name == "nt" else ""


@dataclass
class Engine:
    """An installed engine: its `farslip` command and (when known) the Python and version beside it."""

    command: str
    python: str | None = None
    version: str | None = None

    def serve_args(self, port: int) -> list[str]:
        return [self.command, "serve", "--port", str(port)]


def default_env_dir() -> Path:
    """Where the plugin creates the engine's environment: in the QGIS profile, outside QGIS's Python."""
    try:
        from qgis.core import QgsApplication

        base = Path(QgsApplication.qgisSettingsDirPath())
    except Exception:  # outside QGIS
        base = Path.home() / ".local" / "share"
    return base / "farslip" / "engine-env"


def env_command(env_dir: str | Path) -> Path:
    return Path(env_dir) / _BIN / f"farslip{_EXE}"


def env_python(env_dir: str | Path) -> Path:
    return Path(env_dir) / _BIN / f"python{_EXE}"


def _interpreter(command: Path) -> Path | None:
    """The Python a `farslip` script runs on: the one beside it (symlinks followed), else its #! line."""
    beside = command.resolve().parent / f"python{_EXE}"
    if beside.exists():
        return beside
    try:
        with open(command, "rb") as fh:
            first = fh.readline(300).decode("utf-8", "replace")
    except OSError:
        return None
    path = Path(first[2:].strip().split(" ")[0]) if first.startswith("#!") else None
    return path if path is not None and path.name.startswith("python") and path.exists() else None


def _version_beside(command: Path) -> tuple[str | None, str | None]:
    """(python, farslip version) of the environment a `farslip` script lives in; fast, imports no torch."""
    python = _interpreter(command)
    if python is None:
        return None, None
    try:
        out = subprocess.run([str(python), "-I", "-c", "import importlib.metadata as m; print(m.version('farslip'))"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return str(python), None
    return str(python), (out.stdout.strip() or None) if out.returncode == 0 else None


def engine_at(path: str | Path) -> Engine | None:
    """The engine a path names: a `farslip` command, or an environment folder holding one."""
    path = Path(path).expanduser()
    command = env_command(path) if path.is_dir() else path
    if not (command.is_file() and os.access(command, os.X_OK)):
        return None
    python, version = _version_beside(command)
    return Engine(str(command), python, version)


def find_engine(configured: str | None = None, env_dir: str | Path | None = None) -> Engine | None:
    """The first engine found: the configured path, the plugin's environment, then `farslip` on PATH."""
    candidates = [configured] if configured else []
    candidates.append(str(env_dir or default_env_dir()))
    on_path = shutil.which("farslip")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        engine = engine_at(candidate)
        if engine is not None:
            return engine
    return None


def python_version(python: str) -> tuple[tuple[int, int] | None, str]:
    """((major, minor), problem) of an interpreter that could host the engine; problem '' when usable."""
    code = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot run {python} ({exc})"
    if out.returncode != 0:
        if "ensurepip" in out.stderr or "venv" in out.stderr:
            return None, (f"{python} cannot create environments: install its venv module "
                          f"(Debian/Ubuntu: sudo apt install python3-venv)")
        return None, f"{python} does not work: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}"
    version = tuple(int(v) for v in out.stdout.strip().split("."))
    if version < MIN_PYTHON:
        return version, f"{python} is Python {version[0]}.{version[1]}; the engine needs 3.10 or newer"
    return version, ""


def find_pythons() -> list[str]:
    """Interpreters on this machine that could host the engine (not QGIS's own executable on Windows)."""
    names = ["python3.12", "python3.11", "python3.10", "python3.13", "python3", "python"]
    found: list[str] = []
    for name in names:
        path = shutil.which(name)
        if path and os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
            found.append(path)
    if sys.executable and Path(sys.executable).name.startswith("python") and sys.executable not in found:
        found.append(sys.executable)  # QGIS's Python may *host* a venv; nothing is installed into it
    return found


def has_cuda() -> bool:
    """An NVIDIA GPU with a working driver (what CUDA torch needs)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def source_tree() -> Path | None:
    """The engine's source checkout when the plugin runs from one (its pyproject names `farslip`)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and (root / "engine").is_dir() and 'name = "farslip"' in pyproject.read_text("utf-8"):
        return root
    return None


def shipped_wheel() -> Path | None:
    """The engine wheel the plugin zip carries (`engine_wheel/farslip-*.whl`), newest version first."""
    wheels = sorted((Path(__file__).resolve().parent / "engine_wheel").glob("farslip-*.whl"), reverse=True)
    return wheels[0] if wheels else None


def default_source() -> str:
    """What to install: the source tree beside the plugin, else the wheel shipped in the plugin, else
    `farslip` from the package index."""
    found = source_tree() or shipped_wheel()
    return str(found) if found is not None else "farslip"


@dataclass
class Step:
    title: str
    argv: list[str]
    weight: float = 1.0  # share of the progress bar


@dataclass
class SetupPlan:
    python: str
    env_dir: Path
    source: str = field(default_factory=default_source)  # a folder, a wheel, or a requirement such as "farslip"
    torch: str = "auto"
    pip_args: list[str] = field(default_factory=list)  # e.g. ["--no-index", "--find-links", "/wheels"]

    def torch_variant(self) -> str:
        return ("cuda" if has_cuda() else "cpu") if self.torch == "auto" else self.torch

    def steps(self) -> list[Step]:
        pip = [str(env_python(self.env_dir)), "-m", "pip", "install", "--disable-pip-version-check", *self.pip_args]
        steps = [Step(f"create the environment in {self.env_dir}", [self.python, "-m", "venv", str(self.env_dir)], 1)]
        variant = self.torch_variant()
        if variant in TORCH_INDEX:
            steps.append(Step(f"install PyTorch ({'CUDA' if variant == 'cuda' else 'CPU'})",
                              pip + ["--index-url", TORCH_INDEX[variant], "torch", "torchvision"], 6))
        steps.append(Step(f"install the engine from {self.source}", pip + [self.source], 3))
        steps.append(Step("check the engine", [str(env_command(self.env_dir)), "--version"], 1))
        return steps
