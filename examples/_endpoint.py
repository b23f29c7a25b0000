"""Where the examples find an mlctl endpoint: environment variables, else `mlctl status`.

MLCTL_ENDPOINT      e.g. http://127.0.0.1:8001/v1 (printed by `mlctl deploy`)
MLCTL_MODEL         the served model name
MLCTL_API_KEY_FILE  the deployment's key file (printed by `mlctl deploy`; none for Ollama)
or MLCTL_DEPLOYMENT=NAME to take the endpoint and model from `mlctl status NAME --json`
and the key from mlctl's own key file.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


def endpoint() -> tuple[str, str, str]:
    """Return (base_url, api_key, model) for the examples."""
    name = os.environ.get("MLCTL_DEPLOYMENT")
    key_file = os.environ.get("MLCTL_API_KEY_FILE", "")
    if name:
        status = json.loads(
            subprocess.run(
                ["mlctl", "status", name, "--json"], capture_output=True, text=True, check=True
            ).stdout
        )[0]
        base_url = f"http://127.0.0.1:{status['local_port']}/v1"
        model = status["model"]
    else:
        base_url = os.environ["MLCTL_ENDPOINT"]
        model = os.environ["MLCTL_MODEL"]
    key = Path(key_file).read_text().strip() if key_file else "no-key"
    return base_url, key, model
