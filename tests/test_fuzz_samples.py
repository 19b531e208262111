"""Fuzzing the sample readers: whatever a file holds, the answer is samples or the project's InputError."""

import csv
import io
import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commerge_ui.errors import InputError
from commerge_ui.samples import Sample, parse_samples, read_samples

SUFFIXES = st.sampled_from([".txt", ".jsonl", ".csv"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def outcome(call):
    try:
        samples = call()
    except InputError as err:
        assert str(err)  # a message, never an empty one
        return None
    assert all(isinstance(s, Sample) and (s.text.strip() or s.is_image) for s in samples)
    assert all(s.label is None or isinstance(s.label, (str, int)) for s in samples)
    return samples


@FUZZ
@given(data=st.binary(max_size=2000), suffix=SUFFIXES, labels=st.booleans())
def test_random_bytes(tmp_path, data, suffix, labels):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    outcome(lambda: read_samples(path, limit=5, need_labels=labels))


@FUZZ
@given(records=st.lists(JSON_VALUES, max_size=12), labels=st.booleans())
def test_random_jsonl_records(tmp_path, records, labels):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    outcome(lambda: read_samples(path, need_labels=labels))


@FUZZ
@given(header=st.lists(st.sampled_from(["text", "label", "image", "", "x,y", "TEXT"]) | st.text(max_size=6),
                       max_size=4),
       rows=st.lists(st.lists(st.text(alphabet=string.printable, max_size=15), max_size=5), max_size=10),
       labels=st.booleans())
def test_random_csv_shapes(tmp_path, header, rows, labels):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path / "fuzz.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    outcome(lambda: read_samples(path, need_labels=labels))


@FUZZ
@given(text=st.text(max_size=500), suffix=SUFFIXES)
def test_random_text(text, suffix):
    outcome(lambda: parse_samples(text, suffix, "fuzz"))


@FUZZ
@given(images=st.lists(st.text(max_size=300) | st.text(alphabet="x/.", min_size=256, max_size=5000), max_size=4),
       labels=st.booleans())
def test_random_image_paths(tmp_path, images, labels):
    """Whatever an `image` field names (too long, NUL bytes, folders, '..'), the answer is an InputError."""
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps({"image": name, "label": "a"}) + "\n" for name in images), encoding="utf-8")
    outcome(lambda: read_samples(path, need_labels=labels))
