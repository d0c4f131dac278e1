"""HTTP client for the FarSLIP engine, on the standard library only (runs in QGIS's Python).

Every failure becomes an `EngineError` with one readable sentence: the engine's own `detail` for a
4xx, "the engine is not running at ..." when nothing answers. A job is followed by long-poll
(`GET /v1/jobs/{id}?wait=&since=`), not by sleeping between polls.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

DEFAULT_URL = "http://127.0.0.1:8765"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_local_engine(url: str) -> bool:
    """Whether the engine at `url` runs on this computer (its files are ours; its token is in our token file)."""
    return (urllib.parse.urlparse(engine_url(url)).hostname or "") in LOCAL_HOSTS


class EngineError(Exception):
    """A problem talking to the engine, in one sentence for a message bar; `status` is the engine's HTTP
    status when it answered with an error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def in_gui_words(detail: str) -> str:
    """The engine's message, with the fix said in the plugin's terms where the engine speaks CLI."""
    import re

    if "not in the local cache" in detail:
        found = re.search(r"model (\S+?):", detail)
        name = found.group(1) if found else "this model"
        why = ("downloads are switched off (HF_HUB_OFFLINE)" if "HF_HUB_OFFLINE" in detail
               else "huggingface.co cannot be reached")
        return (f"the model {name} is not downloaded yet and {why}: in the FarSLIP panel's Engine tab select it "
                "and press Download model, or type the path of a downloaded .pt file as Model")
    other = re.search(r"taught classes were made with model (.+?) \((.+?)\); this run uses (.+?) \((.+?)\):", detail)
    if other:
        made, arch, used, used_arch = (os.path.basename(other.group(1)), other.group(2),
                                       os.path.basename(other.group(3)), other.group(4))
        return (f"these taught classes were made with model {made} ({arch}) and this run uses {used} ({used_arch}): "
                f"choose {made} as Model in the FarSLIP panel's Engine tab, or teach the classes again with {used} "
                "(Labels tab → Teach from labels)")
    if "make one with farslip classes learn" in detail:
        return detail.replace("make one with farslip classes learn", "make one with Labels → Teach from labels")
    if detail.startswith("taught classes path is outside"):
        return ("the engine may not read that taught-classes file: it reads only the folders it was started for; "
                "move the file into one of them, or teach the classes again (Labels tab → Teach from labels)")
    if detail.startswith("taught classes not found"):
        return "the taught-classes file is gone from its folder: choose another beside Taught, or press Clear"
    if detail.startswith("no reference polygon overlaps result_classes.tif of job"):
        return ("no reference polygon overlaps the area of the segmentation it is checked against: choose "
                "reference polygons inside that area, or segment an area that holds them")
    return detail


# the request fields an engine message names (`engine.server.wording`), as a panel's fields ({where})
_FIELD_FIXES = (
    (r'pass "nodata": (\S+?)( |$)', r"set No data to \1 {where}\2"),
    (r'pass "bands" \(e\.g\. "bands": \[1, 1, 1\]', "choose the Bands {where} (e.g. 1, 1, 1"),
    (r'pass "bands": \[(\d+), (\d+), (\d+)\]', r"choose bands \1, \2, \3 as red, green, blue {where}"),
    (r'\("bands" chooses others\)', "(the Bands {where} choose others)"),
    (r'pass "gsd": (\S+?)( |$)', r"set the resolution to \1 m {where}\2"),
)
_UPLOADED_COPY = r"\b[0-9a-f]{32}\.tif\b"  # the name an engine gives a copy it was sent


def in_panel_terms(text: str, raster: str | None = None, where: str = "in the Segment tab") -> str:
    """An engine message or note with the request's fields named as the panel's (No data, Bands,
    resolution, `where` they are) and a copy sent to the engine named as the layer (`raster`) it was
    rendered from."""
    import re

    for pattern, replacement in _FIELD_FIXES:
        text = re.sub(pattern, replacement.replace("{where}", where), text)
    return re.sub(_UPLOADED_COPY, raster or "the copy sent", text)


def default_token_path() -> Path:
    """Where a local engine keeps its token (the same rule as the engine's config folder)."""
    if os.environ.get("FARSLIP_CONFIG_DIR"):
        return Path(os.environ["FARSLIP_CONFIG_DIR"]).expanduser() / "token"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    return base / "farslip" / "token"


def read_local_token(path: Path | None = None) -> str:
    path = path or default_token_path()
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def engine_url(typed: str) -> str:
    """The engine's base URL as a user may type it: "127.0.0.1:8765" or "localhost:8765/" (no scheme) is
    http://…; the API's own "/v1" (copied from a request) is taken off."""
    url = typed.strip()
    if url and "://" not in url:
        url = f"http://{url}"
    url = url.rstrip("/")
    return url[:-3].rstrip("/") if url.endswith("/v1") else url


def token_file_for(url: str) -> str:
    """The token in this computer's engine token file, for an engine on this computer; '' for one on another
    computer (that file is never sent there)."""
    return read_local_token() if is_local_engine(url) else ""


class EngineClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0):
        self.url = engine_url(url)
        self.token = token if token is not None else token_file_for(self.url)
        self.timeout = timeout
        self._path_formats: tuple[str, ...] | None = None

    # --- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                 timeout: float | None = None):
        request = urllib.request.Request(f"{self.url}{path}", data=body, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise EngineError(self._explain(exc), exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineError(f"the FarSLIP engine is not answering at {self.url} ({reason}); start it in the "
                              "FarSLIP panel's Engine tab (Start engine) or correct its URL there") from None

    @staticmethod
    def _explain(exc: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(exc.read().decode("utf-8")).get("detail")
        except (ValueError, AttributeError, OSError):
            detail = None
        if exc.code == 401:
            return ("the engine refused the token: paste the engine's token into the FarSLIP panel's Engine tab "
                    "(Token), or leave it empty for the engine started on this computer")
        return f"engine: {in_gui_words(detail)}" if isinstance(detail, str) else f"engine answered HTTP {exc.code}"

    def _json(self, method: str, path: str, payload: dict | None = None):
        body = json.dumps(payload).encode("utf-8") if payload is not None else None
        with self._request(method, path, body) as response:
            data = response.read()
        return json.loads(data) if data else None

    # --- API -----------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/v1/health")

    def path_formats(self) -> tuple[str, ...] | None:
        """The GDAL drivers of the rasters this engine reads by path (from its health, asked once); None
        when it does not say (an older engine: any file is then sent by path, as before). An engine that
        does not answer raises EngineError, as every call."""
        if self._path_formats is None:
            try:
                health = self.health()
            except EngineError as exc:
                if exc.status is None:  # nothing answers: said as for any request
                    raise
                return None  # it answered, but not with its health: the job's own answer will tell
            formats = health.get("path_formats") if isinstance(health, dict) else None
            self._path_formats = tuple(formats) if isinstance(formats, list) else ()
        return self._path_formats or None

    def models(self) -> dict:
        return self._json("GET", "/v1/models")

    def download_model(self, name: str) -> str | None:
        """Start the engine's download of a release into its model cache: the job's id, or None when it is
        there already."""
        return self._json("POST", f"/v1/models/{urllib.parse.quote(name, safe='')}/download")["id"]

    def upload(self, path: str | Path) -> str:
        data = Path(path).read_bytes()
        with self._request("POST", "/v1/uploads", data, "application/octet-stream", timeout=600) as response:
            return json.loads(response.read())["upload_id"]

    def send_classes(self, path: str | Path) -> dict:
        """A taught-classes file sent to the engine (`POST /v1/classes`): `{"upload_id", "classes", "model"}`;
        jobs then name it `"@upload:<upload_id>"`."""
        with self._request("POST", "/v1/classes", Path(path).read_bytes()) as response:
            return json.loads(response.read())

    def delete_upload(self, upload_id: str) -> None:
        self._request("DELETE", f"/v1/uploads/{urllib.parse.quote(upload_id, safe='')}").close()

    def submit(self, kind: str, payload: dict) -> str:
        return self._json("POST", f"/v1/jobs/{kind}", payload)["id"]

    def status(self, job_id: str, wait: float | None = None, since: int | None = None) -> dict:
        """The job's status; with `wait`, once it ends or (with `since`) its revision is no longer `since`."""
        query = "" if wait is None else f"?wait={wait:g}" + ("" if since is None else f"&since={since}")
        return self._json("GET", f"/v1/jobs/{job_id}{query}")

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def prompts(self, classes) -> list[dict]:
        """The engine's reading of a class list: name, synonyms, colour per class."""
        return self._json("POST", "/v1/prompts", {"classes": classes})["classes"]

    def label(self, payload: dict) -> dict:
        return self._json("POST", "/v1/regions/label", payload)

    def download(self, job_id: str, name: str, folder: str | Path) -> Path:
        """Save a result file into `folder` (temporary name, renamed when complete): a download cut short
        (the engine stopped, the connection dropped) or a disk that fills up leaves no file and raises
        EngineError."""
        import http.client

        target = Path(folder) / name
        partial = target.with_name(f".{name}.partial")
        received = 0

        def cut_off(why: str) -> EngineError:
            partial.unlink(missing_ok=True)
            return EngineError(f"the download of {name} was cut off {why} (did the engine stop?): run again")

        with self._request("GET", f"/v1/jobs/{job_id}/files/{name}", timeout=600) as response:
            expected = response.headers.get("Content-Length")
            try:
                with open(partial, "wb") as fh:
                    while True:
                        try:  # the network's part ...
                            chunk = response.read(1 << 20)
                        except (http.client.HTTPException, OSError) as exc:  # (a dropped TLS stream: OSError)
                            raise cut_off(f"({exc or type(exc).__name__})") from None
                        if not chunk:
                            break
                        fh.write(chunk)  # ... and the disk's
                        received += len(chunk)
            except OSError as exc:  # opening, writing or closing the file (a full disk)
                partial.unlink(missing_ok=True)
                raise EngineError(f"cannot save {name} into {folder} ({exc.strerror or exc}): free some space or "
                                  "choose another folder under Save to") from None
        if expected is not None and expected.isdigit() and received != int(expected):
            raise cut_off(f"after {received:,} of {int(expected):,} bytes")
        os.replace(partial, target)
        return target

    def wait(self, job_id: str, on_progress: Callable[[float, str], None] | None = None,
             is_cancelled: Callable[[], bool] | None = None, poll_s: float = 0.3, slice_s: float = 0.5) -> dict:
        """Follow a job until it ends; cancels it on the engine when `is_cancelled()` turns true.

        Long-poll: each request asks the engine to answer as soon as the job's revision moves past the one
        already seen (`?wait=&since=`), so every change arrives when it happens and nothing sleeps. Waits
        last at most `slice_s`, so a cancel is noticed within that. An engine without long-poll answers at
        once and sends no revision: then it is polled every `poll_s` seconds.
        """
        cancel_sent = False
        since = 0  # a job starts at revision 0
        while True:
            status = self.status(job_id, wait=slice_s, since=since)
            if on_progress is not None:
                on_progress(status["progress"], status["message"])
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            if is_cancelled is not None and is_cancelled() and not cancel_sent:
                self.cancel(job_id)
                cancel_sent = True
            if isinstance(status.get("revision"), int):
                since = status["revision"]
            else:
                time.sleep(poll_s)
