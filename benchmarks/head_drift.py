"""Where a causal-LM merge's drift lands (not a test): the last block's output, the LM head's input, the next-token
distribution.

    python benchmarks/head_drift.py [--config examples/smollm2-domains.yaml] [--samples 32] [--seed 0]
                                    [--variants com,com_ridge,com_chain,regmean] [--out out/head-drift]

The study's shift is measured at every block's output, in the residual stream. A language model reads that
stream through its final norm and LM head, so two merges with the same residual shift can score very differently
(on the LM demo at seed 0, CoM with the α-shrink and with a ridge: 0.309 and 0.311 at the last block's output on
the held-out texts, perplexity 139.8 and 279.5). For each variant this merges once (saved under --out; an
existing folder is reused), then runs each domain's expert and the merged model over that domain's evaluation
texts (the ones the run scores: the config's `evaluation_samples`, drawn by the seed, cut as the family cuts them
for scoring) and reports, over the tokens the statistics use (padding and the first token left out):
- perplexity (the merged model's and the expert's, on the next token, as the run scores it);
- residual shift: ‖H_merged − H_expert‖ / ‖H_expert‖ at the final norm's input (the last block's output);
- head shift: the same at the final norm's output, which the LM head reads;
- KL(expert ‖ merged) and KL(merged ‖ expert) of the next-token distributions, and both distributions' entropy,
  mean per token (the first weighs where the expert puts its mass; perplexity also pays for the tail);
- the share of the merged model's extra NLL (over the expert's) that its worst 1 % of tokens carry, and the
  largest extra NLL of one token (nats);
- the share of the tokens the expert gave under 1 % probability, and the share of the extra NLL they carry;
- the share of the expert's residual energy, and of the residual error, in its three largest channels.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from commerge_ui.api import run_merge
from commerge_ui.config import MergeConfig, load_config
from commerge_ui.families.causal_lm import MAX_EVAL_LENGTH
from commerge_ui.samples import read_samples
from study import at  # the study's own way to set methods and options (this folder is on sys.path when run)

VARIANTS: dict[str, tuple[str, dict]] = {
    "com": ("com", {}),
    "com_ridge": ("com", {"com_regularization": "ridge"}),
    "com_chain": ("com_chain", {}),
    "regmean": ("regmean", {}),
    "regmean_plusplus": ("regmean_plusplus", {}),
}
BATCH = 16
RARE = 0.01  # "a token the expert finds unlikely": it gave the token under 1 % probability


def merged_folder(config: MergeConfig, name: str, samples: int, seed: int, out: Path) -> Path:
    """The variant's merged model, merged and saved once."""
    method, options = VARIANTS[name]
    folder = out / f"{name}-{samples}-{seed}"
    if not (folder / method / "config.json").is_file():
        run_merge(at(config, [method], samples, seed, heldout_shift=False, **options), out_dir=folder, save=[method],
                  device="cpu")
    return folder / method


