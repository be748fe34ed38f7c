"""Property-based tests of the whole HTTP API from its own /openapi.json (schemathesis), as the admin.

Given the real server (SQLite, controllers off), when schemathesis sends generated requests to every
operation of every kind (list, create, get, replace, patch, delete, status, watch), then no answer is
a 5xx, every answer's status code is documented, and every JSON body matches the schema the server
publishes. A few examples per operation and a time budget keep the run bounded; a watch is bounded
by its own timeoutSeconds (the server ends the stream), never by the client giving up.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dpufleet.api.kinds import REGISTRY
from support.server import BASE, RunningServer

pytestmark = pytest.mark.timeout(360)

MAX_EXAMPLES = int(os.environ.get("DPUFLEET_SCHEMATHESIS_EXAMPLES", "4"))
TOTAL_BUDGET = 240.0  # seconds for the whole run; past it, each operation still gets its explicit example
WATCH_SECONDS = 1  # the watch streams generated requests open end after this (their own timeoutSeconds)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _run_operation(operation: Any, api: RunningServer, failures: list[str], deadline: float) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}
    calls: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing example is reported as is
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        if time.monotonic() > deadline and calls:
            return
        calls.append(1)
        if "/watch/" in operation.path:
            case.query = {**(case.query or {}), "timeoutSeconds": WATCH_SECONDS}
        started = time.monotonic()
        try:
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS, timeout=10)
            assert time.monotonic() - started < WATCH_SECONDS + 5, "the answer took too long (a hung stream?)"
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' Failure, FailureGroup
            if not failures or not failures[-1].startswith(f"{operation.label}:"):
                failures.append(
                    f"{operation.label}: {case.method} {case.formatted_path} body={case.body!r:.300}\n{exc}"
                )
            raise AssertionError(str(exc)) from None

    with contextlib.suppress(AssertionError):  # recorded above; carry on with the next operation
        run()


def test_no_server_errors_and_responses_match_the_schema(api: RunningServer) -> None:
    document = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    deadline = time.monotonic() + TOTAL_BUDGET
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for info in REGISTRY.values():  # every operation of every kind is in the run
        served = {op.path for op in operations}
        assert f"{BASE}/projects/{{project}}/{info.plural}/{{name}}" in served, info.kind
        assert f"{BASE}/watch/projects/{{project}}/{info.plural}" in served, info.kind
    for operation in operations:
        _run_operation(operation, api, failures, deadline)
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)
