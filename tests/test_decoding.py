"""The loops: greedy identity with the target, exact sampling distribution, bookkeeping, bad input."""

import pytest
import torch

import specdec.decoding as decoding
from specdec.decoding import autoregressive_generate, speculative_generate
from specdec.drafters import ModelDrafter, NGramDrafter
from specdec.metrics import GenerationResult, read_jsonl, write_jsonl
from specdec.sampling import SamplingParams

from .helpers import N_NEW, sequence_chisquare, tiny_llama

KS = [1, 2, 4, 8]


@pytest.fixture(scope="module")
def prompt():
    # Repetitive text gives the n-gram drafter something to find.
    return torch.tensor([5, 9, 17, 5, 9, 17, 5, 9, 40, 41, 42, 5, 9])


@pytest.fixture(scope="module")
def greedy_reference(tiny_target, prompt):
    ar = autoregressive_generate(tiny_target, prompt, 40)
    with torch.inference_mode():
        hf = tiny_target.generate(prompt[None], max_new_tokens=40, min_new_tokens=40, do_sample=False)
    assert ar.tokens == hf[0, len(prompt):].tolist(), "autoregressive loop differs from HF generate()"
    return ar.tokens


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("drafter_name", ["same", "other", "ngram"])
def test_greedy_speculative_equals_target(tiny_target, tiny_drafts, prompt, greedy_reference, drafter_name, k):
    drafter = NGramDrafter() if drafter_name == "ngram" else ModelDrafter(tiny_drafts[drafter_name])
    out = speculative_generate(tiny_target, drafter, prompt, 40, k)
    assert out.tokens == greedy_reference
    if drafter_name == "same":  # the target drafting for itself: every token accepted
        assert out.acceptance_rate == 1.0


def test_stop_tokens_and_zero_tokens(tiny_target, prompt, greedy_reference):
    stop = greedy_reference[7]
    first = greedy_reference.index(stop)
    for out in (autoregressive_generate(tiny_target, prompt, 40, stop_ids={stop}),
                speculative_generate(tiny_target, ModelDrafter(tiny_llama(seed=0)), prompt, 40, 4, stop_ids={stop})):
        assert out.tokens == greedy_reference[: first + 1]
    assert autoregressive_generate(tiny_target, prompt, 0).tokens == []
    assert speculative_generate(tiny_target, NGramDrafter(), prompt, 0, 4).tokens == []


def test_bookkeeping_and_jsonl_round_trip(tiny_target, tiny_drafts, prompt, tmp_path):
    out = speculative_generate(tiny_target, ModelDrafter(tiny_drafts["other"]), prompt, 30, 4,
                               params=SamplingParams(temperature=1.0), seed=3)
    assert out.n_new == 30 == len(out.token_latencies_s)
    assert len(out.round_latencies_s) == len(out.drafted_per_round) == len(out.accepted_per_round)
    # every round emits its accepted tokens plus one; the first token comes from the prefill
    assert 1 + sum(a + 1 for a in out.accepted_per_round) == 30
    assert abs(sum(out.token_latencies_s) - out.total_s) < out.total_s * 0.2 + 1e-3
    assert out.ttft_s == out.token_latencies_s[0] and out.decode_s > 0
    assert {"prefill", "draft", "verify", "sample"} <= out.phase_s.keys()
    assert 0 <= out.acceptance_rate <= 1
    path = write_jsonl(tmp_path / "r.jsonl", [out, out])
    back = read_jsonl(path)
    assert back[0] == out and len(back) == 2
    with pytest.raises(ValueError, match="missing"):
        GenerationResult.from_dict({"method": "x"})


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)],
                         ids=["greedy", "sampled"])
@pytest.mark.parametrize("drafter_name", ["other", "ngram"])
def test_recorded_proposals_match_accepted_counts_and_tokens(tiny_target, tiny_drafts, prompt, params,
                                                              drafter_name):
    drafter = NGramDrafter() if drafter_name == "ngram" else ModelDrafter(tiny_drafts[drafter_name])
    out = speculative_generate(tiny_target, drafter, prompt, 40, 4, params, seed=2)
    assert len(out.proposed_per_round) == len(out.drafted_per_round) == len(out.accepted_per_round)
    pos = 1  # the first token comes from the prefill
    for proposed, d, n in zip(out.proposed_per_round, out.drafted_per_round, out.accepted_per_round):
        assert len(proposed) == d and all(isinstance(t, int) for t in proposed)
        assert proposed[:n] == out.tokens[pos : pos + n]  # the accepted prefix is what was emitted
        if n < d:  # a rejected token is never the target's correction (the residual gives it 0)
            assert out.tokens[pos + n] != proposed[n]
        pos += n + 1
    assert pos == out.n_new == 40
    assert sum(map(len, out.proposed_per_round)) == sum(out.drafted_per_round)
    if drafter_name == "other":
        assert any(n < d for n, d in zip(out.accepted_per_round, out.drafted_per_round))


