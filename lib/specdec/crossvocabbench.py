"""Chapter 8's real pair, measured: SmolLM2-135M-Instruct drafting for Gemma-3-270M across
vocabularies (49,152 and 262,144 tokens, two model families).

:func:`measure` returns one dict of figures, which chapter 8 computes live where Gemma is installed
(``make gemma``) and otherwise reads from the committed file written by
``python -m specdec.crossvocabbench --out data/results/crossvocab_gemma.json``:

* ``vocabulary``: the sizes, the shared tokens, each side's coverage;
* ``by_domain``: on the benchmark prompts, Gemma's own greedy answers -- the share of their tokens
  with a twin in SmolLM2's vocabulary (a token without one can never be proposed), p(I), the
  target's probability mass on the shared tokens (the ceiling of TLI's acceptance), and TLI's
  acceptance alpha at every position of the answers, greedy and at T = 1;
* ``runs``: the loop, greedy, with each cross-vocabulary drafter at K on each prompt -- whether
  the output is Gemma's own greedy text, the tokens per round, and the time the drafter spent
  keeping the draft's tokens in step with the target's (re-tokenising) against its draft steps;
  ``positions``: acceptance by draft position, pooled over the prompts;
* ``chi_square``: the loop's first token at T = 1 (top-k filtered, :data:`CHI_TOP_K`) from the
  verify step with TLI's distribution, tested against Gemma's with chi-square, beside two broken
  variants that must fail.

Both models run on the paths the benchmark runs them on (:meth:`specdec.pairs.BenchPair.use_engine_path`).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .crossvocab import tli_acceptances
from .decoding import autoregressive_generate, speculative_generate
from .metrics import acceptance_by_position, tokens_per_round
from .pairs import load_bench_pair
from .prompts import DOMAINS, encode_prompt, load_prompts
from .sampling import GREEDY, SamplingParams, first_tokens, goodness_of_fit, probs_from_logits

__all__ = ["PAIR", "CHI_TOP_K", "measure", "main"]

PAIR = "smollm2_gemma3_tli"  # the registry pair; its drafter("string") is the other method
_T1 = SamplingParams(temperature=1.0)


class _TimedSync:
    """Wraps a drafter's token synchroniser and adds up the seconds it takes."""

    def __init__(self, sync):
        self.sync, self.seconds, self.calls = sync, 0.0, 0

    def __call__(self, seq):
        t0 = time.perf_counter()
        out = self.sync(seq)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def reset(self):
        self.sync.reset()


