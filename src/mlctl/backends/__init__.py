"""Engine backends: pure builders of install, download and launch specs."""

from __future__ import annotations

from typing import Protocol

from mlctl.backends.base import DownloadSpec, InstallSpec, LaunchSpec, RemoteLayout
from mlctl.facts import HostFacts
from mlctl.fit import FitReport
from mlctl.profiles import Profile


class Backend(Protocol):
    """What each engine module (vllm, llamacpp, ollama) provides."""

    def install(self, profile: Profile, layout: RemoteLayout) -> InstallSpec: ...

    def downloads(self, profile: Profile, layout: RemoteLayout) -> list[DownloadSpec]: ...

    def hf_binary(self, profile: Profile, layout: RemoteLayout) -> str: ...

    def phases(self) -> list[tuple[str, str]]: ...

    def launch(
        self,
        profile: Profile,
        facts: HostFacts,
        report: FitReport,
        layout: RemoteLayout,
        name: str,
    ) -> LaunchSpec: ...


def backend_for(kind: str) -> Backend:
    """Return the backend module for an engine kind (vllm, ollama, llamacpp).

    Raises ValueError for an unknown kind (profiles validate it before).
    """
    if kind == "vllm":
        from mlctl.backends import vllm

        return vllm
    if kind == "llamacpp":
        from mlctl.backends import llamacpp

        return llamacpp
    if kind == "ollama":
        from mlctl.backends import ollama

        return ollama
    raise ValueError(f"unknown engine {kind!r}")
