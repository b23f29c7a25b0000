"""health.py against httpx.MockTransport: what each answer of an engine turns into."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from mlctl import health
from mlctl.errors import HealthError

BASE = "http://127.0.0.1:8000"
KEY = "sk-mlctl-secret-0123456789"

Handler = Callable[[httpx.Request], httpx.Response]


def mock(handler: Handler) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def models_answer(*ids: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": i} for i in ids]})


def chat_answer(text: str = "OK") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
        },
    )


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Engine:
    """A scripted engine: health answers follow ``health_script``, then stay at the last one."""

    def __init__(
        self,
        health_script: list[Callable[[httpx.Request], httpx.Response]],
        models: Callable[[httpx.Request], httpx.Response] = lambda r: models_answer("m"),
        chat: Callable[[httpx.Request], httpx.Response] = lambda r: chat_answer(),
    ) -> None:
        self.health_script = list(health_script)
        self.models = models
        self.chat = chat
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/health":
            step = (
                self.health_script.pop(0) if len(self.health_script) > 1 else self.health_script[0]
            )
            return step(request)
        if request.url.path == "/v1/models":
            return self.models(request)
        if request.url.path == "/v1/chat/completions":
            return self.chat(request)
        return httpx.Response(404, json={"error": {"message": "no route"}})


def loading(request: httpx.Request) -> httpx.Response:
    body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    return httpx.Response(503, json=body)


def healthy(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"status": "ok"})


# ---------------------------------------------------------------- check_health


def test_health_refused_then_loading_then_ok() -> None:
    engine = Engine([refused, loading, healthy])
    probes = [health.check_health(BASE, "/health", transport=mock(engine)) for _ in range(3)]
    assert [(p.ok, p.status) for p in probes] == [(False, None), (False, 503), (True, 200)]
    assert "refused" in probes[0].detail
    assert probes[1].detail == "HTTP 503: Loading model"
    assert probes[2].detail == "ok"
    assert all(p.elapsed_ms >= 0 for p in probes)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (httpx.ReadTimeout, "no answer within 2s"),
        (httpx.ConnectTimeout, "no connection within 2s"),
        (httpx.RemoteProtocolError, "closed without a complete answer"),
    ],
)
def test_health_transport_errors_become_probes(exc: type[httpx.TransportError], words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    probe = health.check_health(BASE, "/health", transport=mock(handler))
    assert (probe.ok, probe.status) == (False, None)
    assert words in probe.detail


def test_health_path_and_v1_suffix_are_joined() -> None:
    engine = Engine([healthy])
    assert health.check_health(BASE + "/v1/", "health", transport=mock(engine)).ok
    assert engine.seen == ["GET /health"]


def test_health_real_refused_port() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = health.check_health(f"http://127.0.0.1:{port}", "/health", timeout=1.0)
    assert not probe.ok and probe.status is None and "refused" in probe.detail


# ---------------------------------------------------------------- list_models


def test_list_models_ids_and_key_sent() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return models_answer("a", "b")

    assert health.list_models(BASE, KEY, transport=mock(handler)) == ["a", "b"]
    assert seen == [f"Bearer {KEY}"]


def test_list_models_401_names_the_key_but_never_shows_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"Invalid API Key {KEY}"}})

    with pytest.raises(HealthError) as info:
        health.list_models(BASE, KEY, transport=mock(handler))
    assert "refused the API key" in info.value.message
    assert "HTTP 401" in info.value.message
    assert KEY not in str(info.value)


def test_list_models_not_a_model_list() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    with pytest.raises(HealthError, match="not JSON"):
        health.list_models(BASE, None, transport=mock(handler))


def test_list_models_unreachable_is_health_error() -> None:
    with pytest.raises(HealthError, match="refused"):
        health.list_models(BASE, KEY, transport=mock(refused))


def test_auth_headers() -> None:
    assert health.auth_headers(None) == {}
    assert health.auth_headers("") == {}
    assert health.auth_headers("k") == {"Authorization": "Bearer k"}


# ---------------------------------------------------------------- chat_once


def test_chat_once_sends_one_token_request() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return chat_answer("OK")

    result = health.chat_once(BASE, KEY, "m", transport=mock(handler))
    assert result.text == "OK"
    assert result.usage == {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    assert bodies[0]["max_tokens"] == 1 and bodies[0]["model"] == "m"
    assert bodies[0]["stream"] is False


@pytest.mark.parametrize(
    ("status", "body", "quoted"),
    [
        (400, {"error": {"message": "model 'x' does not exist"}}, "model 'x' does not exist"),
        (404, {"object": "error", "message": "The model `x` does not exist."}, "does not exist"),
        (500, {"error": "llama runner process has terminated"}, "llama runner process"),
        (422, {"detail": "field required"}, "field required"),
        (502, "Bad Gateway", "Bad Gateway"),
    ],
)
def test_chat_once_error_body_is_surfaced(status: int, body: object, quoted: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    with pytest.raises(HealthError) as info:
        health.chat_once(BASE, KEY, "x", transport=mock(handler))
    assert f"HTTP {status}" in info.value.message
    assert quoted in info.value.message


def test_chat_once_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(HealthError, match="no answer within 3s"):
        health.chat_once(BASE, KEY, "m", timeout=3, transport=mock(handler))


def test_chat_once_without_choices() -> None:
    with pytest.raises(HealthError, match="without choices"):
        health.chat_once(
            BASE, None, "m", transport=mock(lambda r: httpx.Response(200, json={"x": 1}))
        )


# ---------------------------------------------------------------- streaming


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def delta(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})


def test_sse_data_parsing() -> None:
    lines = [": keep-alive", "event: message", "data: a", "data:b", "", "", "data: [DONE]", ""]
    assert list(health.sse_data(lines)) == ["a\nb", "[DONE]"]
    assert list(health.sse_data(["data: tail-without-blank"])) == ["tail-without-blank"]


def test_stream_chat_yields_deltas_until_done() -> None:
    role = json.dumps({"choices": [{"delta": {"role": "assistant"}}]})
    body = sse(role, delta("Hel"), delta("lo"), "[DONE]", delta("after done"))

    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    out = list(health.stream_chat(BASE, KEY, "m", "hi", transport=mock(handler)))
    assert out == ["Hel", "lo"]


def test_stream_chat_cut_before_done() -> None:
    body = sse(delta("Hel"))
    stream = health.stream_chat(
        BASE, KEY, "m", "hi", transport=mock(lambda r: httpx.Response(200, content=body))
    )
    assert next(stream) == "Hel"
    with pytest.raises(HealthError, match=r"ended before \[DONE\]"):
        next(stream)


def test_stream_chat_error_event_and_status() -> None:
    body = sse(delta("a"), json.dumps({"error": {"message": "context overflow"}}))
    with pytest.raises(HealthError, match="context overflow"):
        list(
            health.stream_chat(
                BASE, None, "m", "hi", transport=mock(lambda r: httpx.Response(200, content=body))
            )
        )

    def unauthorized(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "Invalid API Key"}})

    with pytest.raises(HealthError, match="refused the API key"):
        list(health.stream_chat(BASE, KEY, "m", "hi", transport=mock(unauthorized)))


def test_stream_chat_transport_error_is_health_error() -> None:
    with pytest.raises(HealthError, match="refused"):
        list(health.stream_chat(BASE, KEY, "m", "hi", transport=mock(refused)))


# ---------------------------------------------------------------- wait_ready


def test_wait_ready_phases_in_order() -> None:
    clock = FakeClock()
    polls: list[float] = []
    engine = Engine([refused, loading, loading, healthy])
    report = health.wait_ready(
        BASE,
        "/health",
        KEY,
        "m",
        timeout=10,
        poll=0.05,
        on_poll=lambda: polls.append(clock.now),
        clock=clock,
        sleep=clock.sleep,
        transport=mock(engine),
    )
    assert [name for name, _ in report.phases] == ["health", "models", "chat"]
    assert report.phases[0][1] == pytest.approx(0.15)
    assert report.elapsed == pytest.approx(0.15)
    assert report.model == "m"
    assert len(polls) == 3
    assert engine.seen[-2:] == ["GET /v1/models", "POST /v1/chat/completions"]


def test_wait_ready_waits_for_the_model_to_be_listed() -> None:
    clock = FakeClock()
    answers = iter([models_answer(), models_answer("other"), models_answer("other", "m")])
    engine = Engine([healthy], models=lambda r: next(answers))
    report = health.wait_ready(
        BASE,
        "/health",
        None,
        "m",
        timeout=5,
        clock=clock,
        sleep=clock.sleep,
        transport=mock(engine),
    )
    assert report.phases[1][0] == "models"
    assert report.phases[1][1] == pytest.approx(0.1)


def test_wait_ready_timeout_names_phase_and_last_answer() -> None:
    clock = FakeClock()
    engine = Engine([refused, loading])
    with pytest.raises(HealthError) as info:
        health.wait_ready(
            BASE,
            "/health",
            KEY,
            "m",
            timeout=1.0,
            poll=0.1,
            clock=clock,
            sleep=clock.sleep,
            transport=mock(engine),
        )
    message = info.value.message
    assert "not ready after 1s" in message
    assert "health check (/health) never answered 200" in message
    assert "last answer: /health answered HTTP 503: Loading model" in message
    assert clock.now == pytest.approx(101.0)
    assert KEY not in str(info.value)


def test_wait_ready_timeout_when_model_never_listed() -> None:
    clock = FakeClock()
    engine = Engine([healthy], models=lambda r: models_answer("other"))
    with pytest.raises(HealthError, match=r"lists \['other'\] but not 'm'"):
        health.wait_ready(
            BASE,
            "/health",
            KEY,
            "m",
            timeout=0.5,
            clock=clock,
            sleep=clock.sleep,
            transport=mock(engine),
        )


def test_wait_ready_key_refused_fails_at_once() -> None:
    clock = FakeClock()
    unauthorized = httpx.Response(401, json={"error": {"message": "Invalid API Key"}})
    engine = Engine([healthy], models=lambda r: unauthorized)
    with pytest.raises(HealthError, match="refused the API key"):
        health.wait_ready(
            BASE,
            "/health",
            KEY,
            "m",
            timeout=30,
            clock=clock,
            sleep=clock.sleep,
            transport=mock(engine),
        )
    assert clock.sleeps == []


def test_wait_ready_chat_retries_5xx_then_succeeds() -> None:
    clock = FakeClock()
    answers = iter([httpx.Response(503, json={"error": {"message": "warming"}}), chat_answer()])
    engine = Engine([healthy], chat=lambda r: next(answers))
    report = health.wait_ready(
        BASE, "/health", KEY, "m", timeout=5, clock=clock, sleep=clock.sleep, transport=mock(engine)
    )
    assert [n for n, _ in report.phases] == ["health", "models", "chat"]
    assert report.phases[2][1] == pytest.approx(0.05)


def test_wait_ready_chat_rejected_fails_at_once() -> None:
    clock = FakeClock()
    bad = httpx.Response(400, json={"error": {"message": "chat template missing"}})
    engine = Engine([healthy], chat=lambda r: bad)
    with pytest.raises(HealthError, match="HTTP 400: chat template missing"):
        health.wait_ready(
            BASE,
            "/health",
            KEY,
            "m",
            timeout=30,
            clock=clock,
            sleep=clock.sleep,
            transport=mock(engine),
        )


class EngineDied(Exception):
    pass


def test_on_poll_raising_aborts_the_wait() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def on_poll() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise EngineDied("exit code 1")

    engine = Engine([refused])
    with pytest.raises(EngineDied):
        health.wait_ready(
            BASE,
            "/health",
            KEY,
            "m",
            timeout=30,
            on_poll=on_poll,
            clock=clock,
            sleep=clock.sleep,
            transport=mock(engine),
        )
    assert len(calls) == 2
    assert engine.seen == ["GET /health", "GET /health"]


def test_wait_ready_sleeps_no_longer_than_the_deadline() -> None:
    clock = FakeClock()
    with pytest.raises(HealthError):
        health.wait_ready(
            BASE,
            "/health",
            None,
            "m",
            timeout=0.25,
            poll=0.1,
            clock=clock,
            sleep=clock.sleep,
            transport=mock(refused),
        )
    assert clock.sleeps == pytest.approx([0.1, 0.1, 0.05])


# ---------------------------------------------------------------- import cost


def test_importing_health_does_not_import_httpx() -> None:
    code = "import sys, mlctl.health; sys.exit('httpx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
