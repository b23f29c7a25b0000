"""What the stand-in engines share: state files, logs, the OpenAI chat API, HTTP plumbing.

State lives in the directory named by ``$MLCTL_SANDBOX_STATE``:

* ``gpus.json``: ``{"gpus": [{"name", "memory_total_mib", "compute_capability",
  "uuid"}], "driver_version": "550.54.15", "cuda_version": "12.4"}``; absent or
  without GPUs means a host with no GPU.
* ``scenario.json`` (optional, re-read at every start): one object per engine,
  ``{"vllm": {"fail": null | "oom" | …, "startup_seconds": 0.0,
  "crash_after_seconds": 1.0}, "nvidia-smi": {"fail": null | "driver"}, …}``.

Standard library only: these modules run as separate processes on the host.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

STATE_ENV = "MLCTL_SANDBOX_STATE"
GPUS_FILE = "gpus.json"
SCENARIO_FILE = "scenario.json"
DEFAULT_DRIVER = "550.54.15"
DEFAULT_CUDA = "12.4"

# The canned answer every engine gives; ``max_tokens`` cuts it word by word.
ANSWER_WORDS: tuple[str, ...] = tuple(
    (
        "Hello! This answer comes from the mlctl sandbox, a stand-in engine on a host "
        "without a GPU. It speaks the OpenAI chat API like the real server does."
    ).split()
)

JsonObject = dict[str, Any]


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class GpuEntry:
    """One simulated GPU as ``gpus.json`` describes it."""

    name: str
    memory_total_mib: int
    compute_capability: str
    uuid: str


@dataclass(frozen=True)
class GpuInventory:
    """The simulated GPUs of the host, with the driver and CUDA versions."""

    gpus: tuple[GpuEntry, ...] = ()
    driver_version: str = DEFAULT_DRIVER
    cuda_version: str = DEFAULT_CUDA


@dataclass(frozen=True)
class Scenario:
    """What one engine should do this start: ``fail`` is None for a healthy run."""

    fail: str | None = None
    startup_seconds: float = 0.0
    crash_after_seconds: float = 1.0
    extra: Mapping[str, Any] = field(default_factory=dict)


def state_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The sandbox state directory from ``$MLCTL_SANDBOX_STATE``, or None when unset."""
    env = os.environ if environ is None else environ
    value = env.get(STATE_ENV, "").strip()
    return Path(value) if value else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def parse_inventory(data: object) -> GpuInventory:
    """Return the inventory in a parsed ``gpus.json``; anything malformed counts as no GPU."""
    if not isinstance(data, Mapping):
        return GpuInventory()
    gpus: list[GpuEntry] = []
    raw = data.get("gpus")
    for index, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, Mapping):
            continue
        gpus.append(
            GpuEntry(
                name=str(item.get("name", "NVIDIA GPU")),
                memory_total_mib=int(item.get("memory_total_mib", 0)),
                compute_capability=str(item.get("compute_capability", "8.0")),
                uuid=str(item.get("uuid", f"GPU-00000000-0000-0000-0000-{index:012d}")),
            )
        )
    return GpuInventory(
        gpus=tuple(gpus),
        driver_version=str(data.get("driver_version", DEFAULT_DRIVER)),
        cuda_version=str(data.get("cuda_version", DEFAULT_CUDA)),
    )


def load_inventory(state: Path | None) -> GpuInventory:
    """Return ``$STATE/gpus.json``'s inventory (no GPUs when the file is missing)."""
    if state is None:
        return GpuInventory()
    return parse_inventory(_read_json(state / GPUS_FILE))


def parse_scenario(data: object, engine: str) -> Scenario:
    """Return ``engine``'s scenario from a parsed ``scenario.json`` (healthy by default)."""
    if not isinstance(data, Mapping) or not isinstance(data.get(engine), Mapping):
        return Scenario()
    entry = data[engine]
    fail = entry.get("fail")
    return Scenario(
        fail=str(fail) if fail else None,
        startup_seconds=float(entry.get("startup_seconds", 0.0) or 0.0),
        crash_after_seconds=float(entry.get("crash_after_seconds", 1.0) or 0.0),
        extra={
            k: v
            for k, v in entry.items()
            if k not in ("fail", "startup_seconds", "crash_after_seconds")
        },
    )


def load_scenario(state: Path | None, engine: str) -> Scenario:
    """Return ``engine``'s scenario from ``$STATE/scenario.json`` (read afresh each call)."""
    if state is None:
        return Scenario()
    return parse_scenario(_read_json(state / SCENARIO_FILE), engine)


