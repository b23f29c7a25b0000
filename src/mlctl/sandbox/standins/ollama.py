"""Stand-in ``ollama`` (0.13.1): ``serve``, ``pull TAG``, ``list``, ``--version``.

``serve`` reads ``OLLAMA_HOST`` (default ``127.0.0.1:11434``), ``OLLAMA_MODELS``
(default ``~/.ollama/models``), ``OLLAMA_NUM_PARALLEL`` and
``OLLAMA_CONTEXT_LENGTH``; answers ``/api/version``, ``/api/tags``, streaming
``/api/pull``, ``/v1/models`` and ``/v1/chat/completions``. Like the real one it
has no API key. A pull writes a manifest under
``$OLLAMA_MODELS/manifests/registry.ollama.ai/library/NAME/TAG`` and a small blob,
so ``/api/tags`` and ``ollama list`` see it across restarts.

Scenarios (``"ollama"`` in scenario.json): ``port-in-use``, ``memory`` (chat
answers 500 with Ollama's "model requires more system memory" error) and
``missing_tags: [..]`` (pull fails with "file does not exist").
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlctl.sandbox.standins.common import (
    ApiError,
    JsonHandler,
    Lifecycle,
    Scenario,
    answer_chat,
    completion_body,
    emit,
    load_inventory,
    load_scenario,
    make_server,
    new_id,
    serve_in_thread,
    state_dir,
    stream_chunks,
)

VERSION = "0.13.1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
REGISTRY = "registry.ollama.ai"
BLOB_BYTES = 4096
COULD_NOT_CONNECT = "Error: could not connect to ollama app, is it running?"


def parse_host(value: str | None) -> tuple[str, int]:
    """``OLLAMA_HOST`` as Ollama reads it: ``[scheme://]host[:port]``, default 127.0.0.1:11434."""
    text = (value or "").strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.rstrip("/")
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, DEFAULT_PORT
    return host or DEFAULT_HOST, int(port) if port.isdigit() else DEFAULT_PORT


def models_dir(environ: Mapping[str, str]) -> Path:
    """``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    value = environ.get("OLLAMA_MODELS")
    if value:
        return Path(value)
    return Path(environ.get("HOME", str(Path.home()))) / ".ollama" / "models"


def split_tag(tag: str) -> tuple[str, str]:
    """``name:tag`` → (name, tag); the tag defaults to ``latest``."""
    name, _, version = tag.partition(":")
    return name, version or "latest"


def full_name(tag: str) -> str:
    """The model name with its tag (``name:latest`` when none)."""
    name, version = split_tag(tag)
    return f"{name}:{version}"


def manifest_path(root: Path, tag: str) -> Path:
    """Where Ollama keeps a model's manifest."""
    name, version = split_tag(tag)
    namespace, _, model = name.rpartition("/")
    return root / "manifests" / REGISTRY / (namespace or "library") / model / version


def digest_of(tag: str) -> str:
    """A stable sha256 digest for a tag's one model layer."""
    return hashlib.sha256(f"mlctl-sandbox:{full_name(tag)}".encode()).hexdigest()


def record_model(root: Path, tag: str) -> Path:
    """Write the manifest and blob a pull leaves behind; return the manifest path."""
    digest = digest_of(tag)
    blob = root / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"\0" * BLOB_BYTES)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": f"sha256:{hashlib.sha256(digest.encode()).hexdigest()}",
            "size": 485,
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": f"sha256:{digest}",
                "size": BLOB_BYTES,
            }
        ],
    }
    path = manifest_path(root, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest), encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class LocalModel:
    """A pulled model as ``/api/tags`` lists it."""

    name: str
    digest: str
    size: int
    modified_at: float


