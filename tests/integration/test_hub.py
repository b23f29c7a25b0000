"""The sandbox's local Hub against the real huggingface_hub client (library and `hf` CLI).

The client runs in a subprocess because HF_ENDPOINT is read when huggingface_hub is
imported. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlctl.profiles import list_entries, load_file
from mlctl.sandbox.checkpoints import (
    GATED_REPO_ID,
    MISSING_REPO_ID,
    builtin_repos,
    gated_repo,
    hf_format_repo,
    large_file_repo,
    parse_safetensors_header,
)
from mlctl.sandbox.hub import SANDBOX_TOKEN, HubFile, HubRepo, HubServer

GGUF_REPO = "unsloth/Mistral-Large-3-675B-Instruct-2512-GGUF"
NVFP4_REPO = "mistralai/Mistral-Large-3-675B-Instruct-2512-NVFP4"
EAGLE_REPO = "mistralai/Mistral-Large-3-675B-Instruct-2512-Eagle"
MISTRAL_INCLUDE = ["*.json", "*.safetensors", "*.txt"]
MISTRAL_SELECTED = {
    "params.json",
    "tekken.json",
    "SYSTEM_PROMPT.txt",
    "consolidated-00001-of-00002.safetensors",
    "consolidated-00002-of-00002.safetensors",
}
IQ1_SHARDS = {
    f"UD-IQ1_S/Mistral-Large-3-675B-Instruct-2512-UD-IQ1_S-{k:05d}-of-00004.gguf"
    for k in range(1, 5)
}


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    repos = [*builtin_repos(), gated_repo(), hf_format_repo()]
    server = HubServer(repos)
    server.start()
    yield server
    server.stop()


def _client_env(hub: HubServer, tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HF_") and k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(tmp_path / "hf-home"),
        NO_PROXY="127.0.0.1,localhost",
    )
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    return env


_PRELUDE = """
import json, sys
args = json.loads(sys.argv[1])

def outcome(fn):
    try:
        value = fn()
    except Exception as exc:
        response = getattr(exc, "response", None)
        return {
            "error": type(exc).__name__,
            "mro": [c.__name__ for c in type(exc).__mro__],
            "status": getattr(response, "status_code", None),
            "message": str(exc),
        }
    return {"ok": value}
"""


def run_client(hub: HubServer, tmp_path: Path, body: str, **args: Any) -> Any:
    """Run ``body`` with huggingface_hub against ``hub``; it sets ``result`` (JSON-able)."""
    code = _PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        env=_client_env(hub, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _local_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def _selected(repo: HubRepo, patterns: list[str]) -> set[str]:
    return {f.path for f in repo.files if any(fnmatch.fnmatchcase(f.path, p) for p in patterns)}


def _content(repo: HubRepo, path: str) -> bytes:
    hub_file = repo.file(path)
    assert hub_file is not None, path
    return hub_file.read()


def _served(hub: HubServer, repo_id: str) -> HubRepo:
    repo = hub.repo(repo_id)
    assert repo is not None
    return repo


# --------------------------------------------------------------------------- downloads


def test_every_builtin_profile_repo_downloads_with_its_include_patterns(
    hub: HubServer, tmp_path: Path
) -> None:
    jobs: dict[str, dict[str, Any]] = {}
    for entry in list_entries():
        if entry.origin != "builtin":
            continue
        profile = load_file(entry.path)
        ckpt = profile.checkpoint
        jobs.setdefault(ckpt.repo, {"revision": ckpt.revision, "include": ckpt.include or None})
        spec = profile.serve.speculative
        if spec is not None and spec.repo:
            jobs.setdefault(spec.repo, {"revision": "main", "include": MISTRAL_INCLUDE})
    assert {NVFP4_REPO, EAGLE_REPO, GGUF_REPO} <= set(jobs)
    for repo_id, job in jobs.items():
        job["local_dir"] = str(tmp_path / "dl" / repo_id)
    hub.request_log.clear()

    result = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import snapshot_download
        result = {
            repo: snapshot_download(
                repo, revision=job["revision"], allow_patterns=job["include"],
                local_dir=job["local_dir"],
            )
            for repo, job in args["jobs"].items()
        }
        """,
        jobs=jobs,
    )

    for repo_id, job in jobs.items():
        repo = _served(hub, repo_id)
        got = _local_files(Path(result[repo_id]))
        expected = (
            _selected(repo, job["include"]) if job["include"] else {f.path for f in repo.files}
        )
        assert set(got) == expected, repo_id
        for path, data in got.items():
            hub_file = repo.file(path)
            assert hub_file is not None and data == hub_file.read(), path
            if path.endswith(".safetensors"):
                header = parse_safetensors_header(data)
                assert any(name.endswith("norm.weight") for name in header)
            if path.endswith(".gguf"):
                assert data[:4] == b"GGUF" and data[4:8] == (3).to_bytes(4, "little")
        if job["include"] == MISTRAL_INCLUDE:
            assert set(got) == MISTRAL_SELECTED
            params = json.loads(got["params.json"])
            assert params["n_layers"] in (61, 1) and params["kv_lora_rank"] == 512
    assert set(_local_files(Path(result[GGUF_REPO]))) == IQ1_SHARDS

    # Files outside the include patterns are never even asked for.
    filtered = [f"/{repo_id}/resolve/" for repo_id, job in jobs.items() if job["include"]]
    resolved = [r.path for r in hub.request_log if r.path.startswith(tuple(filtered))]
    assert resolved
    assert not [p for p in resolved if "README.md" in p or "Q4_K_M" in p or "mmproj" in p]
    assert all(not r.auth for r in hub.request_log)


