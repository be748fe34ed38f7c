"""Property-based tests of the whole HTTP API from its own /openapi.json (schemathesis), as the admin.

Given the real server (SQLite, controllers off), when schemathesis sends generated requests to every
operation, then no answer is a 5xx, every answer's status code is documented, and every JSON body
matches the schema the server publishes. A bounded number of examples per operation keeps the run
under a minute.
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

from support.server import RunningServer

pytestmark = pytest.mark.timeout(120)

MAX_EXAMPLES = int(os.environ.get("DPUFLEET_SCHEMATHESIS_EXAMPLES", "20"))
TOTAL_BUDGET = 50.0  # seconds for the whole module; later operations run fewer examples once it is spent
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _run_operation(operation: Any, api: RunningServer, failures: list[str], deadline: float) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}

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
        if time.monotonic() > deadline:
            return
        if isinstance(case.query, dict) and "watch" in case.query:
            case.query["watch"] = "false"  # a watch streams until the client leaves (tests/unit cover it)
        try:
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS, timeout=10)
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
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        _run_operation(operation, api, failures, deadline)
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)
