"""Fetching released checkpoints through huggingface_hub (shared HF cache, resumable, offline-aware)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine import config
from engine.errors import ModelError
from engine.models.registry import Release


def _local_hint(release: Release) -> str:
    return (f"download {release.filename} from https://huggingface.co/{release.repo_id} yourself and pass it: "
            f"--model /path/to/{release.filename} --arch {release.arch}")


def cached_path(release: Release) -> Path | None:
    """The release's file in the local HF cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(release.repo_id, release.filename)
    return Path(found) if isinstance(found, str) else None


def fetch(release: Release, offline: bool | None = None) -> Path:
    """Path of the release's file, downloading it into the HF cache when needed (with a progress bar)."""
    return fetch_file(release.repo_id, release.filename, f"model {release.name}", _local_hint(release), offline)


def fetch_file(repo_id: str, filename: str, what: str, hint: str, offline: bool | None = None) -> Path:
    """Path of any file of a Hub repository (HF cache, resumable); errors name `what` and end with `hint`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    offline = config.hub_offline() if offline is None else offline
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=offline))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
              "the Hugging Face Hub cannot be reached and it is not in the local cache"
        raise ModelError(f"{what}: {why}; {hint}") from None
    except (EntryNotFoundError, RepositoryNotFoundError, HFValidationError):
        raise ModelError(f"{what}: {repo_id}/{filename} does not exist on the Hub; {hint}") from None
    except OSError as exc:  # network errors, disk full, permission problems
        raise ModelError(f"{what}: download failed ({exc}); {hint}") from None


def hub_sha256(release: Release) -> str | None:
    """The SHA-256 the Hub records for the release's file (None when offline or not an LFS file)."""
    if config.hub_offline():
        return None
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(release.repo_id, files_metadata=True)
    except Exception:  # any network / hub failure: verification then relies on loading alone
        return None
    for sibling in info.siblings or []:
        if sibling.rfilename == release.filename and sibling.lfs is not None:
            return sibling.lfs.sha256
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
