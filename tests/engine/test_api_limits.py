"""The service's limits and edges: pixel budget, model choice, Host check, the spec behind the token,
405s that say what is allowed, the upload quota, a full data folder, the token file's permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.server.auth import load_or_create_token
from tests.engine.api_helpers import AUTH, TOKEN, file_size_limit, make_app, wait_for, write_checkpoint
from tests.engine.rasters import scene, write_raster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def src(root):
    return write_raster(root / "tile.tif", scene(64, 64)[0])  # 0.5 m pixels


def _detail(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:400])
    return response.json()["detail"]


@pytest.mark.parametrize("gsd, limit", [(0.0002, "2,500× finer than the raster's 0.5 m pixels"),
                                        (1e-300, "finer than the raster's 0.5 m pixels")])
def test_a_gsd_far_below_the_rasters_pixels_is_refused_at_submit(client, src, gsd, limit):
    body = {"input": {"path": str(src)}, "classes": "water; grass", "gsd": gsd}
    detail = _detail(client.post("/v1/jobs/segment", headers=AUTH, json=body), 400)
    assert limit in detail and "choose a gsd of at least 0.00781 m" in detail
    assert client.get("/v1/health").json()["queue_length"] == 0  # nothing was queued


def test_a_job_over_the_pixel_budget_is_refused_at_submit_naming_the_limit(root, src):
    with TestClient(make_app(root, max_pixels=50_000)) as c:
        body = {"input": {"path": str(src)}, "classes": "water; grass", "gsd": 0.125}  # 256² working px
        detail = _detail(c.post("/v1/jobs/segment", headers=AUTH, json=body), 400)
        assert "limit of 0 Mpx" in detail and "coarser gsd" in detail
        assert c.get("/v1/health").json()["queue_length"] == 0


def test_the_pixel_budget_is_the_servers_setting(root, src):
    with TestClient(make_app(root, max_pixels=1000)) as c:
        detail = _detail(c.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a"}),
                         400)
        assert "64 x 64" in detail and "limit of 0 Mpx" in detail
        small = {"input": {"path": str(src)}, "classes": "a", "window": [0, 0, 30, 30]}
        assert c.post("/v1/jobs/segment", headers=AUTH, json=small).status_code == 202


def test_the_servers_own_default_model_is_used_even_outside_its_allowed_folders(tmp_path):
    served, elsewhere = tmp_path / "served", tmp_path / "models"
    served.mkdir()
    elsewhere.mkdir()
    model = write_checkpoint(elsewhere)
    src = write_raster(served / "tile.tif", scene(64, 64)[0])
    with TestClient(make_app(served, default_model=str(model))) as c:
        job = c.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b"})
        assert job.status_code == 202, job.text
        assert wait_for(c, job.json()["id"])["state"] == "done"
        named = c.post("/v1/jobs/segment", headers=AUTH,
                       json={"input": {"path": str(src)}, "classes": "a; b", "model": str(model)})
        assert named.status_code == 202, named.text  # naming it is the same as not naming it
        other = elsewhere / "other.pt"
        other.write_bytes(model.read_bytes())
        refused = c.post("/v1/jobs/segment", headers=AUTH,
                         json={"input": {"path": str(src)}, "classes": "a", "model": str(other)})
        assert "outside the folders" in _detail(refused, 403)


@pytest.mark.parametrize("name, content", [("notes.pt", b"not weights\n"), ("hello.pt", b"hello\n"),
                                           ("empty.safetensors", b"{}")])
def test_a_model_path_that_is_no_checkpoint_is_a_400_at_submit(client, root, src, name, content):
    (root / name).write_bytes(content)
    body = {"input": {"path": str(src)}, "classes": "a", "model": str(root / name)}
    assert name in _detail(client.post("/v1/jobs/segment", headers=AUTH, json=body), 400)
    assert client.get("/v1/health").json()["queue_length"] == 0


def test_a_loopback_engine_answers_only_loopback_host_names(root):
    with TestClient(make_app(root, allowed_hosts=None), base_url="http://127.0.0.1:8765") as c:
        assert c.get("/v1/health").status_code == 200
        assert c.get("/v1/health", headers={"Host": "localhost:8765"}).status_code == 200
        rebound = c.get("/v1/jobs", headers={**AUTH, "Host": "attacker.example:8765"})
        assert rebound.status_code == 400  # a page that rebound its name to 127.0.0.1 gets nothing
    with TestClient(make_app(root, allowed_hosts=None, host="0.0.0.0"), base_url="http://gpu-box:8765") as c:
        assert c.get("/v1/health").status_code == 200  # remote mode: any name (or the --allowed-host ones)


def test_the_openapi_spec_needs_the_token(client):
    assert client.get("/openapi.json").status_code == 401
    spec = client.get("/openapi.json", headers=AUTH).json()
    problem = spec["paths"]["/v1/jobs/segment"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/ValidationProblem"}
    assert spec["components"]["schemas"]["ValidationProblem"]["properties"]["detail"]["type"] == "string"


def test_a_405_lists_every_method_the_path_takes(client):
    got = client.put("/v1/jobs/" + "a" * 32, headers=AUTH)
    assert got.status_code == 405
    assert set(got.headers["allow"].split(", ")) == {"GET", "DELETE"}


def test_uploads_have_a_total_quota_and_can_be_deleted(root, src):
    data = src.read_bytes()
    quota_mb = 1.5 * len(data) / 2**20
    with TestClient(make_app(root, max_uploads_mb=quota_mb)) as c:
        first = c.post("/v1/uploads", headers=AUTH, content=data)
        assert first.status_code == 201, first.text
        assert "quota" in _detail(c.post("/v1/uploads", headers=AUTH, content=data), 413)
        upload_id = first.json()["upload_id"]
        assert c.delete(f"/v1/uploads/{upload_id}", headers=AUTH).status_code == 204
        assert "no upload" in _detail(c.delete(f"/v1/uploads/{upload_id}", headers=AUTH), 404)
        body = {"input": {"upload_id": upload_id}, "classes": "a"}
        assert _detail(c.post("/v1/jobs/segment", headers=AUTH, json=body), 404)
        assert c.post("/v1/uploads", headers=AUTH, content=data).status_code == 201  # room again



@pytest.mark.parametrize("declared", [True, False])
def test_concurrent_uploads_stay_within_the_quota(root, src, declared):
    """Eight uploads at once into room for two: two are kept, the others are a 413 naming the quota, and
    the uploads on disk never pass it (with and without a Content-Length)."""
    data = src.read_bytes()
    quota = 2.5 * len(data)
    answers: list[tuple[int, str]] = []
    with TestClient(make_app(root, max_uploads_mb=quota / 2**20)) as c:
        def send():
            body = data if declared else (data[i:i + 8192] for i in range(0, len(data), 8192))
            got = c.post("/v1/uploads", headers=AUTH, content=body)
            answers.append((got.status_code, got.json().get("detail", "")))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        codes = sorted(code for code, _ in answers)
        if declared:  # each reserves its whole size first: exactly two fit
            assert codes == [201, 201] + [413] * 6, answers
        else:  # each reserves as its bytes come: at most two fit
            assert len(codes) == 8 and set(codes) <= {201, 413} and codes.count(201) <= 2, answers
        assert all("quota" in detail for code, detail in answers if code == 413), answers
        kept = list((root / "engine-data" / "uploads").iterdir())
        assert len(kept) == codes.count(201) and sum(p.stat().st_size for p in kept) <= quota
        if len(kept) == 2:
            assert c.post("/v1/uploads", headers=AUTH, content=data).status_code == 413  # still full


def test_a_full_data_folder_is_a_507_naming_it_and_recovers(root, src):
    data = src.read_bytes()
    with TestClient(make_app(root)) as c:
        uploads = root / "engine-data" / "uploads"
        with file_size_limit(len(data) // 2):
            detail = _detail(c.post("/v1/uploads", headers=AUTH, content=data), 507)
        assert "engine-data" in detail and "is full" in detail
        assert list(uploads.iterdir()) == []  # nothing half-written
        assert c.post("/v1/uploads", headers=AUTH, content=data).status_code == 201  # space is back


def test_a_data_folder_that_cannot_be_written_is_one_line_at_start(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {**os.environ, "FARSLIP_CONFIG_DIR": str(tmp_path / "config"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--data-dir", str(blocked / "data"),
                          "--port", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "data folder" in run.stderr and str(blocked) in run.stderr


def test_a_token_file_others_can_read_is_made_private(tmp_path):
    folder = tmp_path / "config"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o644)
    assert load_or_create_token(token) == TOKEN
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