def passes(model, batches: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: the final norm's input and output and the log-probabilities, on every position."""
    seen: dict[str, torch.Tensor] = {}
    hook = model.model.norm.register_forward_hook(lambda _, args, out: seen.update(x=args[0], y=out))
    result = []
    try:
        with torch.no_grad():
            for batch in batches:
                logits = model(**batch).logits.float()
                result.append((seen["x"].float(), seen["y"].float(), torch.log_softmax(logits, -1)))
    finally:
        hook.remove()
    return result


def measure(expert: list, merged: list, batches: list[dict]) -> dict[str, float]:
    err_x = err_y = ref_x = ref_y = kl = reverse = entropy = expert_entropy = nll = expert_nll = 0.0
    tokens = 0
    channel_energy = channel_error = None
    gaps: list[torch.Tensor] = []  # per predicted token: the merged model's NLL minus the expert's
    expert_logp: list[torch.Tensor] = []  # per predicted token: the expert's log-probability of it
    for (xe, ye, pe), (xm, ym, pm), batch in zip(expert, merged, batches):
        keep = batch["attention_mask"].bool().clone()
        keep[:, 0] = False  # the first token: SmolLM2's attention sink, left out as the statistics leave it out
        dx, dy = (xm - xe)[keep], (ym - ye)[keep]
        err_x += dx.pow(2).sum().item()
        ref_x += xe[keep].pow(2).sum().item()
        err_y += dy.pow(2).sum().item()
        ref_y += ye[keep].pow(2).sum().item()
        energy, error = xe[keep].pow(2).sum(0), dx.pow(2).sum(0)
        channel_energy = energy if channel_energy is None else channel_energy + energy
        channel_error = error if channel_error is None else channel_error + error
        kl += (pe.exp() * (pe - pm)).sum(-1)[keep].sum().item()
        reverse += (pm.exp() * (pm - pe)).sum(-1)[keep].sum().item()
        entropy -= (pm.exp() * pm).sum(-1)[keep].sum().item()
        expert_entropy -= (pe.exp() * pe).sum(-1)[keep].sum().item()
        # next-token loss: position t predicts token t+1 (the last real position predicts nothing)
        predicts = batch["attention_mask"][:, 1:].bool()
        target = batch["input_ids"][:, 1:]
        nll -= pm[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)[predicts].sum().item()
        expert_nll -= pe[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)[predicts].sum().item()
        gaps.append((pe[:, :-1] - pm[:, :-1]).gather(-1, target.unsqueeze(-1)).squeeze(-1)[predicts])
        expert_logp.append(pe[:, :-1].gather(-1, target.unsqueeze(-1)).squeeze(-1)[predicts])
        tokens += int(predicts.sum())
    top = channel_energy.topk(3).indices
    gap = torch.cat(gaps)
    worst = gap.topk(max(1, len(gap) // 100)).values  # the 1 % of tokens the merge hurts most
    rare = torch.cat(expert_logp) < math.log(RARE)  # tokens the expert itself gave under 1 % of its mass
    positions = float(sum(int(b["attention_mask"][:, 1:].sum()) for b in batches))  # the tokens kept above
    return {"perplexity": math.exp(nll / tokens), "expert_perplexity": math.exp(expert_nll / tokens),
            "residual_shift": math.sqrt(err_x / ref_x), "head_shift": math.sqrt(err_y / ref_y),
            "kl": kl / positions, "reverse_kl": reverse / positions, "entropy": entropy / positions,
            "expert_entropy": expert_entropy / positions,
            "worst1pct_share": (worst.sum() / gap.sum()).item(), "worst_gap": worst[0].item(),
            "rare_tokens": rare.float().mean().item(), "rare_share": (gap[rare].sum() / gap.sum()).item(),
            "top3_energy": (channel_energy[top].sum() / channel_energy.sum()).item(),
            "top3_error": (channel_error[top].sum() / channel_error.sum()).item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/smollm2-domains.yaml")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="com,com_ridge,com_chain,regmean")
    parser.add_argument("--out", type=Path, default=Path("out/head-drift"))
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    config = load_config(args.config)
    folders = {n: merged_folder(config, n, args.samples, args.seed, args.out) for n in names}
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"  # as the family scores: real tokens at positions 0..n-1
    options = config.options
    results: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    for spec in config.experts:
        texts = [s.text for s in read_samples(spec.evaluation, options.evaluation_samples, args.seed)]
        batches = [dict(tokenizer(texts[i:i + BATCH], return_tensors="pt", padding=True, truncation=True,
                                  max_length=MAX_EVAL_LENGTH)) for i in range(0, len(texts), BATCH)]
        expert = passes(AutoModelForCausalLM.from_pretrained(spec.model, dtype=torch.float32).eval(), batches)
        for name, folder in folders.items():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            results[name][spec.name] = measure(expert, passes(model, batches), batches)
            print(f"{spec.name} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name][spec.name].items()),
                  flush=True)
    (args.out / f"measures-{args.samples}-{args.seed}.json").write_text(json.dumps(results, indent=1))
    keys = ["perplexity", "expert_perplexity", "residual_shift", "head_shift", "kl", "reverse_kl", "entropy",
            "expert_entropy", "worst1pct_share", "worst_gap", "rare_tokens", "rare_share", "top3_energy",
            "top3_error"]
    print(f"\n## {args.samples} calibration texts, seed {args.seed}: mean over the domains "
          "(perplexity: geometric mean)\n")
    print("| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name in names:
        cells = []
        for k in keys:
            values = [r[k] for r in results[name].values()]
            geometric = k.endswith("perplexity")
            mean = math.exp(sum(map(math.log, values)) / len(values)) if geometric else sum(values) / len(values)
            cells.append(f"{mean:.1f}" if k.endswith("perplexity") else f"{mean:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
