"""Tests of specdec.quant on the real SmolLM2-135M-Instruct (``slow``: it loads the model)."""

import pytest
import torch

from specdec.loaders import load_smollm2, smollm2_dir
from specdec.prompts import encode_prompt
from specdec.quant import quantized_copy


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@pytest.mark.slow
def test_nf4_copy_of_smollm2_runs_on_cpu(smollm2):
    import bitsandbytes as bnb

    model, tokenizer = smollm2
    nf4 = quantized_copy(smollm2_dir(), "nf4")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in nf4.modules())
    assert nf4.get_memory_footprint() < 0.5 * model.get_memory_footprint()
    ids = encode_prompt(tokenizer, "Write one sentence about the sea.")[None]
    with torch.no_grad():
        q, p = nf4(ids).logits[0, -1], model(ids).logits[0, -1]
    assert torch.isfinite(q).all()
    # a close copy, not noise: its logits track the full-precision model's
    assert torch.corrcoef(torch.stack([q, p]))[0, 1] > 0.8


# --- weight-only copies on torch's CPU kernels ----------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_linear_computes_with_its_own_dequantized_weight(bits):
    from specdec import quant

    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48, bias=True)
    layer = quant.WeightOnlyLinear(lin, bits, group_size=64)
    if bits == 8:
        q, scale = quant.int8_weights(lin.weight)
        weight = q.float() * scale[:, None]
    else:
        q, sz = quant.int4_weights(lin.weight, 64)
        weight = quant.dequantize_int4(q, sz, 64)
    x = torch.randn(2, 5, 128)
    assert torch.allclose(layer(x), x @ weight.T + lin.bias, atol=1e-4)
    # and the dequantized weight is close to the original: the step of the grid, no more
    step = (lin.weight.abs().amax(1, keepdim=True) / 127) if bits == 8 else None
    err = (weight - lin.weight).abs()
    assert (err <= step / 2 + 1e-7).all() if bits == 8 else err.max() < 0.1 * lin.weight.abs().max()


def test_weight_only_copy_leaves_the_source_alone_and_stores_fewer_bytes(tiny_target):
    from specdec import quant
    from specdec.selfspec import stored_weight_bytes

    before = {k: v.clone() for k, v in tiny_target.state_dict().items()}
    eight, four = quant.weight_only_copy(tiny_target, 8), quant.weight_only_copy(tiny_target, 4)
    assert all(torch.equal(before[k], v) for k, v in tiny_target.state_dict().items())
    for model in (eight, four):
        kinds = {type(m) for m in model.modules()}
        assert quant.WeightOnlyLinear in kinds and torch.nn.Linear not in kinds
    full = stored_weight_bytes(tiny_target)
    assert stored_weight_bytes(four) < stored_weight_bytes(eight) < full
    assert isinstance(quant.weight_only_copy(tiny_target, 4, head=False).lm_head, torch.nn.Linear)
    ids = torch.tensor([[5, 9, 17, 5, 9]])
    with torch.inference_mode():
        ref, got = tiny_target(ids).logits, eight(ids).logits
    assert (got - ref).abs().max() < 0.2 * ref.abs().max()


def test_weight_only_copy_drafts_exactly(tiny_target):
    from specdec import quant
    from specdec.decoding import autoregressive_generate, speculative_generate
    from specdec.drafters import ModelDrafter

    prompt = torch.tensor([5, 9, 17, 5, 9, 17, 5, 9])
    reference = autoregressive_generate(tiny_target, prompt, 24).tokens
    for bits in (8, 4):
        drafter = ModelDrafter(quant.weight_only_copy(tiny_target, bits))
        for k in (1, 4):
            assert speculative_generate(tiny_target, drafter, prompt, 24, k).tokens == reference


def test_weight_only_copy_bad_input(tiny_target):
    from specdec import quant

    with pytest.raises(ValueError, match="bits"):
        quant.weight_only_copy(tiny_target, 3)
    with pytest.raises(ValueError, match="group_size"):
        quant.weight_only_copy(tiny_target, 4, group_size=0)
    with pytest.raises(ValueError, match="multiple"):
        quant.int4_weights(torch.randn(4, 10), 64)
