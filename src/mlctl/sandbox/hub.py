"""A local Hugging Face Hub on loopback, for the sandbox host and the tests.

It speaks the part of the Hub protocol that ``huggingface_hub``'s ``snapshot_download``,
``hf_hub_download``, ``HfApi.model_info``/``list_repo_tree`` and ``hf download`` use (see
``shared/FACTS.md``): repo info, the tree listing, ``HEAD``/``GET`` on ``resolve`` with
``X-Repo-Commit``/``ETag``/``Range``, and errors with ``X-Error-Code``. It never sends Xet
headers, so the client always downloads over plain HTTP. Stdlib only.

Like the real Hub, a gated repo's metadata (info, tree) is public and only its files need a
token: 401 without one, 403 with a token the server does not know.

Run it as a separate process with ``python -m mlctl.sandbox.hub --state DIR``: it writes
``DIR/hub.json`` (pid, port, url, token) once it listens, and exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qs, unquote, urlsplit

SANDBOX_TOKEN = "hf_mlctlSandboxToken0000000000000000"
"""The token the sandbox Hub accepts by default (a fake; it opens only this local server)."""

SANDBOX_USER = "mlctl-sandbox"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".onnx", ".msgpack", ".h5")
LFS_MIN_SIZE = 10 * 1024 * 1024
"""Files this big or with an LFS suffix are served as Git LFS files (ETag = sha256)."""

STATE_FILE = "hub.json"
_CHUNK = 64 * 1024
_PATTERN_PERIOD = 1_048_573  # a prime: a resume at a wrong offset shows up in the bytes
_TIMESTAMP = "2025-12-02T00:00:00.000Z"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


# --------------------------------------------------------------------------- content


@functools.lru_cache(maxsize=8)
def _pattern(seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(_PATTERN_PERIOD)


@functools.lru_cache(maxsize=64)
def _synthetic_sha256(seed: str, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in _synthetic_chunks(seed, 0, size, 1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _synthetic_chunks(seed: str, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
    pattern = _pattern(seed)
    offset = start
    while offset < end:
        at = offset % _PATTERN_PERIOD
        take = min(chunk_size, end - offset, _PATTERN_PERIOD - at)
        yield pattern[at : at + take]
        offset += take


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo: literal ``data``, or synthetic content of ``synthetic_size`` bytes.

    Synthetic content is a deterministic function of ``seed`` and the offset, generated while
    it is served, so a 50 MB file costs no memory beyond a 1 MiB pattern.
    """

    path: str
    data: bytes = b""
    synthetic_size: int | None = None
    seed: str = ""

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if not self.path or self.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"repo file path {self.path!r} must be relative and normalised")
        if self.synthetic_size is not None and (self.data or self.synthetic_size < 0):
            raise ValueError("a synthetic file has a size >= 0 and no data")

    @classmethod
    def synthetic(cls, path: str, size: int, seed: str | None = None) -> HubFile:
        """Return a file of ``size`` deterministic bytes (seeded by ``seed``, default the path)."""
        return cls(path=path, synthetic_size=size, seed=seed if seed is not None else path)

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.synthetic_size if self.synthetic_size is not None else len(self.data)

    @property
    def is_lfs(self) -> bool:
        """Whether the Hub would store this file in Git LFS (by suffix or size)."""
        return self.path.endswith(LFS_SUFFIXES) or self.size >= LFS_MIN_SIZE

    def iter_bytes(
        self, start: int = 0, end: int | None = None, chunk_size: int = _CHUNK
    ) -> Iterator[bytes]:
        """Yield the bytes in ``[start, end)`` (end defaults to the size) in chunks."""
        stop = self.size if end is None else min(end, self.size)
        if self.synthetic_size is None:
            for offset in range(start, stop, chunk_size):
                yield self.data[offset : min(offset + chunk_size, stop)]
        else:
            yield from _synthetic_chunks(self.seed, start, stop, chunk_size)

    def read(self) -> bytes:
        """Return the whole content (builds it in memory for a synthetic file)."""
        return self.data if self.synthetic_size is None else b"".join(self.iter_bytes())

    def sha256(self) -> str:
        """Return the hex sha256 of the content (cached for synthetic files)."""
        if self.synthetic_size is None:
            return hashlib.sha256(self.data).hexdigest()
        return _synthetic_sha256(self.seed, self.synthetic_size)

    def lfs_pointer(self) -> bytes:
        """Return the Git LFS pointer file that git would store for this file."""
        return (
            f"version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{self.sha256()}\nsize {self.size}\n"
        ).encode()

    def git_oid(self) -> str:
        """Return the git blob id: of the LFS pointer for LFS files, else of the content."""
        return _git_blob_oid(self.lfs_pointer() if self.is_lfs else self.read())

    def etag(self) -> str:
        """Return the ETag value the Hub sends (quoted): sha256 for LFS files, else the blob id."""
        return f'"{self.sha256() if self.is_lfs else self.git_oid()}"'

    def identity(self) -> str:
        """Return a cheap content fingerprint used to derive the repo's commit id."""
        if self.synthetic_size is None:
            return hashlib.sha256(self.data).hexdigest()
        return f"synthetic:{self.seed}:{self.synthetic_size}"


