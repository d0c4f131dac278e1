"""Schemathesis against the published OpenAPI spec: no generated request may get a 5xx."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from tests.engine.api_helpers import AUTH, make_app

_ROOT = Path(tempfile.mkdtemp(prefix="farslip-fuzz-"))
app = make_app(_ROOT, max_queue=2)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    for headers in (AUTH, {}):
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
