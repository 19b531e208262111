"""Calibration and evaluation samples: .jsonl, .csv or .txt files (design.md §8)."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

MAX_SAMPLE_FILE_BYTES = 200 * 1024 * 1024
TEXT_SUFFIXES = (".jsonl", ".csv", ".txt")


@dataclass(frozen=True)
class Sample:
    text: str
    label: str | int | None = None


def read_samples(path: str | Path, limit: int | None = None, seed: int = 0, need_labels: bool = False) -> list[Sample]:
    """Read samples from a file; with `limit`, a seeded random subset of that size (order kept)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: sample file not found")
    if path.is_dir():
        raise InputError(f"{path}: expected a .jsonl, .csv or .txt file, got a folder")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise InputError(f"{path}: unsupported sample format '{path.suffix}' (use .jsonl, .csv or .txt)")
    if path.stat().st_size > MAX_SAMPLE_FILE_BYTES:
        raise InputError(f"{path}: file is larger than {MAX_SAMPLE_FILE_BYTES // 2**20} MiB")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start})") from None
    samples = parse_samples(text, path.suffix.lower(), str(path))
    if not samples:
        raise InputError(f"{path}: no samples")
    if need_labels:
        unlabelled = next((i for i, s in enumerate(samples) if s.label is None), None)
        if unlabelled is not None:
            raise InputError(f"{path}: sample {unlabelled + 1} has no label (evaluation samples need a 'label')")
    if limit is not None and len(samples) > limit:
        keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
        samples = [samples[i] for i in keep]
    return samples


def parse_samples(text: str, suffix: str, source: str) -> list[Sample]:
    """Parse the contents of a sample file; `source` names it in error messages."""
    if "\x00" in text:
        raise InputError(f"{source}: binary data, not text")
    if suffix == ".txt":
        return [Sample(line.strip()) for line in text.splitlines() if line.strip()]
    if suffix == ".jsonl":
        return [_from_record(_json_line(line, n, source), f"{source}:{n}")
                for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as err:
            raise InputError(f"{source}: malformed CSV ({err})") from None
        return [_from_record(row, f"{source}:{n}") for n, row in enumerate(rows, 2)]
    raise InputError(f"{source}: unsupported sample format '{suffix}'")


def _json_line(line: str, number: int, source: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{source}:{number}: not valid JSON ({err.msg})") from None


def _from_record(record: object, where: str) -> Sample:
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected an object with a 'text' field")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        columns = ", ".join(str(k) for k in record) or "none"
        raise InputError(f"{where}: expected a non-empty 'text' field (columns found: {columns})")
    label = record.get("label")
    if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int))):
        raise InputError(f"{where}: 'label' must be a string or an integer")
    if isinstance(label, str):
        label = label.strip()
        label = int(label) if label.lstrip("-").isdigit() else (label or None)
    return Sample(text.strip(), label)
