"""Benchmark (not a test): our merges against the peers' own code on the same experts and samples.

    pip install mergekit==0.1.5 fusion-bench==0.2.33     # in a separate environment is fine
    python benchmarks/peer_check.py [CONFIG] [--samples 64]
    python benchmarks/peer_check.py --timing [--repeats 3]   # RegMean's wall time against FusionBench's

CONFIG is a text-classification config (default: the demo). Our run uses bias: average and float64
statistics, the peers' conventions. Compared, per method, over every encoder tensor:
- average             vs mergekit `linear` (its merge_batch, weights 1, normalized);
- task arithmetic     vs mergekit `task_arithmetic` (its merge_group, normalize off, same λ);
- TIES                vs mergekit `ties` (its merge_group, same density, normalize off, same λ);
- RegMean             vs FusionBench `merging_with_regmean_weights`, given Gram matrices collected here with
                        plain forward hooks (each expert on its own seeded calibration subset, padding excluded,
                        divided by the token count; FusionBench's RegMean keeps one Gram per nn.Linear);
- CoM                 vs the naive re-run-the-prefix CoM of commerge_ui/reference.py (no peer implements CoM).
A peer that is not installed is reported as skipped.

--timing instead times RegMean, ours against FusionBench's, on the same experts and samples and the same CPU,
interleaved `--repeats` times: ours is the engine's merge (reading each expert's block from its files, the
statistics, the solves and the shift measurement), theirs the Gram pass (each expert's forward with
FusionBench's hook on every nn.Linear, float32, as `regmean_merging` collects them) plus
`merging_with_regmean_weights`, with every expert already loaded. Both in float32, bias averaged.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModel, BertForSequenceClassification

from commerge_ui.api import run_merge
from commerge_ui.config import load_config
from commerge_ui.demo import DEMO_CONFIG, ensure_demo
from commerge_ui.families.text_classification import TextClassification
from commerge_ui.reference import BERT_GROUPS, averaged, naive, relative_difference
from commerge_ui.samples import read_samples

FAMILY = TextClassification()


def max_abs(ours: dict, reference: dict) -> float:
    return max(float((ours[n].double() - reference[n].double()).abs().max()) for n in reference if n in ours)


def mergekit_rules(base: dict, experts: list[dict], options) -> dict[str, dict]:
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorBatch, TensorEntry, TensorGroup
    from mergekit.merge_methods.linear import linear_merge

    k = len(experts)
    out: dict[str, dict] = {"average": {}, "task_arithmetic": {}, "ties": {}}
    for name, tensor in base.items():
        tensors = [e[name] for e in experts]
        out["average"][name] = linear_merge.merge_batch(TensorBatch(tensors=tuple(tensors)),
                                                        weight=torch.ones(tensor.shape[0], k), normalize=True)
        group = TensorGroup((TensorEntry("base", tensor, True), *(TensorEntry(i, t) for i, t in enumerate(tensors))))
        shared = {"weight": {i: 1.0 for i in range(k)}, "normalize": False, "rescale": False, "int8_mask": False,
                  "lambda": options.task_lambda}
        out["task_arithmetic"][name] = registry.get("task_arithmetic").merge_group(group, **shared)
        out["ties"][name] = registry.get("ties").merge_group(
            group, density={i: options.ties_density for i in range(k)}, **shared)
    return out


def gram_matrices(model: torch.nn.Module, batch: dict, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """X^T X / tokens per nn.Linear of the encoder: over `mask`'s real tokens in float64, or, with no mask, as
    FusionBench's regmean_merging hook collects them (every token, padding too, in the model's dtype)."""
    grams, handles = {}, []

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith("encoder.layer."):
            def hook(m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]) if mask is None else args[0][mask].double()
                grams[name] = x.T @ x / x.shape[0]
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return grams


def timing(config, samples: int, repeats: int) -> None:
    from fusion_bench.method.regmean.regmean import merging_with_regmean_weights

    options = config.options.model_copy(update={"calibration_samples": samples, "bias": "average",
                                                "gram_dtype": "float32", "ridge_floor": 0.0})
    config = config.model_copy(update={"methods": ["regmean"], "options": options})
    encoders = [BertForSequenceClassification.from_pretrained(e.model).bert.eval() for e in config.experts]
    processor = FAMILY.load_processor(Path(config.base))
    batches = [FAMILY.encode(processor, read_samples(spec.calibration, samples, options.seed),
                             options.max_length).inputs for spec in config.experts]
    params = {n: [dict(e.named_parameters())[n].detach() for e in encoders]
              for n, _ in encoders[0].named_parameters() if n.startswith("encoder.layer.")}
    ours, theirs = [], []
    run_merge(config, device="cpu")  # warm: the experts' scores are cached, the files are in the page cache
    for _ in range(repeats):
        ours.append(run_merge(config, device="cpu").methods["regmean"].seconds)
        began = time.perf_counter()
        grams = [gram_matrices(m, b) for m, b in zip(encoders, batches)]
        merging_with_regmean_weights(params, grams, reduce_non_diagonal_ratio=options.alpha)
        theirs.append(time.perf_counter() - began)
    mine, peer = statistics.median(ours), statistics.median(theirs)
    print(f"{len(config.experts)} experts, {samples} calibration samples each, CPU ({torch.get_num_threads()} "
          f"threads), median of {repeats}")
    print("| RegMean | seconds (each run) | median |")
    print("|---|---|---|")
    print(f"| commerge_ui (merge with shift) | {', '.join(f'{t:.2f}' for t in ours)} | {mine:.2f} |")
    print(f"| FusionBench (Gram pass + merge) | {', '.join(f'{t:.2f}' for t in theirs)} | {peer:.2f} |")
    print(f"ours / FusionBench: {mine / peer:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(DEMO_CONFIG))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--timing", action="store_true", help="time RegMean against FusionBench's instead")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if Path(args.config).resolve() == DEMO_CONFIG:
        ensure_demo()
    config = load_config(args.config)
    if args.timing:
        timing(config, args.samples, args.repeats)
        return
    # ridge_floor 0: RegMean exactly as FusionBench solves it (our default adds a floor, docs/method.md §5)
    options = config.options.model_copy(update={"calibration_samples": args.samples, "bias": "average",
                                                "gram_dtype": "float64", "ridge_floor": 0.0})
    methods = ["average", "task_arithmetic", "ties", "regmean", "com"]
    config = config.model_copy(update={"methods": methods, "options": options})
    with tempfile.TemporaryDirectory() as tmp:
        run_merge(config, out_dir=Path(tmp) / "out", save=methods, device="cpu")
        ours = {m: {k: v for k, v in AutoModel.from_pretrained(Path(tmp) / "out" / m).state_dict().items()
                    if not k.startswith("pooler.")} for m in methods}
    base_model = AutoModel.from_pretrained(config.base).eval()
    base = {k: v for k, v in base_model.state_dict().items() if k in ours["average"]}
    encoders = [BertForSequenceClassification.from_pretrained(e.model).bert.eval() for e in config.experts]
    experts = [{k: v for k, v in m.state_dict().items() if k in base} for m in encoders]
    processor = FAMILY.load_processor(Path(config.base))
    batches = []
    for spec in config.experts:
        encoded = FAMILY.encode(processor, read_samples(spec.calibration, args.samples, options.seed),
                                options.max_length)
        batches.append((encoded.inputs, encoded.token_mask))

    rows = []
    try:
        peers = mergekit_rules(base, experts, options)
        for m in ("average", "task_arithmetic", "ties"):
            rows.append((m, "mergekit 0.1.5", max_abs(ours[m], peers[m]), relative_difference(ours[m], peers[m], "")))
    except ImportError as err:
        rows.append(("average, task arithmetic, TIES", f"mergekit skipped ({err.name} not installed)", None, None))
    try:
        from fusion_bench.method.regmean.regmean import merging_with_regmean_weights

        grams = [gram_matrices(m, b, mask) for m, (b, mask) in zip(encoders, batches)]
        params = {n: [e[n].double() for e in experts] for n in base}
        peer = merging_with_regmean_weights(params, grams, reduce_non_diagonal_ratio=options.alpha)
        rows.append(("regmean", "FusionBench", max_abs(ours["regmean"], peer),
                     relative_difference(ours["regmean"], peer, "")))
    except ImportError as err:
        rows.append(("regmean", f"FusionBench skipped ({err.name} not installed)", None, None))
    reference = averaged(encoders, AutoModel.from_pretrained(config.base).eval())
    naive("com", reference, encoders, "encoder.layer", len(base_model.encoder.layer), BERT_GROUPS, batches,
          "average", options.alpha)
    naive_state = {k: v for k, v in reference.state_dict().items() if k in base}
    rows.append(("com", "naive CoM (reference.py)", max_abs(ours["com"], naive_state),
                 relative_difference(ours["com"], naive_state, "")))

    print(f"{len(config.experts)} experts, {args.samples} calibration samples each, bias: average, float64 statistics")
    print("| method | compared with | max abs difference | relative (Frobenius) |")
    print("|---|---|---|---|")
    for method, peer, worst, rel in rows:
        print(f"| {method} | {peer} | {'' if worst is None else f'{worst:.1e}'} | "
              f"{'' if rel is None else f'{rel:.1e}'} |")


if __name__ == "__main__":
    main()
