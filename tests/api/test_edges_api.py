"""What every endpoint shares: tokens, JSON errors, body limits, the OpenAPI document."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from orchestrator.core.models import Resource
from orchestrator.core.tokens import agent_token_reset
from tests.api.conftest import API

pytestmark = pytest.mark.django_db(transaction=True)

# Every operation of the contract, with a body that would be well-formed.
OPERATIONS = [
    ("post", "/resources", {"name": "doc"}),
    ("get", "/resources/doc", None),
    ("put", "/resources/doc", {"value": 1}),
    ("post", "/locks", {"resource": "doc"}),
    ("get", "/lock-requests/1", None),
    ("post", "/locks/1/renew", {"ttl": 30}),
    ("delete", "/locks/1", None),
    ("get", "/conflicts", None),
]
OPENAPI_PATHS = {
    f"{API}/resources",
    f"{API}/resources/{{name}}",
    f"{API}/locks",
    f"{API}/lock-requests/{{request_id}}",
    f"{API}/locks/{{lock_id}}/renew",
    f"{API}/locks/{{lock_id}}",
    f"{API}/conflicts",
    f"{API}/approvals",
    f"{API}/approvals/{{approval_id}}",
    f"{API}/whoami",
    f"{API}/lock-sets",
    f"{API}/lock-sets/{{lock_set_id}}",
}


def call(client: Client, method: str, path: str, body=None, **extra):
    data = "" if body is None else (body if isinstance(body, str) else json.dumps(body))
    return getattr(client, method)(API + path, data, content_type="application/json", **extra)


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str)
    assert isinstance(body["detail"], str)
    return body


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_every_operation_needs_a_token(method, path, body) -> None:
    response = call(Client(), method, path, body)

    assert assert_json_error(response, 401)["error"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer orc_not-a-real-token",
        "Bearer ",
        "Basic YWxpY2U6cHc=",
        "orc_token-without-a-scheme",
        "Bearer " + "x" * 5000,
    ],
)
def test_a_wrong_token_is_401_invalid_token(alice, header) -> None:
    alice.create("doc")

    response = Client(HTTP_AUTHORIZATION=header).get(f"{API}/resources/doc")

    assert_json_error(response, 401)
    assert 'error="invalid_token"' in response["WWW-Authenticate"]


def test_a_reset_token_stops_working(alice) -> None:
    old = Client(HTTP_AUTHORIZATION=f"Bearer {alice.token}")
    new_token = agent_token_reset(agent=alice.agent)

    assert_json_error(old.get(f"{API}/conflicts"), 401)
    assert (
        Client(HTTP_AUTHORIZATION=f"Bearer {new_token}").get(f"{API}/conflicts").status_code == 200
    )


@pytest.mark.parametrize("raw", ["{not json", '{"name": "doc",}', "\x00", "[" * 5000])
def test_bad_json_is_400(alice, raw) -> None:
    response = alice.post("/resources", raw)

    assert assert_json_error(response, 400)["error"] == "invalid_request"
    assert not Resource.objects.exists()


@pytest.mark.parametrize("raw", ["[]", '"doc"', "42", "null", "true", ""])
def test_a_body_that_is_not_an_object_is_400(alice, raw) -> None:
    response = alice.post("/locks", raw)

    body = assert_json_error(response, 400)
    assert body["error"] == "invalid_request"
    assert body["detail"].startswith("body")


def test_a_body_larger_than_the_upload_limit_is_413(alice, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    response = alice.post("/resources", {"name": "doc", "value": "x" * 2000})

    assert assert_json_error(response, 413)["error"] == "request_too_large"
    assert not Resource.objects.exists()


def test_a_body_within_the_limit_is_accepted(alice, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024

    assert alice.post("/resources", {"name": "doc", "value": "x" * 900}).status_code == 201


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/nothing"),
        ("get", "/"),
        ("post", "/resources/"),
        ("post", "/locks/"),
        ("get", "/conflicts/"),
        ("post", "/locks/1/renew/"),
        ("get", "/lock-requests/1/"),
        ("get", "/lock-requests/"),
    ],
)
def test_unknown_paths_are_json_404(alice, method, path) -> None:
    response = call(alice.client, method, path)

    assert assert_json_error(response, 404)["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", "/locks", "POST"),
        ("delete", "/resources", "GET, POST"),
        ("post", "/resources/doc", "GET, PUT"),
        ("patch", "/locks/1", "DELETE"),
        ("get", "/locks/1/renew", "POST"),
        ("options", "/conflicts", "GET"),
    ],
)
def test_wrong_methods_are_json_405_with_allow(alice, method, path, allowed) -> None:
    response = call(alice.client, method, path)

    assert assert_json_error(response, 405)["error"] == "method_not_allowed"
    assert sorted(response["Allow"].split(", ")) == sorted(allowed.split(", "))


def test_no_error_response_is_html(alice, bob, settings) -> None:
    """A sweep of refusals of every kind: each one is JSON with error and detail."""
    alice.create("doc")
    lock = alice.acquire("doc").json()
    anonymous = Client()
    cookie_client = Client(HTTP_AUTHORIZATION=f"Bearer {alice.token}", enforce_csrf_checks=True)
    cookie_client.cookies["csrftoken"] = "x" * 32
    requests = [
        (anonymous, "get", "/resources/doc", None),
        (alice.client, "get", "/resources/missing", None),
        (alice.client, "post", "/resources", "{oops"),
        (alice.client, "post", "/resources", {"name": "doc"}),
        (alice.client, "put", "/resources/doc", {"value": 1, "expected_version": -1}),
        (bob.client, "put", "/resources/doc", {"value": 1}),
        (bob.client, "post", "/locks", {"resource": "doc"}),
        (bob.client, "delete", f"/locks/{lock['id']}", None),
        (bob.client, "post", f"/locks/{lock['id']}/renew", {"ttl": 5}),
        (alice.client, "get", "/conflicts?kind=nope", None),
        (alice.client, "get", "/no/such/endpoint", None),
        (alice.client, "put", "/locks", None),
        (alice.client, "head", "/conflicts", None),
        (cookie_client, "post", "/resources", {"name": "doc"}),  # CSRF does not apply
        (cookie_client, "post", "/no/such/endpoint", {}),
    ]
    for client, method, path, body in requests:
        response = call(client, method, path, body)
        assert 400 <= response.status_code < 500, (method, path, response.status_code)
        assert response["Content-Type"].startswith("application/json"), (method, path)
        assert b"<html" not in response.content.lower()
        if method != "head":
            assert {"error", "detail"} <= set(response.json()), (method, path)
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10
    assert_json_error(call(alice.client, "put", "/resources/doc", {"value": "long"}), 413)


def test_openapi_document_lists_every_path_and_its_errors(alice) -> None:
    response = alice.client.get(f"{API}/openapi.json")  # an agent fetches it with its token

    assert response.status_code == 200
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == OPENAPI_PATHS
    schemes = document["components"]["securitySchemes"]
    assert [(s["type"], s["scheme"]) for s in schemes.values()] == [("http", "bearer")]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"400", "401"} <= set(responses), (method, path)
            for code, spec in responses.items():
                if code.startswith("4"):
                    ref = spec["content"]["application/json"]["schema"]["$ref"]
                    error_schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
                    assert {"error", "detail"} <= set(error_schema["required"]), (path, code)
            assert operation["security"], (method, path)
    put = document["paths"][f"{API}/resources/{{name}}"]["put"]["responses"]
    assert {"200", "202", "404", "409", "413"} <= set(put)
    acquire = document["paths"][f"{API}/locks"]["post"]["responses"]
    assert {"201", "202", "404", "409"} <= set(acquire)
    assert "422" not in json.dumps(document["paths"])
    release = document["paths"][f"{API}/locks/{{lock_id}}"]["delete"]["responses"]
    assert {"204", "403", "404", "410"} <= set(release)
