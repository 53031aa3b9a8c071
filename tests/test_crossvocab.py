"""Cross-vocabulary speculative decoding (chapter 8), checked.

* Token strings: byte-level BPE (``Ġ``) and SentencePiece (``▁``, ``<0xHH>``) tokens become the
  same bytes, every tokenizer round-trips text, the mapping pairs exactly the tokens that spell
  the same bytes, and the draft's own token sequence always spells the committed text.
* Exactness of token-level intersection: the analytic output law equals the target (TV <= 1e-6),
  the batched sampler passes a chi-square test on 100,000 rounds, and two broken variants
  (the restricted distribution not renormalised; always accepting) fail it.
* Greedy identity of both methods with the target's own greedy decoding.
* The hub pairs with different vocabularies fail cleanly offline.
"""

import json

import numpy as np
import pytest
import torch

from specdec import crossvocab as cv
from specdec import loaders, pairs, registry, sampling, synthetic
from specdec.decoding import autoregressive_generate, speculative_generate
from specdec.sampling import GREEDY, SamplingParams

N_ROUNDS = 100_000
PASS = 1e-3  # a correct sampler passes unless p < PASS (fixed seeds)
FAIL = 1e-6  # a wrong sampler must be rejected this strongly

TEXTS = [
    'def add(a, b):\n    """Return a + b."""\n    return a+b  # done',
    "Naïve café owners ünïcode 😀 — “quotes” and\ttabs\n\n  spaces",
    "x" * 40 + " 12345 67.89e-3",
]


@pytest.fixture(scope="module")
def codecs():
    return {name: cv.TokenCodec(cv.load_tokenizer(name), name=name) for name in cv.TOKENIZERS}


@pytest.fixture(scope="module")
def tiny():
    """A random target over the 1,000-token vocabulary and a random draft over a 600-token one."""
    kw = dict(n_layers=2, draft_layers=1, hidden=64, n_heads=4, n_kv_heads=2)
    _, target = synthetic.synthetic_pair(0.0, vocab_size=1000, seed=0, **kw)
    _, draft = synthetic.synthetic_pair(0.0, vocab_size=600, seed=1, **kw)
    return target, draft


def prompt_ids(codec, text="Summarise the following passage in three sentences: The tutorial"):
    return torch.tensor(codec.encode_text(text))


# ============================================================ tokens as bytes


@pytest.mark.parametrize("name", list(cv.TOKENIZERS))
@pytest.mark.parametrize("text", TEXTS)
def test_every_tokenizer_round_trips_text_and_bytes(codecs, name, text):
    codec = codecs[name]
    assert codec.decode_bytes(codec.encode_text(text)) == text.encode()
    # a cut inside a multi-byte character still round-trips, through single-byte tokens
    data = text.encode()
    for cut in range(1, len(data), 7):
        assert codec.decode_bytes(codec.encode_bytes(data[:cut])) == data[:cut]


def test_byte_level_and_sentencepiece_markers_mean_the_same_text(codecs):
    bl, sp = codecs["target-1000"], codecs["draft-600-sp"]
    assert bl.style == "byte-level" and sp.style == "sentencepiece"
    bl_tok, sp_tok = bl.backend.get_vocab(), sp.backend.get_vocab()
    assert "Ġthe" in bl_tok and "▁the" in sp_tok
    assert bl.keys[bl_tok["Ġthe"]] == sp.keys[sp_tok["▁the"]] == b" the"
    assert sp.keys[sp_tok["<0x0A>"]] == b"\n" and sp.keys[sp_tok["<0xC3>"]] == b"\xc3"
    mapping = cv.VocabMapping.from_codecs(sp, bl)
    assert int(mapping.draft_to_target[sp_tok["▁the"]]) == bl_tok["Ġthe"]
    # SentencePiece spells some bytes twice ("\n" and "<0x0A>"): only one of them is canonical
    assert sp.key_to_id[b"\n"] == sp_tok["<0x0A>"] or sp.key_to_id[b"\n"] not in range(3, 259)
    assert sp.n_tokens < sp.vocab_size


