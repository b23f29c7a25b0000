"""mlctl.hubmeta against the sandbox's local Hub, in-process, on 127.0.0.1 only.

The real huggingface_hub client runs in a subprocess where it needs HF_ENDPOINT (read when
huggingface_hub is imported); hubmeta itself passes the endpoint explicitly.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlctl import hubmeta
from mlctl.errors import HubError
from mlctl.hubmeta import RepoFile, RepoSnapshot, check_access, local_token, select, snapshot
from mlctl.profiles import list_entries, load_file
from mlctl.sandbox.checkpoints import (
    GATED_REPO_ID,
    MISSING_REPO_ID,
    builtin_repos,
    gated_repo,
)
from mlctl.sandbox.hub import SANDBOX_TOKEN, HubRepo, HubServer

GGUF_REPO = "unsloth/Mistral-Large-3-675B-Instruct-2512-GGUF"
WRONG_TOKEN = "hf_wrongTokenValue1234567890abcdefgh"
SECRETS = (SANDBOX_TOKEN, WRONG_TOKEN)


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    server = HubServer([*builtin_repos(), gated_repo()])
    server.start()
    yield server
    server.stop()


def _served(hub: HubServer, repo_id: str) -> HubRepo:
    repo = hub.repo(repo_id)
    assert repo is not None, repo_id
    return repo


def _assert_secret_free(err: BaseException) -> str:
    text = str(err)
    for secret in SECRETS:
        assert secret not in text
        assert secret not in repr(err)
    # The original exception (holding the request and its headers) is not chained.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client_env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HF_")
        and k != "HUGGING_FACE_HUB_TOKEN"
        and k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(tmp_path / "hf-home"),
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def _run(hub: HubServer, tmp_path: Path, code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=_client_env(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# --------------------------------------------------------------------------- sizes, selection


def test_every_builtin_profile_snapshot_matches_what_the_hub_serves(hub: HubServer) -> None:
    seen = 0
    for entry in list_entries():
        if entry.origin != "builtin":
            continue
        ckpt = load_file(entry.path).checkpoint
        snap = snapshot(ckpt.repo, ckpt.revision, ckpt.include, endpoint=hub.url)
        served = _served(hub, ckpt.repo)
        assert snap.repo == ckpt.repo and snap.revision == ckpt.revision
        assert snap.commit == served.revision_sha
        assert snap.gated is False
        expected = {f.path: f.size for f in served.files if hubmeta.matches(f.path, ckpt.include)}
        assert expected, entry.path
        assert {f.path: f.size for f in snap.files} == expected, entry.path
        assert [f.path for f in snap.files] == sorted(expected)
        assert snap.total_bytes == sum(expected.values())
        seen += 1
    assert seen >= 3


def test_revision_may_be_the_commit_itself(hub: HubServer) -> None:
    commit = _served(hub, GGUF_REPO).revision_sha
    snap = snapshot(GGUF_REPO, commit, ["UD-IQ1_S/"], endpoint=hub.url)
    assert snap.commit == commit and len(snap.files) == 4


def test_select_agrees_with_filter_repo_objects(hub: HubServer) -> None:
    from huggingface_hub.utils import filter_repo_objects

    files = [RepoFile(f.path, f.size) for repo in hub.repos for f in repo.files]
    patterns: list[list[str]] = [
        ["UD-IQ1_S/*"],
        ["UD-IQ1_S/"],
        ["*.json"],
        ["*.json", "*.safetensors", "*.txt"],
        ["consolidated-0000?-of-00002.safetensors"],
        ["*IQ1_S*"],
        ["UD-*/*-00001-of-*.gguf"],
        ["[RS]*"],
        ["README.MD"],
        ["UD-IQ1_S\\*"],
    ]
    for include in patterns:
        want = list(filter_repo_objects(files, allow_patterns=include, key=lambda f: f.path))
        assert select(files, include) == want, include
    assert select(files, []) == files


def test_include_selects_exactly_what_snapshot_download_fetches(
    hub: HubServer, tmp_path: Path
) -> None:
    jobs = {
        "iq1-glob": (GGUF_REPO, ["UD-IQ1_S/*"]),
        "iq1-folder": (GGUF_REPO, ["UD-IQ1_S/"]),
        "gguf-json": (GGUF_REPO, ["*.md", "*.json"]),
    }
    out = _run(
        hub,
        tmp_path,
        """
        import json, os, sys
        from huggingface_hub import snapshot_download
        jobs, root = json.loads(sys.argv[1]), sys.argv[2]
        result = {}
        for key, (repo, include) in jobs.items():
            local = snapshot_download(
                repo, allow_patterns=include, local_dir=os.path.join(root, key)
            )
            result[key] = sorted(
                os.path.relpath(os.path.join(d, f), local).replace(os.sep, "/")
                for d, dirs, files in os.walk(local)
                for f in files
                if ".cache" not in os.path.relpath(d, local).split(os.sep)
            )
        print(json.dumps(result))
        """,
        json.dumps(jobs),
        str(tmp_path / "dl"),
    )
    downloaded = json.loads(out.strip().splitlines()[-1])
    for key, (repo, include) in jobs.items():
        snap = snapshot(repo, "main", include, endpoint=hub.url)
        assert [f.path for f in snap.files] == downloaded[key], key
    assert len(downloaded["iq1-glob"]) == 4
    assert downloaded["iq1-glob"] == downloaded["iq1-folder"]


def test_patterns_that_select_nothing_are_refused(hub: HubServer) -> None:
    with pytest.raises(HubError) as info:
        snapshot(GGUF_REPO, "main", ["UD-Q9_Z/*"], endpoint=hub.url)
    assert "select no file" in info.value.message and "UD-Q9_Z/*" in info.value.message
    assert info.value.hint and "checkpoint.include" in info.value.hint


# --------------------------------------------------------------------------- gated repos


def test_gated_repo_metadata_is_public_but_files_need_a_token(hub: HubServer) -> None:
    snap = snapshot(GATED_REPO_ID, "main", [], endpoint=hub.url)
    assert snap.gated == "manual" and snap.files
    assert snap.total_bytes == _served(hub, GATED_REPO_ID).total_size

    before = len(hub.request_log)
    with pytest.raises(HubError) as info:
        check_access(snap, endpoint=hub.url, token=None)
    text = _assert_secret_free(info.value)
    assert len(hub.request_log) == before  # refused without asking the Hub
    assert f"{GATED_REPO_ID} is gated" in info.value.message
    assert f"accept its licence at {hub.url}/{GATED_REPO_ID}" in info.value.message
    assert "HF_TOKEN" in text and "hf auth login" in text

    with pytest.raises(HubError) as info:
        check_access(snap, endpoint=hub.url, token=WRONG_TOKEN)
    text = _assert_secret_free(info.value)
    assert "403" in text and "accept its licence" in text

    check_access(snap, endpoint=hub.url, token=SANDBOX_TOKEN)
    heads = [r for r in hub.request_log[before:] if r.method == "HEAD"]
    assert len(heads) == 2 and all(r.auth for r in heads)
    assert f"/resolve/{snap.commit}/" in heads[-1].path


def test_an_environment_token_is_never_sent_implicitly(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", WRONG_TOKEN)
    before = len(hub.request_log)
    snap = snapshot(GATED_REPO_ID, "main", [], endpoint=hub.url)
    with pytest.raises(HubError) as info:
        check_access(snap, endpoint=hub.url, token=None)
    _assert_secret_free(info.value)
    assert hub.request_log[before:] and not any(r.auth for r in hub.request_log[before:])


def test_check_access_on_an_open_repo_sends_nothing(hub: HubServer) -> None:
    snap = snapshot(GGUF_REPO, "main", ["UD-IQ1_S/*"], endpoint=hub.url)
    before = len(hub.request_log)
    check_access(snap, endpoint=hub.url, token=None)
    check_access(snap, endpoint=hub.url, token=SANDBOX_TOKEN)
    assert len(hub.request_log) == before


def test_requests_carry_only_the_token_given(hub: HubServer) -> None:
    before = len(hub.request_log)
    snapshot(GGUF_REPO, "main", ["UD-IQ1_S/*"], endpoint=hub.url)
    snapshot(GGUF_REPO, "main", ["UD-IQ1_S/*"], endpoint=hub.url, token=SANDBOX_TOKEN)
    log = hub.request_log[before:]
    assert [r.auth for r in log] == [False, True]


# --------------------------------------------------------------------------- failures


def test_missing_repo_and_revision(hub: HubServer) -> None:
    with pytest.raises(HubError) as info:
        snapshot(MISSING_REPO_ID, "main", [], endpoint=hub.url, token=SANDBOX_TOKEN)
    text = _assert_secret_free(info.value)
    assert MISSING_REPO_ID in info.value.message and "not found" in info.value.message
    assert "check the repo id" in text and "token" in text

    with pytest.raises(HubError) as info:
        snapshot(GGUF_REPO, "no-such-branch", [], endpoint=hub.url, token=SANDBOX_TOKEN)
    text = _assert_secret_free(info.value)
    assert "'no-such-branch'" in info.value.message and "checkpoint.revision" in text


def test_closed_port_cannot_reach() -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(HubError) as info:
        snapshot(GGUF_REPO, "main", [], endpoint=endpoint, token=SANDBOX_TOKEN, timeout=5)
    _assert_secret_free(info.value)
    assert f"cannot reach {endpoint}" in info.value.message

    snap = RepoSnapshot(GATED_REPO_ID, "main", "0" * 40, (RepoFile("a.json", 1),), "manual")
    with pytest.raises(HubError) as info:
        check_access(snap, endpoint=endpoint, token=SANDBOX_TOKEN, timeout=5)
    _assert_secret_free(info.value)
    assert f"cannot reach {endpoint}" in info.value.message


class _Status(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        body = b'{"error": "down"}'
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize(
    ("status", "words"), [(503, "503"), (401, "401"), (403, "403"), (429, "429")]
)
def test_http_statuses_become_hub_errors(status: int, words: str) -> None:
    handler = type("Handler", (_Status,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(HubError) as info:
            snapshot(GGUF_REPO, "main", [], endpoint=endpoint, token=SANDBOX_TOKEN)
        _assert_secret_free(info.value)
        assert words in info.value.message and info.value.hint
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_no_request_leaves_loopback(hub: HubServer, tmp_path: Path) -> None:
    """With telemetry left on in the environment, hubmeta still talks only to its endpoint.

    (huggingface_hub >= 2 otherwise fetches an agent registry from HF_ENDPOINT/huggingface.co
    on the first request of a process, whatever endpoint the call names.)
    """
    before = len(hub.request_log)
    out = _run(
        hub,
        tmp_path,
        """
        import sys
        from mlctl.hubmeta import snapshot
        snap = snapshot(sys.argv[1], "main", ["UD-IQ1_S/*"], endpoint=sys.argv[2])
        print(len(snap.files))
        """,
        GGUF_REPO,
        hub.url,
    )
    assert out.strip() == "4"
    paths = [r.path for r in hub.request_log[before:]]
    assert paths and not any("agent-harnesses" in p for p in paths), paths


# --------------------------------------------------------------------------- local token


def test_local_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    stored = tmp_path / "token"
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(stored))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    assert local_token() is None
    stored.write_text("hf_storedToken\n")
    assert local_token() == "hf_storedToken"
    monkeypatch.setenv("HF_TOKEN", " hf_fromEnv ")
    assert local_token() == "hf_fromEnv"
