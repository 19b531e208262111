"""Bad inputs end to end: each gives one clear message (CLI exit 2, or a warning in the report), never a
traceback, and nothing half-written."""

import json

import httpx
import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import errors as hub

from commerge_ui import api
from commerge_ui.cli import main
from commerge_ui.errors import InputError, MergeError
from commerge_ui.sources import resolve_model

from conftest import make_expert, write_samples

RESPONSE = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/models/org/x"))
HUB_FAILURES = [
    (hub.GatedRepoError("gated", response=RESPONSE), "gated repository; accept its terms on the Hub and give a token"),
    (hub.RepositoryNotFoundError("404", response=RESPONSE), "no such model on the Hub"),
    (hub.RevisionNotFoundError("rev", response=RESPONSE), "revision 'None' not found"),
    (hub.LocalEntryNotFoundError("offline"), "not in the local cache and the Hub cannot be reached"),
    (hub.OfflineModeIsEnabled("offline"), "the Hub is switched off here"),
    (hub.HfHubHTTPError("502 Bad Gateway mid-download", response=RESPONSE), "download failed (HfHubHTTPError: 502"),
    (ConnectionResetError("connection reset by peer"), "download failed (ConnectionResetError"),
]


@pytest.mark.parametrize("failure, message", HUB_FAILURES, ids=[type(f).__name__ for f, _ in HUB_FAILURES])
def test_hub_failures_become_one_clear_message(monkeypatch, failure, message):
    def stand_in(*args, **kwargs):
        raise failure

    monkeypatch.setattr(huggingface_hub, "snapshot_download", stand_in)
    with pytest.raises(InputError) as caught:
        resolve_model("org/x", token="hf_secret")
    assert str(caught.value).startswith("org/x: ") and message in str(caught.value)
    assert "hf_secret" not in str(caught.value)


def run_cli(tmp_path, config: dict, capsys, env_token: str | None = None, monkeypatch=None) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    if env_token:
        monkeypatch.setenv("HF_TOKEN", env_token)
    code = main(["merge", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    return code, capsys.readouterr().err


def test_different_vocabulary_is_refused_naming_the_tensor(tmp_path, tiny, capsys):
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny.experts["task1"])
    model.resize_token_embeddings(30, mean_resizing=False)  # fewer tokens than the base's: not mergeable
    model.save_pretrained(tmp_path / "smaller_vocab")
    config = tiny.config()
    config["experts"][1]["model"] = str(tmp_path / "smaller_vocab")
    code, err = run_cli(tmp_path, config, capsys)
    assert code == 2 and "'embeddings.word_embeddings.weight' has shape [30, 32], base has [41, 32]" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    # more rows than the base's, its tokenizer giving the base's tokens their ids: rows added, merged with the
    # base's vocabulary and said so (vocab.py; tests/test_vocab.py has the chat-token case)
    model.resize_token_embeddings(60, mean_resizing=False)
    model.save_pretrained(tmp_path / "bigger_vocab")
    config["experts"][1]["model"] = str(tmp_path / "bigger_vocab")
    code, err = run_cli(tmp_path, config, capsys)
    assert code == 0, err
    warnings = json.loads((tmp_path / "out" / "report.json").read_text())["warnings"]
    assert any("19 rows beyond the base's" in w and "tokenizer_source is base" in w for w in warnings)


def test_zero_task_vector_and_too_few_samples_are_warned(tmp_path, tiny, capsys):
    from transformers import BertModel

    base = BertModel.from_pretrained(tiny.base)
    make_expert(tmp_path / "unchanged", base, noise=0.0, seed=7)
    write_samples(tmp_path / "few.jsonl", 3, seed=1, labelled=False)
    config = tiny.config(methods=["com", "regmean"])
    config["experts"][0]["model"] = str(tmp_path / "unchanged")
    config["experts"][1]["calibration"] = str(tmp_path / "few.jsonl")
    code, _ = run_cli(tmp_path, config, capsys)
    warnings = json.loads((tmp_path / "out" / "report.json").read_text())["warnings"]
    assert code == 0
    assert any("task0" in w and "equals the base's (zero task vector?)" in w for w in warnings)
    assert any("task1" in w and "3 calibration samples, fewer than the 24 asked" in w for w in warnings)


@pytest.mark.parametrize("samples", ["one", "duplicated"])
def test_degenerate_calibration_still_merges(tmp_path, tiny, capsys, samples):
    text = "the cat runs\n" if samples == "one" else "the cat runs\n" * 20
    for name in tiny.experts:
        (tmp_path / f"{name}.txt").write_text(text)
    config = tiny.config(methods=["com", "regmean"])
    for expert in config["experts"]:
        expert["calibration"] = str(tmp_path / f"{expert['name']}.txt")
    code, err = run_cli(tmp_path, config, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for method in report["methods"].values():
        assert all(0.0 <= s <= 1.0 for s in method["scores"].values())
        assert all(v == v for values in method["shift"].values() for v in values)  # no NaN


def test_out_of_memory_is_a_clear_message_and_nothing_is_written(tmp_path, tiny, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(api, "merge", out_of_memory)
    code, err = run_cli(tmp_path, tiny.config(methods=["com"]), capsys)
    assert code == 1
    assert err.strip() == ("error: out of GPU memory: use fewer calibration samples, a smaller max_length, "
                           "--dtype bfloat16 or --device cpu")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_out_of_memory_through_the_api_keeps_the_process_up(tiny, monkeypatch):
    from commerge_ui.config import parse_config

    monkeypatch.setattr(api, "merge", lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    with pytest.raises(MergeError, match="out of GPU memory"):
        api.run_merge(parse_config(tiny.config(methods=["com"])), device="cpu")


def test_out_of_memory_while_scoring_is_the_same_message(tmp_path, tiny, capsys, monkeypatch):
    """Not only the merge step: loading and scoring run on the GPU too (a real cap is in test_cuda.py)."""
    from commerge_ui.families.text_classification import TextClassification

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")

    monkeypatch.setattr(TextClassification, "score", out_of_memory)
    code, err = run_cli(tmp_path, tiny.config(methods=["com"]), capsys)
    assert code == 1 and err.strip().startswith("error: out of GPU memory:")
    assert not (tmp_path / "out").exists()


def test_the_token_is_never_written(tmp_path, tiny, capsys, monkeypatch):
    code, err = run_cli(tmp_path, tiny.config(methods=["com"]), capsys, env_token="hf_topsecret",
                        monkeypatch=monkeypatch)
    assert code == 0 and "hf_topsecret" not in err
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or b"hf_topsecret" not in path.read_bytes(), path
