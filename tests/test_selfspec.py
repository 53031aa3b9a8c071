"""Weight bytes of quantised copies, checked against bitsandbytes' own tensors, and acceptance
along a text (specdec.selfspec)."""

import logging

import pytest
import torch

from specdec import roofline as rl
from specdec.quant import quantized_copy
from specdec.registry import model_config
from specdec.sampling import GREEDY, SamplingParams
from specdec.selfspec import (acceptance_along, decode_weight_bytes, layer_matrix_shapes, matrix_bytes,
                              stored_weight_bytes)

from .helpers import tiny_llama

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def test_matrix_bytes_by_hand():
    # 128 x 320 = 40960 weights
    assert matrix_bytes(128, 320, "fp32") == 4 * 40960
    assert matrix_bytes(128, 320, "fp16") == 2 * 40960
    assert matrix_bytes(128, 320, "int8") == 40960 + 4 * 128  # one float32 scale per output row
    assert matrix_bytes(128, 320, "nf4") == 40960 / 2 + 4 * 640  # one float32 absmax per 64 weights
    assert matrix_bytes(1, 65, "nf4") == 32.5 + 4 * 2  # a partial block still has a scale


@pytest.mark.parametrize("bad", [("q4", 2, 2), ("nf4", 0, 3), ("int8", 2, 1.5)])
def test_matrix_bytes_rejects_bad_input(bad):
    fmt, o, i = bad
    with pytest.raises(ValueError):
        matrix_bytes(o, i, fmt)


def test_layer_shapes_cover_every_matrix_of_a_layer():
    cfg = model_config("llama-3-8b")
    s = rl.model_shape(cfg)
    assert sum(o * i for o, i in layer_matrix_shapes(cfg)) == s.attn_matrix_params + s.mlp_matrix_params
    with pytest.raises(ValueError, match="not supported"):
        layer_matrix_shapes(model_config("gpt2"))


def test_float_formats_match_the_roofline():
    cfg = model_config("llama-3-8b")
    assert decode_weight_bytes(cfg, "fp16") == rl.decode_step_cost(cfg, bytes_per_param=2).weight_bytes
    assert decode_weight_bytes(cfg, "fp32") == 2 * decode_weight_bytes(cfg, "fp16")
    with pytest.raises(ValueError):
        decode_weight_bytes(cfg, "nf4", unquantised="int8")
    with pytest.raises(ValueError):
        decode_weight_bytes(cfg, "fp8")


def test_quantised_bytes_order():
    cfg = model_config("llama-3-8b")
    fp16, int8, nf4 = (decode_weight_bytes(cfg, f) for f in ("fp16", "int8", "nf4"))
    assert nf4 < int8 < fp16
    # the untied 128k x 4096 output head stays in fp16, so nf4 is well above a quarter of fp16
    head = cfg.vocab_size * cfg.hidden_size * 2
    assert nf4 > fp16 / 4 + 0.9 * head * 3 / 4


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_formula_equals_bitsandbytes_storage(fmt):
    # A tied model reads every stored weight in a decode step, so the formula must equal what
    # bitsandbytes actually stores, scales included.
    model = tiny_llama(n_layers=2)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    quantised = quantized_copy(model, fmt)
    assert stored_weight_bytes(quantised) == decode_weight_bytes(model.config, fmt, unquantised="fp32")
    assert stored_weight_bytes(model) == decode_weight_bytes(model.config, "fp32")


def test_acceptance_along_same_model_is_one(tiny_target):
    ids = torch.randint(tiny_target.config.vocab_size, (20,), generator=torch.Generator().manual_seed(0))
    a = acceptance_along(tiny_target, tiny_target, ids, start=5, params=SamplingParams(temperature=1.0))
    assert a.shape == (15,)
    assert torch.allclose(a, torch.ones(15), atol=1e-5)


def test_acceptance_along_scores_a_batch_as_each_text_alone(tiny_target):
    other = tiny_llama(seed=1, n_layers=1)
    ids = torch.randint(tiny_target.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(2))
    batch = acceptance_along(other, tiny_target, ids, start=4)
    assert batch.shape == (3, 12)
    for row, text in zip(batch, ids):
        assert torch.allclose(row, acceptance_along(other, tiny_target, text, start=4), atol=1e-5)


def test_acceptance_along_greedy_is_argmax_agreement(tiny_target):
    other = tiny_llama(seed=1, n_layers=1)
    ids = torch.randint(tiny_target.config.vocab_size, (30,), generator=torch.Generator().manual_seed(1))
    a = acceptance_along(other, tiny_target, ids, start=1, params=GREEDY)
    with torch.no_grad():
        agree = tiny_target(ids[None]).logits[0, :-1].argmax(-1) == other(ids[None]).logits[0, :-1].argmax(-1)
    assert torch.equal(a, agree.float())
    sampled = acceptance_along(other, tiny_target, ids, start=1)
    assert ((sampled > 0) & (sampled < 1)).all()
    both = acceptance_along(other, tiny_target, ids, start=1, params=[SamplingParams(temperature=1.0), GREEDY])
    assert torch.equal(both[0], sampled) and torch.equal(both[1], a)
    with pytest.raises(ValueError):
        acceptance_along(other, tiny_target, ids, params=[])
    with pytest.raises(ValueError):
        acceptance_along(other, tiny_target, ids, start=len(ids))
