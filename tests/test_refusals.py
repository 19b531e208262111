"""Inputs a merge cannot honour are refused by name before any work, and nothing half-written passes as a
model: what the library and the CLI do for a local user (the hosted app's attacks are in test_hosted.py)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from commerge_ui.api import run_merge
from commerge_ui.archives import ArchiveLimits, extract_zip
from commerge_ui.cli import main
from commerge_ui.config import parse_config
from commerge_ui.errors import InputError, MergeError
from commerge_ui.export import atomic_folder
from commerge_ui.hosting import HOSTED_LIMITS, Policy, hosted_from
from commerge_ui.sources import SafetensorsWeights, check_model_folder

BLOCK_WEIGHT = "encoder.layer.0.attention.self.query.weight"


def edited_copy(source: Path, target: Path, edit) -> Path:
    """A copy of a model folder whose model.safetensors went through `edit(tensors) -> tensors`."""
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    save_file(edit(tensors), target / "model.safetensors", metadata={"format": "pt"})
    return target


def config_with(tiny, base: Path | None = None, expert: Path | None = None, **options):
    data = tiny.config(methods=["com", "average"])
    if base is not None:
        data["base"] = str(base)
    if expert is not None:
        data["experts"][0]["model"] = str(expert)
    data["options"].update(options)
    return parse_config(data)


def expert_key(tiny, name: str) -> str:
    keys = load_file(tiny.experts["task0"] / "model.safetensors")
    return next(k for k in keys if k.endswith(name))


def test_an_int8_expert_is_refused_naming_the_tensor_and_the_remedy(tiny, tmp_path):
    key = expert_key(tiny, BLOCK_WEIGHT)
    expert = edited_copy(tiny.experts["task0"], tmp_path / "int8", lambda t: {
        **t, key: (t[key] * 10).round().clamp(-127, 127).to(torch.int8)})
    with pytest.raises(InputError, match=r"expert 'task0'.*'encoder.layer.0.attention.self.query.weight' is stored "
                                         r"as I8.*needs a float checkpoint"):
        run_merge(config_with(tiny, expert=expert), device="cpu")


def test_a_base_without_a_block_tensor_is_refused(tiny, tmp_path):
    base = edited_copy(tiny.base, tmp_path / "holed", lambda t: {k: v for k, v in t.items() if k != BLOCK_WEIGHT})
    with pytest.raises(InputError, match=r"its weights lack 'encoder.layer.0.attention.self.query.weight'.*random"):
        run_merge(config_with(tiny, base=base), device="cpu")


def test_images_given_to_a_text_model_are_refused(tiny, tmp_path):
    from PIL import Image

    archive = tmp_path / "pictures.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for k in range(3):
            image = tmp_path / f"{k}.png"
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(image)
            bundle.write(image, f"red/{k}.png")
    data = tiny.config(methods=["average"])
    data["experts"][0]["calibration"] = str(archive)
    with pytest.raises(InputError, match=r"expert 'task0': 3 of its calibration samples are images; the base is a "
                                         r"text-classification model"):
        run_merge(parse_config(data), device="cpu")


def test_max_length_above_the_models_positions_is_refused(tiny):
    with pytest.raises(InputError, match="max_length 9002 is above the base model's 64 positions; use at most 64"):
        run_merge(config_with(tiny, max_length=9002), device="cpu")


def test_nan_statistics_name_the_dtype_the_run_used(tiny, tmp_path):
    key = expert_key(tiny, BLOCK_WEIGHT)
    expert = edited_copy(tiny.experts["task0"], tmp_path / "nan", lambda t: {
        **t, key: torch.full_like(t[key], float("nan"))})
    with pytest.raises(MergeError, match="NaN or Inf; the run already used float32") as caught:
        run_merge(config_with(tiny, expert=expert), device="cpu")
    assert "try float32" not in str(caught.value)


def test_an_index_naming_a_file_outside_the_folder_is_refused(tiny, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny.base, folder)
    names = list(load_file(folder / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}}
    index["weight_map"][names[0]] = "../../../../etc/passwd"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="names a shard outside the model folder"):
        SafetensorsWeights(folder).names()


def test_out_may_not_be_the_current_folder_or_hold_the_inputs(tiny, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    config = work / "config.yaml"
    config.write_text(json.dumps(tiny.config(methods=["average"])))
    monkeypatch.chdir(work)
    assert main(["merge", str(config), "--out", ".", "--force"]) == 2
    assert "current folder" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["merge", str(config), "--out", str(work), "--force"]) == 2  # holds the config
    assert "which the run reads" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["config.yaml"] and not list(tmp_path.glob(".*partial*"))


def test_a_half_written_output_is_never_a_model_and_the_next_run_removes_it(tiny, tmp_path):
    final = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):  # a merge stopped while saving: its partial folder is removed
        with atomic_folder(final) as partial:
            shutil.copytree(tiny.experts["task0"], partial / "average")
            raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())
    # a process killed outright leaves its partial folder: a marker says what it is
    killed = tmp_path / ".out.partial-0123abcd"
    shutil.copytree(tiny.experts["task0"], killed)
    (killed / ".commerge-partial").touch()
    with pytest.raises(InputError, match="an unfinished merge output"):
        check_model_folder(killed)
    nested = tmp_path / "copy"
    shutil.copytree(killed, nested)
    with pytest.raises(InputError, match="an unfinished merge output"):
        check_model_folder(nested)  # the marker travels with a copy
    with atomic_folder(final, force=True) as partial:
        (partial / "report.json").write_text("{}")
    assert not killed.exists() and (final / "report.json").is_file() and not (final / ".commerge-partial").exists()


def test_a_bundle_larger_unpacked_than_its_limits_leaves_nothing(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("a.txt", bytes(600_000))
        bundle.writestr("b.txt", bytes(600_000))
    with pytest.raises(InputError, match=r"unpacks to more than"):
        extract_zip(archive, tmp_path / "out", ArchiveLimits(10, 1_000_000, 1_000_000), "bomb.zip")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=r"2 entries, more than the 1 allowed"):
        extract_zip(archive, tmp_path / "out", ArchiveLimits(1, 10**9, 10**9), "bomb.zip")
    extract_zip(archive, tmp_path / "out", ArchiveLimits(2, 10**7, 10**7), "bomb.zip")
    assert (tmp_path / "out" / "b.txt").stat().st_size == 600_000


@pytest.mark.parametrize("env, host, trusted, hosted", [
    ({}, "127.0.0.1", False, False), ({}, None, False, False), ({}, "0.0.0.0", False, True),
    ({}, "0.0.0.0", True, False), ({"SPACE_ID": "me/app"}, "127.0.0.1", False, True),
    ({"COMMERGE_HOSTED": "1"}, "127.0.0.1", True, True), ({"COMMERGE_TRUST_NETWORK": "1"}, "10.0.0.5", False, False),
])
def test_hosted_mode_is_on_where_it_must_be(env, host, trusted, hosted):
    assert hosted_from(host, trusted, env) is hosted


def test_hosted_messages_show_no_server_path():
    policy = Policy.hosted_with([Path("/srv/uploads")])
    shown = policy.public(f"{Path.cwd()}/x.txt: not found; /srv/uploads/abc/notes.txt and /etc/passwd; org/name ok")
    assert "/srv" not in shown and "/etc" not in shown and str(Path.cwd()) not in shown and "org/name ok" in shown
    assert Policy.local().public("/etc/passwd") == "/etc/passwd"


def test_a_local_page_is_not_served_to_the_network_and_a_given_sessions_policy_is_kept(tiny, tmp_path):
    pytest.importorskip("gradio")
    from commerge_ui.ui import build_app, launch
    from commerge_ui.ui.session import Sessions

    local = build_app(tiny.write_config("page.yaml"), Sessions(tmp_path / "a"))
    with pytest.raises(RuntimeError, match="needs hosted mode"):
        launch(local, server_name="0.0.0.0", prevent_thread_lock=True)
    hosted = build_app(tiny.write_config("page.yaml"), Sessions(tmp_path / "b", Policy.hosted_with([], HOSTED_LIMITS)))
    assert hosted.commerge_policy.hosted  # an empty Sessions is falsy: it must still be the one used


def test_idle_sessions_and_unowned_folders_are_swept_and_budgets_hold(tmp_path):
    pytest.importorskip("gradio")
    from commerge_ui.ui.session import Sessions

    sessions = Sessions(tmp_path, Policy.hosted_with([], HOSTED_LIMITS), ttl=60)
    idle, busy = sessions.get("idle"), sessions.get("busy")
    busy.running = True
    stray = tmp_path / "session-left-behind"
    stray.mkdir()
    assert sessions.sweep(now=idle.last_used + 61) == ["idle"]
    assert not idle.folder.exists() and not stray.exists() and busy.folder.exists()
    with pytest.raises(InputError, match="disk budget of 4 GiB"):
        busy.check_room(5 * 2**30)
    busy.check_room(2**20)
    assert os.path.isdir(busy.folder)


def hosted_session(tmp_path, tiny, **limits):
    """A hosted session whose allowed roots hold the tiny setup (standing in for the demos' folders)."""
    pytest.importorskip("gradio")
    from commerge_ui.ui.session import Sessions

    policy = Policy(True, HOSTED_LIMITS.model_copy(update=limits), model_roots=(tiny.root,), data_roots=(tiny.root,))
    return Sessions(tmp_path / "sessions", policy).get("visitor")


def test_hosted_every_evaluation_sample_is_cut_to_the_limit_and_a_method_name_is_never_a_path(tiny, tmp_path):
    from commerge_ui.ui import handlers

    session = hosted_session(tmp_path, tiny)
    config = parse_config(tiny.config(methods=["average"]))
    assert config.options.evaluation_samples is None
    assert handlers.admit(session, config).options.evaluation_samples == HOSTED_LIMITS.evaluation_samples
    other = tmp_path / "sessions" / "session-other" / "run" / "com"
    shutil.copytree(tiny.experts["task0"], other)
    for method in ("../../session-other/run/com", "/etc", "com/../../session-other/run/com"):
        with pytest.raises(InputError, match="run a merge first"):
            handlers.zip_model(session, method)


def test_hosted_a_run_past_its_time_limit_is_cancelled_and_says_why(tiny, tmp_path):
    from commerge_ui.ui.session import run_in_background

    session = hosted_session(tmp_path, tiny, run_seconds=0.05)
    config = parse_config(tiny.config(methods=["com", "regmean", "average"]))
    last = None
    for last in run_in_background(config, session, save=[], device="cpu", dtype="float32"):
        pass
    assert last is not None and last.report is None
    assert "ran past this instance's limit" in last.error and not session.run_folder.exists()
