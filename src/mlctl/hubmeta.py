"""Checkpoint metadata from the Hugging Face Hub, read before anything is downloaded.

``snapshot`` answers "which files would the profile's include patterns fetch, at which
commit, and how big are they" with one ``model_info`` request; ``check_access`` proves, with
one ``HEAD`` on a selected file, that the user's token opens a gated repo. Every failure of
``huggingface_hub`` (and of its HTTP transport) becomes a :class:`~mlctl.errors.HubError`
with a one-paragraph message and a hint; no message ever contains the token.

``huggingface_hub`` is imported lazily (it costs ~200 ms), and nothing here reads or sets
process-wide environment: the endpoint and the token are explicit arguments (``None``
token means *no* token, never huggingface_hub's implicit stored one; use
:func:`local_token` to fetch it). Telemetry (and with it the agent-registry request that
huggingface_hub >= 2 sends to huggingface.co on the first call) is switched off. Xet plays
no part: no file body is fetched here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, NoReturn

from mlctl.errors import HubError

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_ENDPOINT = "https://huggingface.co"
_TOKEN_HINT = "set HF_TOKEN or run `hf auth login`"
_TOKENS_PAGE = "https://huggingface.co/settings/tokens"


@dataclass(frozen=True)
class RepoFile:
    """One file of a repo at a commit: its path in the repo and its size in bytes."""

    path: str
    size: int


@dataclass(frozen=True)
class RepoSnapshot:
    """The files a checkpoint's include patterns select, at the commit a revision names."""

    repo: str
    revision: str
    commit: str
    files: tuple[RepoFile, ...]
    gated: bool | str
    """False, or the Hub's gating mode (``"auto"``/``"manual"``)."""

    @property
    def total_bytes(self) -> int:
        """Sum of the selected files' sizes, in bytes."""
        return sum(f.size for f in self.files)


# --------------------------------------------------------------------------- selection


def _normalise_pattern(pattern: str) -> str:
    pattern = pattern.replace("\\", "/")
    return pattern + "*" if pattern.endswith("/") else pattern


def matches(path: str, include: Sequence[str]) -> bool:
    """Whether ``path`` is selected by ``include`` (empty: every path is)."""
    if not include:
        return True
    path = path.replace("\\", "/")
    return any(fnmatchcase(path, _normalise_pattern(p)) for p in include)


def select(files: Iterable[RepoFile], include: Sequence[str]) -> list[RepoFile]:
    """Return the files ``include`` selects, in the given order.

    The semantics of huggingface_hub's ``allow_patterns`` (``filter_repo_objects``):
    ``fnmatch.fnmatchcase`` on the whole repo path, so ``*`` also crosses ``/``; a pattern
    ending in ``/`` means everything under that folder; backslashes count as ``/``. One
    difference on purpose: an empty ``include`` selects every file (a profile without
    patterns fetches the whole repo), where ``allow_patterns=[]`` would select none — pass
    ``None`` to huggingface_hub in that case.
    """
    return [f for f in files if matches(f.path, include)]


# --------------------------------------------------------------------------- tokens


def local_token() -> str | None:
    """Return the user's Hub token: ``HF_TOKEN``, else the one ``hf auth login`` stored.

    None when there is none. The value must only ever travel to the Hub or, over stdin,
    into a 0600 file on the host.
    """
    value = os.environ.get("HF_TOKEN", "").strip()
    if value:
        return value
    _quiet_hf()
    from huggingface_hub import get_token

    try:
        token = get_token()
    except Exception as exc:  # an OIDC exchange that failed, an unreadable token file
        raise HubError(
            f"could not read the stored Hugging Face token ({type(exc).__name__})",
            "run `hf auth login` again, or set HF_TOKEN",
        ) from None
    return token.strip() if token and token.strip() else None


# --------------------------------------------------------------------------- Hub calls


def _quiet_hf() -> None:
    """Import huggingface_hub's constants and switch its telemetry off for this process.

    With telemetry on, building the user agent fetches an agent registry from
    ``constants.ENDPOINT`` (huggingface.co, whatever endpoint the call names) on the first
    request of the process: a request to a third party, up to 3 s when offline.
    """
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True