def list_models(root: Path) -> list[LocalModel]:
    """Every model with a manifest under ``root``, newest first."""
    base = root / "manifests" / REGISTRY
    found: list[LocalModel] = []
    if not base.is_dir():
        return found
    for path in base.glob("*/*/*"):
        if not path.is_file() or path.suffix == ".tmp":
            continue
        namespace, model, version = path.parts[-3:]
        name = f"{model}:{version}" if namespace == "library" else f"{namespace}/{model}:{version}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            layer = data["layers"][0]
            digest, size = str(layer["digest"]).split(":", 1)[1], int(layer["size"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
        found.append(LocalModel(name, digest, size, path.stat().st_mtime))
    return sorted(found, key=lambda m: -m.modified_at)


def iso_time(ts: float) -> str:
    """Ollama's RFC 3339 timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts)) + ".000000000Z"


def pull_events(tag: str) -> Iterator[dict[str, Any]]:
    """The status objects ``/api/pull`` streams for a successful pull."""
    digest = digest_of(tag)
    yield {"status": "pulling manifest"}
    for completed in (0, BLOB_BYTES // 2, BLOB_BYTES):
        yield {
            "status": f"pulling {digest[:12]}",
            "digest": f"sha256:{digest}",
            "total": BLOB_BYTES,
            "completed": completed,
        }
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success"}


def log_line(level: str, source: str, msg: str, **attrs: object) -> str:
    """Ollama's slog line: ``time=… level=INFO source=routes.go:1 msg="…" k=v``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    extra = "".join(
        f" {k}={json.dumps(v) if isinstance(v, str) and (' ' in v or not v) else v}"
        for k, v in attrs.items()
    )
    return f'time={stamp} level={level} source={source} msg="{msg}"{extra}'


# --------------------------------------------------------------------------- server


class OllamaEngine:
    """What the server knows: its models directory, its settings and the scenario."""

    def __init__(self, root: Path, scenario: Scenario, context_length: int) -> None:
        self.root = root
        self.scenario = scenario
        self.context_length = context_length


class OllamaHandler(JsonHandler):
    """Ollama's native and OpenAI-compatible routes."""

    def _engine(self) -> OllamaEngine:
        engine = self.server.engine
        assert isinstance(engine, OllamaEngine)
        return engine

    def _gin(self, status: int) -> None:
        stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
        emit(
            f"[GIN] {stamp} | {status:>3} | {'1.2ms':>13} | {self.client_address[0]:>15} | "
            f'{self.command:<7} "{self.path}"'
        )

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        """``HEAD /`` is the client's heartbeat."""
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """GET /, /api/version, /api/tags, /v1/models."""
        engine = self._engine()
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.send_text(200, "Ollama is running")
        elif path == "/api/version":
            self.send_json(200, {"version": VERSION})
        elif path == "/api/tags":
            models = [
                {
                    "name": m.name,
                    "model": m.name,
                    "modified_at": iso_time(m.modified_at),
                    "size": m.size,
                    "digest": m.digest,
                    "details": {"format": "gguf", "family": "llama", "parameter_size": "675B"},
                }
                for m in list_models(engine.root)
            ]
            self.send_json(200, {"models": models})
        elif path == "/v1/models":
            data = [
                {
                    "id": m.name,
                    "object": "model",
                    "created": int(m.modified_at),
                    "owned_by": "library",
                }
                for m in list_models(engine.root)
            ]
            self.send_json(200, {"object": "list", "data": data})
        else:
            self.send_text(404, "404 page not found")
            self._gin(404)
            return
        self._gin(200)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """POST /api/pull, /v1/chat/completions."""
        path = self.path.split("?", 1)[0]
        try:
            body = self.read_json()
        except ApiError:
            self.send_json(400, {"error": "invalid request body"})
            self._gin(400)
            return
        if path == "/api/pull":
            self._pull(body)
        elif path == "/v1/chat/completions":
            self._chat(body)
        else:
            self.send_text(404, "404 page not found")
            self._gin(404)

    def _pull(self, body: dict[str, Any]) -> None:
        engine = self._engine()
        tag = str(body.get("model") or body.get("name") or "")
        missing = engine.scenario.extra.get("missing_tags") or []
        if not tag or full_name(tag) in {full_name(str(t)) for t in missing}:
            self.send_json(500, {"error": "pull model manifest: file does not exist"})
            self._gin(500)
            return
        record_model(engine.root, tag)
        if body.get("stream", True) is False:
            self.send_json(200, {"status": "success"})
        else:
            self.start_stream("application/x-ndjson")
            for event in pull_events(tag):
                self.write_chunk(json.dumps(event) + "\n")
            self.end_stream()
        self._gin(200)

    def _chat(self, body: dict[str, Any]) -> None:
        engine = self._engine()
        model = str(body.get("model") or "")
        known = {m.name for m in list_models(engine.root)}
        if full_name(model) not in known:
            error = {
                "error": {
                    "message": f'model "{model}" not found, try pulling it first',
                    "type": "api_error",
                    "param": None,
                    "code": None,
                }
            }
            self.send_json(404, error)
            self._gin(404)
            return
        if engine.scenario.fail == "memory":
            message = "model requires more system memory (405.2 GiB) than is available (120.0 GiB)"
            emit(log_line("ERROR", "sched.go:478", "error loading llama server", error=message))
            self.send_json(
                500,
                {"error": {"message": message, "type": "api_error", "param": None, "code": None}},
            )
            self._gin(500)
            return
        try:
            answer = answer_chat(body)
        except ApiError:
            self.send_json(
                400,
                {
                    "error": {
                        "message": "invalid message format",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            )
            self._gin(400)
            return
        completion_id = f"chatcmpl-{new_id('')[:3]}"
        created = int(time.time())
        if body.get("stream"):
            options = body.get("stream_options") or {}
            usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
            self.send_sse(stream_chunks(answer, model, completion_id, created, usage))
        else:
            extra = {"system_fingerprint": "fp_ollama"}
            self.send_json(200, completion_body(answer, model, completion_id, created, extra))
        self._gin(200)


def serve(environ: Mapping[str, str], scenario: Scenario, life: Lifecycle) -> int:
    """Run ``ollama serve`` until SIGTERM; returns its exit status."""
    host, port = parse_host(environ.get("OLLAMA_HOST"))
    root = models_dir(environ)
    context = int(environ.get("OLLAMA_CONTEXT_LENGTH") or 4096)
    parallel = environ.get("OLLAMA_NUM_PARALLEL") or "1"
    settings = {
        k: environ.get(k, "")
        for k in (
            "OLLAMA_CONTEXT_LENGTH",
            "OLLAMA_HOST",
            "OLLAMA_KEEP_ALIVE",
            "OLLAMA_MODELS",
            "OLLAMA_NUM_PARALLEL",
        )
    }
    settings["OLLAMA_HOST"] = f"http://{host}:{port}"
    settings["OLLAMA_MODELS"] = str(root)
    settings["OLLAMA_NUM_PARALLEL"] = parallel
    env_map = "map[" + " ".join(f"{k}:{v}" for k, v in sorted(settings.items())) + "]"
    emit(log_line("INFO", "routes.go:1554", "server config", env=env_map))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        emit(f"Error: mkdir {root}: {exc.strerror.lower() if exc.strerror else exc}")
        return 1
    emit(log_line("INFO", "images.go:522", f"total blobs: {len(list_models(root))}"))
    try:
        if scenario.fail == "port-in-use":
            raise OSError("scenario: port in use")
        server = make_server(host, port, OllamaHandler, OllamaEngine(root, scenario, context))
    except OSError:
        emit(f"Error: listen tcp {host}:{port}: bind: address already in use")
        return 1
    if life.sleep(scenario.startup_seconds):
        server.server_close()
        return 0
    server.server_activate()
    serve_in_thread(server)
    emit(log_line("INFO", "routes.go:1607", f"Listening on {host}:{port} (version {VERSION})"))
    emit(log_line("INFO", "runner.go:80", "discovering available GPUs..."))
    for index, gpu in enumerate(load_inventory(state_dir(environ)).gpus):
        total = gpu.memory_total_mib / 1024
        emit(
            log_line(
                "INFO",
                "types.go:130",
                "inference compute",
                id=gpu.uuid,
                library="CUDA",
                compute=gpu.compute_capability,
                name=f"CUDA{index}",
                description=gpu.name,
                total=f"{total:.1f} GiB",
                available=f"{total - 0.4:.1f} GiB",
            )
        )
    try:
        life.stop.wait()
        return 0
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- client


def _base_url(environ: Mapping[str, str]) -> str:
    host, port = parse_host(environ.get("OLLAMA_HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def pull(tag: str, environ: Mapping[str, str]) -> int:
    """``ollama pull TAG``: stream the server's progress; exit 1 with its error."""
    request = urllib.request.Request(
        _base_url(environ) + "/api/pull",
        data=json.dumps({"model": tag, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line:
                    continue
                event = json.loads(line)
                status = str(event.get("status", ""))
                if "total" in event:
                    total = int(event["total"])
                    done = int(event.get("completed", 0))
                    pct = done * 100 // max(total, 1)
                    emit(f"{status}: {pct:>3}% ▕{'█' * (pct // 10):<10}▏ {_human(total)}")
                else:
                    emit(status)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode("utf-8")).get("error", str(exc))
        except ValueError:
            message = str(exc)
        emit(f"Error: {message}", sys.stderr)
        return 1
    except (urllib.error.URLError, OSError):
        emit(COULD_NOT_CONNECT, sys.stderr)
        return 1
    return 0


def _since(ts: float) -> str:
    seconds = max(int(time.time() - ts), 0)
    if seconds < 60:
        return "Less than a minute ago" if seconds > 1 else "Less than a second ago"
    if seconds < 3600:
        return f"{seconds // 60} minutes ago"
    return f"{seconds // 3600} hours ago"


def list_command(environ: Mapping[str, str]) -> int:
    """``ollama list``: the server's models as a table."""
    try:
        with urllib.request.urlopen(_base_url(environ) + "/api/tags", timeout=10) as response:
            models = json.loads(response.read().decode("utf-8")).get("models", [])
    except (urllib.error.URLError, OSError, ValueError):
        emit(COULD_NOT_CONNECT, sys.stderr)
        return 1
    rows = [("NAME", "ID", "SIZE", "MODIFIED")]
    for m in models:
        modified = time.mktime(time.strptime(m["modified_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        rows.append((m["name"], m["digest"][:12], _human(int(m["size"])), _since(modified)))
    widths = [max(len(r[i]) for r in rows) + 4 for i in range(3)]
    lines = ["".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + r[3] for r in rows]
    emit("\n".join(lines))
    return 0


def version_command(environ: Mapping[str, str]) -> int:
    """``ollama --version``: the server's version, or warnings and the client's own."""
    try:
        with urllib.request.urlopen(_base_url(environ) + "/api/version", timeout=2) as response:
            version = json.loads(response.read().decode("utf-8")).get("version", VERSION)
        emit(f"ollama version is {version}")
    except (urllib.error.URLError, OSError, ValueError):
        emit("Warning: could not connect to a running Ollama instance")
        emit(f"Warning: client version is {VERSION}")
    return 0


USAGE = """Large language model runner

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  pull        Pull a model from a registry
  list        List models

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ollama``."""
    args = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    if not args or args[0] in ("-h", "--help", "help"):
        emit(USAGE.rstrip("\n"))
        return 0
    command = args[0]
    if command in ("-v", "--version"):
        return version_command(environ)
    if command in ("serve", "start"):
        life = Lifecycle()
        life.install()
        return serve(environ, load_scenario(state_dir(environ), "ollama"), life)
    if command == "pull":
        if len(args) != 2:
            emit(f"Error: accepts 1 arg(s), received {len(args) - 1}", sys.stderr)
            return 1
        return pull(args[1], environ)
    if command in ("list", "ls"):
        return list_command(environ)
    emit(f'Error: unknown command "{command}" for "ollama"', sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
