"""schemathesis against /api/openapi.json of a live server: no 5xx, and answers as the document describes.

Driven by hand over each operation's hypothesis strategy (schemathesis's pytest plugin does not load under
this pytest), with a bounded number of examples per operation so the suite stays fast.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from support import Server, fresh_id

EXAMPLES = 15


@pytest.fixture(scope="module")
def api_schema(server_factory):
    server: Server = server_factory(RATE_LIMIT=0)
    return schemathesis.openapi.from_url(server.http_url + "/api/openapi.json")


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("caller", ["customer", "backend"])
def test_every_operation_conforms(api_schema, caller: str, mode: GenerationMode) -> None:
    """Generated requests (valid and invalid) never get a 5xx, and every answer conforms to the document.

    As the backend (no X-User-Id) some bodies are required that a customer may leave out (the user to open a
    session for, the sender of a message), which the document says in words: the check that every
    schema-valid request is accepted runs for the customer only.
    """
    headers = {"X-User-Id": str(fresh_id())} if caller == "customer" else {}
    excluded = [positive_data_acceptance] if caller == "backend" else []
    failures = []
    for operation in operations(api_schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(headers=headers, excluded_checks=excluded)

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # an operation without inputs has no invalid request
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
