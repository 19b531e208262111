"""Offload (commerge_ui/offload.py, #15): blocks and streams kept on the host, one block at a time on the device.

On a CPU the host is the device, so these tests check that the offloaded path (load, merge one pass and in
micro-batches, score with blocks brought per forward, save) gives the same run as the plain one, and that it
brings each block where and when it should. tests/test_cuda.py checks the device memory it saves on a GPU.
"""

import pytest
import torch
from tiny_families import make_lm_setup

from commerge_ui import api, engine, offload
from commerge_ui.cli import build_parser
from commerge_ui.config import parse_config
from commerge_ui.errors import InputError
from commerge_ui.offload import Placement, blocks_streamed, pick_placement
from commerge_ui.sources import SafetensorsWeights

CPU = torch.device("cpu")
METHODS = ["com", "regmean_plusplus", "ties"]  # between them, every read the engine makes


def _run(setup, out, batch):
    config = setup.config(methods=METHODS)
    config["options"] = {**config["options"], "merge_batch": batch}
    return api.run_merge(parse_config(config), out_dir=out, save=METHODS, device="cpu")


@pytest.mark.parametrize("batch", [0, 5])
def test_an_offloaded_run_equals_the_plain_one(tmp_path, monkeypatch, batch):
    setup = make_lm_setup(tmp_path / "models", "llama", layers=3, noise=0.5)
    plain = _run(setup, tmp_path / "plain", batch)

    held = []  # every block the engine brings to the device, in order
    bring = offload.on_device

    def spy(block, placement):
        held.append(block)
        return bring(block, placement)

    monkeypatch.setattr(engine, "on_device", spy)
    streamed = []
    real_streamed = offload.blocks_streamed

    def spy_streamed(blocks, placement):
        streamed.append(placement.offload)
        return real_streamed(blocks, placement)

    monkeypatch.setattr("commerge_ui.families.causal_lm.blocks_streamed", spy_streamed)
    # what pick_placement gives on a GPU with offload on
    monkeypatch.setattr(api, "pick_placement", lambda device, mode, size: Placement(device, True))
    off = _run(setup, tmp_path / "off", batch)

    assert off.offload and not plain.offload
    # each block once per activation merge (TIES included: its shift is measured), in network order
    assert len(held) == 3 * len(METHODS) and len({id(b) for b in held}) == 3
    # every score (3 experts, 3 bases, 3 tasks per method) ran with the blocks brought per forward
    assert streamed == [True] * (6 + 3 * len(METHODS))
    for method in METHODS:
        assert off.methods[method].scores == plain.methods[method].scores, method
        assert off.methods[method].shift == plain.methods[method].shift, method
        a, b = SafetensorsWeights(tmp_path / "plain" / method), SafetensorsWeights(tmp_path / "off" / method)
        for name in a.names():
            assert torch.equal(a.get(name), b.get(name)), (method, name)


def test_blocks_streamed_moves_each_block_around_its_forward_and_leaves_no_hook():
    blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    moves = []
    for index, block in enumerate(blocks):
        block.to = lambda device, index=index, block=block: (moves.append((index, str(device))), block)[1]
    with blocks_streamed(blocks, Placement(CPU, True)):
        x = torch.ones(1, 4)
        for block in blocks:
            x = block(x)
    assert moves == [(i, "cpu") for i in range(3) for _ in range(2)]  # to the device, then back, per block
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in blocks)
    moves.clear()
    with blocks_streamed(blocks, Placement(CPU, False)):
        blocks[0](x)
    assert moves == []  # not offloaded: nothing moves


def test_placement_is_chosen_by_mode_and_refuses_unknown_ones():
    for mode in ("auto", "on", "off"):
        assert pick_placement(CPU, mode, 10 ** 12) == Placement(CPU, False)  # on a CPU the host is the device
    with pytest.raises(InputError, match="unknown offload 'sometimes'"):
        pick_placement(CPU, "sometimes", 0)
    assert Placement(torch.device("cuda"), True).store == CPU
    assert Placement(CPU, False).store == CPU
    args = build_parser().parse_args(["merge", "c.yaml", "--out", "o", "--offload", "on"])
    assert args.offload == "on"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["merge", "c.yaml", "--out", "o", "--offload", "sometimes"])


def test_model_bytes_reads_the_headers(tmp_path):
    setup = make_lm_setup(tmp_path, "llama", n_experts=1)
    weights = SafetensorsWeights(setup.base)
    count = sum(weights.get(n).numel() for n in weights.names())
    assert api.model_bytes(weights, torch.float32) == 4 * count
    assert api.model_bytes(weights, torch.bfloat16) == 2 * count