def test_files_written_before_proposals_were_recorded_still_load(tiny_target, prompt, tmp_path):
    out = speculative_generate(tiny_target, NGramDrafter(), prompt, 10, 2)
    old = {k: v for k, v in out.to_dict().items() if k != "proposed_per_round"}
    back = GenerationResult.from_dict(old)
    assert back.proposed_per_round == [] and back.accepted_per_round == out.accepted_per_round
    assert read_jsonl(write_jsonl(tmp_path / "r.jsonl", [out]))[0].proposed_per_round == out.proposed_per_round


def test_acceptance_by_position():
    r = GenerationResult("speculative", [], 1, 1.0, 0.1, [], drafted_per_round=[3, 3, 3, 2],
                         accepted_per_round=[3, 1, 0, 2])
    # position 0 reached 4 times, kept 3; position 1 reached by 3 (a>=1), kept by 2; position 2: reached 2 of them
    # that drafted >2 and kept >=2 (only the first), kept 1
    assert r.acceptance_by_position == [0.75, 2 / 3, 1.0]
    assert r.acceptance_rate == 6 / 11 and r.mean_accepted == 1.5


def test_bad_input(tiny_target, prompt):
    d = NGramDrafter()
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match="k"):
            speculative_generate(tiny_target, d, prompt, 5, k)
    with pytest.raises(ValueError, match="context"):
        speculative_generate(tiny_target, d, torch.zeros(250, dtype=torch.long), 10, 2)
    with pytest.raises(ValueError, match="context"):
        autoregressive_generate(tiny_target, torch.zeros(257, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="non-empty"):
        autoregressive_generate(tiny_target, torch.tensor([], dtype=torch.long), 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        autoregressive_generate(tiny_target, prompt, -1)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)


# --- the full loop samples exactly from the target ------------------------------------------

def test_sampled_speculative_sequences_follow_the_target(small_vocab_pair):
    target, draft = small_vocab_pair
    prompt, params = torch.tensor([0, 3, 2]), SamplingParams(temperature=1.0)
    drafter = ModelDrafter(draft)
    pvalue = sequence_chisquare(
        lambda s: speculative_generate(target, drafter, prompt, N_NEW, 2, params, seed=s).tokens, target, prompt, params)
    assert pvalue > 1e-3


def test_negative_control_always_accept_fails(small_vocab_pair, monkeypatch):
    """The same check must reject a loop that keeps every drafted token."""
    target, draft = small_vocab_pair
    prompt, params = torch.tensor([0, 3, 2]), SamplingParams(temperature=1.0)

    def always_accept(p, q, d, generator=None):
        from specdec.sampling import sample
        return torch.tensor(d.shape[-1]), sample(p[..., -1, :], generator)

    monkeypatch.setattr(decoding, "verify", always_accept)
    drafter = ModelDrafter(draft)
    pvalue = sequence_chisquare(
        lambda s: speculative_generate(target, drafter, prompt, N_NEW, 2, params, seed=s).tokens, target, prompt, params)
    assert pvalue < 1e-6


def test_ngram_drafter_takes_the_longest_match_latest_or_earliest():
    seq = [1, 2, 3, 7, 8, 9, 2, 3, 5, 6, 0, 2, 3]  # "2 3" occurs twice before its last occurrence
    assert NGramDrafter().propose(seq, 2)[0].tolist() == [5, 6]
    assert NGramDrafter(prefer="earliest").propose(seq, 2)[0].tolist() == [7, 8]
    assert NGramDrafter(max_ngram=1).propose([4, 5, 4, 6, 4], 1)[0].tolist() == [6]
    assert NGramDrafter().propose([1, 2, 3], 2)[0].tolist() == []
    with pytest.raises(ValueError, match="prefer"):
        NGramDrafter(prefer="first")