def test_hf_cli_downloads_one_gguf_quant_and_a_rerun_fetches_nothing(
    hub: HubServer, tmp_path: Path
) -> None:
    hf = Path(sys.executable).with_name("hf")
    hf_bin = str(hf) if hf.exists() else shutil.which("hf")
    assert hf_bin, "the hf CLI of huggingface_hub is not installed"
    target = tmp_path / "gguf"
    argv = [hf_bin, "download", GGUF_REPO, "--include", "UD-IQ1_S/*", "--local-dir", str(target)]
    env = _client_env(hub, tmp_path)

    hub.request_log.clear()
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    repo = _served(hub, GGUF_REPO)
    got = _local_files(target)
    assert set(got) == IQ1_SHARDS
    assert got == {p: _content(repo, p) for p in IQ1_SHARDS}
    first_log = list(hub.request_log)
    assert {r.method for r in first_log if "/resolve/" in r.path} == {"HEAD", "GET"}
    assert len([r for r in first_log if r.method == "GET" and "/resolve/" in r.path]) == 4

    hub.request_log.clear()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [r for r in hub.request_log if "/resolve/" in r.path] == []
    assert _local_files(target) == got


def test_a_dropped_download_resumes_within_the_process(hub: HubServer, tmp_path: Path) -> None:
    # The client keeps what it got only in whole 10 MiB chunks (DOWNLOAD_CHUNK_SIZE): a drop
    # past the first chunk resumes with a Range request, a drop inside it starts over.
    chunk = 10 * 1024 * 1024
    repo = HubRepo(
        "mlctl-sandbox/resume",
        [
            HubFile.synthetic("late-drop.bin", 24_000_000),
            HubFile.synthetic("early-drop.bin", 3_000_000),
        ],
    )
    hub.add_repo(repo)
    hub.fail_after_bytes(repo.repo_id, "late-drop.bin", 12_000_000)
    hub.fail_after_bytes(repo.repo_id, "early-drop.bin", 1_000_000)
    hub.request_log.clear()

    result = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import snapshot_download
        result = snapshot_download(args["repo"], local_dir=args["dir"])
        """,
        repo=repo.repo_id,
        dir=str(tmp_path / "resume"),
    )

    for hub_file in repo.files:
        digest = hashlib.sha256()
        with open(Path(result) / hub_file.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        assert digest.hexdigest() == hub_file.sha256(), hub_file.path
    gets = [r for r in hub.request_log if r.method == "GET" and "/resolve/" in r.path]
    late = [g.range for g in gets if g.path.endswith("late-drop.bin")]
    early = [g.range for g in gets if g.path.endswith("early-drop.bin")]
    assert late == [None, f"bytes={chunk}-"]
    assert early == [None, None]


# --------------------------------------------------------------------------- metadata


def test_model_info_and_tree_give_the_file_sizes(hub: HubServer, tmp_path: Path) -> None:
    result = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile
        api = HfApi()
        info = api.model_info(args["repo"], revision="main", files_metadata=True)
        tree = list(api.list_repo_tree(args["repo"], recursive=True))
        top = list(api.list_repo_tree(args["repo"]))
        iq1 = list(api.list_repo_tree(args["repo"], path_in_repo="UD-IQ1_S", revision=info.sha))
        gated = api.model_info(args["gated"])
        result = {
            "sha": info.sha,
            "siblings": {
                s.rfilename: [s.size, s.lfs.sha256 if s.lfs else None] for s in info.siblings
            },
            "tree": {f.path: f.size for f in tree if isinstance(f, RepoFile)},
            "folders": sorted(f.path for f in top if not isinstance(f, RepoFile)),
            "top_files": sorted(f.path for f in top if isinstance(f, RepoFile)),
            "iq1": {f.path: f.size for f in iq1},
            "gated": gated.gated,
        }
        """,
        repo=GGUF_REPO,
        gated=GATED_REPO_ID,
    )
    repo = _served(hub, GGUF_REPO)
    sizes = {f.path: f.size for f in repo.files}
    assert result["sha"] == repo.revision_sha
    assert {p: s for p, (s, _) in result["siblings"].items()} == sizes
    lfs = {p: sha for p, (_, sha) in result["siblings"].items() if sha is not None}
    assert lfs == {f.path: f.sha256() for f in repo.files if f.is_lfs}
    assert result["tree"] == sizes
    assert result["folders"] == ["Q4_K_M", "UD-IQ1_S", "UD-Q2_K_XL"]
    assert result["top_files"] == [".gitattributes", "README.md", "mmproj-F16.gguf"]
    assert result["iq1"] == {p: sizes[p] for p in IQ1_SHARDS}
    assert result["gated"] == "manual"


