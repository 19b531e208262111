"""Model sources: folders, the Hub (through an offline cache), and refusals."""

import os
import shutil
import subprocess
import sys

import pytest

from commerge_ui.errors import InputError
from commerge_ui.sources import SafetensorsWeights, resolve_model


def hub_cache(root, setup):
    """A Hugging Face cache holding the tiny models as org/<name>, as snapshot_download leaves it."""
    for name, folder in {"tiny-base": setup.base, **{f"tiny-{k}": v for k, v in setup.experts.items()}}.items():
        repo = root / f"models--org--{name}"
        shutil.copytree(folder, repo / "snapshots" / "0123abcd")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0123abcd")
    return root


def test_local_folder_is_used_as_is(tiny):
    assert resolve_model(str(tiny.base)) == tiny.base


def test_pickle_only_folder_is_refused(tmp_path, tiny):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny.base / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(InputError, match="only pickle weights.*refused"):
        resolve_model(str(folder))


def test_missing_config_and_weights(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(InputError, match="config.json is missing"):
        resolve_model(str(tmp_path / "m"))
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no \\*.safetensors"):
        resolve_model(str(tmp_path / "m"))
    with pytest.raises(InputError, match="no such folder"):
        resolve_model("./does/not/exist")


def test_truncated_safetensors_is_reported(tmp_path, tiny):
    folder = tmp_path / "cut"
    shutil.copytree(tiny.base, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="model.safetensors"):
        SafetensorsWeights(folder).get("embeddings.word_embeddings.weight")


def test_hub_ids_merge_through_the_cli_offline(tmp_path, tiny):
    """The Hub code path end to end: `org/...` ids resolved by snapshot_download from a local cache."""
    cache = hub_cache(tmp_path / "cache", tiny)
    config = tiny.config(base="org/tiny-base", methods=["regmean"])
    for expert in config["experts"]:
        expert["model"] = f"org/tiny-{expert['name']}"
    import yaml
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-m", "commerge_ui.cli", "merge", str(tmp_path / "hub.yaml"),
                           "--out", str(tmp_path / "out"), "--quiet"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "regmean" / "model.safetensors").is_file()

    config["experts"][0]["model"] = "org/not-there"
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "commerge_ui.cli", "merge", str(tmp_path / "missing.yaml"),
                           "--out", str(tmp_path / "out2")], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "org/not-there: not in the local cache" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out2").exists()