@pytest.mark.parametrize("name", list(cv.TOKENIZERS))
def test_mapping_pairs_exactly_the_tokens_with_the_same_bytes(codecs, name):
    d, t = codecs[name], codecs["target-1000"]
    m = cv.VocabMapping.from_codecs(d, t)
    shared_keys = set(d.key_to_id) & set(t.key_to_id)
    assert m.n_shared == len(shared_keys) > 0
    for key in shared_keys:
        di, ti = d.key_to_id[key], t.key_to_id[key]
        assert int(m.draft_to_target[di]) == ti and int(m.target_to_draft[ti]) == di
    # the two directions are inverse on the intersection, and -1 elsewhere
    sd = m.shared_draft_ids
    assert torch.equal(m.target_to_draft[m.draft_to_target[sd]], sd)
    assert int((m.target_to_draft >= 0).sum()) == m.n_shared
    assert 0 < m.jaccard <= min(m.draft_coverage, m.target_coverage) <= 1


def test_same_corpus_smaller_vocabulary_is_a_subset(codecs):
    """BPE learns merges in order, so 600 tokens trained on the same text are the first 600 of 1,000."""
    m = cv.VocabMapping.from_codecs(codecs["draft-600"], codecs["target-1000"])
    assert m.draft_coverage == 1.0 and m.n_shared == 600
    assert cv.VocabMapping.from_codecs(codecs["draft-600-code"], codecs["target-1000"]).draft_coverage < 1.0


def test_subset_restrict_and_to_target(codecs):
    m = cv.VocabMapping.from_codecs(codecs["draft-600-prose"], codecs["target-1000"])
    half = m.subset(0.5, seed=3)
    assert half.n_shared == round(0.5 * m.n_shared)
    assert set(half.shared_draft_ids.tolist()) <= set(m.shared_draft_ids.tolist())
    logits = torch.randn(3, 600, generator=torch.Generator().manual_seed(0))
    q = sampling.probs_from_logits(half.restrict_logits(logits))
    qt = half.to_target(q)
    assert qt.shape == (3, 1000)
    torch.testing.assert_close(qt.sum(-1), torch.ones(3))
    assert (qt[:, half.target_to_draft < 0] == 0).all()
    with pytest.raises(ValueError, match="mapping was built for"):
        half.restrict_logits(torch.randn(1000))
    with pytest.raises(ValueError, match="share between 0 and 1"):
        m.subset(1.5)


def test_committed_tokenizers_are_reproducible():
    """The README's recipe rebuilds the committed file token for token."""
    domains, size, _ = cv.TOKENIZERS["target-1000"]
    rebuilt = cv.train_bpe_tokenizer(cv._training_texts(domains), size)
    assert rebuilt.get_vocab() == cv.load_tokenizer("target-1000").get_vocab()
    readme = (cv.data_dir() / "README.md").read_text()
    assert "python -m specdec.crossvocab" in readme


def test_smollm2_tokenizer_overlap_is_measurable(codecs):
    tok = loaders.load_smollm2_tokenizer()
    s = cv.TokenCodec(tok, 49152, name="SmolLM2")
    m = cv.VocabMapping.from_codecs(codecs["target-1000"], s)
    assert s.keys[tok.convert_tokens_to_ids("Ġthe")] == b" the"
    assert 0.5 < m.draft_coverage <= 1 and m.target_coverage < 0.05


# ============================================================ the draft's view of the text


