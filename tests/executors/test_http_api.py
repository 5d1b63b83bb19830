"""The http_api executor against a real local HTTP server (the stand-in target): how a task becomes
a request, how every kind of response or failure is classified, and that what it reports is
always storable and never holds a secret."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contracts import commands as c
from contracts import roundtrip
from contracts.executors import MAX_RESPONSE_BYTES, HttpApiConfig
from services.executors.base import BAD_REQUEST, CONNECTION, TIMEOUT, Call, Outcome
from services.executors.http_api import MAX_RESULT_BYTES, MAX_RETRY_AFTER_S, HttpApiExecutor
from services.executors.secrets import REDACTED, SecretError
from services.executors.standins.http_target import create_app
from services.executors.standins.serving import free_port, serving

TOKEN = "tok-0123456789abcdef"


@pytest.fixture(scope="module")
def target() -> Iterator[str]:
    with serving(create_app()) as url:
        yield url


def _config(endpoint: str, **fields: Any) -> HttpApiConfig:
    return HttpApiConfig.model_validate({"name": "api", "type": "http_api", "endpoint": endpoint, **fields})


class _Running:
    """A started executor; ``run`` calls it with a fresh idempotency key unless one is given."""

    def __init__(self, executor: HttpApiExecutor) -> None:
        self.executor = executor

    async def run(self, action: str | None = None, key: str | None = None, timeout_s: float | None = None,
                  **parameters: Any) -> Outcome:
        call = Call(task_id="t1", attempt=1, action=action, parameters=parameters,
                    idempotency_key=key or f"agentbus-{uuid.uuid4().hex}", timeout_s=timeout_s)
        outcome = await self.executor.call(call)
        _assert_storable(outcome)
        return outcome


def _assert_storable(outcome: Outcome) -> None:
    """What the host would report reads back as written."""
    if outcome.ok:
        roundtrip.check(c.CompleteTask(task_id="t1", result=outcome.result))
        assert len(orjson.dumps(outcome.result)) <= MAX_RESULT_BYTES
    else:
        assert outcome.error and outcome.error_code
        roundtrip.check(c.FailTask(task_id="t1", error=outcome.error))


async def _started(config: HttpApiConfig) -> AsyncIterator[_Running]:
    executor = HttpApiExecutor(config)
    await executor.start()
    try:
        yield _Running(executor)
    finally:
        await executor.close()


@pytest.fixture
async def api(target: str) -> AsyncIterator[_Running]:
    async for running in _started(_config(target)):
        yield running


async def _counts(target: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{target}/_counts")).json()  # type: ignore[no-any-return]


# --- mapping a task to a request ------------------------------------------------------------------


async def test_a_json_response_is_the_result(api: _Running) -> None:
    out = await api.run(path="/echo/items/7")
    assert out.ok and out.result["status"] == 200 and out.result["truncated"] is False
    body = out.result["body"]
    assert body["method"] == "GET" and body["path"] == "/echo/items/7" and body["body"] is None
    assert out.result["headers"]["content-type"] == "application/json"
    assert out.result["http_version"] == "HTTP/1.1" and out.result["elapsed_ms"] > 0


async def test_a_text_response_is_text(api: _Running) -> None:
    out = await api.run(path="/big", query={"bytes": 12})
    assert out.ok and out.result["body"] == "x" * 12
    assert out.result["headers"]["content-type"].startswith("text/plain")


async def test_query_headers_and_body_are_sent(api: _Running) -> None:
    out = await api.run(path="/echo", query={"q": "agents", "n": 3, "tags": ["a", "b"], "exact": True},
                        headers={"X-Trace": "abc", "X-Count": 2}, body={"text": "hello", "n": [1, 2]})
    body = out.result["body"]
    assert body["method"] == "POST"  # a body and no method: POST
    assert body["query"] == {"q": "agents", "n": "3", "tags": ["a", "b"], "exact": "true"}
    assert body["headers"]["x-trace"] == "abc" and body["headers"]["x-count"] == "2"
    assert body["headers"]["content-type"] == "application/json"
    assert body["body"] == {"text": "hello", "n": [1, 2]}


@pytest.mark.parametrize(("action", "method", "expected"), [
    ("delete", None, "DELETE"), ("Put", None, "PUT"), ("search", None, "GET"), ("post", "patch", "PATCH"),
    (None, "OPTIONS", "OPTIONS"),
])
async def test_the_method_comes_from_parameters_then_the_action(
        api: _Running, action: str | None, method: str | None, expected: str) -> None:
    parameters: dict[str, Any] = {"path": "/echo"} | ({"method": method} if method else {})
    out = await api.run(action, **parameters)
    assert out.ok and out.result["body"]["method"] == expected


async def test_head_has_no_body(api: _Running) -> None:
    out = await api.run("HEAD", path="/echo")
    assert out.ok and out.result["status"] == 200 and out.result["body"] is None


async def test_the_idempotency_key_is_sent_stable_and_not_overridable(api: _Running, target: str) -> None:
    key = f"agentbus-{uuid.uuid4().hex}"
    first = await api.run(path="/echo", key=key, headers={"Idempotency-Key": "mine"}, body={"n": 1})
    assert first.result["body"]["headers"]["idempotency-key"] == key
    again = await api.run(path="/echo", key=key, body={"n": 1})  # a repeat after a crash: same key
    assert again.result["body"] == first.result["body"]  # the target replayed its first answer
    counts = await _counts(target)
    assert counts["requests"][key] == 2 and counts["applied"][key] == 1


async def test_concurrent_repeats_of_one_key_apply_once(target: str) -> None:
    async for api in _started(_config(target, capacity=16)):
        key = f"agentbus-{uuid.uuid4().hex}"
        calls = [api.run(path="/slow", key=key, query={"seconds": 0.2}) for _ in range(12)]
        outs = await asyncio.gather(*calls)
        assert all(o.ok for o in outs)
        counts = await _counts(target)
        assert counts["requests"][key] == 12 and counts["applied"][key] == 1


async def test_static_headers_and_response_headers_kept(target: str) -> None:
    config = _config(target, headers={"X-Tenant": "acme"}, result_headers=["ETag", "X-Other"])
    async for api in _started(config):
        out = await api.run(path="/headers", query={"etag": '"v1"', "x-other": "o", "x-dropped": "d"})
        assert out.result["headers"] == {"etag": '"v1"', "x-other": "o"}
        echoed = await api.run(path="/echo", headers={"X-Tenant": "override"})
        assert echoed.result["body"]["headers"]["x-tenant"] == "override"  # a task may override a static one
        plain = await api.run(path="/echo")
        assert plain.result["body"]["headers"]["x-tenant"] == "acme"
        assert plain.result["body"]["headers"]["user-agent"] == "agentbus-http-api"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.mark.parametrize(("auth", "header", "sent"), [
    ({"type": "bearer", "token": "${env:AB_TEST_TOKEN}"}, "authorization", f"Bearer {TOKEN}"),
    ({"type": "api_key", "key": "${env:AB_TEST_TOKEN}"}, "x-api-key", TOKEN),
    ({"type": "api_key", "key": "${env:AB_TEST_TOKEN}", "header": "X-Custom-Key"}, "x-custom-key", TOKEN),
    ({"type": "basic", "username": "me", "password": "${env:AB_TEST_TOKEN}"}, "authorization",
     "Basic " + __import__("base64").b64encode(f"me:{TOKEN}".encode()).decode()),
])
async def test_authentication_reaches_the_server_and_never_the_result(
        target: str, monkeypatch: pytest.MonkeyPatch, auth: dict[str, Any], header: str, sent: str) -> None:
    monkeypatch.setenv("AB_TEST_TOKEN", TOKEN)
    async for api in _started(_config(target, authentication=auth)):
        out = await api.run(path="/echo", headers={header: "a task cannot replace it"})
        body = out.result["body"]
        assert body["header_digests"][header] == _digest(sent)  # the server saw the credential
        assert REDACTED in body["headers"][header]  # what the target echoed is scrubbed
        assert TOKEN not in orjson.dumps(out.result).decode()


async def test_a_secret_file_and_a_header_reference(target: str, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    config = _config(target, headers={"Authorization": f"Token ${{file:{secret}}}"})
    async for api in _started(config):
        out = await api.run(path="/echo")
        assert out.result["body"]["header_digests"]["authorization"] == _digest(f"Token {TOKEN}")
        assert TOKEN not in orjson.dumps(out.result).decode()


async def test_a_missing_secret_fails_start_naming_it(target: str) -> None:
    auth = {"type": "bearer", "token": "${env:AB_UNSET_X}"}
    executor = HttpApiExecutor(_config(target, authentication=auth))
    with pytest.raises(SecretError, match=r"api\.authentication\.token: \$\{env:AB_UNSET_X\} is not set"):
        await executor.start()


# --- classifying what came back ---------------------------------------------------------------------


async def test_a_client_error_is_not_retried(api: _Running) -> None:
    out = await api.run(path="/status/404")
    assert not out.ok and not out.retryable and out.error_code == "http_status:404"
    assert out.error is not None and "HTTP 404 Not Found" in out.error
    assert "the status 404 was asked for" in out.error  # an excerpt of the body
    assert out.retry_after_s is None


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_server_errors_timeouts_and_throttling_are_retried(api: _Running, status: int) -> None:
    out = await api.run(path=f"/status/{status}")
    assert not out.ok and out.retryable and out.error_code == f"http_status:{status}"
    assert out.retry_after_s is None  # without a Retry-After: an ordinary retry


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_in_seconds_defers(api: _Running, status: int) -> None:
    out = await api.run(path=f"/status/{status}", query={"retry_after": "7"})
    assert not out.ok and out.retryable and out.retry_after_s == 7.0
    assert out.error_code == f"http_status:{status}"


async def test_retry_after_as_an_http_date_defers(api: _Running) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    out = await api.run(path="/status/503", query={"retry_after": when})
    assert out.retry_after_s is not None and 25 <= out.retry_after_s <= 30


@pytest.mark.parametrize(("value", "expected"), [
    ("99999999999", MAX_RETRY_AFTER_S), ("Mon, 01 Jan 2001 00:00:00 GMT", 0.0), ("-5", 0.0),
])
async def test_retry_after_is_clamped(api: _Running, value: str, expected: float) -> None:
    out = await api.run(path="/status/429", query={"retry_after": value})
    assert out.retry_after_s == expected


async def test_an_unreadable_retry_after_is_an_ordinary_retry(api: _Running) -> None:
    out = await api.run(path="/status/429", query={"retry_after": "soon"})
    assert not out.ok and out.retryable and out.retry_after_s is None


async def test_a_retry_after_on_another_status_does_not_defer(api: _Running) -> None:
    out = await api.run(path="/status/500", query={"retry_after": "5"})
    assert out.retryable and out.retry_after_s is None


async def test_a_slow_target_times_out_and_the_call_limit_wins(target: str) -> None:
    async for api in _started(_config(target, timeout=30)):
        began = time.perf_counter()
        out = await api.run(path="/slow", query={"seconds": 3}, timeout_s=0.3)
        assert not out.ok and out.retryable and out.error_code == TIMEOUT
        assert time.perf_counter() - began < 2.0 and out.error is not None and "0.3 s" in out.error
    async for api in _started(_config(target, timeout=0.2)):
        assert (await api.run(path="/slow", query={"seconds": 0.5})).error_code == TIMEOUT
        assert (await api.run(path="/slow", query={"seconds": 0.5}, timeout_s=5)).ok


async def test_a_refused_connection_is_retried() -> None:
    async for api in _started(_config(f"http://127.0.0.1:{free_port()}")):
        out = await api.run(path="/echo")
        assert not out.ok and out.retryable and out.error_code == CONNECTION


async def test_redirects_fail_unless_followed(target: str) -> None:
    async for api in _started(_config(target)):
        out = await api.run(path="/status/302", query={"location": "/echo/moved"})
        assert not out.ok and not out.retryable and out.error_code == "http_status:302"
        assert out.error is not None and "/echo/moved" in out.error
    async for api in _started(_config(target, follow_redirects=True)):
        out = await api.run(path="/status/302", query={"location": "/echo/moved"})
        assert out.ok and out.result["body"]["path"] == "/echo/moved"


@pytest.mark.parametrize(("parameters", "says"), [
    ({"query": ["a"]}, "parameters.query must be an object"),
    ({"query": {"a": {"b": 1}}}, "parameters.query.a"),
    ({"method": "FETCH"}, "parameters.method must be one of"),
    ({"method": 3}, "parameters.method must be one of"),
    ({"path": "http://elsewhere.example/x"}, "relative to the endpoint"),
    ({"path": "//elsewhere.example/x"}, "relative to the endpoint"),
    ({"path": 7}, "parameters.path must be text"),
    ({"headers": {"X-A": "a\r\nX-B: b"}}, "printable ASCII"),
    ({"headers": {"bad name": "v"}}, "is not a header name"),
    ({"headers": "X-A: 1"}, "parameters.headers must be an object"),
    ({"url": "/echo"}, "unknown parameters url"),
])
async def test_parameters_that_make_no_request_are_not_retried(
        api: _Running, parameters: dict[str, Any], says: str) -> None:
    out = await api.run(**parameters)
    assert not out.ok and not out.retryable and out.error_code == BAD_REQUEST
    assert out.error is not None and says in out.error


# --- what a result may hold ---------------------------------------------------------------------------


async def test_a_long_body_is_cut_and_flagged(target: str) -> None:
    async for api in _started(_config(target, max_response_bytes=1000)):
        out = await api.run(path="/big", query={"bytes": 100_000})
        assert out.result["truncated"] is True and out.result["body"] == "x" * 1000
        cut_json = await api.run(path="/big", query={"bytes": 5000, "type": "json"})
        assert cut_json.result["truncated"] is True and cut_json.result["body"] == '{"data":"' + "x" * 991
        whole = await api.run(path="/big", query={"bytes": 900, "type": "json"})
        assert whole.result["truncated"] is False and whole.result["body"] == {"data": "x" * 889}


async def test_a_result_stays_storable_whatever_the_body_holds(target: str) -> None:
    async for api in _started(_config(target, max_response_bytes=MAX_RESPONSE_BYTES)):
        # Control characters take six bytes of JSON each; NUL no store holds at all.
        control = await api.run(path="/big", query={"bytes": MAX_RESPONSE_BYTES, "fill": "01"})
        assert control.result["truncated"] is True
        assert len(orjson.dumps(control.result)) <= MAX_RESULT_BYTES
        # As much of it as fits: about a sixth of the bytes, not nothing.
        assert set(control.result["body"]) == {"\x01"}
        assert len(control.result["body"]) > MAX_RESULT_BYTES // 6 - 1000
        nul = await api.run(path="/big", query={"bytes": 100, "fill": "00"})
        assert nul.result["body"] == "\ufffd" * 100


async def test_http2_is_offered(target: str) -> None:
    # A plain-HTTP server is spoken to in HTTP/1.1 (h2 over cleartext needs prior knowledge):
    # the client opens with HTTP/2 enabled and calls through.
    async for api in _started(_config(target, http2=True)):
        out = await api.run(path="/echo")
        assert out.ok and out.result["http_version"] in ("HTTP/1.1", "HTTP/2")


def _self_signed(folder: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that signs itself (and may so be a trust anchor), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentbus test target")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "target.pem", folder / "target.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


async def test_https_is_verified_against_the_certificates_ssl_cert_file_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the README says: HTTPS is verified against the system's certificate store, or the file
    ``SSL_CERT_FILE`` names. A target whose certificate nobody trusts is a retryable connection
    error naming the verification; trusted through ``SSL_CERT_FILE``, it is called."""
    cert_file, key_file = _self_signed(tmp_path)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with serving(create_app(), ssl_certfile=cert_file, ssl_keyfile=key_file) as url:
        assert url.startswith("https://")
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        async for api in _started(_config(url)):
            refused = await api.run(path="/echo")
            assert not refused.ok and refused.error_code == CONNECTION and refused.retryable
            assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")
        monkeypatch.setenv("SSL_CERT_FILE", cert_file)
        async for api in _started(_config(url)):
            out = await api.run(path="/echo")
            assert out.ok and out.result["status"] == 200
