"""What every engine backend produces: pure specs of install, download and launch."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlctl import shell


@dataclass(frozen=True)
class RemoteLayout:
    """Where mlctl keeps things on the host: everything under ``root``, except the
    checkpoints when ``models_root`` puts them elsewhere (a big volume)."""

    root: str = "$HOME/.mlctl"
    models_root: str | None = None  # --models-dir: checkpoints on another volume

    @property
    def models_dir(self) -> str:
        """Directory of downloaded checkpoints (``ROOT/models`` unless --models-dir)."""
        return self.models_root or f"{self.root}/models"

    @property
    def secrets_dir(self) -> str:
        """0700 directory holding the HF token and API keys (0600 files)."""
        return f"{self.root}/secrets"

    @property
    def hf_token_file(self) -> str:
        """The Hugging Face token, written over stdin, mode 0600."""
        return f"{self.secrets_dir}/hf_token"

    def model_dir(self, repo: str) -> str:
        """Local directory of one Hub repo's files."""
        return f"{self.models_dir}/{repo.replace('/', '--')}"

    def venv_dir(self, name: str) -> str:
        """A Python virtual environment owned by mlctl."""
        return f"{self.root}/venvs/{name}"

    def engine_dir(self, name: str) -> str:
        """A built or unpacked engine owned by mlctl."""
        return f"{self.root}/engines/{name}"

    def deployment_dir(self, name: str) -> str:
        """The directory of one deployment (spec.json, run.sh, server.log, ...)."""
        return f"{self.root}/deployments/{name}"

    def api_key_file(self, name: str) -> str:
        """The deployment's API key, mode 0600."""
        return f"{self.deployment_dir(name)}/api_key"


@dataclass(frozen=True)
class InstallSpec:
    """How to get the engine onto the host."""

    description: str
    check: str  # shell: exit 0 when the engine is already installed at the pinned version
    commands: list[str]  # shell commands run in order when it is not
    binary: str  # the engine executable the launch uses


@dataclass(frozen=True)
class DownloadSpec:
    """One Hub repo to fetch onto the host."""

    repo: str
    revision: str
    include: list[str]
    local_dir: str
    size_bytes: int

    def command(self, layout: RemoteLayout, hf_bin: str = "hf") -> str:
        """The ``hf download`` command; the token comes from the 0600 file, not argv."""
        argv = [hf_bin, "download", self.repo, "--revision", self.revision]
        for pattern in self.include:
            argv += ["--include", pattern]
        argv += ["--local-dir", self.local_dir]
        token = shell.quote(layout.hf_token_file)
        load_token = f"if [ -s {token} ]; then HF_TOKEN=$(cat {token}); export HF_TOKEN; fi"
        return f"{load_token}; {shell.join(argv)}"


@dataclass(frozen=True)
class LaunchSpec:
    """The engine process: argv, environment and how to tell it is up."""

    argv: list[str]
    env: dict[str, str]
    secret_env: dict[str, str] = field(default_factory=dict)  # NAME -> file holding the value
    port: int = 8000
    health_path: str = "/health"
    models_path: str = "/v1/models"
    chat_path: str = "/v1/chat/completions"
    api_key_enforced: bool = True
    after_start: list[str] = field(default_factory=list)  # e.g. ``ollama pull TAG``

    def command(self) -> str:
        """The launch as one shell command: secrets read from files, then exec."""
        parts = []
        for name, path in self.secret_env.items():
            parts.append(f"{name}=$(cat {shell.quote(path)}); export {name}")
        if self.env:
            parts.append(f"exec env {shell.env_assignments(self.env)} {shell.join(self.argv)}")
        else:
            parts.append(f"exec {shell.join(self.argv)}")
        return "; ".join(parts)
