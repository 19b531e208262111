"""Shift on sentences the merge never saw: the last block's output, merged model vs each expert, on eval texts.

    commerge merge assets/demo/demo.yaml --out out/demo --save com,regmean,average --force
    python scripts/heldout_shift.py assets/demo/demo.yaml out/demo com regmean average

The engine's shift is measured on the calibration tokens the merge was fitted on; this asks whether the
correction generalises. Text-classification configs only (the demo's); padding tokens are left out.
"""

import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from commerge_ui.config import load_config
from commerge_ui.samples import read_samples


def last_hidden(model: torch.nn.Module, texts: list[str], tokenizer, max_length: int) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return hidden[batch["attention_mask"].bool()]


def main(config_path: str, out_dir: str, *methods: str) -> None:
    transformers_logging.set_verbosity_error()  # the experts' heads are not loaded, on purpose
    transformers_logging.disable_progress_bar()
    config = load_config(config_path)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    max_length = config.options.max_length
    merged = {m: AutoModel.from_pretrained(Path(out_dir) / m).eval() for m in methods}
    print("task".ljust(10) + "".join(m.rjust(10) for m in methods))
    totals = [0.0] * len(methods)
    for expert in config.experts:
        texts = [s.text for s in read_samples(expert.evaluation, need_labels=True)]
        exact = last_hidden(AutoModel.from_pretrained(expert.model).eval(), texts, tokenizer, max_length)
        shifts = [float(torch.linalg.vector_norm(last_hidden(merged[m], texts, tokenizer, max_length) - exact)
                        / torch.linalg.vector_norm(exact)) for m in methods]
        print(expert.name.ljust(10) + "".join(f"{s:10.3f}" for s in shifts))
        totals = [t + s for t, s in zip(totals, shifts)]
    print("mean".ljust(10) + "".join(f"{t / len(config.experts):10.3f}" for t in totals))


if __name__ == "__main__":
    main(*sys.argv[1:])
