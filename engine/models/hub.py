"""Fetching released checkpoints through huggingface_hub (shared HF cache, resumable, offline-aware).

One download path for the CLI, model loading and the API's download jobs: `hf_hub_download`, which
writes to a temporary file and moves it into the cache only when complete. A download job follows it
through a tqdm class (bytes done / total) and stops it by raising `Cancelled` from that class; the
cache then holds no new file for it (see `_drop_abandoned_partials`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Callable

from engine import config
from engine.errors import Cancelled, ModelError
from engine.models.registry import Release

Progress = Callable[[int, "int | None"], None]  # (bytes done, bytes in all or None when unknown)


def _local_hint(release: Release) -> str:
    return (f"download {release.filename} from https://huggingface.co/{release.repo_id} yourself and pass it: "
            f"--model /path/to/{release.filename} --arch {release.arch}")


def cached_path(release: Release) -> Path | None:
    """The release's file in the local HF cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(release.repo_id, release.filename)
    return Path(found) if isinstance(found, str) else None


def fetch(release: Release, offline: bool | None = None, progress: Progress | None = None,
          cancel: threading.Event | None = None) -> Path:
    """Path of the release's file, downloading it into the HF cache when needed: with huggingface_hub's
    progress bar, or, given `progress`/`cancel`, reporting bytes to `progress` and stopping (Cancelled,
    nothing cached) once `cancel` is set."""
    return fetch_file(release.repo_id, release.filename, f"model {release.name}", _local_hint(release), offline,
                      progress, cancel)


def fetch_file(repo_id: str, filename: str, what: str, hint: str, offline: bool | None = None,
               progress: Progress | None = None, cancel: threading.Event | None = None) -> Path:
    """Path of any file of a Hub repository (HF cache, resumable); errors name `what` and end with `hint`."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    offline = config.hub_offline() if offline is None else offline
    watched = progress is not None or cancel is not None
    extra = {"tqdm_class": _progress_class(progress, cancel)} if watched else {}
    started = time.time()
    try:
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"{what}: download cancelled")
            return Path(hf_hub_download(repo_id, filename, local_files_only=offline, **extra))
        except BaseException as exc:
            if cancel is None or not cancel.is_set():
                raise
            _drop_abandoned_partials(repo_id, started)  # (an aborted Xet download fails in words of its own)
            raise Cancelled(f"{what}: download cancelled") from exc
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else \
              "the Hugging Face Hub cannot be reached and it is not in the local cache"
        raise ModelError(f"{what}: {why}; {hint}") from None
    except (EntryNotFoundError, RepositoryNotFoundError, HFValidationError):
        raise ModelError(f"{what}: {repo_id}/{filename} does not exist on the Hub; {hint}") from None
    except OSError as exc:  # network errors, disk full, permission problems
        raise ModelError(f"{what}: download failed ({exc}); {hint}") from None


def _progress_class(progress: Progress | None, cancel: threading.Event | None):
    """A tqdm class for `hf_hub_download(tqdm_class=...)`: draws nothing, reports the bytes written to
    `progress` and stops the download once `cancel` is set.

    A plain HTTP download calls `update` from the downloading thread: raising Cancelled there ends it
    (huggingface_hub then removes its temporary file). A Xet download (hf_xet) calls it from its own
    progress thread and ignores what it raises: the Xet session is aborted instead (in a thread of its
    own, never from inside hf_xet's callback), which fails the download in the downloading thread.
    `update_transfer` makes hf_xet report through one bar (bytes written) rather than two."""
    from tqdm import tqdm

    class DownloadProgress(tqdm):
        monitor_interval = 0  # no tqdm monitor thread for a bar that draws nothing

        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.done, self.owner, self.aborted = int(kwargs.get("initial") or 0), threading.get_ident(), False
            if progress is not None:
                progress(self.done, self.total)

        def _check(self) -> None:
            if cancel is None or not cancel.is_set():
                return
            if threading.get_ident() != self.owner and not self.aborted:
                self.aborted = True
                threading.Thread(target=_abort_xet, name="farslip-xet-abort", daemon=True).start()
            raise Cancelled("download cancelled")

        def update(self, n=1):
            self._check()
            self.done += int(n or 0)
            if progress is not None:
                progress(self.done, self.total)
            return super().update(n)

        def update_transfer(self, n=1) -> None:
            self._check()

        def set_transfer_postfix_str(self, *args, **kwargs) -> None:
            pass

    return DownloadProgress


def _abort_xet() -> None:
    try:
        from huggingface_hub.utils._xet import abort_xet_session

        abort_xet_session()
    except Exception:  # an older huggingface_hub: the download then runs to its end, and is kept
        pass


def _drop_abandoned_partials(repo_id: str, since: float) -> None:
    """After a cancelled download, remove the partial blobs (`*.incomplete`) it left in the cache: recent
    huggingface_hub versions delete their own temporary file, older ones keep `<etag>.incomplete` to
    resume. A file is removed only when written since `since` and its etag's download lock is free (no
    other download, in this process or another, is writing it)."""
    from filelock import FileLock, Timeout
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    blobs = Path(constants.HF_HUB_CACHE) / folder / "blobs"
    locks = Path(constants.HF_HUB_CACHE) / ".locks" / folder
    for partial in blobs.glob("*.incomplete") if blobs.is_dir() else ():
        try:
            if partial.stat().st_mtime < since - 1:
                continue
            etag = partial.name.split(".")[0]
            with FileLock(str(locks / f"{etag}.lock"), timeout=0):
                partial.unlink(missing_ok=True)
        except (OSError, Timeout):
            continue


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
