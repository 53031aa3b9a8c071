"""The batched cache and loop: each row's logits and greedy tokens as alone, rollback by row,
holes compacted, rows leaving, the sampled distribution exact, bad input."""

import pytest
import torch

import specdec.batchdecoding as batchdecoding
from specdec.batchcache import BatchedLM, batch_mask
from specdec.batchdecoding import batch_generate
from specdec.cache import CachedLM
from specdec.decoding import autoregressive_generate
from specdec.drafters import ModelDrafter, NGramDrafter
from specdec.metrics import tokens_per_round
from specdec.sampling import SamplingParams

from .helpers import N_NEW, N_RUNS, sequence_chisquare


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (5, 9, 3, 12)]
    rows[1] = rows[1][:4] * 3 + [1]  # repetitive: prompt lookup finds something
    return rows


@pytest.fixture(scope="module")
def alone(tiny_target, prompts):
    return [autoregressive_generate(tiny_target, torch.tensor(p), 30).tokens for p in prompts]


def close_to_alone(model, seqs, out):
    for seq, rows in zip(seqs, out):
        ref = CachedLM(model).logits(seq, n_last=len(rows))
        torch.testing.assert_close(rows, ref, atol=1e-4, rtol=1e-4)


def test_batch_mask_hides_holes_and_keeps_causality():
    valid = torch.tensor([[True, False, True, True, True], [False, False, True, False, True]])
    allowed = batch_mask(valid, 2) == 0  # queries are columns 3 and 4
    assert allowed[0, 0, 0].tolist() == [True, False, True, True, False]
    assert allowed[0, 0, 1].tolist() == [True, False, True, True, True]
    # row 1's query at column 3 is padding: it sees the valid past and itself only
    assert allowed[1, 0, 0].tolist() == [False, False, True, True, False]
    assert allowed[1, 0, 1].tolist() == [False, False, True, False, True]


def test_rows_grow_and_roll_back_by_different_amounts(tiny_target, prompts):
    lm = BatchedLM(tiny_target, len(prompts), capacity=4)  # small: the buffers must grow
    close_to_alone(tiny_target, prompts, lm.logits(prompts, 1))
    drafts = [[1, 2, 3, 4], [], [7, 7], [9]]
    seqs = [p + d for p, d in zip(prompts, drafts)]
    out = lm.logits(seqs, [len(d) + 1 for d in drafts])
    assert [len(x) for x in out] == [5, 1, 3, 2]
    close_to_alone(tiny_target, seqs, out)
    for b, keep in enumerate([1, 0, 2, 0]):  # each row keeps a different share of its draft
        lm.crop(b, len(prompts[b]) + keep)
    assert lm.lengths == [len(p) + k for p, k in zip(prompts, [1, 0, 2, 0])]
    assert lm.holes > 0
    seqs = [p + d[:keep] + [11, 12] for p, d, keep in zip(prompts, drafts, [1, 0, 2, 0])]
    close_to_alone(tiny_target, seqs, lm.logits(seqs, 3))
    width, holes = lm.width, lm.holes
    lm.compact()
    assert lm.width == max(lm.lengths) < width and lm.holes < holes
    seqs = [s + [5] for s in seqs]
    close_to_alone(tiny_target, seqs, lm.logits(seqs, 2))
    lm.keep_rows([3, 1])
    seqs = [seqs[3] + [6, 6], seqs[1] + [4]]
    close_to_alone(tiny_target, seqs, lm.logits(seqs, [3, 2]))


@pytest.mark.parametrize("drafter", ["none", "ngram", "same", "other"])
def test_greedy_rows_equal_each_prompt_alone(tiny_target, tiny_drafts, prompts, alone, drafter):
    d = None if drafter == "none" else NGramDrafter() if drafter == "ngram" else ModelDrafter(tiny_drafts[drafter])
    out = batch_generate(tiny_target, prompts, 30, drafter=d, k=3, compact_at=0.3)
    assert [r.tokens for r in out] == alone
    if drafter == "same":  # an identical draft is always right
        assert all(tokens_per_round(r.drafted_per_round, r.accepted_per_round) > 3 for r in out)
    for r in out:
        assert r.meta["batch"] == len(prompts)
        assert sum(r.accepted_per_round) + len(r.accepted_per_round) + 1 == len(r.tokens)
        assert r.total_s >= r.ttft_s > 0


def test_rows_stop_on_their_own(tiny_target, prompts, alone):
    stop = alone[0][10]
    out = batch_generate(tiny_target, prompts, 30, drafter=NGramDrafter(), k=4, stop_ids={stop})
    for r, ref in zip(out, alone):
        cut = ref.index(stop) + 1 if stop in ref else len(ref)
        assert r.tokens == ref[:cut]
    assert len(out[0].tokens) == 11
    assert [r.tokens for r in batch_generate(tiny_target, prompts, 0)] == [[]] * len(prompts)


def test_sampled_batch_follows_the_target(small_vocab_pair):
    target, draft = small_vocab_pair
    prompt, params = [0, 3, 2], SamplingParams(temperature=1.0)
    rows = 200
    samples = []
    for s in range(N_RUNS // rows):  # a batch of copies of one prompt: independent samples
        out = batch_generate(target, [prompt] * rows, N_NEW, drafter=ModelDrafter(draft), k=2, params=params,
                             seed=s * rows)
        samples += [r.tokens for r in out]
    assert len(set(map(tuple, samples[:rows]))) > 10
    assert sequence_chisquare(lambda i: samples[i], target, torch.tensor(prompt), params) > 1e-3


def test_negative_control_batch_always_accept_fails(small_vocab_pair, monkeypatch):
    target, draft = small_vocab_pair
    prompt, params = [0, 3, 2], SamplingParams(temperature=1.0)

    def always_accept(p, q, d, generator=None):
        from specdec.sampling import sample
        return torch.tensor(d.shape[-1]), sample(p[..., -1, :], generator)

    monkeypatch.setattr(batchdecoding, "verify", always_accept)
    rows, samples = 200, []
    for s in range(N_RUNS // rows):
        out = batch_generate(target, [prompt] * rows, N_NEW, drafter=ModelDrafter(draft), k=2, params=params,
                             seed=s * rows)
        samples += [r.tokens for r in out]
    assert sequence_chisquare(lambda i: samples[i], target, torch.tensor(prompt), params) < 1e-6


def test_bad_input(tiny_target, prompts):
    with pytest.raises(ValueError, match="k"):
        batch_generate(tiny_target, prompts, 5, drafter=NGramDrafter(), k=0)
    with pytest.raises(ValueError, match="non-empty"):
        batch_generate(tiny_target, [[1, 2], []], 5)
    with pytest.raises(ValueError, match="non-empty"):
        batch_generate(tiny_target, [], 5)
    with pytest.raises(ValueError, match="context"):
        batch_generate(tiny_target, [[1] * 250], 10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        batch_generate(tiny_target, prompts, -1)
    lm = BatchedLM(tiny_target, 2)
    with pytest.raises(ValueError, match="one per row"):
        lm.logits([[1, 2]], 1)
    with pytest.raises(ValueError, match="n_last"):
        lm.logits([[1, 2], [3]], 2)
    with pytest.raises(ValueError, match="batch"):
        BatchedLM(tiny_target, 0)
    with pytest.raises(ValueError, match="rows"):
        lm.keep_rows([0, 0])
