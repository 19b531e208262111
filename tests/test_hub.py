"""Hub search and push: offline behaviour, and the token never leaving the call."""

from dataclasses import dataclass

import pytest

from commerge_ui.errors import InputError
from commerge_ui.hub import OFFLINE_MESSAGE, push_folder, search_models


@dataclass
class Found:
    id: str


class StandInHub:
    """Records what the Hub client was asked; fails on demand with a message that contains the token."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail = fail

    def list_models(self, search, limit, filter=None, token=None):
        self.calls.append(("list_models", search, filter))
        return [Found(f"org/{search}-ft")] if filter else [Found(f"org/{search}-ft"), Found(f"org/{search}")]

    def create_repo(self, repo_id, token, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private))
        if self.fail:
            raise RuntimeError(f"401 Unauthorized for token {token}")
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, folder_path, token, commit_message):
        self.calls.append(("upload_folder", repo_id, str(folder_path)))


def test_search_puts_finetunes_of_the_base_first_without_duplicates():
    hub = StandInHub()
    assert search_models("bert", base="google/bert", api=hub) == ["org/bert-ft", "org/bert"]
    assert hub.calls[0] == ("list_models", "bert", "base_model:finetune:google/bert")
    assert search_models("b", api=hub) == []  # too short to search


def test_search_offline_says_so(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match=OFFLINE_MESSAGE):
        search_models("bert")


def test_search_that_cannot_reach_the_hub_says_offline():
    class Unreachable:
        def list_models(self, **kwargs):
            raise ConnectionError("name resolution failed")

    with pytest.raises(InputError, match="offline"):
        search_models("bert", api=Unreachable())


def test_push_uploads_the_folder(tiny):
    hub = StandInHub()
    url = push_folder(tiny.base, "me/merged", "hf_secret", private=True, api=hub)
    assert url == "https://huggingface.co/me/merged"
    assert hub.calls == [("create_repo", "me/merged", True), ("upload_folder", "me/merged", str(tiny.base))]


def test_push_failure_never_echoes_the_token(tiny):
    with pytest.raises(InputError) as caught:
        push_folder(tiny.base, "me/merged", "hf_secret", api=StandInHub(fail=True))
    assert "hf_secret" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize("repo, token, message", [
    ("merged", "hf_x", "expected a Hub repo id"),
    ("me/merged", " ", "needs a Hub token"),
])
def test_push_refuses_bad_input(tiny, repo, token, message):
    with pytest.raises(InputError, match=message):
        push_folder(tiny.base, repo, token, api=StandInHub())


def test_push_needs_a_model_folder(tmp_path):
    with pytest.raises(InputError, match="no merged model"):
        push_folder(tmp_path, "me/merged", "hf_x", api=StandInHub())
