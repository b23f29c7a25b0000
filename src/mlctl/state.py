"""mlctl's local record of deployments: one JSON file and one API-key file per deployment.

Layout, under :func:`mlctl.paths.state_dir` (``$MLCTL_HOME/state`` in tests)::

    deployments/            0700
      NAME.json             0600  the DeploymentRecord (see ``_VERSION``)
      NAME.key              0600  the deployment's API key, nothing else

Every write goes to a private temporary file in the same directory (created 0600 with
O_EXCL, so never readable by others even for an instant), is fsynced, then renamed over the
target with ``os.replace``: a reader sees the old file or the new one, never half of one.
Temporary names start with ``.``, so a crash leaves at worst a hidden file that nothing
reads. No SSH here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlctl import paths
from mlctl.errors import StateError, UsageError

_VERSION = 1
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_KEY_PREFIX = "sk-mlctl-"
_RECORD_SUFFIX = ".json"
_KEY_SUFFIX = ".key"

logger = logging.getLogger(__name__)


@dataclass
class DeploymentRecord:
    """What mlctl remembers about one deployment (no secret: the key lives in its own file)."""

    name: str
    host: str
    """The host as the user named it (saved-host name or ``user@host:port``)."""
    profile: str
    engine: str
    served_model: str
    remote_root: str
    remote_dir: str
    remote_port: int
    local_port: int
    api_key_file: str
    """Local path of the 0600 file holding the API key."""
    spec_hash: str
    created_at: float
    updated_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON data (with the format version)."""
        return {"version": _VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: object) -> DeploymentRecord:
        """Build a record from JSON data; ValueError naming the first bad field."""
        if not isinstance(data, dict):
            raise ValueError("the top level is not a JSON object")
        version = data.get("version")
        if version != _VERSION:
            raise ValueError(f"format version {version!r} is not {_VERSION}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name == "extra":
                    continue
                raise ValueError(f"field {f.name!r} is missing")
            values[f.name] = _check_type(f.name, str(f.type), data[f.name])
        return cls(**values)


def _check_type(name: str, kind: str, value: object) -> object:
    ok: bool
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    else:
        ok = isinstance(value, dict)
    if not ok:
        raise ValueError(f"field {name!r} should be {kind}, not {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- names, paths


def check_name(name: str) -> str:
    """Return ``name`` when it can name a deployment; UsageError otherwise."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid deployment name {name!r}",
            "use lowercase letters, digits, '.', '_' and '-' (up to 63), "
            "starting with a letter or digit",
        )
    return name


def deployments_dir() -> Path:
    """Return the directory of deployment records (``state_dir()/deployments``)."""
    return paths.state_dir() / "deployments"


def record_path(name: str) -> Path:
    """Return the path of deployment ``name``'s record."""
    return deployments_dir() / f"{check_name(name)}{_RECORD_SUFFIX}"


def key_path(name: str) -> Path:
    """Return the path of deployment ``name``'s API-key file."""
    return deployments_dir() / f"{check_name(name)}{_KEY_SUFFIX}"


def _ensure_dir() -> Path:
    directory = deployments_dir()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(exist_ok=True, mode=0o700)
        if stat.S_IMODE(directory.stat().st_mode) != 0o700:
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise StateError(
            f"cannot create {directory}: {exc.strerror or exc}",
            "check the permissions of mlctl's state directory (MLCTL_HOME or XDG_STATE_HOME)",
        ) from exc
    return directory


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, 0600 from the first byte; StateError on failure."""
    directory = _ensure_dir()
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}", _DIR_HINT) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # mkstemp's mode already; umask can't widen it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise StateError(f"cannot write {path}: {exc.strerror or exc}", _DIR_HINT) from exc
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_DIR_HINT = "check free space and the permissions of mlctl's state directory"


# --------------------------------------------------------------------------- records


def save(record: DeploymentRecord) -> None:
    """Write ``record`` to ``deployments/NAME.json`` atomically (file 0600, directory 0700)."""
    path = record_path(record.name)
    text = json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"
    _write_atomic(path, text.encode("utf-8"))


def load(name: str) -> DeploymentRecord:
    """Return deployment ``name``'s record; StateError naming the file when missing or bad."""
    path = record_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StateError(
            f"no deployment named {name!r}: {path} does not exist",
            "`mlctl status` lists the deployments mlctl knows; "
            "`mlctl deploy --name NAME` creates one",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read {path}: {exc}", _fix_hint(name, path)) from exc
    try:
        record = DeploymentRecord.from_dict(json.loads(text))
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise StateError(
            f"{path} is not a valid deployment record: {exc}", _fix_hint(name, path)
        ) from exc
    if record.name != name:
        raise StateError(
            f"{path} holds deployment {record.name!r}, not {name!r}", _fix_hint(name, path)
        )
    return record


def _fix_hint(name: str, path: Path) -> str:
    return (
        f"fix the file or delete it ({path}); the engine on the host is not affected, and "
        f"deploying again with --name {name} writes a new record"
    )


def scan() -> tuple[list[DeploymentRecord], list[StateError]]:
    """Return every readable record (by name) and a StateError for each unreadable one."""
    directory = deployments_dir()
    try:
        candidates = sorted(directory.glob(f"*{_RECORD_SUFFIX}"))
    except OSError as exc:
        return [], [StateError(f"cannot list {directory}: {exc}", _DIR_HINT)]
    records: list[DeploymentRecord] = []
    problems: list[StateError] = []
    for path in candidates:
        name = path.name[: -len(_RECORD_SUFFIX)]
        if not _NAME_RE.fullmatch(name):
            continue  # not ours (hidden temporaries start with '.')
        try:
            records.append(load(name))
        except StateError as exc:
            problems.append(exc)
    return records, problems


def list_records() -> list[DeploymentRecord]:
    """Return every readable record, by name; unreadable ones are skipped and logged."""
    records, problems = scan()
    for problem in problems:
        logger.warning("skipping a deployment record: %s", problem)
    return records


def remove(name: str) -> bool:
    """Delete deployment ``name``'s record and key file; whether anything was there."""
    removed = False
    for path in (record_path(name), key_path(name)):
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"cannot remove {path}: {exc.strerror or exc}", _DIR_HINT) from exc
    return removed


# --------------------------------------------------------------------------- API keys


def new_api_key() -> str:
    """Return a fresh API key: ``sk-mlctl-`` and 256 random bits, URL-safe."""
    return _KEY_PREFIX + secrets.token_urlsafe(32)


def write_api_key(name: str, key: str) -> Path:
    """Store ``key`` as ``deployments/NAME.key`` (0600 from creation, replaced atomically)."""
    if not key or any(c.isspace() for c in key):
        raise UsageError("an API key must be non-empty and hold no whitespace")
    path = key_path(name)
    _write_atomic(path, key.encode("utf-8"))
    return path


def read_api_key(name: str) -> str:
    """Return deployment ``name``'s API key; StateError when missing, empty or not private."""
    path = key_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise StateError(
            f"the API key of deployment {name!r} is missing: {path} does not exist",
            f"deploy again with --name {name}: a new key is generated and the engine restarted",
        ) from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}", _DIR_HINT) from exc
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise StateError(
                f"{path} is readable by other users (mode {mode:04o})",
                f"run `chmod 600 {path}`; if others may have read it, deploy again with "
                f"--name {name} to rotate the key",
            )
        key = handle.read().decode("utf-8", errors="replace").strip()
    if not key:
        raise StateError(
            f"{path} is empty", f"deploy again with --name {name} to generate a new key"
        )
    return key
