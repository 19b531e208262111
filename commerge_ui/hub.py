"""The Hub beyond downloads: model search for the app and pushing a merged model.

A token passed here goes only to the Hub client; it is never stored, logged or written into any file.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from .errors import InputError
from .sources import hub_token, is_repo_id

OFFLINE_MESSAGE = "Hub search is offline here; local folders still work"


def search_models(query: str, base: str | None = None, limit: int = 20, api=None,
                  token: str | bool | None = None) -> list[str]:
    """Model ids matching `query`, fine-tunes of `base` first when `base` is a Hub id.

    Raises InputError(OFFLINE_MESSAGE) when the Hub cannot be reached.
    """
    from huggingface_hub import HfApi, constants

    query = query.strip()
    if len(query) < 2:
        return []
    if api is None:
        if constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT):
            raise InputError(OFFLINE_MESSAGE)
        api = HfApi()
    found: list[str] = []
    try:
        if base and is_repo_id(base):
            found += [m.id for m in api.list_models(search=query, filter=f"base_model:finetune:{base}", limit=limit,
                                                    token=hub_token(token))]
        found += [m.id for m in api.list_models(search=query, limit=limit, token=hub_token(token))]
    except Exception:  # any failure of a suggestion box means the same thing to the user
        raise InputError(OFFLINE_MESSAGE) from None
    return list(dict.fromkeys(found))[:limit]


_REACHABLE: dict[str, tuple[float, bool]] = {}


def hub_reachable(endpoint: str, ttl: float = 60.0) -> bool:
    """A 2-second TCP probe, remembered for a minute: the Hub client would retry for half a minute per
    keystroke when there is no network."""
    now = time.monotonic()
    if endpoint in _REACHABLE and now - _REACHABLE[endpoint][0] < ttl:
        return _REACHABLE[endpoint][1]
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=2):
            reachable = True
    except OSError:
        reachable = False
    _REACHABLE[endpoint] = (now, reachable)
    return reachable


def push_folder(folder: Path, repo_id: str, token: str, private: bool = True, api=None) -> str:
    """Upload a merged-model folder to a Hub model repo (created if needed); returns the repo's URL."""
    from huggingface_hub import HfApi

    repo_id, token = repo_id.strip(), token.strip()
    if not is_repo_id(repo_id) or "/" not in repo_id:
        raise InputError(f"'{repo_id}': expected a Hub repo id like 'your-name/merged-model'")
    if not token:
        raise InputError("pushing needs a Hub token with write access")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: no merged model to push")
    api = api or HfApi()
    try:
        url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, token=token,
                          commit_message="Upload a model merged with commerge_ui")
    except Exception as err:
        detail = str(err).splitlines()[0][:200].replace(token, "***") if str(err) else ""
        raise InputError(f"push to {repo_id} failed ({err.__class__.__name__}{': ' + detail if detail else ''})") from None
    return str(url)
