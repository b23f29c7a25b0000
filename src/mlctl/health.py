"""Readiness of an OpenAI-compatible endpoint: health, model listed, one real chat completion.

``base_url`` is the server's root (``http://127.0.0.1:8000``); a trailing
``/v1`` is accepted too. httpx is imported inside the functions so importing
this module stays cheap, and every httpx failure is mapped here: to a
``Probe`` with ``ok=False`` for the health check, to ``HealthError`` where a
function raises. The API key never appears in a message: server answers are
scrubbed of it before they are quoted.

Proxies from the environment are ignored on purpose: these endpoints are
always on localhost (the tunnel) or on the host itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlctl.errors import HealthError, UsageError

if TYPE_CHECKING:
    import httpx

PING_PROMPT = "Reply with OK."
_QUOTE_LIMIT = 300
# 4xx answers that may go away on their own; any other 4xx fails wait_ready at once.
_RETRYABLE_4XX = frozenset({404, 408, 409, 425, 429})


@dataclass(frozen=True)
class Probe:
    """One health check: whether it answered 200, the status (None: no answer), what it said."""

    ok: bool
    status: int | None
    detail: str
    elapsed_ms: float


@dataclass(frozen=True)
class ChatResult:
    """One chat completion: the reply text, how long it took, and the server's usage counts."""

    text: str
    elapsed_ms: float
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class ReadyReport:
    """When each readiness phase passed, in seconds since ``wait_ready`` began."""

    phases: list[tuple[str, float]]
    model: str

    @property
    def elapsed(self) -> float:
        """Return the seconds until the last phase passed (0.0 when none did)."""
        return self.phases[-1][1] if self.phases else 0.0


