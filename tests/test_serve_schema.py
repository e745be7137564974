"""`imgcls serve` fuzzed from its own ``/openapi.json`` by schemathesis, over HTTP on a live
loopback server: no request gets a 5xx, and every answer's status, content type and body are
the ones the document declares. Bounded and reproducible: a few examples per operation,
derandomized, no shrinking."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "fastapi", reason="the serve extra is not installed: pip install 'imgcls[serve]'"
)
schemathesis = pytest.importorskip("schemathesis", reason="pip install 'schemathesis>=4'")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402 - after the skips above
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Server  # noqa: E402

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


TOKEN = "s3cret"


@pytest.fixture(scope="module")
def live(trained_run):
    s = Server(trained_run[0])
    yield s
    s.stop()


# One test looping over the operations, not `schema.parametrize()` with
# `schemathesis.pytest.from_fixture`: that lazy loader fails on this pytest ("'Function' object
# has no attribute '_nodeid'"), and a schema loaded at collection would need the server then.
def test_every_operation_answers_as_its_openapi_document_says(live, trained_run):
    operations = operations_of(live.url)
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, trained_run[0].name, max_examples=15)


def test_without_the_token_every_answer_is_a_documented_401(trained_run):
    """With ``--token``, requests without it: the 401 (or the open routes' answers) must be
    in the document too."""
    s = Server(trained_run[0], "--token", TOKEN)
    try:
        for operation in operations_of(s.url, {"Authorization": f"Bearer {TOKEN}"}):
            fuzz(operation, GenerationMode.POSITIVE, trained_run[0].name, max_examples=3)
    finally:
        s.stop()


def test_version_is_a_path_parameter_only(live, trained_run):
    """Found by the fuzzer: the unversioned v2 routes took ``?version=`` as a query parameter
    (and answered 404 to any other than 1)."""
    httpx = pytest.importorskip("httpx")
    name = trained_run[0].name
    assert httpx.get(f"{live.url}/v2/models/{name}?version=2").status_code == 200
    assert httpx.get(f"{live.url}/v2/models/{name}/versions/2/ready").status_code == 404
    doc = httpx.get(f"{live.url}/openapi.json").json()
    params = doc["paths"]["/v2/models/{model}/infer"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["model", "Inference-Header-Content-Length"]
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def operations_of(url: str, headers: dict | None = None) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers or {})
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation, mode, model: str, max_examples: int) -> None:
    """Fuzz ``operation`` with data that fits its schema (POSITIVE) or not (NEGATIVE)."""

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same cases every run
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is shown as found
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case):
        # A random model name only ever reaches the 404; the served one lets the fuzzed bodies
        # through to the parsing they are meant to exercise (404s: test_serve.py).
        if "model" in (case.path_parameters or {}):
            case.path_parameters["model"] = model
        if "version" in (case.path_parameters or {}):
            case.path_parameters["version"] = "1"
        case.call_and_validate(checks=CHECKS, timeout=30)

    try:
        run()
    except Unsatisfiable:  # nothing to get wrong: no body and no parameters (e.g. GET /)
        assert mode == GenerationMode.NEGATIVE
