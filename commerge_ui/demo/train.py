"""Trains the demo's experts once and stores each as a compact delta that git can carry (run by hand).

    python -m commerge_ui.demo train [--rank 16] [--steps 200] [--device cpu] [--work DIR] [--reuse]

Each expert is a full fine-tune of all-MiniLM-L6-v2 (every encoder weight and the head; the embedding tables
stay frozen, so the change lives in 36 + 1 weight matrices), seeded per task. Its change to each matrix is then
cut to its top `rank` singular directions and stored as two float16 factors (ΔW ≈ U·V); biases, LayerNorms and
the classifier are stored exactly. The demo's experts are these reconstructions: what the app merges is what
was scored. The full fine-tunes are kept in --work for comparing the two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .build import DEMO_DIR
from .tasks import TASKS, DemoTask, load_split

RECIPE = {"seed": 0, "steps": 200, "batch_size": 16, "lr": 1e-4, "max_length": 64, "frozen": "embeddings"}
EXPERTS_DIR = DEMO_DIR / "experts"


def fine_tune(base: Path, task: DemoTask, seed: int, device: str = "cpu", recipe: dict = RECIPE, log=print):
    """Full fine-tuning (embeddings frozen) on the task's training split; returns the model (on CPU)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    labels = list(task.labels)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model.to(device)
    for param in model.base_model.embeddings.parameters():
        param.requires_grad_(False)
    train = load_split(task, log).train
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe["lr"],
                                  weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    began = time.perf_counter()
    for step in range(recipe["steps"]):
        rows = torch.randint(len(train), (recipe["batch_size"],), generator=generator).tolist()
        batch = tokenizer([train[i].text for i in rows], padding=True, truncation=True,
                          max_length=recipe["max_length"], return_tensors="pt").to(device)
        target = torch.tensor([labels.index(train[i].label) for i in rows], device=device)
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            log(f"  {task.name}: step {step + 1}/{recipe['steps']}, loss {loss.item():.3f}, "
                f"{time.perf_counter() - began:.0f}s")
    return model.to("cpu").eval()


def accuracy(model, tokenizer, task: DemoTask, held: list, batch_size: int = 64) -> float:
    """Accuracy on the task's held-out samples `held` (read once by the caller, not per call)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(held), batch_size):
            chunk = held[start:start + batch_size]
            batch = tokenizer([s.text for s in chunk], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            predicted = model(**batch).logits.argmax(-1)
            correct += sum(int(p) == list(task.labels).index(s.label) for p, s in zip(predicted, chunk))
    return correct / len(held)


def compress(expert: dict[str, torch.Tensor], base: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """ΔW of every changed matrix as float16 factors `name.U` [out, r], `name.V` [r, in]; other changed tensors
    exactly, as `name.delta`; tensors the base lacks (the classifier) whole, as `name`."""
    out = {}
    for name, value in expert.items():
        if name not in base:
            out[name] = value.float().contiguous()
            continue
        delta = value.float() - base[name].float()
        if not delta.any():
            continue  # frozen
        if delta.dim() == 2:
            u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
            root = s[:rank].sqrt()
            out[f"{name}.U"] = (u[:, :rank] * root).half().contiguous()
            out[f"{name}.V"] = (root[:, None] * vh[:rank]).half().contiguous()
        else:
            out[f"{name}.delta"] = delta.contiguous()
    return out


def expand(factors: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The expert's full state dict: base + U·V, base + delta, and the tensors stored whole."""
    state = {k: v.clone() for k, v in base.items()}
    for key, value in factors.items():
        if key.endswith(".U"):
            name = key[:-2]
            state[name] = base[name].float() + value.float() @ factors[f"{name}.V"].float()
        elif key.endswith(".delta"):
            state[key[:-6]] = base[key[:-6]].float() + value.float()
        elif not key.endswith(".V"):
            state[key] = value.float()
    return state


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .build import base_model_folder

    parser = argparse.ArgumentParser(prog="python -m commerge_ui.demo train")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--ranks", default="4,8,16,32,64", help="ranks whose held-out accuracy is reported")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("out/demo-train"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", type=Path, default=EXPERTS_DIR)
    parser.add_argument("--reuse", action="store_true", help="compress the fine-tunes already in --work")
    args = parser.parse_args(argv)
    recipe = {**RECIPE, "steps": args.steps, "rank": args.rank}
    base = base_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(base)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for offset, name in enumerate(TASKS):
        if name not in args.tasks.split(","):
            continue
        task = TASKS[name]
        began = time.perf_counter()
        if args.reuse and (args.work / name / "config.json").is_file():
            print(f"'{name}': reusing the fine-tune in {args.work / name}", flush=True)
            model = AutoModelForSequenceClassification.from_pretrained(args.work / name).eval()
        else:
            print(f"fine-tuning '{name}' ({task.text}; {recipe['steps']} steps)", flush=True)
            model = fine_tune(base, task, seed=recipe["seed"] + offset, device=args.device, recipe=recipe)
            model.save_pretrained(args.work / name)
            tokenizer.save_pretrained(args.work / name)
        expert = {k: v.detach().clone() for k, v in model.state_dict().items()}
        fresh = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(task.labels), id2label=dict(enumerate(task.labels)))
        # Copies: state_dict() shares storage with the parameters that load_state_dict overwrites below.
        base_state = {k: v.clone() for k, v in fresh.state_dict().items() if not k.startswith("classifier.")}
        held = load_split(task, print).evaluation
        row = {"full": accuracy(model, tokenizer, task, held), "seconds": round(time.perf_counter() - began, 1)}
        for rank in sorted({int(r) for r in args.ranks.split(",")} | {args.rank}):
            factors = compress(expert, base_state, rank)
            fresh.load_state_dict(expand(factors, base_state))
            row[f"rank {rank}"] = accuracy(fresh.eval(), tokenizer, task, held)
            if rank == args.rank:
                metadata = {"task": name, "labels": json.dumps(list(task.labels)), "recipe": json.dumps(recipe),
                            "heldout_accuracy": str(row[f"rank {rank}"])}
                save_file(factors, str(args.out / f"{name}.safetensors"), metadata=metadata)
        summary[name] = row
        print(f"'{name}': {json.dumps(row)}", flush=True)
    (args.work / "accuracy.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


def read_expert(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A stored expert's tensors and its class names."""
    return load_file(str(path)), json.loads(expert_metadata(path)["labels"])


def expert_metadata(path: Path) -> dict[str, str]:
    """What train.py recorded with a stored expert: task, labels, recipe, held-out accuracy."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


if __name__ == "__main__":
    main()
