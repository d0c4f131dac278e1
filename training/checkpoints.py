"""Training checkpoints in the release layout, so that the engine serves them as they are:

    {"epoch", "name", "state_dict", "optimizer"}   + "step", "arch", "config", "scaler",
                                                     "teacher" (EMA/frozen copy), "rng"

`state_dict` holds the bare network's keys (no `module.` prefix); `farslip segment --model FILE.pt`
loads it directly and the architecture is recognised from its shapes. Files are written under a
temporary name and renamed, so an interrupted save never leaves a truncated checkpoint behind.
Resuming reads `checkpoints/latest.pt`; the learning rate is not in it (the schedule follows the
current settings, `training.optim.Schedule`). The final `{name}.pt` holds only the weights (and the
config), no optimiser state: it starts a new run (`--model`), it does not resume one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from engine.errors import InputError
from engine.models.checkpoint import why_unreadable


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def training_state(*, clip, arch: str, name: str, epoch: int, step: int, config: dict, optimizer=None,
                   scaler=None, teacher_state=None, full: bool = True) -> dict:
    state = {"epoch": epoch, "step": step, "name": name, "arch": arch, "long_clip": bool(clip.long_clip),
             "config": config, "state_dict": {k: v.detach().cpu() for k, v in clip.state_dict().items()}}
    if full:
        state.update(optimizer=optimizer.state_dict(),
                     scaler=scaler.state_dict() if scaler is not None else None, teacher=teacher_state,
                     rng={"torch": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []})
    return state


def save_checkpoint(state: dict, out: Path, keep: int) -> Path:
    """checkpoints/step_N.pt + latest.pt; older step files beyond `keep` are removed."""
    folder = out / "checkpoints"
    path = folder / f"step_{state['step']:08d}.pt"
    save_atomic(state, path)
    save_atomic(state, folder / "latest.pt")
    for old in sorted(folder.glob("step_*.pt"))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def find_resume(out: Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        latest = out / "checkpoints" / "latest.pt"
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise InputError(f"--resume: no such checkpoint {path}")
    return path


def load_training_state(path: Path, stage: int | None = None) -> dict:
    """A training checkpoint to resume from; one of another stage (`stage`) is refused: its step
    counter and optimiser belong to that stage's run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/zip/IO errors differ by torch version
        raise InputError(f"cannot resume from {path}: {why_unreadable(exc)}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise InputError(f"cannot resume from {path}: not a training checkpoint (no optimiser state)")
    if not state.get("optimizer"):  # a run's final {name}.pt, a release checkpoint
        raise InputError(f"cannot resume from {path}: a finished model without optimiser state (resume from "
                         f"OUT/checkpoints/latest.pt, or pass this file as --model to start a new run from it)")
    made = (state.get("config") or {}).get("stage")
    if stage is not None and made is not None and made != stage:
        raise InputError(f"cannot resume stage {stage} from {path}: a stage-{made} checkpoint (to start stage "
                         f"{stage} from its weights, pass it as --model, not --resume)")
    return state


def check_resume_fits(cfg, state: dict, path: Path) -> None:
    """An InputError when this run asks for another network than the checkpoint it resumes holds: an
    architecture named by `--model`/`--arch`, or `long_clip` on a 77-position network. (It trained the
    checkpoint's network and recorded the settings asked for.)"""
    prefix, _, rest = cfg.model.partition(":")
    named = rest if rest and not prefix.startswith(("/", ".", "~")) and len(prefix) > 1 else cfg.arch
    made = state.get("arch")
    if named and made and named != made:
        raise InputError(f"cannot resume from {path}: it trains {made}, this run asks for {named}; give the same "
                         f"--model/--arch, or another -o folder (or --resume never) to start afresh")
    if cfg.long_clip and not state.get("long_clip", True):
        raise InputError(f"cannot resume from {path}: its network has 77 text positions, this run asks for "
                         f"long_clip (248); give the same settings, or another -o folder to start afresh")