@dataclass
class HubRepo:
    """A model repo the local Hub serves at one commit.

    ``revision_sha`` defaults to a 40-hex id derived from the repo id and the files' content;
    the repo answers to that id and to every name in ``refs``. Treat a repo as immutable once
    it is served (replace it with ``HubServer.add_repo`` instead).
    """

    repo_id: str
    files: list[HubFile]
    revision_sha: str = ""
    gated: bool = False
    refs: tuple[str, ...] = ("main",)
    _by_path: dict[str, HubFile] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not _REPO_ID_RE.match(self.repo_id):
            raise ValueError(f"repo id {self.repo_id!r} must look like 'namespace/name'")
        self._by_path = {f.path: f for f in self.files}
        if len(self._by_path) != len(self.files):
            raise ValueError(f"repo {self.repo_id} lists a file path twice")
        if not self.revision_sha:
            digest = hashlib.sha1(self.repo_id.encode(), usedforsecurity=False)
            for path in sorted(self._by_path):
                digest.update(f"\0{path}\0{self._by_path[path].identity()}".encode())
            self.revision_sha = digest.hexdigest()
        if not _COMMIT_RE.match(self.revision_sha):
            raise ValueError(f"revision_sha {self.revision_sha!r} is not 40 lowercase hex digits")

    def file(self, path: str) -> HubFile | None:
        """Return the file at ``path``, or None."""
        return self._by_path.get(path)

    def resolve(self, revision: str) -> str | None:
        """Return the commit id a revision (ref name or the commit id) points to, or None."""
        if revision == self.revision_sha or revision in self.refs:
            return self.revision_sha
        return None

    @property
    def total_size(self) -> int:
        """Sum of the file sizes, in bytes."""
        return sum(f.size for f in self.files)


# --------------------------------------------------------------------------- server


class RequestRecord(NamedTuple):
    """One request as the Hub saw it; never holds a token value."""

    method: str
    path: str
    """The request target as sent (path and query, still percent-encoded)."""
    range: str | None
    auth: bool


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that went away mid-response is normal here
        super().handle_error(request, client_address)