@pytest.mark.parametrize("name", ["draft-600-code", "draft-600-sp"])
def test_draft_sequence_spells_the_committed_text(codecs, tiny, name):
    t_codec, d_codec = codecs["target-1000"], codecs[name]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec)
    drafter = cv.TLIDrafter(tiny[1] if name != "draft-600-sp" else cv.TeacherDraftLM(tiny[0], d_codec, t_codec), m, d_codec, t_codec)
    full = torch.tensor(t_codec.encode_text(TEXTS[1] + TEXTS[0]))
    # tokens without a twin in the draft's vocabulary must occur, or the test checks little
    assert (m.target_to_draft[full] < 0).any()
    g = torch.Generator().manual_seed(0)
    for step in range(40):  # grow, roll back, grow again, as the speculative loop does
        n = int(torch.randint(1, len(full) + 1, (1,), generator=g))
        d_ids = drafter.draft_ids(full[:n])
        assert d_codec.decode_bytes(d_ids) == t_codec.decode_bytes(full[:n])
        fresh = cv._DraftSync(m, d_codec, t_codec)(full[:n])
        assert d_codec.decode_bytes(fresh) == t_codec.decode_bytes(full[:n])
    # target tokens that have a twin map one to one
    shared_only = full[m.target_to_draft[full] >= 0]
    drafter.reset()
    assert torch.equal(drafter.draft_ids(shared_only), m.target_to_draft[shared_only])


# ============================================================ exactness of token-level intersection


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=50, top_p=0.9), GREEDY], ids=str)
def test_tli_output_law_is_exactly_the_target(codecs, tiny, params):
    target, draft = tiny
    t_codec = codecs["target-1000"]
    tvs, alphas = [], []
    for name in ("draft-600-code", "draft-600-sp"):
        d_codec = codecs[name]
        m = cv.VocabMapping.from_codecs(d_codec, t_codec)
        for lm in (draft if name == "draft-600-code" else None, cv.TeacherDraftLM(target, d_codec, t_codec, noise=0.5)):
            if lm is None:
                continue
            drafter = cv.TLIDrafter(lm, m, d_codec, t_codec)
            seq = torch.tensor(t_codec.encode_text(TEXTS[0] + TEXTS[1]))
            logits = target(seq[None]).logits[0].detach()
            for j in range(8, len(seq), 3):
                p = sampling.probs_from_logits(logits[j - 1], params).double()
                q = drafter.next_distribution(seq[:j], params).double()
                torch.testing.assert_close(q.sum(), torch.tensor(1.0, dtype=torch.double), atol=1e-5, rtol=0)
                assert (q[m.target_to_draft < 0] == 0).all(), "q must live on the intersection"
                tvs.append(sampling.total_variation(sampling.output_distribution(p, q), p).item())
                alphas.append(sampling.acceptance_probability(p, q).item())
    assert max(tvs) <= 1e-6
    assert len(tvs) > 30 and max(alphas) - min(alphas) > 0.3  # a varied set of pairs, not one case


def test_acceptance_under_several_settings_shares_the_passes(codecs, tiny):
    """tli_acceptances gives what tli_acceptance gives setting by setting, from one draft step
    per position instead of one per position and setting."""
    target, _ = tiny
    t_codec, d_codec = codecs["target-1000"], codecs["draft-600-sp"]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec)
    lm = cv.TeacherDraftLM(target, d_codec, t_codec, noise=0.5)
    calls = []
    logits = lm.logits
    lm.logits = lambda *a, **kw: calls.append(1) or logits(*a, **kw)
    drafter = cv.TLIDrafter(lm, m, d_codec, t_codec)
    seqs = [torch.tensor(t_codec.encode_text(text)) for text in TEXTS[:2]]
    settings = [SamplingParams(), GREEDY, SamplingParams(temperature=0.7, top_k=50)]
    start = 6
    positions = sum(len(seq) - start for seq in seqs)
    together = cv.tli_acceptances(target, drafter, seqs, start, settings)
    assert len(calls) == positions
    for params, res in zip(settings, together):
        alone = cv.tli_acceptance(target, drafter, seqs, start, params)
        assert res.keys() == alone.keys() == {"alpha", "bound"}
        assert len(res["alpha"]) == positions
        for key in res:
            torch.testing.assert_close(torch.from_numpy(res[key]), torch.from_numpy(alone[key]), rtol=0, atol=1e-12)
    assert len(calls) == positions * (1 + len(settings))
    assert not np.allclose(together[0]["alpha"], together[1]["alpha"])  # the settings differ


