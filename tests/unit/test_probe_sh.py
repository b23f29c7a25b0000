"""Run the real probe.sh under sh, dash and busybox sh with stand-in tools.

Each run gets a temporary HOME and a PATH that holds only a few utilities and
the stand-ins written here, so the host's own tools (or a real nvidia-smi on a
GPU machine) do not leak in. No SSH involved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlctl.facts import HostFacts, parse_probe_output, probe_script
from mlctl.gpus import lookup

UTILITIES = "awk sed head grep df uname nproc getconf dirname basename tr timeout true cat".split()
FIELDS = "index,name,memory.total,memory.used,compute_cap,uuid,mig.mode.current,driver_version"
NO_CC_FIELDS = "index,name,memory.total,memory.used,uuid,mig.mode.current,driver_version"
DRIVER_MESSAGE = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
# Control characters, quotes, backslashes, spaces, a newline and non-ASCII: all legal in a name.
NASTY = 'my "models" dir \\ it\'s\ttab\x01\x1b[0m\rnew\nline ü €'

BUSYBOX = shutil.which("busybox")


@dataclass(frozen=True)
class Shell:
    """How to run the probe: the shell and where the utilities come from."""

    name: str
    argv: tuple[str, ...]
    busybox_utils: bool = False


def _shells() -> list[Shell]:
    shells = [Shell("sh", (shutil.which("sh") or "/bin/sh",))]
    dash = shutil.which("dash")
    if dash:
        shells.append(Shell("dash", (dash,)))
    bash = shutil.which("bash")
    if bash:  # where /bin/sh is bash (RHEL, macOS), in its POSIX mode
        shells.append(Shell("bash-posix", (bash, "--posix")))
    if BUSYBOX:
        shells.append(Shell("busybox", (BUSYBOX, "sh"), busybox_utils=True))
    return shells


SHELLS = _shells()


def h100_csv(fields: str) -> str:
    gpu = lookup("H100-80GB")
    rows = []
    for i in range(8):
        values = {
            "index": str(i),
            "name": gpu.smi_name,
            "memory.total": str(gpu.memory_mib),
            "memory.used": "0",
            "compute_cap": gpu.compute_capability,
            "uuid": f"GPU-5c1fa0c4-2d2b-9b43-8d4e-0b7a8ef1c3{i:02d}",
            "mig.mode.current": "Disabled",
            "driver_version": "550.54.15",
        }
        rows.append(", ".join(values[f] for f in fields.split(",")))
    return "\n".join(rows) + "\n"


TABLE_HEAD = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


class Host:
    """A temporary host: HOME, a bin directory on PATH, and a way to run the probe."""

    def __init__(self, tmp: Path, shell: Shell) -> None:
        self.shell = shell
        self.home = tmp / "home"
        self.bin = tmp / "bin"
        self.home.mkdir()
        self.bin.mkdir()
        self.script = tmp / "probe.sh"
        self.script.write_text(probe_script(), encoding="utf-8")
        for util in UTILITIES:
            target = BUSYBOX if shell.busybox_utils else shutil.which(util)
            if target:
                (self.bin / util).symlink_to(target)

    def drop(self, util: str) -> None:
        (self.bin / util).unlink()

    def stand_in(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
        path.chmod(0o755)

    def nvidia_smi(self, mode: str) -> None:
        """Install a stand-in nvidia-smi: ``ok``, ``nocc`` (old driver) or ``fail``."""
        data = self.bin / "smi-data"
        data.mkdir()
        (data / "table").write_text(TABLE_HEAD, encoding="utf-8")
        (data / f"csv.{NO_CC_FIELDS}").write_text(h100_csv(NO_CC_FIELDS), encoding="utf-8")
        if mode == "ok":
            (data / f"csv.{FIELDS}").write_text(h100_csv(FIELDS), encoding="utf-8")
        if mode == "fail":
            self.stand_in("nvidia-smi", f'echo "{DRIVER_MESSAGE}"\nexit 9\n')
            return
        self.stand_in(
            "nvidia-smi",
            'd="${0%/*}/smi-data"\n'
            'case "${1:-}" in\n'
            "  --query-gpu=*)\n"
            '    f="$d/csv.${1#--query-gpu=}"\n'
            '    if [ -f "$f" ]; then cat "$f"; exit 0; fi\n'
            "    echo 'Field \"compute_cap\" is not a valid field to query.'\n"
            "    exit 2 ;;\n"
            "esac\n"
            'cat "$d/table"\n',
        )

    def run(self, *args: str, via_stdin: bool = False) -> tuple[str, HostFacts]:
        """Run the probe as a file, or fed on stdin the way it travels over SSH."""
        env = {"HOME": str(self.home), "PATH": str(self.bin)}
        if via_stdin:
            argv = [*self.shell.argv, "-s", "--", *args]
            stdin = self.script.read_bytes()
        else:
            argv, stdin = [*self.shell.argv, str(self.script), *args], b""
        done = subprocess.run(
            argv, input=stdin, env=env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        stdout = done.stdout.decode("utf-8")
        lines = stdout.splitlines()
        assert len(lines) == 1, stdout
        json.loads(lines[0])
        return lines[0], parse_probe_output(stdout)


@pytest.fixture(params=SHELLS, ids=[s.name for s in SHELLS])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Host:
    shell: Shell = request.param
    return Host(tmp_path, shell)


def test_shells_available() -> None:
    assert SHELLS[0].name == "sh"


def test_eight_gpus(host: Host) -> None:
    host.nvidia_smi("ok")
    host.stand_in("ollama", "echo 'ollama version is 0.3.12'\n")
    host.stand_in("llama-server", "echo 'version: 3848 (c919d5db)' >&2\necho 'built with cc' >&2\n")
    (host.home / ".mlctl" / "deployments" / "qwen-a100").mkdir(parents=True)
    (host.home / ".mlctl" / "deployments" / "old").mkdir()
    (host.home / ".mlctl" / "deployments" / "not-a-dir").write_text("", encoding="utf-8")

    _, facts = host.run()

    assert facts.nvidia_smi == "ok"
    assert facts.gpu_count == 8
    assert {g.name for g in facts.gpus} == {"NVIDIA H100 80GB HBM3"}
    assert {g.memory_total_mib for g in facts.gpus} == {81559}
    assert {g.compute_capability for g in facts.gpus} == {"9.0"}
    assert {g.mig_mode for g in facts.gpus} == {"Disabled"}
    assert [g.index for g in facts.gpus] == list(range(8))
    assert facts.driver_version == "550.54.15"
    assert facts.cuda_version == "12.4"
    assert facts.tools["ollama"] == "0.3.12"
    assert facts.tools["llama-server"] == "b3848"
    assert facts.tools["python3"] is None
    assert facts.tools["vllm"] is None
    assert facts.deployments == ["old", "qwen-a100"]
    assert facts.root == str(host.home / ".mlctl")
    assert facts.cpu_count is not None and facts.cpu_count >= 1
    assert facts.ram_total_bytes is not None and facts.ram_total_bytes > 0
    assert facts.hostname
    assert facts.warnings == []
    assert set(facts.disk_free_bytes) == {"~/.mlctl/models", "/workspace", "/data", "/mnt", "~"}
    # ~/.mlctl/models does not exist: measured at its nearest existing parent
    assert facts.disk_measured_at["~/.mlctl/models"] == str(host.home / ".mlctl")
    assert facts.disk_measured_at["~"] == str(host.home)


def test_fed_on_stdin_no_command_swallows_the_script(host: Host) -> None:
    host.nvidia_smi("ok")
    # stand-ins that read their stdin: over `sh -s` that stdin would be the rest of the script
    host.stand_in("docker", "cat >/dev/null\necho 'Docker version 24.0.7, build afdd53b'\n")
    host.stand_in("uv", "cat >/dev/null\necho 'uv 0.4.18'\n")
    (host.home / "models").mkdir()
    _, facts = host.run("--root", "~/.mlctl", "~/models", via_stdin=True)
    assert facts.tools["docker"] == "24.0.7"
    assert facts.tools["uv"] == "0.4.18"
    assert facts.gpu_count == 8
    assert facts.disk_measured_at == {"~/models": str(host.home / "models")}


def test_compute_cap_unsupported(host: Host) -> None:
    host.nvidia_smi("nocc")
    line, facts = host.run()
    assert json.loads(line)["smi_fields"] == NO_CC_FIELDS
    assert facts.nvidia_smi == "ok"
    assert facts.gpu_count == 8
    assert {g.compute_capability for g in facts.gpus} == {None}
    assert facts.cuda_version == "12.4"


def test_driver_failing(host: Host) -> None:
    host.nvidia_smi("fail")
    _, facts = host.run()
    assert facts.nvidia_smi == "error"
    assert facts.gpus == []
    assert facts.nvidia_smi_error == f"nvidia-smi failed (exit status 9): {DRIVER_MESSAGE}"


def test_nvidia_smi_missing(host: Host) -> None:
    _, facts = host.run()
    assert facts.nvidia_smi == "missing"
    assert facts.gpus == []


def test_nasty_names_are_escaped(host: Host, tmp_path: Path) -> None:
    models = tmp_path / NASTY
    models.mkdir()
    root = tmp_path / "root with 'quote'"
    (root / "deployments" / NASTY).mkdir(parents=True)
    (root / "deployments" / 'plain "q"').mkdir()

    _, facts = host.run("--root", str(root), str(models), str(models / "not yet" / "there"))

    assert facts.disk_measured_at == {
        str(models): str(models),
        str(models / "not yet" / "there"): str(models),
    }
    assert facts.deployments == sorted([NASTY, 'plain "q"'])
    assert facts.root == str(root)


def test_tilde_arguments(host: Host) -> None:
    (host.home / "models").mkdir()
    _, facts = host.run("--root", "~/state", "~/models", "/")
    assert facts.root == str(host.home / "state")
    assert facts.disk_measured_at == {"~/models": str(host.home / "models"), "/": "/"}


def test_without_awk_the_output_is_still_json(tmp_path: Path) -> None:
    host = Host(tmp_path, SHELLS[0])
    host.drop("awk")
    models = tmp_path / 'a "b" \\ c'
    models.mkdir()
    _, facts = host.run(str(models))
    assert facts.disk_measured_at == {str(models): str(models)}


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    script = Path(__file__).resolve().parents[2] / "src" / "mlctl" / "probe.sh"
    done = subprocess.run(
        [shellcheck, "-s", "sh", str(script)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
