"""Fuzz the runtime's API from its own OpenAPI schema (schemathesis): whatever a client sends, no 5xx, no crash."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 25


def test_no_generated_request_gets_a_server_error(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/chat/completions", "POST /v1/completions", "POST /v1/adapters", "GET /v1/receipts/{call_id}",
        "GET /v1/channels/{channel_id}", "DELETE /v1/adapters/{adapter_id}",
    }  # fmt: skip
    statuses: list[int] = []
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)  # fmt: skip
        def fuzz(case):
            response = case.call(base_url=server.url, timeout=60)
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code == 402:  # a 402 always tells a paying client what to do
                assert "payment-required" in {k.lower() for k in response.headers}
            statuses.append(response.status_code)

        fuzz()
    assert len(statuses) >= 5 * len(operations), "the fuzzer barely ran"
    assert any(400 <= s < 500 for s in statuses) and any(s == 200 for s in statuses)
    r = httpx.post(server.url + "/v1/completions", json={"model": "free", "prompt": "still here", "max_tokens": 2})
    assert r.status_code == 200