def _endpoint(endpoint: str | None) -> str:
    if endpoint:
        return endpoint.rstrip("/")
    from huggingface_hub import constants

    return str(constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")


def _api(endpoint: str, token: str | None) -> HfApi:
    _quiet_hf()
    from huggingface_hub import HfApi

    # token=False, not None: None would make huggingface_hub send the stored token.
    return HfApi(endpoint=endpoint, token=token or False)


def snapshot(
    repo: str,
    revision: str,
    include: Sequence[str],
    *,
    endpoint: str | None = None,
    token: str | None = None,
    timeout: float = 20.0,
) -> RepoSnapshot:
    """Return the files of ``repo`` at ``revision`` that ``include`` selects, with sizes.

    One ``model_info(files_metadata=True)`` request (repo metadata is public even for gated
    repos; a private repo needs ``token``). ``endpoint`` None means huggingface_hub's
    (``HF_ENDPOINT`` or huggingface.co). Raises HubError when the repo or revision does not
    exist, the Hub cannot be reached or refuses, or the patterns select no file.
    """
    url = _endpoint(endpoint)
    api = _api(url, token)
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True, timeout=timeout)
    except Exception as exc:
        _raise_hub_error(exc, repo=repo, revision=revision, endpoint=url, token=token)
    commit = info.sha or ""
    all_files: list[RepoFile] = []
    for sibling in info.siblings or []:
        size = sibling.size
        if size is None and sibling.lfs is not None:
            size = sibling.lfs.size
        if size is None:
            raise HubError(
                f"the Hub at {url} listed {repo}/{sibling.rfilename} without its size",
                "the endpoint does not support files metadata (`?blobs=true`); "
                "use huggingface.co or a full mirror",
            )
        all_files.append(RepoFile(sibling.rfilename, int(size)))
    selected = sorted(select(all_files, include), key=lambda f: f.path)
    if not selected:
        shown = ", ".join(repr(p) for p in include) or "(none)"
        raise HubError(
            f"the include patterns {shown} select no file of {repo} at revision {revision!r} "
            f"({len(all_files)} files there)",
            "fix checkpoint.include in the profile: patterns are globs on the whole repo path "
            "('*' also crosses '/'); a pattern ending in '/' selects a folder",
        )
    gated: bool | str = info.gated if isinstance(info.gated, str) else bool(info.gated)
    return RepoSnapshot(repo, revision, commit, tuple(selected), gated)


def check_access(
    snap: RepoSnapshot,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    timeout: float = 20.0,
) -> None:
    """Raise HubError unless ``token`` can download ``snap``'s files.

    A repo that is not gated needs no request. For a gated one: no token → refused at once;
    otherwise one ``HEAD`` of the first selected file with the token (401: the token is
    invalid; 403: its account has not been granted the repo).
    """
    if not snap.gated or not snap.files:
        return
    url = _endpoint(endpoint)
    licence = f"{url}/{snap.repo}"
    if not token:
        raise HubError(
            f"{snap.repo} is gated: accept its licence at {licence} and set HF_TOKEN "
            "(hf auth login)",
            f"log in to the Hub, accept the licence on the repo page, create a read token at "
            f"{_TOKENS_PAGE}, then {_TOKEN_HINT}; mlctl checks access before any download",
        )
    _quiet_hf()
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    file_url = hf_hub_url(snap.repo, snap.files[0].path, revision=snap.commit, endpoint=url)
    try:
        get_hf_file_metadata(file_url, token=token, timeout=timeout, endpoint=url)
    except Exception as exc:
        _raise_hub_error(exc, repo=snap.repo, revision=snap.revision, endpoint=url, token=token)


# --------------------------------------------------------------------------- errors


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _raise_hub_error(
    exc: Exception, *, repo: str, revision: str, endpoint: str, token: str | None
) -> NoReturn:
    """Re-raise any huggingface_hub / transport failure as a HubError (chain dropped)."""
    err = _hub_error(exc, repo=repo, revision=revision, endpoint=endpoint, token=token)
    if err is None:
        raise exc
    # `from None`: the original exception holds the request (and its Authorization header).
    raise HubError(_scrub(err.message, token), _scrub(err.hint or "", token) or None) from None