def _share(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")


@torch.inference_mode()
def measure(n_per_domain: int = 2, max_new_tokens: int = 48, k: int = 4, n_rounds: int = 100_000,
            progress: bool = True, pair=None) -> dict:
    """The chapter's figures on the real pair (see the module's text). ``pair``: an already loaded
    :func:`specdec.pairs.load_bench_pair` of :data:`PAIR` (loaded here otherwise)."""
    from tqdm.auto import tqdm

    if pair is None:
        pair = load_bench_pair(PAIR)
        pair.use_engine_path()
    m = pair.mapping
    t2d = m.target_to_draft
    d2t = m.draft_to_target
    out = {
        "settings": dict(pair=PAIR, n_per_domain=n_per_domain, max_new_tokens=max_new_tokens, k=k,
                         n_rounds=n_rounds, target_path=pair.path.label,
                         draft_path=None if pair.draft_path is None else pair.draft_path.label),
        "vocabulary": dict(draft=m.draft_vocab_size, target=m.target_vocab_size, shared=m.n_shared,
                           draft_coverage=m.draft_coverage, target_coverage=m.target_coverage),
        "by_domain": {}, "runs": [], "positions": {}, "alpha_vs_bound": {},
    }
    prompts = [(d, p["id"], encode_prompt(pair.tokenizer, p["prompt"]))
               for d in DOMAINS for p in load_prompts(d, n_per_domain)]
    rounds = {"tli": ([], []), "string": ([], [])}
    target_s, target_steps = 0.0, 0
    for domain, pid, ids in tqdm(prompts, desc="real pair", disable=not progress):
        ref = autoregressive_generate(pair.engine, ids, max_new_tokens, GREEDY, pair.stop_ids)
        target_s += ref.phase_s.get("decode", 0.0)
        target_steps += max(ref.n_new - 1, 0)
        answer = torch.tensor(ref.tokens, dtype=torch.long)
        text = torch.cat([ids, answer])
        # the answer in the draft's own tokens: which of those have a twin in the target's vocabulary
        own = pair.draft_codec.encode_bytes(pair.target_codec.decode_bytes(ref.tokens))
        row = out["by_domain"].setdefault(domain, {"twin_target": [], "twin_draft": [], "p_I": [],
                                                   "alpha_t1": [], "alpha_greedy": []})
        row["twin_target"] += (t2d[answer] >= 0).tolist()
        row["twin_draft"] += (d2t[torch.tensor(own, dtype=torch.long)] >= 0).tolist() if own else []
        t1, greedy = tli_acceptances(pair.target, pair.drafter("tli"), [text], len(ids), [_T1, GREEDY])
        row["alpha_t1"] += t1["alpha"].tolist()
        row["alpha_greedy"] += greedy["alpha"].tolist()
        row["p_I"] += t1["bound"].tolist()
        for method in ("tli", "string"):
            drafter = pair.drafter(method)
            drafter.sync = _TimedSync(drafter.sync)
            res = speculative_generate(pair.engine, drafter, ids, max_new_tokens, k, GREEDY, pair.stop_ids)
            drafted = sum(res.drafted_per_round)
            out["runs"].append(dict(
                domain=domain, prompt_id=pid, method=method, identical=res.tokens == ref.tokens,
                tau=tokens_per_round(res.drafted_per_round, res.accepted_per_round),
                rounds=len(res.drafted_per_round), drafted=drafted,
                sync_ms_per_round=1e3 * drafter.sync.seconds / max(drafter.sync.calls, 1),
                draft_ms_per_token=1e3 * res.phase_s.get("draft", 0.0) / max(drafted, 1),
                sync_share_of_draft=drafter.sync.seconds / max(res.phase_s.get("draft", 0.0), 1e-12),
            ))
            rounds[method][0].extend(res.drafted_per_round)
            rounds[method][1].extend(res.accepted_per_round)
    for domain, row in out["by_domain"].items():
        # every position's TLI acceptance at T = 1 beside its bound p(I), for chapter 8's scatter
        out["alpha_vs_bound"][domain] = {"alpha": row["alpha_t1"], "bound": row["p_I"]}
        out["by_domain"][domain] = {name: _share(values) for name, values in row.items()} | {
            "answer_tokens": len(row["twin_target"])}
    out["positions"] = {method: acceptance_by_position(*rounds[method]) for method in rounds}
    out["target_ms_per_step"] = 1e3 * target_s / max(target_steps, 1)
    out["chi_square"] = _chi_square(pair, prompts[0][2], n_rounds)
    return out


#: The chi-square check filters both sides to their top tokens: at T = 1 Gemma's distribution has
#: 262,144 non-zero entries, and one round of the verify step over all of them costs about 10 ms
#: here; filtered, a round touches only the tokens either side can produce.
CHI_TOP_K = 64


def _chi_square(pair, ids: torch.Tensor, n_rounds: int) -> dict:
    """The first token of a round at T = 1 with top-k = :data:`CHI_TOP_K`, ``n_rounds`` times,
    from the verify step handed TLI's distribution, against Gemma's: the exact sampler, and two
    broken ones (the draft's shared probabilities not renormalised; every draft accepted).

    The rounds run on the union of the two supports: a token that neither distribution can
    produce is never drafted and gets no residual mass, so leaving it out changes nothing."""
    params = SamplingParams(temperature=1.0, top_k=CHI_TOP_K)
    p = probs_from_logits(pair.target(input_ids=ids[None]).logits[0, -1].float(), params)
    drafter = pair.drafter("tli")
    q = drafter.next_distribution(ids, params)
    q_full = probs_from_logits(drafter.lm.logits(drafter.draft_ids(ids))[0], params)
    kept = float(q_full[pair.mapping.shared_draft_ids].sum())  # q(I): the draft's mass on shared tokens
    support = torch.nonzero((p > 0) | (q > 0)).squeeze(-1)
    p_s, q_s = p[support], q[support]
    gen = torch.Generator().manual_seed(0)
    exact, accepted = first_tokens(p_s, q_s, n_rounds, gen)
    unnorm, _ = first_tokens(p_s, q_s, n_rounds, gen, q_verify=q_s * kept)
    always = torch.multinomial(q_s, n_rounds, replacement=True, generator=gen)
    tests = {}
    for label, tokens in (("TLI (verify)", exact), ("not renormalised", unnorm), ("always accept", always)):
        chi2, pval, dof = goodness_of_fit(tokens, p_s)
        tests[label] = dict(chi2=chi2, p_value=pval, dof=dof)
    return dict(n_rounds=n_rounds, top_k=CHI_TOP_K, support=int(len(support)), q_I=kept,
                p_I=float(pair.mapping.target_mass(p)), alpha=float(torch.minimum(p, q).sum()),
                accepted=float(accepted.double().mean()), tests=tests)


def main(argv: list[str] | None = None) -> int:
    from . import cli
    from .provenance import require_quiet, write_report

    ap = cli.ArgumentParser(prog="python -m specdec.crossvocabbench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the figures as JSON, e.g. data/results/crossvocab_gemma.json")
    ap.add_argument("--n-prompts", type=cli.positive_int, default=4, help="benchmark prompts per domain")
    ap.add_argument("--max-new-tokens", type=cli.int_range(2, 1024), default=64)
    ap.add_argument("--k", type=cli.int_range(1, 16), default=4, help="tokens drafted per round")
    ap.add_argument("--rounds", type=cli.positive_int, default=200_000, help="sampled rounds of the chi-square test")
    ap.add_argument("--force", action="store_true", help="record under data/results although the machine is busy")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    load = require_quiet(args.out, args.force)
    report = measure(args.n_prompts, args.max_new_tokens, args.k, args.rounds)
    write_report(report, args.out, " ".join(["python -m specdec.crossvocabbench", *argv]), load, args.force)
    runs = report["runs"]
    print(f"greedy output identical to Gemma's: {sum(r['identical'] for r in runs)}/{len(runs)}")
    for name, t in report["chi_square"]["tests"].items():
        print(f"{name:17s} chi2 {t['chi2']:.1f} on {t['dof']} d.o.f., p-value {t['p_value']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
