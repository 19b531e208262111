"""Writing results: atomic output folders and merged models with a model card."""

from __future__ import annotations

import glob
import io
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from .config import MergeConfig, config_to_yaml
from .errors import InputError
from .samples import Sample, read_samples
from .sources import PARTIAL_MARKER, is_partial


@contextmanager
def atomic_folder(final: Path, force: bool = False) -> Iterator[Path]:
    """A temporary sibling folder that becomes `final` only if the block succeeds; removed otherwise.

    While it is written it holds a marker file (sources.PARTIAL_MARKER), so that a process killed midway
    leaves nothing that passes for a model; such leftovers of `final` are removed by the next call.
    """
    final = Path(final)
    if final.exists() and not force:
        raise InputError(f"{final}: already exists (use --force to replace it)")
    if final.exists() and not final.is_dir():
        raise InputError(f"{final}: exists and is not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    (partial / PARTIAL_MARKER).touch()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    (partial / PARTIAL_MARKER).unlink()
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def check_output_folder(out: Path, protected: list[Path]) -> None:
    """Refuse an output folder that replacing would destroy something else: the current folder or one above
    it, or a folder holding any of `protected` (the config, its models and samples)."""
    target = Path(out).expanduser().resolve()
    here = Path.cwd().resolve()
    if here.is_relative_to(target):
        raise InputError(f"--out {out}: that is the current folder or one above it; name a new folder for the output")
    for path in protected:
        try:
            inside = Path(path).expanduser().resolve().is_relative_to(target)
        except (OSError, RuntimeError, ValueError):
            continue
        if inside:
            raise InputError(f"--out {out}: it holds {path}, which the run reads; name another folder")


def remove_leftovers(final: Path) -> list[Path]:
    """Remove what an interrupted atomic_folder(final) left beside it (its .partial-* and .old-* folders)."""
    removed = []
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        if leftover.is_dir() and is_partial(leftover) and leftover.name.startswith(f".{final.name}."):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def write_config_bundle(config: MergeConfig, folder: Path) -> Path:
    """config.yaml plus copies of the sample files and folders it names, under samples/, so that
    `commerge merge config.yaml` reproduces the run from that folder on any machine. A .jsonl/.csv that names
    image files becomes a .zip of those images in class-subfolder layout."""
    samples = folder / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    experts = []
    for expert in config.experts:
        update = {}
        for kind in ("calibration", "evaluation"):
            source = getattr(expert, kind)
            if source:
                copy = samples / f"{expert.name}_{kind}{Path(source).suffix.lower()}"
                if Path(source).is_dir():  # an image folder: its images only, zipped in class-subfolder layout
                    copy = copy.with_suffix(".zip")
                    _zip_images(read_samples(source), copy)
                elif named := _named_images(Path(source)):  # the images it points to would not travel with it
                    copy = copy.with_suffix(".zip")
                    _zip_images(named, copy)
                else:
                    shutil.copyfile(source, copy)
                update[kind] = f"samples/{copy.name}"
        experts.append(expert.model_copy(update=update))
    path = folder / "config.yaml"
    path.write_text(BUNDLE_NOTE + config_to_yaml(config.model_copy(update={"experts": experts})), encoding="utf-8")
    return path


BUNDLE_NOTE = ("# commerge_ui run config. Its sample paths (samples/...) are relative to this file and travel in the\n"
               "# config bundle (config-bundle.zip): unzip it, then `commerge merge config.yaml --out DIR`.\n"
               "# Model paths are as the run saw them: Hub ids work anywhere, local folders only where they exist.\n")


def _named_images(source: Path) -> list[Sample]:
    """The image samples a .jsonl/.csv names (empty for text samples and other formats)."""
    if source.suffix.lower() not in (".jsonl", ".csv"):
        return []
    samples = read_samples(source)
    return samples if any(s.is_image for s in samples) else []


def _zip_images(samples: list[Sample], archive: Path) -> None:
    """A .zip in class-subfolder layout (one folder per label) that read_samples reads back the same."""
    with zipfile.ZipFile(archive, "w") as bundle:
        for index, sample in enumerate(samples):
            folder = "" if sample.label is None else f"{sample.label}/"
            bundle.writestr(f"{folder}{index:06d}.{_image_suffix(sample.image)}", sample.image or b"")


def _image_suffix(data: bytes | None) -> str:
    with Image.open(io.BytesIO(data or b"")) as image:
        return (image.format or "png").lower()


def model_licence(folder: Path) -> str | None:
    """The licence a model's card declares (`license:` in its README.md front matter), if any."""
    card = folder / "README.md"
    try:
        text = card.read_text(encoding="utf-8")[:20_000] if card.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    match = re.match(r"---\s*\n(.*?)\n---", text, flags=re.DOTALL)
    found = re.search(r"^license:\s*(\S+)\s*$", match.group(1), flags=re.MULTILINE) if match else None
    return found.group(1).strip("'\"") if found else None


def model_card(base: str, experts: dict[str, str], method: str, title: str, options: dict,
               scores: dict[str, float | None], normalized: dict[str, float | None], metric: str,
               paper: str = "", licences: dict[str, str | None] | None = None) -> str:
    """README.md for a merged model: what was merged, how, how it scored, and the licences it inherits
    (`licences`: model reference -> the licence its card declares; one shared licence goes in the front matter)."""
    licences = licences or {}
    known = {v for v in licences.values() if v}
    shared = [f"license: {known.pop()}"] if len(known) == 1 and all(licences.values()) else []
    lines = [
        "---", "library_name: transformers", *shared, "tags:", "- merge", "- commerge_ui", f"- {method}",
        f"base_model: {base}", "---", "",
        f"# {title} merge of {len(experts)} experts", "",
        f"Merged with commerge_ui using **{title}** (`{method}`)" + (f"; method: {paper}." if paper else "."), "",
        f"- Base: `{base}`",
    ]
    lines += [f"- Expert `{name}`: `{model}`" for name, model in experts.items()]
    lines += ["", "## Options", "", "| option | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in options.items()]
    lines += ["", f"## Scores ({metric})", "", "| task | score | normalized to expert |", "|---|---|---|"]
    lines += [f"| {t} | {_fmt(s)} | {_fmt(normalized.get(t))} |" for t, s in scores.items()]
    lines += ["", "Each task's head (when the family has one) is under `heads/<task>/`."]
    lines += ["", "## Licence", "", "The merged weights are made from the base's and the experts'; their licences apply:", ""]
    lines += [f"- `{ref}`: {licences.get(ref) or 'not declared in its card; see its source'}"
              for ref in dict.fromkeys([base, *experts.values()])]
    lines += ["", "commerge_ui, the tool that merged them, is under the Apache License 2.0."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"