def _hub_error(
    exc: Exception, *, repo: str, revision: str, endpoint: str, token: str | None
) -> HubError | None:
    import httpx2
    from huggingface_hub import errors

    licence = f"{endpoint}/{repo}"
    if isinstance(exc, errors.GatedRepoError):
        status = exc.response.status_code if exc.response is not None else None
        if not token:
            return HubError(
                f"{repo} is gated: accept its licence at {licence} and set HF_TOKEN "
                "(hf auth login)",
                f"create a read token at {_TOKENS_PAGE}, then {_TOKEN_HINT}",
            )
        if status == 401:
            return HubError(
                f"the Hub rejected the token for gated repo {repo} (401: invalid or expired)",
                f"create a read token at {_TOKENS_PAGE}, then {_TOKEN_HINT}",
            )
        return HubError(
            f"{repo} is gated and the token has no access to it ({status or 403}): "
            f"accept its licence at {licence} with the token's account",
            "access to some repos is granted by hand and can take a while; "
            f"the token must belong to the account that accepted ({_TOKEN_HINT})",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            f"repo {repo} was not found at {endpoint} (or is private)",
            "check the repo id (checkpoint.repo in the profile, 'namespace/name', "
            f"case-sensitive); a private repo needs a token with read access: {_TOKEN_HINT}",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(
            f"revision {revision!r} of {repo} was not found at {endpoint}",
            "check checkpoint.revision in the profile: a branch, a tag or a full 40-hex commit "
            f"that exists in the repo (see {licence}/tree/main)",
        )
    if isinstance(exc, errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            return HubError(
                f"the Hub at {endpoint} rejected the token (401: invalid or expired) "
                f"while reading {repo}",
                f"create a read token at {_TOKENS_PAGE}, then {_TOKEN_HINT}; "
                "or unset HF_TOKEN for a public repo",
            )
        if status == 403:
            return HubError(
                f"the Hub at {endpoint} refused access to {repo} (403)",
                f"the token lacks read access: accept the repo's terms at {licence} and use a "
                f"token with 'read' scope ({_TOKEN_HINT})",
            )
        if status == 429:
            return HubError(
                f"the Hub at {endpoint} is rate-limiting requests (429) for {repo}",
                f"wait a minute and retry; authenticated requests get higher limits "
                f"({_TOKEN_HINT})",
            )
        if status >= 500:
            return HubError(
                f"the Hub at {endpoint} failed while answering for {repo} ({status})",
                "a server-side failure, not yours: retry in a minute "
                "(https://status.huggingface.co)",
            )
        return HubError(
            f"the Hub at {endpoint} answered {status} for {repo} at revision {revision!r}",
            "check the repo id and revision in the profile, then retry",
        )
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubError(
            "HF_HUB_OFFLINE is set, so the Hub's file list cannot be read",
            "unset HF_HUB_OFFLINE: mlctl needs the checkpoint's files and sizes before it deploys",
        )
    if isinstance(exc, httpx2.TimeoutException):
        return HubError(
            f"cannot reach {endpoint}: no answer in time while reading {repo}",
            "check the network (proxy, firewall, VPN) and retry; HF_ENDPOINT selects a mirror",
        )
    if isinstance(exc, (httpx2.TransportError, OSError)):
        reason = type(exc).__name__
        return HubError(
            f"cannot reach {endpoint} ({reason}) while reading {repo}",
            "check the network (proxy, firewall, VPN, DNS) and retry; HF_ENDPOINT selects a mirror",
        )
    if isinstance(exc, ValueError):  # HFValidationError: a malformed repo id or revision
        return HubError(
            f"the Hub client refused repo {repo!r} at revision {revision!r}: {exc}",
            "check checkpoint.repo ('namespace/name') and checkpoint.revision in the profile",
        )
    return None
