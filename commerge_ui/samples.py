"""Calibration and evaluation samples (docs/cli.md): .jsonl/.csv (a `text` or `image` column, optional
`label`), .txt (one text per line), or images in a folder or .zip in class-subfolder layout."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .images import ImageRef, folder_images, image_file, zip_images

MAX_SAMPLE_FILE_BYTES = 200 * 1024 * 1024
MAX_LINE_CHARS = 1_000_000  # one text sample (one line, one record) at most
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


def read_samples(path: str | Path, limit: int | None = None, seed: int = 0, need_labels: bool = False,
                 name: str | None = None, max_bytes: int = MAX_SAMPLE_FILE_BYTES) -> list[Sample]:
    """Read samples from a file or folder; with `limit`, a seeded random subset of that size (order kept).

    Text files are read as a stream, line by line (a line is at most MAX_LINE_CHARS): with `limit`, one pass
    counts the records and a second parses only the chosen ones, so memory stays bounded whatever the size.
    Images are listed first and only the chosen ones are read and checked. `name` is how messages call the
    file (default: its path); `max_bytes` caps its size.
    """
    path = Path(path)
    where = name or str(path)
    with ExitStack() as stack:
        entries = _entries(path, where, stack, max_bytes, limit, seed)
        if not entries:
            raise InputError(f"{where}: no samples")
        if need_labels:
            _check_labels(entries, where)
        return [_loaded(e) for e in entries]


def preview_samples(path: str | Path, rows: int, need_labels: bool = False, name: str | None = None,
                    max_bytes: int = MAX_SAMPLE_FILE_BYTES) -> tuple[list[Sample], int]:
    """The first `rows` samples of a file and how many it holds, without parsing the rest of a text file
    (its records are only counted) and without reading any other image."""
    path = Path(path)
    where = name or str(path)
    with ExitStack() as stack:
        if path.is_dir() or path.suffix.lower() == ".zip":
            entries = _entries(path, where, stack, max_bytes, None, 0)
            first, count = [_loaded(e) for e in entries[:rows]], len(entries)
        else:
            suffix = _text_suffix(path, where, max_bytes)
            first = [_loaded(e) for e in _text_entries(path, suffix, where, stop=rows)]
            count = _count_records(path, suffix, where) if len(first) == rows else len(first)
    if not first:
        raise InputError(f"{where}: no samples")
    if need_labels:
        _check_labels(first, where)
    return first, count


def _check_labels(entries: list, where: str) -> None:
    unlabelled = next((i for i, s in enumerate(entries) if s.label is None), None)
    if unlabelled is not None:
        raise InputError(f"{where}: sample {unlabelled + 1} has no label (evaluation samples need a 'label', "
                         "or class subfolders for images)")


def _entries(path: Path, where: str, stack: ExitStack, max_bytes: int, limit: int | None,
             seed: int) -> list[Sample | ImageRef]:
    """The file's entries (images not read yet), only the seeded subset of `limit` where one is asked."""
    if not path.exists():
        hint = (" (a bundle's config: unzip config-bundle.zip, which holds samples/, and run the config.yaml inside)"
                if path.parent.name == "samples" else "")
        raise InputError(f"{where}: sample file not found{hint}")
    if path.is_dir():
        entries: list[Sample | ImageRef] = list(folder_images(path))
        if not entries:
            raise InputError(f"{where}: no images in this folder (expected class subfolders of .png/.jpg files)")
        return _subset(entries, limit, seed)
    if path.suffix.lower() == ".zip":
        _check_size(path, where, max_bytes)
        return _subset(list(stack.enter_context(zip_images(path))), limit, seed)
    suffix = _text_suffix(path, where, max_bytes)
    if limit is None:
        return list(_text_entries(path, suffix, where))
    count = _count_records(path, suffix, where)
    if count <= limit:
        return list(_text_entries(path, suffix, where))
    keep = set(random.Random(seed).sample(range(count), limit))
    return list(_text_entries(path, suffix, where, keep=keep))


def _subset(entries: list, limit: int | None, seed: int) -> list:
    if limit is not None and len(entries) > limit:
        keep = sorted(random.Random(seed).sample(range(len(entries)), limit))
        return [entries[i] for i in keep]
    return entries


def _check_size(path: Path, where: str, max_bytes: int) -> None:
    if path.stat().st_size > max_bytes:
        raise InputError(f"{where}: file is larger than {max_bytes // 2**20} MiB")