class HubServer:
    """A threaded local Hub on ``host:port`` (port 0: a free one), serving ``repos``.

    ``valid_tokens`` open gated repos; ``throttle_bps`` caps each response's rate;
    ``fail_after_bytes`` makes chosen downloads drop mid-body. ``request_log`` records every
    request in order.
    """

    def __init__(
        self,
        repos: Iterable[HubRepo] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        valid_tokens: Iterable[str] = (SANDBOX_TOKEN,),
        throttle_bps: int | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.valid_tokens = frozenset(valid_tokens)
        self.throttle_bps = throttle_bps
        self.request_log: list[RequestRecord] = []
        self.request_log_path: Path | None = None
        self._repos: dict[str, HubRepo] = {}
        self._failures: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        for repo in repos:
            self.add_repo(repo)

    # -- configuration

    def add_repo(self, repo: HubRepo) -> None:
        """Serve ``repo`` (replacing any repo with the same id)."""
        with self._lock:
            self._repos[repo.repo_id] = repo

    def remove_repo(self, repo_id: str) -> None:
        """Stop serving ``repo_id`` (it then answers RepoNotFound)."""
        with self._lock:
            self._repos.pop(repo_id, None)

    def repo(self, repo_id: str) -> HubRepo | None:
        """Return the served repo with this id, or None."""
        with self._lock:
            return self._repos.get(repo_id)

    @property
    def repos(self) -> list[HubRepo]:
        """The served repos, by id."""
        with self._lock:
            return [self._repos[k] for k in sorted(self._repos)]

    def fail_after_bytes(self, repo_id: str, path: str, nbytes: int, times: int = 1) -> None:
        """Make the next ``times`` GETs of a file send ``nbytes`` of body, then drop the link.

        The response announces the full Content-Length, so the client sees a connection
        closed mid-body (as after a network failure) and may resume with a Range request.
        """
        if nbytes < 0 or times < 1:
            raise ValueError("nbytes must be >= 0 and times >= 1")
        with self._lock:
            self._failures[(repo_id, path)] = [nbytes] * times

    def _take_failure(self, repo_id: str, path: str) -> int | None:
        with self._lock:
            pending = self._failures.get((repo_id, path))
            if not pending:
                return None
            limit = pending.pop(0)
            if not pending:
                del self._failures[(repo_id, path)]
            return limit

    # -- life cycle

    def start(self) -> None:
        """Bind and serve in a background thread; returns once the socket listens."""
        if self._httpd is not None:
            raise RuntimeError("the local Hub is already running")
        httpd = _HttpServer((self.host, self._requested_port), _HubHandler)
        httpd.hub = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"mlctl-hub-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every open connection and the listening socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (after ``start``)."""
        if self._httpd is None:
            raise RuntimeError("the local Hub is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The endpoint to put in ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:41234``."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    # -- used by the handler

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.request_log.append(record)
            if self.request_log_path is not None:  # for tests of a Hub in another process
                with self.request_log_path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(record._asdict()) + "\n")


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _segments(path: str) -> list[str]:
    return [unquote(s) for s in path.split("/") if s]


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mlctl-sandbox-hub/1"
    timeout = 60  # an idle keep-alive connection is closed after this many seconds

    @property
    def hub(self) -> HubServer:
        return cast(_HttpServer, self.server).hub

    def setup(self) -> None:
        super().setup()
        self.hub._track(self.connection, add=True)

    def finish(self) -> None:
        self.hub._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # request_log is the record; stderr stays quiet

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch(head=False)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch(head=True)

    # -- routing

    def _dispatch(self, head: bool) -> None:
        token = self._token()
        self.hub._log(
            RequestRecord(self.command, self.path, self.headers.get("Range"), token is not None)
        )
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        parts = _segments(split.path)
        try:
            if parts[:2] == ["api", "whoami-v2"] and len(parts) == 2:
                self._whoami(token, head)
            elif parts == ["api", "agent-harnesses"]:
                # huggingface_hub >= 2 fetches this registry once to build its user agent.
                self._send_json({"standardEnvVars": [], "harnesses": {}}, head)
            elif parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = self._repo("/".join(parts[2:4]))
                rest = parts[4:]
                if not rest:
                    self._info(repo, "main", query, head)
                elif rest[0] == "revision" and len(rest) >= 2:
                    self._info(repo, "/".join(rest[1:]), query, head)
                elif rest[0] == "tree" and len(rest) >= 2:
                    self._tree(repo, rest[1], "/".join(rest[2:]), query, head)
                else:
                    raise _HubError(404, None, "Not Found")
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo("/".join(parts[:2]))
                self._resolve(repo, parts[3], "/".join(parts[4:]), token, head)
            else:
                raise _HubError(404, None, "Not Found")
        except _HubError as err:
            self._send_error(err, head)

    def _token(self) -> str | None:
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _repo(self, repo_id: str) -> HubRepo:
        repo = self.hub.repo(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: HubRepo, revision: str) -> str:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- endpoints

    def _whoami(self, token: str | None, head: bool) -> None:
        if token is None or token not in self.hub.valid_tokens:
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        self._send_json(
            {
                "type": "user",
                "id": "6750000000000000000000aa",
                "name": SANDBOX_USER,
                "fullname": "mlctl sandbox",
                "isPro": False,
                "canPay": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "sandbox", "role": "read"},
                },
            },
            head,
        )

    def _info(self, repo: HubRepo, revision: str, query: dict[str, str], head: bool) -> None:
        commit = self._commit(repo, revision)
        blobs = query.get("blobs", "").lower() == "true"
        siblings: list[dict[str, Any]] = []
        for f in sorted(repo.files, key=lambda f: f.path):
            sibling: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.git_oid())
                if f.is_lfs:
                    sibling["lfs"] = {
                        "sha256": f.sha256(),
                        "size": f.size,
                        "pointerSize": len(f.lfs_pointer()),
                    }
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        self._send_json(
            {
                "_id": commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": namespace,
                "sha": commit,
                "lastModified": _TIMESTAMP,
                "createdAt": _TIMESTAMP,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": repo.total_size,
            },
            head,
        )

    def _tree(
        self, repo: HubRepo, revision: str, folder: str, query: dict[str, str], head: bool
    ) -> None:
        self._commit(repo, revision)
        recursive = query.get("recursive", "").lower() == "true"
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        below = sorted((f for f in repo.files if f.path.startswith(prefix)), key=lambda f: f.path)
        if prefix and not below:
            raise _HubError(404, "EntryNotFound", f"{folder} does not exist on {revision!r}")
        folders: dict[str, list[str]] = {}
        files: list[HubFile] = []
        for f in below:
            relative = f.path[len(prefix) :].split("/")
            for depth in range(1, len(relative)):
                if not recursive and depth > 1:
                    break
                name = prefix + "/".join(relative[:depth])
                folders.setdefault(name, []).append(f.git_oid())
            if recursive or len(relative) == 1:
                files.append(f)
        entries: list[dict[str, Any]] = [
            {
                "type": "directory",
                "oid": hashlib.sha1("".join(oids).encode(), usedforsecurity=False).hexdigest(),
                "size": 0,
                "path": name,
            }
            for name, oids in sorted(folders.items())
        ]
        for f in files:
            entry: dict[str, Any] = {"type": "file", "oid": f.git_oid(), "size": f.size}
            if f.is_lfs:
                entry["lfs"] = {
                    "oid": f.sha256(),
                    "size": f.size,
                    "pointerSize": len(f.lfs_pointer()),
                }
            entry["path"] = f.path
            entries.append(entry)
        self._send_json(entries, head)

    def _resolve(
        self, repo: HubRepo, revision: str, path: str, token: str | None, head: bool
    ) -> None:
        if repo.gated and (token is None or token not in self.hub.valid_tokens):
            if token is None:
                raise _HubError(
                    401,
                    "GatedRepo",
                    f"Access to model {repo.repo_id} is restricted. You must have access to it "
                    "and be authenticated to access it. Please log in.",
                )
            raise _HubError(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized "
                f"list. Visit {self.hub.url}/{repo.repo_id} to ask for access.",
            )
        commit = self._commit(repo, revision)
        hub_file = repo.file(path)
        if hub_file is None:
            raise _HubError(404, "EntryNotFound", "Entry not found")
        size = hub_file.size
        start, end, status = 0, size, 200
        wanted = self.headers.get("Range")
        match = _RANGE_RE.match(wanted.strip()) if wanted else None
        if match:
            start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)) + 1, size)
            if start >= size or end <= start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", hub_file.etag())
        self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if not head:
            self._stream(repo.repo_id, hub_file, start, end)

    # -- responses

    def _stream(self, repo_id: str, hub_file: HubFile, start: int, end: int) -> None:
        limit = self.hub._take_failure(repo_id, hub_file.path)
        rate = self.hub.throttle_bps
        chunk_size = _CHUNK if not rate else max(1024, min(_CHUNK, rate // 20))
        began, sent = time.monotonic(), 0
        for chunk in hub_file.iter_bytes(start, end, chunk_size):
            if limit is not None and sent + len(chunk) > limit:
                self.wfile.write(chunk[: limit - sent])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)
            sent += len(chunk)
            if rate:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)

    def _send_json(self, payload: object, head: bool, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_error(self, err: _HubError, head: bool) -> None:
        body = json.dumps({"error": err.message}).encode()
        self.send_response(err.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if err.code:
            self.send_header("X-Error-Code", err.code)
        self.send_header("X-Error-Message", err.message)
        self.end_headers()
        if not head:
            self.wfile.write(body)


# --------------------------------------------------------------------------- process


def default_repos() -> list[HubRepo]:
    """Return what the sandbox serves: every built-in profile's repo, the gated and HF repos."""
    from mlctl.sandbox import checkpoints

    return [
        *checkpoints.builtin_repos(),
        checkpoints.gated_repo(),
        checkpoints.hf_format_repo(),
        checkpoints.resumable_repo(),
    ]


def _write_state(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def serve_forever_cli(argv: Sequence[str] | None = None) -> int:
    """Run the sandbox Hub until SIGTERM/SIGINT; return the exit status (0 on a clean stop).

    With ``--state DIR`` it writes ``DIR/hub.json`` (pid, host, port, url, token, repos)
    once the socket listens (its appearance is the readiness signal) and removes it on exit.
    """
    parser = argparse.ArgumentParser(
        prog="python -m mlctl.sandbox.hub", description="mlctl's local Hugging Face Hub."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--state", type=Path, help="directory for hub.json")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help=f"token that opens gated repos (repeatable; default {SANDBOX_TOKEN})",
    )
    parser.add_argument("--throttle", type=int, default=None, help="bytes per second per response")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    tokens = args.token or [SANDBOX_TOKEN]
    server = HubServer(default_repos(), args.host, args.port, tokens, args.throttle)
    if args.state is not None:
        server.request_log_path = args.state / "hub-requests.jsonl"
    server.start()
    state_path = None
    try:
        if args.state is not None:
            args.state.mkdir(parents=True, exist_ok=True)
            state_path = args.state / STATE_FILE
            payload = {
                "pid": os.getpid(),
                "host": server.host,
                "port": server.port,
                "url": server.url,
                "token": tokens[0],
                "repos": [repo.repo_id for repo in server.repos],
            }
            _write_state(state_path, payload)
        else:
            print(server.url, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if state_path is not None:
            with contextlib.suppress(FileNotFoundError):
                state_path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve_forever_cli())