@pytest.fixture(scope="module")
def exactness_case(codecs, tiny):
    """One position where the restriction matters: a teacher-derived draft over a vocabulary
    that keeps only half of the intersection, so a quarter of the draft's mass is dropped."""
    target, _ = tiny
    t_codec, d_codec = codecs["target-1000"], codecs["draft-600-code"]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec).subset(0.5, seed=0)
    drafter = cv.TLIDrafter(cv.TeacherDraftLM(target, d_codec, t_codec, noise=0.5), m, d_codec, t_codec)
    seq = prompt_ids(t_codec)
    p = sampling.probs_from_logits(target(seq[None]).logits[0, -1].detach())
    q = drafter.next_distribution(seq)
    full = sampling.probs_from_logits(drafter.lm.logits(drafter.draft_ids(seq))[0])
    kept_mass = float(full[m.shared_draft_ids].sum())
    return p, q, kept_mass


def unnormalised_law(p, q, z):
    """Output law when the token is drawn from q but verify is told z * q (z < 1)."""
    qz = z * q
    accept = q * torch.clamp(p / qz.clamp_min(1e-300), max=1.0)
    residual = (p - qz).clamp_min(0)
    return accept + (1 - accept.sum()) * residual / residual.sum()


def test_tli_chi_square_and_negative_controls(exactness_case):
    p, q, z = exactness_case
    alpha = sampling.acceptance_probability(p, q).item()
    assert 0.3 < alpha < 0.95 and z < 0.9, (alpha, z)
    # the broken variant is far from p analytically, so the sampled test below has teeth
    assert sampling.total_variation(unnormalised_law(p.double(), q.double(), z), p.double()).item() > 0.05

    g = torch.Generator().manual_seed(1)
    first, accepted = cv.first_tokens(p, q, N_ROUNDS, g)
    _, pval, dof = cv.goodness_of_fit(first, p)
    assert dof > 50 and pval > PASS, f"chi-square p-value {pval:.2e}"
    assert abs(accepted.double().mean().item() - alpha) < 5 * (alpha * (1 - alpha) / N_ROUNDS) ** 0.5

    wrong, _ = cv.first_tokens(p, q, N_ROUNDS // 4, g, q_verify=q * z)
    assert cv.goodness_of_fit(wrong, p)[1] < FAIL, "forgetting to renormalise went unnoticed"
    always_accept = torch.multinomial(q, N_ROUNDS // 4, replacement=True, generator=g)
    assert cv.goodness_of_fit(always_accept, p)[1] < FAIL


def test_goodness_of_fit_pools_rare_tokens_and_sees_impossible_ones():
    p = torch.tensor([0.5, 0.3, 0.2 - 1e-7, 1e-7, 0.0])
    g = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(p, 20_000, replacement=True, generator=g)
    chi2, pval, dof = cv.goodness_of_fit(tokens, p)
    assert dof == 2 and pval > PASS
    assert cv.goodness_of_fit(torch.tensor([0, 1, 4]), p)[1] == 0.0


# ============================================================ greedy identity, both methods


@pytest.mark.parametrize("method", ["tli", "string"])
@pytest.mark.parametrize("draft_kind", ["random", "teacher"])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_identity_with_the_target(codecs, tiny, method, draft_kind, k):
    target, draft = tiny
    t_codec, d_codec = codecs["target-1000"], codecs["draft-600-sp"]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec)
    if draft_kind == "random":
        d_codec = codecs["draft-600-code"]
        m = cv.VocabMapping.from_codecs(d_codec, t_codec)
        lm = draft
    else:
        lm = cv.TeacherDraftLM(target, d_codec, t_codec, noise=0.3)
    cls = cv.TLIDrafter if method == "tli" else cv.StringMatchDrafter
    drafter = cls(lm, m, d_codec, t_codec)
    for text in TEXTS[:2]:
        prompt = prompt_ids(t_codec, text)
        ref = autoregressive_generate(target, prompt, 24)
        out = speculative_generate(target, drafter, prompt, 24, k=k)
        assert out.tokens == ref.tokens
        assert sum(out.drafted_per_round) > 0
        if draft_kind == "teacher":  # a draft that knows the target gets tokens accepted
            assert sum(out.accepted_per_round) > 0


def test_a_cross_vocabulary_pair_is_the_books_one_loaded_pair(codecs, tiny):
    from specdec.bench import BenchPair

    target, draft = tiny
    t_codec, d_codec = codecs["target-1000"], codecs["draft-600-code"]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec)
    pair = BenchPair("toy", draft, target, None, kind="crossvocab", draft_codec=d_codec, target_codec=t_codec,
                     mapping=m)
    prompt = prompt_ids(t_codec)
    ref = autoregressive_generate(target, prompt, 16)
    for method, cls in (("tli", cv.TLIDrafter), ("string", cv.StringMatchDrafter)):
        drafter = pair.drafter(method)
        assert isinstance(drafter, cls) and drafter.mapping is m
        assert speculative_generate(pair.target, drafter, prompt, 16, k=3).tokens == ref.tokens
    with pytest.raises(ValueError, match="'tli' or 'string'"):
        pair.drafter("bytes")


