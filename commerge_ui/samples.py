"""Calibration and evaluation samples (README, "The command line"): .jsonl/.csv (a `text` or `image` column, optional
`label`), .txt (one text per line), or images in a folder or .zip in class-subfolder layout."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .images import ImageRef, folder_images, image_file, zip_images

MAX_SAMPLE_FILE_BYTES = 200 * 1024 * 1024
TEXT_SUFFIXES = (".jsonl", ".csv", ".txt")
FORMATS = ".jsonl, .csv, .txt, .zip or a folder of images"


@dataclass(frozen=True)
class Sample:
    text: str = ""
    label: str | int | None = None
    image: bytes | None = None  # an encoded image file (PNG, JPEG, ...), checked to decode

    @property
    def is_image(self) -> bool:
        return self.image is not None


def read_samples(path: str | Path, limit: int | None = None, seed: int = 0, need_labels: bool = False) -> list[Sample]:
    """Read samples from a file or folder; with `limit`, a seeded random subset of that size (order kept).

    Images are listed first and only the chosen ones are read and checked.
    """
    path = Path(path)
    if not path.exists():
        hint = (" (a bundle's config: unzip config-bundle.zip, which holds samples/, and run the config.yaml inside)"
                if path.parent.name == "samples" else "")
        raise InputError(f"{path}: sample file not found{hint}")
    with ExitStack() as stack:
        if path.is_dir():
            entries: list[Sample | ImageRef] = list(folder_images(path))
            if not entries:
                raise InputError(f"{path}: no images in this folder (expected class subfolders of .png/.jpg files)")
        else:
            suffix = path.suffix.lower()
            if suffix not in (*TEXT_SUFFIXES, ".zip"):
                raise InputError(f"{path}: unsupported sample format '{path.suffix}' (use {FORMATS})")
            if path.stat().st_size > MAX_SAMPLE_FILE_BYTES:
                raise InputError(f"{path}: file is larger than {MAX_SAMPLE_FILE_BYTES // 2**20} MiB")
            if suffix == ".zip":
                entries = list(stack.enter_context(zip_images(path)))
            else:
                entries = _parse_entries(_read_text(path), suffix, str(path), path.parent)
        if not entries:
            raise InputError(f"{path}: no samples")
        if need_labels:
            unlabelled = next((i for i, s in enumerate(entries) if s.label is None), None)
            if unlabelled is not None:
                raise InputError(f"{path}: sample {unlabelled + 1} has no label (evaluation samples need a 'label', "
                                 "or class subfolders for images)")
        if limit is not None and len(entries) > limit:
            keep = sorted(random.Random(seed).sample(range(len(entries)), limit))
            entries = [entries[i] for i in keep]
        return [_loaded(e) for e in entries]


def label_names(samples: list[Sample] | None) -> list[str] | None:
    """The class names the labels spell, sorted; None when there are no samples or a label looks like an index."""
    if not samples or not all(isinstance(s.label, str) and _as_index(s.label, None) is None for s in samples):
        return None
    return sorted({str(s.label) for s in samples})


def class_indices(labels: list[str | int | None], names: list[str], source: str) -> tuple[list[int], str | None]:
    """Class indices of a file's labels: read as the class names first (case-insensitive), else as indices.

    One reading holds for the whole file. Returns the indices and a note when both readings fit but disagree
    (labels '0'/'1' with classes named '1'/'0'), so the reader knows which was taken.
    """
    lowered = {n.lower(): i for i, n in enumerate(names)}
    by_name = [None if label is None else lowered.get(str(label).lower()) for label in labels]
    by_index = [_as_index(label, len(names)) for label in labels]
    if all(i is not None for i in by_name):
        note = None
        if all(i is not None for i in by_index) and by_index != by_name:
            note = (f"{source}: labels read as class names ({', '.join(names[:10])}); read as class indices "
                    "they would mean other classes")
        return by_name, note  # type: ignore[return-value]
    if all(i is not None for i in by_index):
        return by_index, None  # type: ignore[return-value]
    classes = f"{', '.join(names[:10])}{', …' if len(names) > 10 else ''}"
    bad = next((label for label, a, b in zip(labels, by_name, by_index) if a is None and b is None), None)
    if bad is None:
        raise InputError(f"{source}: labels mix class names and class indices; use one or the other ({classes})")
    raise InputError(f"label '{bad}' is neither one of {source}'s classes ({classes}) nor a class index "
                     f"0–{len(names) - 1}")


def _as_index(label: object, count: int | None) -> int | None:
    """An integer label (or one written as digits) within [0, count), else None."""
    if isinstance(label, bool):
        return None
    if isinstance(label, str) and re.fullmatch(r"-?\d+", label.strip()):
        label = int(label)
    if isinstance(label, int) and (count is None or 0 <= label < count):
        return label
    return None


def parse_samples(text: str, suffix: str, source: str, root: Path | None = None) -> list[Sample]:
    """Parse the contents of a sample file; `source` names it in messages, `root` anchors relative image paths."""
    return [_loaded(e) for e in _parse_entries(text, suffix, source, root or Path.cwd())]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _loaded(entry: Sample | ImageRef) -> Sample:
    return Sample(label=entry.label, image=entry.read()) if isinstance(entry, ImageRef) else entry


def _parse_entries(text: str, suffix: str, source: str, root: Path) -> list[Sample | ImageRef]:
    if "\x00" in text:
        raise InputError(f"{source}: binary data, not text")
    if suffix == ".txt":
        return [Sample(line.strip()) for line in text.splitlines() if line.strip()]
    if suffix == ".jsonl":
        return [_from_record(_json_line(line, n, source), f"{source}:{n}", root)
                for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if suffix == ".csv":
        return [_from_record(row, where, root) for where, row in _csv_rows(text, source)]
    raise InputError(f"{source}: unsupported sample format '{suffix}'")


def _csv_rows(text: str, source: str) -> list[tuple[str, dict]]:
    """(where, row) per CSV record; a parse error or a record whose field count differs from the header's is
    refused with its line (an unterminated quote would otherwise swallow the rest of the file into one field)."""
    reader = csv.reader(io.StringIO(text), strict=True)
    rows: list[tuple[str, dict]] = []
    try:
        header = next(reader, None)
        if header is None:
            return []
        for record in reader:
            where = f"{source}:{reader.line_num}"
            if not record:
                continue
            if len(record) != len(header):
                raise InputError(f"{where}: {len(record)} fields, the header has {len(header)} "
                                 f"({', '.join(header)}); is a quote or a comma unbalanced?")
            rows.append((where, dict(zip(header, record))))
    except csv.Error as err:
        raise InputError(f"{source}:{reader.line_num}: malformed CSV ({err}); is a quote left open?") from None
    return rows


def _json_line(line: str, number: int, source: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}:{number}: not valid JSON ({err.msg})") from None


def _from_record(record: object, where: str, root: Path) -> Sample | ImageRef:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object with a 'text' or 'image' field")
    text, image = record.get("text"), record.get("image")
    label = _label(record.get("label"), where)
    if isinstance(image, str) and image.strip() and not (isinstance(text, str) and text.strip()):
        return image_file(root / image.strip(), label, f"{where}: {image.strip()}")
    if not isinstance(text, str) or not text.strip():
        columns = ", ".join(str(k) for k in record) or "none"
        raise InputError(f"{where}: expected a non-empty 'text' or 'image' field (columns found: {columns})")
    return Sample(text.strip(), label)


def _label(label: object, where: str) -> str | int | None:
    if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int))):
        raise InputError(f"{where}: 'label' must be a string or an integer")
    if isinstance(label, str):  # kept as written: '1' may be a class named "1" (class_indices decides)
        label = label.strip() or None
    return label  # type: ignore[return-value]