def _text_suffix(path: Path, where: str, max_bytes: int) -> str:
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise InputError(f"{where}: unsupported sample format '{path.suffix}' (use {FORMATS})")
    if not path.is_file():
        raise InputError(f"{where}: not a file")
    _check_size(path, where, max_bytes)
    return suffix


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
    lines = io.StringIO(text, newline="" if suffix == ".csv" else None)
    return [_loaded(e) for _, e in _records(_checked_lines(lines, source), suffix, source, root or Path.cwd())]


def _loaded(entry: Sample | ImageRef) -> Sample:
    return Sample(label=entry.label, image=entry.read()) if isinstance(entry, ImageRef) else entry


@contextmanager
def _open_text(path: Path, suffix: str, where: str) -> Iterator[Iterator[str]]:
    """The file's lines, decoded as UTF-8 (a BOM dropped), each checked (length, NUL bytes) as it is read."""
    try:
        with open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as stream:
            yield _checked_lines(stream, where)
    except UnicodeDecodeError as err:
        raise InputError(f"{where}: not UTF-8 text (byte {err.start} of a read block)") from None


def _checked_lines(stream, where: str) -> Iterator[str]:
    number = 0
    while line := stream.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise InputError(f"{where}:{number}: a line longer than {MAX_LINE_CHARS} characters")
        if "\x00" in line:
            raise InputError(f"{where}: binary data, not text")
        yield line


def _logical(lines: Iterator[str]) -> Iterator[str]:
    """Lines as str.splitlines() cuts a whole text (also at form feeds and Unicode line separators)."""
    for line in lines:
        yield from line.splitlines() or [""]


def _text_entries(path: Path, suffix: str, where: str, keep: set[int] | None = None,
                  stop: int | None = None) -> Iterator[Sample | ImageRef]:
    """The records of a text sample file, parsed one at a time; with `keep`, only those indices; with `stop`,
    the first `stop` records and nothing more is read."""
    with _open_text(path, suffix, where) as lines:
        taken = 0
        for index, entry in _records(lines, suffix, where, path.parent, keep):
            yield entry
            taken += 1
            if stop is not None and taken >= stop:
                return


def _count_records(path: Path, suffix: str, where: str) -> int:
    """How many records the file holds, each only delimited (CSV: its fields split), none parsed further."""
    with _open_text(path, suffix, where) as lines:
        if suffix == ".csv":
            return sum(1 for _ in _csv_rows(lines, where, parse=False))
        return sum(1 for line in _logical(lines) if line.strip())


def _records(lines: Iterator[str], suffix: str, source: str, root: Path,
             keep: set[int] | None = None) -> Iterator[tuple[int, Sample | ImageRef]]:
    """(index, entry) per record; records whose index is not in `keep` are delimited but not parsed."""
    if suffix == ".csv":
        rows = _csv_rows(lines, source)
    else:
        rows = ((f"{source}:{n}", line) for n, line in enumerate(_logical(lines), 1) if line.strip())
    for index, (where, record) in enumerate(rows):
        if keep is not None and index not in keep:
            continue
        if suffix == ".txt":
            yield index, Sample(record.strip())
        elif suffix == ".jsonl":
            yield index, _from_record(_json_line(record, where), where, root)
        elif suffix == ".csv":
            yield index, _from_record(record, where, root)
        else:
            raise InputError(f"{source}: unsupported sample format '{suffix}'")


def _csv_rows(lines: Iterator[str], source: str, parse: bool = True) -> Iterator[tuple[str, dict]]:
    """(where, row) per CSV record; a parse error or a record whose field count differs from the header's is
    refused with the line it starts on (an unterminated quote would otherwise swallow the rest of the file)."""
    reader = csv.reader(lines, strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for record in reader:
            where = f"{source}:{start}"
            start = reader.line_num + 1
            if not record:
                continue
            if len(record) != len(header):
                raise InputError(f"{where}: {len(record)} fields, the header has {len(header)} "
                                 f"({', '.join(header)[:200]}); is a quote or a comma unbalanced?")
            yield where, (dict(zip(header, record)) if parse else {})
    except csv.Error as err:
        raise InputError(f"{source}:{start}: malformed CSV ({err}); is a quote left open on this line?") from None


def _json_line(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg})") from None


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