def test_tli_sampling_runs_and_proposes_target_ids(codecs, tiny):
    target, _ = tiny
    t_codec, d_codec = codecs["target-1000"], codecs["draft-600-prose"]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec)
    drafter = cv.TLIDrafter(cv.TeacherDraftLM(target, d_codec, t_codec, noise=0.5), m, d_codec, t_codec)
    tokens, q = drafter.propose(prompt_ids(t_codec), 3, SamplingParams(), torch.Generator().manual_seed(0))
    assert q.shape == (3, 1000) and (m.target_to_draft[tokens] >= 0).all()
    assert (q.gather(-1, tokens[:, None]) > 0).all()
    out = speculative_generate(target, drafter, prompt_ids(t_codec), 20, k=3, params=SamplingParams(), seed=2)
    assert len(out.tokens) == 20 and 0 <= out.acceptance_rate <= 1


def test_drafter_refuses_mismatched_inputs(codecs, tiny):
    t_codec, d_codec = codecs["target-1000"], codecs["draft-600"]
    m = cv.VocabMapping.from_codecs(d_codec, t_codec)
    with pytest.raises(ValueError, match="other tokenizers"):
        cv.TLIDrafter(tiny[1], m, codecs["draft-600-sp"], t_codec)
    big = cv.TLIDrafter(tiny[0], m, d_codec, t_codec)  # a 1,000-token model as a 600-token draft
    with pytest.raises(ValueError, match="mapping was built for"):
        big.propose(prompt_ids(t_codec), 2, GREEDY)
    with pytest.raises(ValueError, match="model scores"):
        cv.TokenCodec(cv.load_tokenizer("target-1000"), vocab_size=500)


# ============================================================ the hub pairs


@pytest.mark.parametrize("name", ["tinyllama_llama3", "phi3_llama3"])
def test_hub_pairs_fail_cleanly_offline(name):
    pair = registry.get_pair(name)
    assert not pair.shares_vocabulary
    if loaders.is_available_offline(pair.draft) and loaders.is_available_offline(pair.target):
        pytest.skip("the weights are in the local cache here")
    with pytest.raises(registry.ModelUnavailableError, match="tokenizer"):
        pairs.load_cross_vocab_pair(name)


def test_cross_vocab_pair_rejects_bad_names():
    with pytest.raises(ValueError, match="unknown pair"):
        pairs.load_cross_vocab_pair("no_such_pair")
    with pytest.raises(ValueError, match="prompt lookup"):
        pairs.load_cross_vocab_pair("smollm2_ngram")


def test_tokenizer_files_are_small_and_listed():
    files = sorted(cv.data_dir().glob("*.json"))
    assert {f.stem for f in files} == set(cv.TOKENIZERS)
    assert sum(f.stat().st_size for f in files) < 2_000_000
    for f in files:
        assert json.loads(f.read_text())["model"]["type"] == "BPE"
