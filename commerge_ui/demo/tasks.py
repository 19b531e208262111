"""The demo's six real tasks: each its own kind of text, each with held-out sentences its expert never saw.

| task      | text                                   | classes                          | source            |
|-----------|----------------------------------------|----------------------------------|-------------------|
| tweets    | tweets                                 | negative / neutral / positive    | VADER (MIT)       |
| movies    | movie-review snippets                  | negative / positive              | VADER (MIT)       |
| amazon    | Amazon product-review snippets         | negative / neutral / positive    | VADER (MIT)       |
| nyt       | New York Times editorial snippets      | negative / neutral / positive    | VADER (MIT)       |
| dialogue  | chatbot dialogue lines (English)       | 5 topics                         | ChatterBot (BSD)  |
| language  | chatbot dialogue lines, 6 languages    | the language                     | ChatterBot (BSD)  |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..samples import Sample
from . import corpora

EVAL_SAMPLES, CALIBRATION_SAMPLES = 500, 256
SPLIT_SEED = 0
TOPICS = ["trivia", "emotion", "coding", "ai", "psychology"]  # the English topics with 100+ distinct lines
DIALOGUE_EVAL = 300  # of 1,259 distinct lines
LANGUAGES = ["italian", "spanish", "portuguese", "dutch", "indonesian", "german"]


@dataclass(frozen=True)
class DemoTask:
    name: str
    text: str  # what kind of text, in words
    labels: tuple[str, ...]
    source: corpora.Archive
    read: Callable[[Path], corpora.Split]


def _vader(kind: str, with_neutral: bool) -> Callable[[Path], corpora.Split]:
    return lambda path: corpora.split(corpora.vader(path, kind, with_neutral), EVAL_SAMPLES, SPLIT_SEED)


def _dialogue(path: Path) -> corpora.Split:
    groups = [[Sample(line, topic) for line in conv]
              for topic in TOPICS for conv in corpora.chatterbot(path, "english", topic)]
    return corpora.split_groups(groups, DIALOGUE_EVAL, SPLIT_SEED)


def _language(path: Path) -> corpora.Split:
    groups = [[Sample(line, language) for line in conv]
              for language in LANGUAGES for topic in corpora.chatterbot_topics(path, language)
              for conv in corpora.chatterbot(path, language, topic)]
    return corpora.split_groups(groups, EVAL_SAMPLES, SPLIT_SEED)


SENTIMENT3 = ("negative", "neutral", "positive")
TASKS: dict[str, DemoTask] = {t.name: t for t in [
    DemoTask("tweets", "tweets", SENTIMENT3, corpora.VADER, _vader("tweets", True)),
    DemoTask("movies", "movie-review snippets", ("negative", "positive"), corpora.VADER, _vader("movies", False)),
    DemoTask("amazon", "Amazon review snippets", SENTIMENT3, corpora.VADER, _vader("amazon", True)),
    DemoTask("nyt", "NYT editorial snippets", SENTIMENT3, corpora.VADER, _vader("nyt", True)),
    DemoTask("dialogue", "chatbot dialogue lines by topic", tuple(TOPICS), corpora.CHATTERBOT, _dialogue),
    DemoTask("language", "dialogue lines in six languages", tuple(LANGUAGES), corpora.CHATTERBOT, _language),
]}


def load_split(task: DemoTask, log=print) -> corpora.Split:
    """The task's training and held-out samples, from its (cached, checked) archive."""
    return task.read(corpora.fetch(task.source, log=log))
