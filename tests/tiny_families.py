"""Tiny real models of the other families: GPT-2 and Llama decoders, and a CLIP with its processor.

Experts are the base plus seeded noise on every weight that the merge touches (a stand-in for fine-tuning).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from conftest import WORDS, TinySetup

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def save_word_tokenizer(folder: Path, bos: bool = True, eos: bool = False, pad: bool = False) -> int:
    """A whitespace word-level tokenizer over WORDS (offline, no training); returns its vocabulary size."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    template = " ".join([*(["<s>"] if bos else []), "$A", *(["</s>"] if eos else [])])
    tokenizer.post_processor = processors.TemplateProcessing(single=template,
                                                             special_tokens=[("<s>", 2), ("</s>", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                   pad_token="<pad>" if pad else None,
                                   eos_token="</s>", model_max_length=64)
    fast.save_pretrained(folder)
    return len(vocab)


def perturbed(model: torch.nn.Module, noise: float, seed: int, skip: tuple[str, ...] = ()) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.startswith(skip):
                param.add_(noise * param.std().clamp_min(1e-3) * torch.randn_like(param))
    return model


def write_texts(path: Path, count: int, seed: int, labelled: bool = False) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(count):
            record: dict = {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))}
            if labelled:
                record["label"] = rng.randint(0, 1)
            f.write(json.dumps(record) + "\n")
    return path


def causal_lm(kind: str, layers: int = 2, tied: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    vocab = len(SPECIALS) + len(WORDS)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=layers, n_head=4,
                                          bos_token_id=2, eos_token_id=3, tie_word_embeddings=tied,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    # Grouped-query attention: 4 query heads share 2 key/value heads, so k/v are half q's width.
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                                        tie_word_embeddings=tied))


def saved_lm_base(root: Path, kind: str, layers: int = 2, tied: bool = True):
    """A seeded tiny decoder saved as root/base with its word tokenizer; returns the model."""
    torch.manual_seed(0)
    base = causal_lm(kind, layers, tied)
    base.save_pretrained(root / "base")
    save_word_tokenizer(root / "base")
    return base


def make_lm_setup(root: Path, kind: str, n_experts: int = 3, layers: int = 2, noise: float = 0.3,
                  tied: bool = True, identical: bool = False) -> TinySetup:
    torch.manual_seed(0)
    base = causal_lm(kind, layers, tied)
    base.save_pretrained(root / "base")
    save_word_tokenizer(root / "base")
    experts, calibration, evaluation = {}, {}, {}
    for i in range(n_experts):
        name = f"task{i}"
        model = causal_lm(kind, layers, tied)
        model.load_state_dict(base.state_dict())
        perturbed(model, 0.0 if identical else noise, seed=100 + (0 if identical else i))
        model.save_pretrained(root / name)
        save_word_tokenizer(root / name)
        experts[name] = root / name
        calibration[name] = write_texts(root / f"{name}_cal.jsonl", 24, seed=i)
        evaluation[name] = write_texts(root / f"{name}_eval.jsonl", 12, seed=50 + i)
    return TinySetup(root, root / "base", experts, calibration, evaluation)


def write_config(setup: TinySetup, methods: list[str], **options) -> Path:
    data = setup.config(methods=methods)
    data["options"].update(options)
    path = setup.root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def clip_model(layers: int = 3):
    from transformers import CLIPConfig, CLIPModel

    vocab = len(SPECIALS) + len(WORDS)
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32, bos_token_id=2, eos_token_id=3, pad_token_id=0, projection_dim=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                  image_size=32, patch_size=8, projection_dim=16)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))


def save_clip_processor(folder: Path) -> None:
    from transformers import CLIPImageProcessor

    save_word_tokenizer(folder, bos=True, eos=True, pad=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def colour_image(colour: str, seed: int, size: int = 40) -> bytes:
    """A PNG: a square of the class colour on random noise, at a random place."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    x, y = rng.integers(0, size // 2, 2)
    pixels[y:y + size // 2, x:x + size // 2] = COLOURS[colour]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_samples(path: Path, kind: str, count: int, seed: int, classes: list[str]) -> Path:
    """`count` images in one of the three layouts: 'folder' and 'zip' (class subfolders) or 'jsonl'."""
    import zipfile

    images = [(classes[i % len(classes)], colour_image(classes[i % len(classes)], seed * 1000 + i)) for i in range(count)]
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            for i, (label, data) in enumerate(images):
                archive.writestr(f"{label}/{i}.png", data)
    elif kind == "folder":
        for i, (label, data) in enumerate(images):
            (path / label).mkdir(parents=True, exist_ok=True)
            (path / label / f"{i}.png").write_bytes(data)
    else:
        (path.parent / f"{path.stem}_images").mkdir(exist_ok=True)
        with path.open("w") as f:
            for i, (label, data) in enumerate(images):
                name = f"{path.stem}_images/{i}.png"
                (path.parent / name).write_bytes(data)
                f.write(json.dumps({"image": name, "label": label}) + "\n")
    return path


def make_clip_setup(root: Path, layers: int = 3, noise: float = 0.3, identical: bool = False,
                    layout: str | None = None) -> TinySetup:
    """A full CLIP base and three vision experts saved three ways: full CLIPModel, CLIPVisionModel (no
    projection) and CLIPVisionModelWithProjection, each with its own sample layout (or all with `layout`)."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    base = clip_model(layers)
    base.save_pretrained(root / "base")
    save_clip_processor(root / "base")
    layouts = {"task0": ("full", "zip"), "task1": ("vision", "folder"), "task2": ("projection", "jsonl")}
    experts, calibration, evaluation = {}, {}, {}
    for i, (name, (saved_as, sample_layout)) in enumerate(layouts.items()):
        model = clip_model(layers)
        model.load_state_dict(base.state_dict())
        perturbed(model.vision_model, 0.0 if identical else noise, seed=100 + (0 if identical else i))
        folder = root / name
        if saved_as == "full":
            model.save_pretrained(folder)
        else:
            kind = CLIPVisionModel if saved_as == "vision" else CLIPVisionModelWithProjection
            config = model.config.vision_config
            tower = kind(config)
            getattr(tower, "vision_model", tower).load_state_dict(model.vision_model.state_dict())
            if saved_as == "projection":
                tower.visual_projection.load_state_dict(model.visual_projection.state_dict())
            tower.save_pretrained(folder)
        save_clip_processor(folder)
        experts[name] = folder
        classes = list(COLOURS)[:2 + i % 2]
        kind = layout or sample_layout
        suffix = {"zip": ".zip", "folder": "", "jsonl": ".jsonl"}[kind]
        calibration[name] = write_image_samples(root / f"{name}_cal{suffix}", kind, 12, seed=i, classes=classes)
        evaluation[name] = write_image_samples(root / f"{name}_eval{suffix}", kind, 12, seed=50 + i, classes=classes)
    return TinySetup(root, root / "base", experts, calibration, evaluation)


def wide_llama(root: Path, experts: int, layers: int = 2) -> list[Path]:
    """A Llama decoder wide enough that captured activations, not weights, dominate a merge's memory: the base
    and `experts` perturbed copies on disk (base first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=384, intermediate_size=1024, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    folders = [root / "base"]
    for i in range(experts):
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.05 * p.std() * torch.randn_like(p))
        base.save_pretrained(root / f"e{i}")
        folders.append(root / f"e{i}")
    return folders
