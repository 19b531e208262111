"""BERT-like encoders fine-tuned for sequence classification; each expert keeps its own head."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from ..errors import InputError
from ..offload import Placement, place_backbone
from ..samples import Sample, class_indices
from ..sources import ModelSource
from .base import EncodedSamples

# The pooler sits after the merged encoder and is fine-tuned with the classifier, so it travels with the head.
TASK_SPECIFIC_PREFIXES = ("pooler.",)
MAX_EVAL_LENGTH = 512
transformers_logging.disable_progress_bar()


class TextClassification:
    name = "text-classification"
    metric = "accuracy"
    higher_is_better = True
    part = "encoder"
    needs_labels = True
    sink_tokens = 0

    def __init__(self) -> None:
        self._classifier_of: tuple[Path, nn.Module] | None = None  # one at a time bounds memory
        self.notes: list[str] = []

    def load_backbone(self, folder: Path, dtype: torch.dtype, device: torch.device, offload: bool = False) -> nn.Module:
        # The merge keeps an offloaded backbone's blocks on the host; scoring builds the expert's classifier
        # whole on the device (encoders this family serves are small).
        model = AutoModel.from_pretrained(folder, dtype=dtype, use_safetensors=True, trust_remote_code=False)
        place_backbone(model, self.blocks(model)[1], Placement(device, offload))
        return model.eval()

    def load_processor(self, folder: Path):
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)

    def encode(self, processor, samples: list[Sample], max_length: int) -> EncodedSamples:
        batch = processor([s.text for s in samples], padding="longest", truncation=True,
                          max_length=max_length, return_tensors="pt")
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return EncodedSamples(inputs, inputs["attention_mask"].bool())

    def blocks(self, backbone: nn.Module) -> tuple[str, nn.ModuleList]:
        return "encoder.layer", backbone.encoder.layer

    def run_backbone(self, backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> object:
        return backbone(**inputs)

    def is_task_specific(self, name: str) -> bool:
        return name.startswith(TASK_SPECIFIC_PREFIXES)

    def may_omit(self, name: str) -> bool:
        return False

    def _classifier(self, expert_folder: Path, fresh: bool) -> nn.Module:
        """The expert's classifier; `fresh` reloads it so that its own encoder is in place."""
        if fresh or self._classifier_of is None or self._classifier_of[0] != expert_folder:
            model = AutoModelForSequenceClassification.from_pretrained(
                expert_folder, use_safetensors=True, trust_remote_code=False)
            self._classifier_of = (expert_folder, model.eval())
        return self._classifier_of[1]

    def score(self, backbone: nn.Module | None, expert: ModelSource, processor, samples: list[Sample],
              batch_size: int, class_names: list[str] | None = None) -> float:
        expert_folder = expert.weights.folder
        classifier = self._classifier(expert_folder, fresh=backbone is None)
        if backbone is not None:
            param = next(backbone.parameters())
            classifier.to(param.device, param.dtype)
            merged = {k: v for k, v in backbone.state_dict().items() if not self.is_task_specific(k)}
            rows = backbone.get_input_embeddings().weight.shape[0]
            if classifier.get_input_embeddings().weight.shape[0] != rows:  # an expert that added tokens (vocab.py)
                classifier.resize_token_embeddings(rows, mean_resizing=False)
            classifier.base_model.load_state_dict(merged, strict=False)
        param = next(classifier.parameters())
        names = [str(classifier.config.id2label[i]) for i in range(classifier.config.num_labels)]
        indices, note = class_indices([s.label for s in samples], names, str(expert_folder))
        if note and note not in self.notes:
            self.notes.append(note)
        labels = torch.tensor(indices)
        # Batches of similar length: real text varies (6 to 200 tokens here), and padding to each batch's
        # longest text tripled the work.
        order = sorted(range(len(samples)), key=lambda i: len(samples[i].text))
        correct = 0
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                rows = order[start:start + batch_size]
                chunk = self.encode(processor, [samples[i] for i in rows], MAX_EVAL_LENGTH).to(param.device)
                logits = classifier(**chunk.inputs).logits
                correct += int((logits.argmax(-1).cpu() == labels[rows]).sum())
        return correct / len(samples)

    def save_task_head(self, expert: ModelSource, out_dir: Path, class_names: list[str] | None = None) -> None:
        head = {}
        for name in expert.weights.names():
            inside = name[len(expert.prefix):] if name.startswith(expert.prefix) else None
            if inside is None or self.is_task_specific(inside):
                head[name] = expert.weights.get(name).contiguous()
        out_dir.mkdir(parents=True)
        save_file(head, str(out_dir / "head.safetensors"))
        AutoConfig.from_pretrained(expert.weights.folder).save_pretrained(out_dir)


def load_task_model(merged_dir: str | Path, task: str) -> nn.Module:
    """A ready classifier for `task`: the merged encoder under `merged_dir` with that task's saved head."""
    from safetensors.torch import load_file

    merged_dir = Path(merged_dir)
    head_dir = merged_dir / "heads" / task
    if not head_dir.is_dir():
        raise InputError(f"{merged_dir}: no head for task '{task}'")
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(head_dir))
    backbone = AutoModel.from_pretrained(merged_dir, use_safetensors=True)
    model.base_model.load_state_dict(backbone.state_dict(), strict=False)
    unexpected = model.load_state_dict(load_file(str(head_dir / "head.safetensors")), strict=False).unexpected_keys
    if unexpected:
        raise InputError(f"{head_dir}: head tensors do not fit the model: {', '.join(unexpected[:3])}")
    return model.eval()