# ---------------------------------------------------------------- plumbing


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def auth_headers(api_key: str | None) -> dict[str, str]:
    """Return the ``Authorization: Bearer`` header for ``api_key``, or no header without one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _url(base_url: str, path: str) -> str:
    return _root(base_url) + "/" + path.lstrip("/")


def _redact(text: str, api_key: str | None) -> str:
    return text.replace(api_key, "[API key]") if api_key else text


def _client(url: str, timeout: float, transport: httpx.BaseTransport | None) -> httpx.Client:
    import httpx

    if transport is None and url.startswith("http://"):
        # Plain HTTP needs no CA bundle; loading one costs ~20-80 ms per client.
        transport = httpx.HTTPTransport(verify=False)
    return httpx.Client(transport=transport, timeout=timeout, trust_env=False)


def _transport_detail(exc: Exception, timeout: float) -> str:
    """Say in words why no HTTP answer came (an httpx exception)."""
    import httpx

    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {timeout:g}s"
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc) or "cannot connect"
        if "refused" in reason.lower():
            return "connection refused (nothing listens there yet)"
        return f"cannot connect: {reason}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"the connection closed without a complete answer ({exc})"
    return f"{type(exc).__name__}: {exc}"


class _NoAnswer(Exception):
    """No HTTP answer came (refused, timed out, cut); ``detail`` says which, in words."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    api_key: str | None,
    timeout: float,
    payload: dict[str, Any] | None = None,
) -> _Answer:
    """Send one request and return the answer; _NoAnswer when none came."""
    import httpx

    start = time.perf_counter()
    try:
        resp = client.request(
            method, url, headers=auth_headers(api_key), json=payload, timeout=timeout
        )
    except httpx.InvalidURL as exc:
        raise UsageError(f"invalid endpoint URL {url!r}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise _NoAnswer(_redact(_transport_detail(exc, timeout), api_key)) from exc
    return _Answer(resp.status_code, resp.content, (time.perf_counter() - start) * 1000)


def _ask(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    api_key: str | None,
    timeout: float,
    payload: dict[str, Any] | None = None,
) -> _Answer:
    """Like _send, but HealthError when no answer came."""
    try:
        return _send(client, method, url, api_key=api_key, timeout=timeout, payload=payload)
    except _NoAnswer as exc:
        raise HealthError(
            f"{method} {url}: {exc.detail}", "check that the engine runs and the tunnel is open"
        ) from exc


def server_message(body: bytes | str) -> str:
    """Return the error message an OpenAI-compatible server put in ``body``.

    Understands ``{"error": {"message": ...}}`` (OpenAI, vLLM, llama.cpp),
    ``{"error": "..."}`` (Ollama), ``{"message": ...}`` and ``{"detail": ...}``
    (FastAPI); otherwise returns the text itself, shortened.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    message: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = data.get("message", data.get("detail"))
    found = str(message) if message is not None else text.strip()
    found = " ".join(found.split())
    return found if len(found) <= _QUOTE_LIMIT else found[: _QUOTE_LIMIT - 3] + "..."


def _refusal(what: str, answer: _Answer, api_key: str | None) -> HealthError:
    said = _redact(server_message(answer.body), api_key) or "(empty body)"
    if answer.status in (401, 403):
        return HealthError(
            f"the endpoint refused the API key when {what} (HTTP {answer.status}): {said}",
            "the key mlctl sent is not the one the engine was started with; "
            "redeploy to write a fresh key to both sides",
        )
    return HealthError(
        f"{what} failed with HTTP {answer.status}: {said}",
        "read the engine's log (mlctl logs NAME) for the cause",
    )


def _json(answer: _Answer, what: str) -> Any:
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        raise HealthError(
            f"{what}: the endpoint answered HTTP {answer.status} with something that is not "
            f"JSON: {server_message(answer.body)!r}",
            "check that the port is the engine's OpenAI-compatible server",
        ) from exc


def _model_ids(answer: _Answer) -> list[str]:
    data = _json(answer, "listing models")
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise HealthError(
            "listing models: the answer has no 'data' list",
            "check that the port is the engine's OpenAI-compatible server",
        )
    return [str(item["id"]) for item in items if isinstance(item, dict) and "id" in item]


def _chat_payload(model: str, max_tokens: int, prompt: str, stream: bool) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def _chat_result(answer: _Answer) -> ChatResult:
    data = _json(answer, "chat completion")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise HealthError(
            "the chat completion answered without choices",
            "check that the port is the engine's OpenAI-compatible server",
        )
    message = choices[0].get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    raw_usage = data.get("usage")
    usage = (
        {k: v for k, v in raw_usage.items() if isinstance(v, int)}
        if isinstance(raw_usage, dict)
        else {}
    )
    return ChatResult(text=str(text or ""), elapsed_ms=answer.elapsed_ms, usage=usage)


# ---------------------------------------------------------------- public checks


def check_health(
    base_url: str,
    health_path: str,
    timeout: float = 2.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> Probe:
    """GET ``health_path`` once and return a Probe; never raises for network failures.

    ``ok`` only for HTTP 200. A refused connection gives ``status=None``; a
    loading llama.cpp gives ``status=503`` and ``detail="HTTP 503: Loading model"``.
    """
    url = _url(base_url, health_path)
    start = time.perf_counter()
    with _client(url, timeout, transport) as client:
        try:
            answer = _send(client, "GET", url, api_key=None, timeout=timeout)
        except _NoAnswer as exc:
            elapsed = (time.perf_counter() - start) * 1000
            return Probe(ok=False, status=None, detail=exc.detail, elapsed_ms=elapsed)
    if answer.status == 200:
        return Probe(True, 200, "ok", answer.elapsed_ms)
    said = server_message(answer.body) or "(empty body)"
    return Probe(False, answer.status, f"HTTP {answer.status}: {said}", answer.elapsed_ms)


def list_models(
    base_url: str,
    api_key: str | None,
    timeout: float = 5.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> list[str]:
    """Return the model ids ``GET /v1/models`` lists.

    Raises HealthError when there is no answer, when the endpoint refuses the
    API key (401/403), on any other non-2xx answer (quoting the server), or
    when the answer is not a model list.
    """
    url = _url(base_url, "/v1/models")
    with _client(url, timeout, transport) as client:
        answer = _ask(client, "GET", url, api_key=api_key, timeout=timeout)
    if not answer.ok:
        raise _refusal("listing models", answer, api_key)
    return _model_ids(answer)


def chat_once(
    base_url: str,
    api_key: str | None,
    model: str,
    timeout: float = 60.0,
    max_tokens: int = 1,
    *,
    prompt: str = PING_PROMPT,
    transport: httpx.BaseTransport | None = None,
) -> ChatResult:
    """Send one real (non-streaming) chat completion of ``max_tokens`` and return its result.

    Raises HealthError when there is no answer within ``timeout``, on a non-2xx
    answer (with the server's error message), or when the answer has no choices.
    """
    url = _url(base_url, "/v1/chat/completions")
    payload = _chat_payload(model, max_tokens, prompt, stream=False)
    with _client(url, timeout, transport) as client:
        answer = _ask(client, "POST", url, api_key=api_key, timeout=timeout, payload=payload)
    if not answer.ok:
        raise _refusal("the chat completion", answer, api_key)
    return _chat_result(answer)


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """Yield the ``data`` of each server-sent event in ``lines`` (multi-line data joined by \\n).

    Comments (``:``) and other fields (``event:``, ``id:``) are skipped; an
    event ends at a blank line, or at the end of the input.
    """
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def chat_deltas(events: Iterable[str], api_key: str | None = None) -> Iterator[str]:
    """Yield the text deltas of a streamed chat completion's SSE ``data`` payloads.

    Stops at ``[DONE]``. Raises HealthError for an error event, a payload that
    is not JSON, or a stream that ends without ``[DONE]``.
    """
    for event in events:
        if event.strip() == "[DONE]":
            return
        try:
            chunk = json.loads(event)
        except ValueError as exc:
            raise HealthError(
                f"the chat stream sent something that is not JSON: {event[:_QUOTE_LIMIT]!r}",
                "check that the port is the engine's OpenAI-compatible server",
            ) from exc
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            said = _redact(server_message(json.dumps(chunk)), api_key)
            raise HealthError(
                f"the chat stream failed: {said}", "read the engine's log for the cause"
            )
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            text = delta.get("content") if isinstance(delta, dict) else None
            if text:
                yield str(text)
    raise HealthError(
        "the chat stream ended before [DONE]",
        "the connection dropped mid-answer: check the tunnel and the engine's log",
    )


def stream_chat(
    base_url: str,
    api_key: str | None,
    model: str,
    prompt: str,
    max_tokens: int = 16,
    timeout: float = 60.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> Iterator[str]:
    """Stream one chat completion and yield its text deltas as they arrive, until ``[DONE]``.

    ``timeout`` bounds the connection and the wait for each chunk. Raises
    HealthError for no answer, a non-2xx answer (quoting the server), an error
    event, or a stream cut before ``[DONE]``. Closing the iterator early closes
    the connection.
    """
    import httpx

    url = _url(base_url, "/v1/chat/completions")
    payload = _chat_payload(model, max_tokens, prompt, stream=True)
    with _client(url, timeout, transport) as client:
        try:
            with client.stream(
                "POST", url, headers=auth_headers(api_key), json=payload, timeout=timeout
            ) as resp:
                if not 200 <= resp.status_code < 300:
                    body = resp.read()
                    answer = _Answer(resp.status_code, body, 0.0)
                    raise _refusal("the chat completion", answer, api_key)
                yield from chat_deltas(sse_data(resp.iter_lines()), api_key)
        except httpx.HTTPError as exc:
            detail = _redact(_transport_detail(exc, timeout), api_key)
            raise HealthError(
                f"streaming a chat completion from {url}: {detail}",
                "check that the engine runs and the tunnel is open",
            ) from exc


# ---------------------------------------------------------------- waiting


def _fatal(status: int) -> bool:
    return 400 <= status < 500 and status not in _RETRYABLE_4XX


def wait_ready(
    base_url: str,
    health_path: str,
    api_key: str | None,
    model: str,
    *,
    timeout: float,
    poll: float = 0.05,
    on_poll: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    transport: httpx.BaseTransport | None = None,
) -> ReadyReport:
    """Wait until the endpoint is ready: health 200, ``model`` listed, one chat completion works.

    Polls every ``poll`` seconds; ``on_poll`` runs after each failed attempt
    (the deploy reads the engine log there and raises to abort early; its
    exception propagates). Returns when each phase ("health", "models",
    "chat") passed. Raises HealthError with the last answer when ``timeout``
    runs out, and at once when the endpoint refuses the API key or rejects the
    request (a 4xx that waiting will not change).
    """
    start = clock()
    deadline = start + timeout
    phases: list[tuple[str, float]] = []
    url = _root(base_url)
    health_url = _url(base_url, health_path)
    models_url = _url(base_url, "/v1/models")
    chat_url = _url(base_url, "/v1/chat/completions")
    payload = _chat_payload(model, 1, PING_PROMPT, stream=False)

    def budget(cap: float) -> float:
        return max(0.05, min(cap, deadline - clock()))

    def health() -> str | None:
        answer = _send(client, "GET", health_url, api_key=None, timeout=budget(2.0))
        if answer.status == 200:
            return None
        return f"{health_path} answered HTTP {answer.status}: {server_message(answer.body)}"

    def models() -> str | None:
        answer = _send(client, "GET", models_url, api_key=api_key, timeout=budget(5.0))
        if _fatal(answer.status):
            raise _refusal("listing models", answer, api_key)
        if not answer.ok:
            said = _redact(server_message(answer.body), api_key)
            return f"/v1/models answered HTTP {answer.status}: {said}"
        ids = _model_ids(answer)
        if model in ids:
            return None
        return f"/v1/models lists {ids} but not {model!r}"

    def chat() -> str | None:
        answer = _send(
            client, "POST", chat_url, api_key=api_key, timeout=budget(60.0), payload=payload
        )
        if _fatal(answer.status):
            raise _refusal("the chat completion", answer, api_key)
        if not answer.ok:
            said = _redact(server_message(answer.body), api_key)
            return f"the chat completion answered HTTP {answer.status}: {said}"
        _chat_result(answer)
        return None

    steps: list[tuple[str, str, Callable[[], str | None]]] = [
        ("health", f"the health check ({health_path}) never answered 200", health),
        ("models", f"/v1/models never listed {model!r}", models),
        ("chat", "the test chat completion never succeeded", chat),
    ]
    with _client(url, timeout, transport) as client:
        for name, failure, attempt in steps:
            while True:
                try:
                    detail = attempt()
                except _NoAnswer as exc:
                    detail = exc.detail
                if detail is None:
                    phases.append((name, clock() - start))
                    break
                if clock() >= deadline:
                    raise HealthError(
                        f"{url} was not ready after {timeout:g}s: {failure}; "
                        f"last answer: {_redact(detail, api_key)}",
                        "read the engine's log (mlctl logs NAME); a large model may need a "
                        "longer --timeout",
                    )
                if on_poll is not None:
                    on_poll()
                sleep(max(0.0, min(poll, deadline - clock())))
    return ReadyReport(phases=phases, model=model)