# --------------------------------------------------------------------------- errors


def test_gated_missing_repo_and_revision_raise_the_clients_own_errors(
    hub: HubServer, tmp_path: Path
) -> None:
    hub.request_log.clear()
    result = run_client(
        hub,
        tmp_path,
        """
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        def snap(repo, **kw):
            return lambda: snapshot_download(repo, local_dir=args["dir"] + "/" + repo, **kw)
        result = {
            "gated_no_token": outcome(snap(args["gated"])),
            "gated_file_no_token": outcome(lambda: hf_hub_download(args["gated"], "params.json")),
            "gated_bad_token": outcome(snap(args["gated"], token="hf_notavalidtoken")),
            "gated_token": outcome(snap(args["gated"], token=args["token"])),
            "missing_repo": outcome(snap(args["missing"])),
            "missing_revision": outcome(snap(args["repo"], revision="no-such-branch")),
            "missing_file": outcome(lambda: hf_hub_download(args["repo"], "nope.json")),
            "whoami": outcome(lambda: HfApi(token=args["token"]).whoami()["name"]),
            "whoami_bad": outcome(lambda: HfApi(token="hf_notavalidtoken").whoami()),
        }
        """,
        gated=GATED_REPO_ID,
        missing=MISSING_REPO_ID,
        repo=NVFP4_REPO,
        token=SANDBOX_TOKEN,
        dir=str(tmp_path / "dl"),
    )
    assert result["gated_no_token"]["error"] == "GatedRepoError"
    assert result["gated_no_token"]["status"] == 401
    assert (
        "Access to model mlctl-sandbox/gated-model is restricted"
        in (result["gated_no_token"]["message"])
    )
    assert result["gated_file_no_token"]["error"] == "GatedRepoError"
    assert result["gated_bad_token"]["error"] == "GatedRepoError"
    assert result["gated_bad_token"]["status"] == 403
    assert "ok" in result["gated_token"]
    assert set(_local_files(Path(result["gated_token"]["ok"]))) == {
        f.path for f in gated_repo().files
    }
    assert result["missing_repo"]["error"] == "RepositoryNotFoundError"
    assert result["missing_revision"]["error"] == "RevisionNotFoundError"
    assert result["missing_file"]["error"] == "RemoteEntryNotFoundError"
    assert "EntryNotFoundError" in result["missing_file"]["mro"]
    assert result["whoami"] == {"ok": "mlctl-sandbox"}
    assert result["whoami_bad"]["status"] == 401
    # A token is sent only where one was given, and never logged.
    assert any(r.auth for r in hub.request_log)
    assert SANDBOX_TOKEN not in repr(hub.request_log)


# --------------------------------------------------------------------------- raw protocol


