"""Diagnostic (not a test): which calibration texts hold a massive activation past their first token, and each seed's
calibration draw without them, for every expert and so for every method alike.

    python benchmarks/outliers.py --config examples/smollm2-domains.yaml --out out/clean --samples 32 --seeds 0,1,2
    python benchmarks/study.py --config out/clean/seed-0/config.yaml --seeds 0 --samples 32 \
        --parts grid,drift --out out/clean-study-0        # and so on per seed

A causal LM's first token is its attention sink and carries huge activations; the engine leaves it out of the
statistics (`sink_tokens`). Some texts hold a second such token further on (SmolLM2: " am" in "i am more
uptight…" reaches norm 2,359 at the input of block 11's down_proj, where the median token is near 6). Those
tokens dominate a Gram matrix. The base model runs over every text of each calibration pool; a text is flagged when
a token past the sink has an input to a `--layer` linear layer more than `--ratio` times that layer's median
token norm (the median over every pool's tokens, one yardstick for all). On SmolLM2's down_proj the ratios fall
in two groups: up to 24× (block 2's common words, in hundreds of texts) and from 45× up (9 texts in 1,280, at
blocks 11 and 28), hence the default 30. Each seed's folder holds that seed's draw of `--samples` texts per
task less the flagged ones, so that a cleaned run differs from the original run of its seed by those texts only;
the rule is one for all texts and all methods, and changes what is merged on, never how.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import yaml

from commerge_ui.api import with_family_defaults
from commerge_ui.config import load_config
from commerge_ui.engine import statistics_mask
from commerge_ui.families import detect_family
from commerge_ui.samples import read_samples
from commerge_ui.sources import resolve_model


def input_norms(model: torch.nn.Module, layer: str, encoded, batch_size: int = 32) -> torch.Tensor:
    """[layers, rows, tokens]: each token's input norm at every linear layer named `*.{layer}`, in model order."""
    rows, width = encoded.token_mask.shape
    modules = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] == layer]
    norms = torch.zeros(len(modules), rows, width)
    current: dict[str, slice] = {}

    def keep(index: int):
        def hook(_module, args) -> None:
            values = torch.linalg.vector_norm(args[0].float(), dim=-1)
            norms[index, current["rows"], :values.shape[1]] = values
        return hook

    handles = [m.register_forward_pre_hook(keep(i)) for i, m in enumerate(modules)]
    if not handles:
        raise SystemExit(f"no linear layer named '{layer}' in the model")
    try:
        with torch.no_grad():
            for start in range(0, rows, batch_size):
                current["rows"] = slice(start, min(start + batch_size, rows))
                model(**{k: v[current["rows"]] for k, v in encoded.inputs.items()}, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ratio", type=float, default=30.0)
    parser.add_argument("--layer", default="down_proj")
    parser.add_argument("--samples", type=int, default=32, help="calibration texts per task, as the study draws them")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    config = load_config(args.config)
    base = resolve_model(config.base)
    family = detect_family(base, config.family)
    config = with_family_defaults(config, family)
    options = config.options
    processor = family.load_processor(base)
    model = family.load_backbone(base, torch.float32, torch.device("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load(Path(args.config).read_text())
    pools, encoded, norms, counted = {}, {}, {}, {}
    for expert in config.experts:
        pools[expert.name] = read_samples(expert.calibration, 10 ** 9, 0)  # every text, in the file's order
        encoded[expert.name] = family.encode(processor, pools[expert.name], options.max_length)
        norms[expert.name] = input_norms(model, args.layer, encoded[expert.name])
        counted[expert.name] = statistics_mask(encoded[expert.name].token_mask, options.sink_tokens)
    # Each layer's typical token: the median over every pool's counted tokens (one yardstick for all experts).
    medians = torch.stack([torch.cat([norms[t][k][counted[t]] for t in norms]).median()
                           for k in range(len(next(iter(norms.values()))))])
    print(f"median input norm per '{args.layer}' layer: " + " ".join(f"{float(m):.1f}" for m in medians))
    torch.save({"norms": norms, "counted": counted, "medians": medians}, args.out / "norms.pt")
    flagged: dict[str, dict[str, dict]] = {}  # task -> text -> where its outlier is
    for name in pools:
        ratio = (norms[name] / medians[:, None, None]).amax(dim=0).masked_fill(~counted[name], 0)  # [rows, tokens]
        flagged[name] = {}
        for i, sample in enumerate(pools[name]):
            if float(ratio[i].max()) > args.ratio:
                position = int(ratio[i].argmax())
                layer = int((norms[name][:, i, position] / medians).argmax())
                flagged[name][sample.text] = {
                    "token": processor.decode(encoded[name].inputs["input_ids"][i, position]), "position": position,
                    "layer": layer, "norm": float(norms[name][layer, i, position]), "ratio": float(ratio[i].max())}
        print(f"{name}: {len(flagged[name])}/{len(pools[name])} texts flagged: "
              + ", ".join(f"{f['token']!r} {f['ratio']:.0f}× at layer {f['layer']}" for f in flagged[name].values()),
              flush=True)
    (args.out / "flagged.json").write_text(json.dumps(flagged, indent=1), encoding="utf-8")
    # Paired: each seed's own draw of `--samples` texts per task, less the flagged ones (so a seed's cleaned run
    # differs from its original run by those texts only).
    folder = Path(args.config).resolve().parent
    for seed in [int(s) for s in args.seeds.split(",")]:
        target = (args.out / f"seed-{seed}").resolve()
        target.mkdir(exist_ok=True)
        seeded = copy.deepcopy(spec)
        seeded["base"] = str((folder / spec["base"]).resolve())
        dropped = []
        for expert, entry in zip(config.experts, seeded["experts"]):
            draw = read_samples(expert.calibration, args.samples, seed)
            kept = [x.text for x in draw if x.text not in flagged[expert.name]]
            dropped += [f"{expert.name} {flagged[expert.name][x.text]['token']!r}" for x in draw
                        if x.text in flagged[expert.name]]
            (target / f"{expert.name}_calibration.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
            entry["calibration"] = str(target / f"{expert.name}_calibration.txt")
            for key in ("model", "evaluation"):
                entry[key] = str((folder / entry[key]).resolve())
        (target / "config.yaml").write_text(yaml.safe_dump(seeded, sort_keys=False), encoding="utf-8")
        print(f"seed {seed}: {len(dropped)} of its {args.samples}-text draws flagged ({', '.join(dropped) or 'none'});"
              f" wrote {target / 'config.yaml'}")


if __name__ == "__main__":
    main()
