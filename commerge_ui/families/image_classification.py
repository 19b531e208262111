"""CLIP image classification: the vision tower is merged; each task's head is zero-shot, built from its class
names through the base's text tower (docs/method.md §7)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPTextModelWithProjection, \
    CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from ..errors import InputError
from ..images import open_rgb
from ..offload import Placement, blocks_streamed, place_backbone
from ..samples import Sample, class_indices, label_names
from ..sources import ModelSource, read_config_file
from .base import FULL_CLIP_NEEDED, EncodedSamples, quiet_loading

DEFAULT_TEMPLATES = ("a photo of a {}.",)
transformers_logging.disable_progress_bar()


@dataclass
class ClipProcessors:
    """The base's image processor (for samples) and tokenizer (for class-name prompts)."""

    images: object
    tokenizer: object
    tokens_per_image: int  # patches + the class token: the rows one image gives each layer

    def save_pretrained(self, folder: Path) -> None:
        self.images.save_pretrained(folder)  # type: ignore[attr-defined]
        self.tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]


def _sub_config(folder: Path, which: str):
    """The vision or text config of a full CLIP checkpoint, with the projection width it really has."""
    config = AutoConfig.from_pretrained(folder)
    sub = getattr(config, f"{which}_config")
    sub.projection_dim = config.projection_dim
    return sub


class ImageClassification:
    name = "image-classification"
    metric = "accuracy"
    higher_is_better = True
    part = "vision tower"
    needs_labels = True
    sink_tokens = 0

    def __init__(self, base_folder: Path, templates: list[str] | None = None) -> None:
        if read_config_file(base_folder / "config.json").get("model_type") != "clip":
            raise InputError(f"{base_folder}: {FULL_CLIP_NEEDED}")
        self.base_folder = base_folder
        self.templates = list(templates or DEFAULT_TEMPLATES)
        self._placement = (torch.float32, Placement(torch.device("cpu")))
        self._text_tower: nn.Module | None = None
        self._tokenizer = None
        self._heads: dict[tuple[str, ...], torch.Tensor] = {}
        self.notes: list[str] = []  # how labels were read, where that was ambiguous (the report's warnings)

    def load_backbone(self, folder: Path, dtype: torch.dtype, device: torch.device, offload: bool = False) -> nn.Module:
        self._placement = (dtype, Placement(device, offload))
        with quiet_loading():
            model = CLIPVisionModelWithProjection.from_pretrained(
                folder, config=_sub_config(folder, "vision"), dtype=dtype, use_safetensors=True,
                trust_remote_code=False)
        place_backbone(model, self.blocks(model)[1], self._placement[1])
        return model.eval()

    def load_processor(self, folder: Path) -> ClipProcessors:
        vision = _sub_config(folder, "vision")
        with quiet_loading():  # without torchvision, transformers says it uses the PIL processor
            images = AutoImageProcessor.from_pretrained(folder, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        return ClipProcessors(images, tokenizer, (vision.image_size // vision.patch_size) ** 2 + 1)

    def encode(self, processor: ClipProcessors, samples: list[Sample], max_length: int) -> EncodedSamples:
        if any(not s.is_image for s in samples):
            raise InputError("image-classification samples must be images (an 'image' column, a folder or a .zip)")
        pixels = processor.images([open_rgb(s.image) for s in samples], return_tensors="pt")["pixel_values"]  # type: ignore[operator, arg-type]
        mask = torch.ones(len(samples), processor.tokens_per_image, dtype=torch.bool)
        return EncodedSamples({"pixel_values": pixels}, mask)

    def blocks(self, backbone: nn.Module) -> tuple[str, nn.ModuleList]:
        return "vision_model.encoder.layers", backbone.vision_model.encoder.layers

    def run_backbone(self, backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> object:
        return backbone(pixel_values=inputs["pixel_values"].to(next(backbone.parameters()).dtype))

    def is_task_specific(self, name: str) -> bool:
        return False

    def may_omit(self, name: str) -> bool:
        return name.startswith("visual_projection.")  # CLIPVisionModel experts have none: the base's serves

    def class_names(self, samples: list[Sample], given: list[str] | None) -> list[str]:
        names = list(given or []) or label_names(samples)
        if not names:
            raise InputError("integer labels need the task's class names: set 'labels' for this expert")
        return names

    def zero_shot_head(self, class_names: list[str]) -> torch.Tensor:
        """[classes, dim]: each class's prompts through the base's text tower, averaged and normalized."""
        key = (*class_names, "\x00", *self.templates)
        if key not in self._heads:
            if self._text_tower is None:
                self._tokenizer = AutoTokenizer.from_pretrained(self.base_folder, trust_remote_code=False)
                with quiet_loading():
                    self._text_tower = CLIPTextModelWithProjection.from_pretrained(
                        self.base_folder, config=_sub_config(self.base_folder, "text"), use_safetensors=True,
                        trust_remote_code=False).eval()
            rows = []
            with torch.no_grad():
                for name in class_names:
                    prompts = [t.replace("{}", name) for t in self.templates]  # not format(): '{x}' stays text
                    tokens = self._tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
                    embeds = self._text_tower(input_ids=tokens["input_ids"],
                                              attention_mask=tokens["attention_mask"]).text_embeds
                    mean = nn.functional.normalize(embeds, dim=-1).mean(dim=0)
                    rows.append(nn.functional.normalize(mean, dim=-1))
            self._heads[key] = torch.stack(rows)
        return self._heads[key]

    def expert_tower(self, expert: ModelSource) -> nn.Module:
        """The expert's vision tower: the base's, with every tensor the expert stores put in place."""
        dtype, placement = self._placement
        tower = self.load_backbone(self.base_folder, dtype, placement.device, placement.offload)
        with torch.no_grad():
            for name, param in tower.named_parameters():
                param.copy_(expert.get(name).to(param.dtype))
        return tower

    def score(self, backbone: nn.Module | None, expert: ModelSource, processor: ClipProcessors,
              samples: list[Sample], batch_size: int, class_names: list[str] | None = None) -> float:
        names = self.class_names(samples, class_names)
        head = self.zero_shot_head(names)
        targets, note = class_indices([s.label for s in samples], names, "the task")
        if note and note not in self.notes:
            self.notes.append(note)
        tower = backbone if backbone is not None else self.expert_tower(expert)
        param = next(tower.parameters())
        correct = 0
        with torch.no_grad(), blocks_streamed(self.blocks(tower)[1], self._placement[1]):
            for start in range(0, len(samples), batch_size):
                chunk = self.encode(processor, samples[start:start + batch_size], 0).to(param.device)
                embeds = nn.functional.normalize(self.run_backbone(tower, chunk.inputs).image_embeds.float(), dim=-1)
                predicted = (embeds @ head.to(embeds.device).T).argmax(dim=-1).cpu()
                correct += int((predicted == torch.tensor(targets[start:start + batch_size])).sum())
        return correct / len(samples)

    def save_task_head(self, expert: ModelSource, out_dir: Path, class_names: list[str] | None = None) -> None:
        if not class_names:
            return  # no labels and no evaluation samples: no class names, so no head to save
        out_dir.mkdir(parents=True)
        save_file({"weight": self.zero_shot_head(class_names).contiguous()}, str(out_dir / "head.safetensors"))
        (out_dir / "classes.json").write_text(json.dumps({"classes": class_names, "templates": self.templates},
                                                         indent=2), encoding="utf-8")
