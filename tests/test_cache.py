"""The KV cache: rollback semantics of the transformers Cache API and of CachedLM."""

import pytest
import torch
from transformers import DynamicCache

from specdec.cache import CachedLM, cache_bytes


def full_logits(model, seq):
    with torch.inference_mode():
        return model(seq[None]).logits[0]


def test_dynamic_cache_crop_takes_tokens_to_remove(tiny_target):
    """transformers 5: DynamicCache.crop(-n) removes n tokens; a positive count is refused."""
    cache = DynamicCache()
    with torch.inference_mode():
        tiny_target(torch.arange(10)[None], past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 10
    cache.crop(-3)
    assert cache.get_seq_length() == 7
    with pytest.raises(ValueError):
        cache.crop(5)


def test_logits_match_a_fresh_forward_pass(tiny_target):
    seq = torch.randint(0, 256, (30,), generator=torch.Generator().manual_seed(0))
    ref = full_logits(tiny_target, seq)
    lm = CachedLM(tiny_target)
    torch.testing.assert_close(lm.logits(seq[:12], 1), ref[11:12], atol=1e-5, rtol=1e-4)
    assert lm.length == lm.cache.get_seq_length() == 12
    torch.testing.assert_close(lm.logits(seq[:20], 5), ref[15:20], atol=1e-5, rtol=1e-4)
    assert lm.length == lm.cache.get_seq_length() == 20


def test_rollback_then_continue_equals_fresh_pass(tiny_target):
    """Reject the last 4 tokens, continue with other ones: same as never having seen them."""
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, 256, (24,), generator=g)
    lm = CachedLM(tiny_target)
    lm.logits(seq, 1)
    lm.crop(20)
    assert lm.length == lm.cache.get_seq_length() == 20
    assert lm.tokens == seq[:20].tolist()
    other = torch.cat([seq[:20], torch.randint(0, 256, (6,), generator=g)])
    torch.testing.assert_close(lm.logits(other, 6), full_logits(tiny_target, other)[20:], atol=1e-5, rtol=1e-4)
    assert lm.cache.get_seq_length() == 26


def test_implicit_rollback_on_a_diverging_sequence(tiny_target):
    """Given a sequence that differs from the cached one, CachedLM crops to the common prefix."""
    seq = torch.arange(2, 22)
    lm = CachedLM(tiny_target)
    lm.logits(seq, 1)
    alt = seq.clone()
    alt[15] = 200
    torch.testing.assert_close(lm.logits(alt, 2), full_logits(tiny_target, alt)[-2:], atol=1e-5, rtol=1e-4)
    assert lm.common_prefix(alt) == 20 and lm.cache.get_seq_length() == 20


def test_cache_bytes_grow_linearly(tiny_target):
    lm = CachedLM(tiny_target)
    lm.logits(torch.arange(2, 12), 1)
    b10 = cache_bytes(lm.cache)
    lm.logits(torch.arange(2, 22), 1)
    cfg = tiny_target.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert b10 == 10 * per_token
    assert cache_bytes(lm.cache) == 20 * per_token


def test_bad_input(tiny_target):
    lm = CachedLM(tiny_target)
    with pytest.raises(ValueError, match="context"):
        lm.logits(torch.zeros(300, dtype=torch.long), 1)
    with pytest.raises(ValueError):
        lm.logits(torch.zeros(3, dtype=torch.long), 4)
    lm.logits(torch.arange(5), 1)
    with pytest.raises(ValueError):
        lm.crop(6)
