"""The CLI end to end: in-process through main(), and the real binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlctl import profiles

Cli = Callable[[list[str]], tuple[int, str, str]]


def test_plan_default_profile_json(run_cli: Cli) -> None:
    code, out, _ = run_cli(["plan", "--json"])
    assert code == 0
    data = json.loads(out)
    assert data["profile"] == "a100-nvfp4" and data["engine"] == "vllm" and data["fits"] is True
    assert data["max_model_len"] == 65536
    assert "--tensor-parallel-size" in data["launch"]["argv"]
    assert data["launch"]["env"]["VLLM_API_KEY"] == "<secret>"


def test_plan_human_output(run_cli: Cli) -> None:
    code, out, _ = run_cli(["plan", "--profile", "a100-nvfp4"])
    assert code == 0
    assert "Memory fit" in out and "vllm serve" not in out or "serve" in out
    assert "--tokenizer-mode mistral" in out
    assert "Marlin" in out


def test_plan_that_does_not_fit_exits_nonzero_with_sums(
    run_cli: Cli,
) -> None:
    code, out, err = run_cli(["plan", "--profile", "h200-fp8", "--gpus", "8xH100-80GB"])
    assert code == 3
    assert "does not fit" in err and "GB" in err
    assert "h100-nvfp4" in err  # names a profile that fits
    assert "Traceback" not in err


def test_plan_does_not_fit_json(run_cli: Cli) -> None:
    code, out, _ = run_cli(["plan", "--profile", "h200-fp8", "--gpus", "8xH100-80GB", "--json"])
    assert code == 3
    data = json.loads(out)
    assert data["fits"] is False and "does not fit" in data["error"]


def test_plan_with_gpus_and_nodes(run_cli: Cli) -> None:
    code, out, _ = run_cli(
        ["plan", "--profile", "h100-fp8", "--gpus", "8xH100-80GB", "--nodes", "2", "--json"],
    )
    assert code == 0
    data = json.loads(out)
    assert data["tensor_parallel"] == 8 and data["pipeline_parallel"] == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plan", "--profile", "nope"], "No profile named 'nope'"),
        (["plan", "--gpus", "8xZ100"], "Unknown GPU model"),
        (["plan", "--gpus", "eight"], "Unknown GPU model"),
        (["plan", "--nodes", "0"], "--nodes 0"),
        (["doctor", "--log", "/nonexistent/file.log"], "does not exist"),
        (["doctor"], "Nothing to check"),
        # refused before any connection is tried (the host does not exist)
        (
            ["deploy", "-p", "a100-nvfp4", "--host", "nohost.invalid", "--models-dir", "models"],
            "--models-dir 'models' is not an absolute path",
        ),
    ],
)
def test_bad_input_is_one_clear_error(args: list[str], needle: str, run_cli: Cli) -> None:
    code, out, err = run_cli(args)
    assert code != 0
    assert needle in err
    assert "Traceback" not in err and "Hint:" in err


def test_profiles_list_and_json(run_cli: Cli) -> None:
    code, out, _ = run_cli(["profiles", "list", "--json"])
    assert code == 0
    names = {row["name"] for row in json.loads(out)}
    assert {"a100-nvfp4", "h100-nvfp4", "h200-fp8", "h100-fp8", "4090-gguf"} <= names
    code, out, _ = run_cli(["profiles", "list"])
    assert code == 0 and "a100-nvfp4" in out


def test_invalid_user_profile_is_listed_not_fatal(_isolated_home: Path, run_cli: Cli) -> None:
    user = profiles.user_dir()
    user.mkdir(parents=True)
    (user / "broken.yaml").write_text("name: broken\nserve: {port: 80}\n")
    code, out, _ = run_cli(["profiles", "list", "--json"])
    assert code == 1
    rows = {row["name"]: row for row in json.loads(out)}
    assert "error" in rows["broken"] and "broken.yaml" in rows["broken"]["error"]
    assert "error" not in rows["a100-nvfp4"]
    code, _, err = run_cli(["plan", "--profile", "broken"])
    assert code == 1 and "broken.yaml" in err


def test_profiles_show_and_schema(run_cli: Cli) -> None:
    code, out, _ = run_cli(["profiles", "show", "4090-gguf", "--json"])
    assert code == 0
    data = json.loads(out)
    assert data["engine"]["kind"] == "llamacpp" and data["origin"] == "builtin"
    code, out, _ = run_cli(["profiles", "show", "4090-gguf"])
    assert code == 0 and "# source" not in out and "UD-IQ1_S" in out
    code, out, _ = run_cli(["profiles", "schema"])
    assert code == 0 and json.loads(out)["title"] == "mlctl profile"


def test_doctor_log_finding_and_clean(tmp_path: Path, run_cli: Cli) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text(
        "INFO starting\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        "total capacity of 79.25 GiB of which 1.12 GiB is free.\n"
        "RuntimeError: Engine core initialization failed. See root cause above.\n"
    )
    code, out, _ = run_cli(["doctor", "--log", str(bad), "--json"])
    assert code == 1
    findings = json.loads(out)["findings"]
    assert findings[0]["cause"] == "cuda-oom" and findings[0]["fix"]
    good = tmp_path / "good.log"
    good.write_text("INFO: Application startup complete.\n")
    code, out, _ = run_cli(["doctor", "--log", str(good)])
    assert code == 0 and "No known failure" in out


def _binary() -> list[str]:
    found = shutil.which("mlctl")
    return [found] if found else [sys.executable, "-m", "mlctl"]


def test_real_binary_help_and_version() -> None:
    out = subprocess.run(_binary() + ["--help"], capture_output=True, text=True, check=True)
    for command in ("plan", "profiles", "doctor"):
        assert command in out.stdout
    out = subprocess.run(_binary() + ["--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("mlctl ")


def test_python_dash_m_and_error_exit_code() -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mlctl", "plan", "--profile", "h200-fp8", "--gpus", "8xA100-80GB"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 3
    assert "Error:" in done.stderr and "Traceback" not in done.stderr


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from mlctl.cli import app; "
        "heavy = [m for m in ('paramiko', 'httpx', 'huggingface_hub') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_pure_modules_do_not_import_io_libraries() -> None:
    code = (
        "import sys; import mlctl.plan, mlctl.fit, mlctl.profiles, mlctl.diagnose, "
        "mlctl.deploy_spec, mlctl.startup_log, mlctl.remote_paths; "
        "bad = [m for m in ('paramiko', 'httpx', 'huggingface_hub', 'subprocess') "
        "if m in sys.modules and m != 'subprocess']; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