# --------------------------------------------------------------------------- output


def emit(lines: str | Iterable[str], stream: Any = None) -> None:
    """Write lines to stdout (or ``stream``) and flush: logs go to a file under a supervisor."""
    out = sys.stdout if stream is None else stream
    text = lines if isinstance(lines, str) else "\n".join(lines)
    try:
        out.write(text + "\n")
        out.flush()
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- chat API


class ApiError(Exception):
    """An HTTP error answer: status and the JSON body the real engine sends."""

    def __init__(self, status: int, body: JsonObject) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


@dataclass(frozen=True)
class ChatAnswer:
    """What the stand-in answers to one chat request."""

    text: str | None
    words: tuple[str, ...]
    tool_calls: tuple[JsonObject, ...]
    finish_reason: str
    prompt_tokens: int


def message_text(content: object) -> str:
    """The text of a message's ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


def count_images(messages: Sequence[object]) -> int:
    """How many ``image_url`` (or ``input_image``) parts the messages carry."""
    count = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            count += sum(
                1
                for part in content
                if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image")
            )
    return count


def requested_max_tokens(body: Mapping[str, Any]) -> int | None:
    """``max_completion_tokens`` or ``max_tokens``, when the request sets one."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _placeholder(schema: object) -> object:
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if isinstance(schema, Mapping) and isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return "Paris"


def _arguments(function: Mapping[str, Any]) -> str:
    params = function.get("parameters")
    props = params.get("properties", {}) if isinstance(params, Mapping) else {}
    required = params.get("required", list(props)) if isinstance(params, Mapping) else []
    args = {name: _placeholder(props.get(name)) for name in required if isinstance(name, str)}
    return json.dumps(args)


def choose_tool(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function to call, or None for a text answer.

    A call is made when tools are given and ``tool_choice`` is ``required`` or names
    a function, or is ``auto`` (the default) and the last user message names a
    tool's function or asks to call/use a tool.
    """
    tools: list[Mapping[str, Any]] = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
    ]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        return next((f for f in tools if f.get("name") == wanted), tools[0])
    if choice == "required":
        return tools[0]
    messages = body.get("messages") or []
    last_user = next(
        (
            message_text(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, Mapping) and m.get("role") == "user"
        ),
        "",
    ).lower()
    for function in tools:
        name = str(function.get("name", ""))
        if name and (name.lower() in last_user or name.lower().replace("_", " ") in last_user):
            return function
    if re.search(r"\b(call|use|invoke)\b.*\b(tool|function)\b", last_user):
        return tools[0]
    return None


def tool_call_id(parser: str | None) -> str:
    """A tool-call id: Mistral's parser uses 9 alphanumerics, others ``chatcmpl-tool-…``."""
    if parser == "mistral":
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "".join(secrets.choice(alphabet) for _ in range(9))
    return f"chatcmpl-tool-{secrets.token_hex(16)}"


def answer_chat(body: Mapping[str, Any], tool_parser: str | None = None) -> ChatAnswer:
    """Decide the answer to a chat request: a tool call, or the canned text cut to max_tokens.

    Raises ApiError(400) when ``messages`` is missing or not a list.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, openai_error("messages must be a non-empty list", 400))
    prompt_tokens = sum(
        len(message_text(m.get("content")).split()) + 4 for m in messages if isinstance(m, Mapping)
    )
    function = choose_tool(body)
    if function is not None:
        call = {
            "id": tool_call_id(tool_parser),
            "type": "function",
            "function": {"name": str(function.get("name", "")), "arguments": _arguments(function)},
        }
        return ChatAnswer(None, (), (call,), "tool_calls", prompt_tokens)
    limit = requested_max_tokens(body)
    words = ANSWER_WORDS if limit is None else ANSWER_WORDS[: max(limit, 0)]
    finish = "length" if limit is not None and limit < len(ANSWER_WORDS) else "stop"
    return ChatAnswer(" ".join(words), words, (), finish, prompt_tokens)


def openai_error(message: str, code: int, kind: str = "BadRequestError") -> JsonObject:
    """vLLM's error body (``{"error": {"message", "type", "param", "code"}}``)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def completion_body(
    answer: ChatAnswer,
    model: str,
    completion_id: str,
    created: int,
    extra: JsonObject | None = None,
) -> JsonObject:
    """The non-streamed ``chat.completion`` object."""
    message: JsonObject = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["tool_calls"] = list(answer.tool_calls)
    else:
        message["tool_calls"] = []
    completion_tokens = len(answer.words) if answer.text is not None else 12
    body: JsonObject = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": answer.prompt_tokens + completion_tokens,
        },
    }
    if extra:
        body.update(extra)
    return body


