"""Property-based fuzzing of the REST API from its OpenAPI schema: no input gives a 5xx.

Schemathesis generates valid and invalid requests for every operation (path and
query parameters, JSON bodies, with and without the token) and calls the app
in process (ASGI); every response must be a non-server error with a JSON body
that matches the schema.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from modelhopper.server import create_app  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = 30  # per operation: ~20 operations, ~600 requests


def _operations(store, token):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store, token=token))
    return [result.ok() for result in schema.get_all_operations()]


def test_no_input_gives_a_server_error(store, token):
    headers = {"Authorization": f"Bearer {token}"}
    checks = [not_a_server_error, response_schema_conformance]

    operations = _operations(store, token)
    labels = {operation.label for operation in operations}  # every endpoint is fuzzed
    assert "POST /api/runs/{run}/msts/{mst_id}/clone" in labels and len(labels) == 17
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples on every run: a failure can be replayed
            database=None,
        )
        def call(case):
            response = case.call_and_validate(headers=headers, checks=checks)
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error", "detail"} and body["error"], body

        call()
