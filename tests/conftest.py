"""Tiny real models for the tests: a BERT base and experts fine-tuned from it by distinct perturbations."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

WORDS = ("the a cat dog bird runs sleeps eats good bad great awful movie film food place red blue green "
         "quick slow happy sad we you they is was not very really quite today yesterday here there").split()


@dataclass
class TinySetup:
    root: Path
    base: Path
    experts: dict[str, Path]
    calibration: dict[str, Path]
    evaluation: dict[str, Path]

    def config(self, **overrides) -> dict:
        data = {
            "base": str(self.base),
            "experts": [{"name": n, "model": str(p), "calibration": str(self.calibration[n]),
                         "evaluation": str(self.evaluation[n])} for n, p in self.experts.items()],
            "methods": ["com", "regmean", "task_arithmetic", "ties", "average"],
            "options": {"calibration_samples": 24, "max_length": 16, "seed": 0},
        }
        data.update(overrides)
        return data

    def write_config(self, name: str = "config.yaml", **overrides) -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(self.config(**overrides)))
        return path


def bert_config(layers: int = 2, hidden: int = 32, labels: int = 2, ffn: int = 2) -> BertConfig:
    return BertConfig(vocab_size=len(WORDS) + 5, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=hidden * ffn, max_position_embeddings=64,
                      num_labels=labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def save_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=64).save_pretrained(folder)


def make_base(folder: Path, layers: int = 2, hidden: int = 32, seed: int = 0, ffn: int = 2) -> BertModel:
    torch.manual_seed(seed)
    model = BertModel(bert_config(layers, hidden, ffn=ffn))
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return model


def make_expert(folder: Path, base: BertModel, noise: float, seed: int, labels: int = 2,
                copy_of: Path | None = None) -> None:
    """An expert: the base encoder plus seeded noise (a stand-in for fine-tuning) and its own head."""
    if copy_of is not None:
        model = BertForSequenceClassification.from_pretrained(copy_of)
    else:
        torch.manual_seed(seed)
        config = bert_config(base.config.num_hidden_layers, base.config.hidden_size, labels,
                             ffn=base.config.intermediate_size // base.config.hidden_size)
        config.id2label = {i: f"class{i}" for i in range(labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
        model = BertForSequenceClassification(config)
        model.bert.load_state_dict(base.state_dict())
        with torch.no_grad():
            for name, param in model.bert.named_parameters():
                if not name.startswith("pooler"):
                    param.add_(noise * param.std() * torch.randn_like(param))
    model.save_pretrained(folder)
    save_tokenizer(folder)


def write_samples(path: Path, count: int, seed: int, labelled: bool, min_words: int = 3, max_words: int = 12) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(count):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            record = {"text": text}
            if labelled:
                record["label"] = rng.randint(0, 1)
            f.write(json.dumps(record) + "\n")
    return path


def make_setup(root: Path, n_experts: int = 3, layers: int = 2, noise: float = 0.3,
               identical: bool = False) -> TinySetup:
    base = make_base(root / "base", layers=layers)
    experts, calibration, evaluation = {}, {}, {}
    for i in range(n_experts):
        name = f"task{i}"
        experts[name] = root / name
        copy_of = experts["task0"] if identical and i > 0 else None
        make_expert(experts[name], base, noise, seed=100 + i, copy_of=copy_of)
        calibration[name] = write_samples(root / f"{name}_cal.jsonl", 24, seed=i, labelled=False)
        evaluation[name] = write_samples(root / f"{name}_eval.jsonl", 16, seed=50 + i, labelled=True)
    return TinySetup(root, root / "base", experts, calibration, evaluation)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinySetup:
    """Three distinct experts of a 2-layer BERT (shared, read-only)."""
    return make_setup(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_deep(tmp_path_factory) -> TinySetup:
    """Three distinct experts of a 4-layer BERT, for shift curves."""
    return make_setup(tmp_path_factory.mktemp("deep"), layers=4, noise=0.5)
