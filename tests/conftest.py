import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The tests run tiny models, for which a second thread costs more than it gains.
torch.set_num_threads(1)


def tiny_llama(n_layers=4, vocab=256, seed=0, init=0.2):
    """A tiny random Llama whose logits are peaked enough for greedy decoding to be stable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=init, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_target():
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_drafts(tiny_target):
    """Three drafts of the tiny target: itself (alpha = 1), an unrelated model, its first layer."""
    from specdec.drafters import ModelDrafter

    same = tiny_llama(seed=0)
    other = tiny_llama(seed=1, n_layers=1)
    return {"same": same, "other": other}