def stream_chunks(
    answer: ChatAnswer, model: str, completion_id: str, created: int, include_usage: bool
) -> list[JsonObject]:
    """The ``chat.completion.chunk`` objects of a streamed answer (``[DONE]`` not included)."""

    def chunk(delta: JsonObject, finish: str | None = None) -> JsonObject:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    chunks = [chunk({"role": "assistant", "content": ""})]
    if answer.tool_calls:
        for index, call in enumerate(answer.tool_calls):
            head = {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"]},
            }
            chunks.append(chunk({"tool_calls": [{"index": index, **head}]}))
            args = {"function": {"arguments": call["function"]["arguments"]}}
            chunks.append(chunk({"tool_calls": [{"index": index, **args}]}))
    else:
        for i, word in enumerate(answer.words):
            chunks.append(chunk({"content": word if i == 0 else " " + word}))
    chunks.append(chunk({}, answer.finish_reason))
    if include_usage:
        completion_tokens = len(answer.words) if answer.text is not None else 12
        chunks.append(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": answer.prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": answer.prompt_tokens + completion_tokens,
                },
            }
        )
    return chunks


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer …`` header (any mapping-like headers), or None."""
    value = str(headers.get("Authorization") or "")
    if value.startswith("Bearer "):
        return value[len("Bearer ") :]
    return None


# --------------------------------------------------------------------------- HTTP


class StandinServer(ThreadingHTTPServer):
    """A threading HTTP server whose handler threads never block shutdown."""

    daemon_threads = True
    allow_reuse_address = True
    engine: Any = None  # the engine object the handlers consult


class JsonHandler(BaseHTTPRequestHandler):
    """Base request handler: JSON in/out, chunked SSE and NDJSON streams, quiet by default."""

    protocol_version = "HTTP/1.1"
    server: StandinServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence http.server's stderr log; engines log requests their own way."""

    def read_json(self) -> JsonObject:
        """The request body as a JSON object; raises ApiError(400) when it is not one."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ApiError(400, openai_error(f"Invalid JSON body: {exc}", 400)) from exc
        if not isinstance(data, dict):
            raise ApiError(400, openai_error("The request body must be a JSON object", 400))
        return data

    def send_json(
        self, status: int, body: object, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer with a JSON body and a Content-Length."""
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        """Answer with a plain text body."""
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, content_type: str) -> None:
        """Start a chunked response (Server-Sent Events or NDJSON)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, text: str) -> None:
        """Write one chunk of a chunked response and flush it."""
        data = text.encode("utf-8")
        if not data:
            return
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        """Close a chunked response."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def send_sse(self, events: Iterable[JsonObject], done: bool = True) -> None:
        """Stream ``data: {json}`` events, then ``data: [DONE]``, as OpenAI does."""
        self.start_stream("text/event-stream; charset=utf-8")
        for event in events:
            self.write_chunk(f"data: {json.dumps(event)}\n\n")
        if done:
            self.write_chunk("data: [DONE]\n\n")
        self.end_stream()


class Lifecycle:
    """SIGTERM/SIGINT handling for a stand-in: the handler only sets an event."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signal_number: int | None = None

    def install(self) -> None:
        """Route SIGTERM and SIGINT to :attr:`stop` (call from the main thread)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_number = signum
        self.stop.set()

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; return True when a stop signal came first."""
        return self.stop.wait(max(seconds, 0.0))


def serve_in_thread(server: StandinServer) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread and return it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return thread


def make_server(host: str, port: int, handler: type[JsonHandler], engine: object) -> StandinServer:
    """Create and bind (but not listen on) a server; raises OSError when the port is taken."""
    server = StandinServer((host, port), handler, bind_and_activate=False)
    server.engine = engine
    try:
        server.server_bind()
    except OSError:
        server.server_close()
        raise
    return server


def log_time() -> str:
    """vLLM's log timestamp: ``MM-DD HH:MM:SS``."""
    return time.strftime("%m-%d %H:%M:%S")


def new_id(prefix: str) -> str:
    """An OpenAI-style object id."""
    return f"{prefix}{secrets.token_hex(16)}"