def _request(
    hub: HubServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_resolve_headers_ranges_and_error_codes(hub: HubServer) -> None:
    repo = _served(hub, NVFP4_REPO)
    shard = repo.file("consolidated-00001-of-00002.safetensors")
    params = repo.file("params.json")
    assert shard is not None and params is not None
    base = f"/{NVFP4_REPO}/resolve/main"

    status, headers, body = _request(hub, "HEAD", f"{base}/{shard.path}")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == repo.revision_sha
    assert headers["ETag"] == f'"{shard.sha256()}"'
    assert headers["Content-Length"] == str(shard.size)
    _, json_headers, _ = _request(hub, "HEAD", f"{base}/params.json")
    assert json_headers["ETag"] == f'"{params.git_oid()}"'

    status, headers, body = _request(hub, "GET", f"{base}/{shard.path}", {"Range": "bytes=100-"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes 100-{shard.size - 1}/{shard.size}"
    assert body == shard.read()[100:]
    status, headers, _ = _request(hub, "GET", f"{base}/{shard.path}", {"Range": "bytes=999999-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{shard.size}")

    cases = {
        f"/{MISSING_REPO_ID}/resolve/main/params.json": (404, "RepoNotFound"),
        f"/{NVFP4_REPO}/resolve/nope/params.json": (404, "RevisionNotFound"),
        f"{base}/nope.json": (404, "EntryNotFound"),
        f"/api/models/{MISSING_REPO_ID}/revision/main": (404, "RepoNotFound"),
        f"/api/models/{NVFP4_REPO}/revision/nope": (404, "RevisionNotFound"),
        f"/{GATED_REPO_ID}/resolve/main/params.json": (401, "GatedRepo"),
    }
    for path, (want_status, want_code) in cases.items():
        status, headers, _ = _request(hub, "GET", path)
        assert (status, headers.get("X-Error-Code")) == (want_status, want_code), path
    status, headers, _ = _request(
        hub, "HEAD", f"/{GATED_REPO_ID}/resolve/main/params.json", {"Authorization": "Bearer x"}
    )
    assert (status, headers["X-Error-Code"]) == (403, "GatedRepo")
    status, _, _ = _request(
        hub,
        "GET",
        f"/{GATED_REPO_ID}/resolve/main/params.json",
        {"Authorization": f"Bearer {SANDBOX_TOKEN}"},
    )
    assert status == 200

    status, _, body = _request(hub, "GET", f"/api/models/{NVFP4_REPO}/revision/main?blobs=true")
    info = json.loads(body)
    assert status == 200 and info["sha"] == repo.revision_sha
    assert "xet" not in body.decode().lower()
    for path in (f"{base}/{shard.path}", f"/api/models/{NVFP4_REPO}/tree/main?recursive=true"):
        _, headers, body = _request(hub, "GET", path)
        assert not [h for h in headers if h.lower().startswith("x-xet")]
        assert b"xetHash" not in body


def test_throttle_caps_the_rate(hub: HubServer) -> None:
    repo = _served(hub, NVFP4_REPO)
    shard = repo.files[-1]
    hub.throttle_bps = 200_000
    try:
        began = time.monotonic()
        status, _, body = _request(hub, "GET", f"/{NVFP4_REPO}/resolve/main/{shard.path}")
        elapsed = time.monotonic() - began
    finally:
        hub.throttle_bps = None
    assert status == 200 and body == shard.read()
    assert elapsed >= shard.size / 200_000 * 0.8


# --------------------------------------------------------------------------- builders


def test_builders_are_deterministic_and_cover_every_builtin_profile() -> None:
    first, second = builtin_repos(), builtin_repos()
    assert [r.revision_sha for r in first] == [r.revision_sha for r in second]
    assert [[f.data for f in r.files] for r in first] == [[f.data for f in r.files] for r in second]
    assert len({r.revision_sha for r in first}) == len(first)
    served = {r.repo_id for r in first}
    for entry in list_entries():
        if entry.origin == "builtin":
            assert load_file(entry.path).checkpoint.repo in served
    for repo in first:
        for f in repo.files:
            if f.path.endswith(".safetensors"):
                parse_safetensors_header(f.data)


def test_synthetic_files_stream_the_same_bytes_from_any_offset() -> None:
    big = HubFile.synthetic("blob.bin", 3_000_000, seed="s")
    whole = big.read()
    assert len(whole) == big.size and big.is_lfs
    assert b"".join(big.iter_bytes(1_234_567, chunk_size=10_000)) == whole[1_234_567:]
    assert hashlib.sha256(whole).hexdigest() == big.sha256()
    assert HubFile.synthetic("blob.bin", 3_000_000, seed="t").read() != whole
    large = large_file_repo()
    assert large.total_size == 50_000_000 and large.files[0].data == b""


# --------------------------------------------------------------------------- process


def test_cli_process_writes_its_state_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlctl.sandbox.hub", "--port", "0", "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not (state / "hub.json").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "hub.json never appeared"
            time.sleep(0.05)
        info = json.loads((state / "hub.json").read_text())
        assert info["pid"] == proc.pid and info["url"] == f"http://127.0.0.1:{info['port']}"
        assert (state / "hub.json").stat().st_mode & 0o777 == 0o600
        assert GGUF_REPO in info["repos"] and GATED_REPO_ID in info["repos"]
        conn = http.client.HTTPConnection("127.0.0.1", info["port"], timeout=10)
        conn.request("GET", f"/api/models/{GGUF_REPO}/revision/main")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not (state / "hub.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
