"""Speculative decoding for a batch of prompts in one loop (chapter 12).

:func:`batch_generate` runs ``B`` prompts together on one :class:`specdec.batchcache.BatchedLM`.
Each round every row still generating drafts up to ``K`` tokens of its own (its drafter may
propose fewer, or none), one forward pass scores every row's draft, and each row keeps its
own accepted prefix and bonus token -- a different number per row -- and rolls back the rest.
Without a drafter the same loop is batched autoregressive decoding, the baseline a batched
speedup is measured against.

This is *static* batching: the batch is the prompts given, and a row that finishes leaves it
(the passes after that compute the others only) but no new prompt takes its place; a serving
engine's continuous batching admits new requests as rows free up. Row ``i`` draws its random
numbers from its own generator, seeded ``seed + i`` (so that a batch of copies of one prompt
gives independent samples), and greedy rows produce the tokens their prompt gives alone up to
the rounding of batched kernels (``tests/test_batchdecoding.py`` checks them identical on a
small model in float32).

A drafter here proposes for one row at a time (``drafter.propose(seq, k, ...)``), so a
model-free drafter (prompt lookup) costs what it costs alone. A model drafter would work too --
its cache catches up to whichever row it is given -- but would re-read each row's text every
round; batching a draft model means giving it a :class:`~specdec.batchcache.BatchedLM` of its
own, which this loop does not do.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .batchcache import BatchedLM
from .checks import require_int
from .metrics import GenerationResult
from .profiling import PhaseTimer
from .sampling import GREEDY, SamplingParams, next_token, probs_from_logits, verify

__all__ = ["batch_generate"]


def batch_generate(model: torch.nn.Module, prompts, max_new_tokens: int, drafter=None, k: int = 4,
                   params: SamplingParams = GREEDY, stop_ids=frozenset(), seed: int = 0, progress: bool = False,
                   compact_at: float = 0.5, on_round=None) -> list[GenerationResult]:
    """Generate for every prompt of ``prompts`` (token id lists or 1-D tensors) in one batch.

    With a ``drafter`` each round drafts up to ``k`` tokens per row (method
    ``"batch_speculative"``); without, one token per row per pass (``"batch_autoregressive"``).
    Returns one :class:`specdec.metrics.GenerationResult` per prompt, in order: its tokens,
    rounds and token times; ``total_s`` is the time at which that row finished, ``phase_s``
    the whole batch's phases, ``meta["batch"]`` the batch size. When holes (rejected and
    padded columns) exceed ``compact_at`` of the cache's cells, the cache is compacted.
    ``on_round(lm, rows)`` is called after every round with the cache and the prompt index of
    each of its rows (to draw it).
    """
    prompts = [torch.as_tensor(p, dtype=torch.long).reshape(-1).tolist() for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, each a non-empty sequence of token ids")
    require_int("max_new_tokens", max_new_tokens, 0)
    if drafter is not None:
        require_int("k (tokens drafted per round)", k, 1)
    ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if ctx and max(map(len, prompts)) + max_new_tokens > ctx:
        raise ValueError(f"the longest prompt ({max(map(len, prompts))} tokens) + max_new_tokens "
                         f"({max_new_tokens}) exceeds the model's context of {ctx} tokens")
    stops = frozenset(int(s) for s in stop_ids)
    device = next(model.parameters()).device
    method = "batch_autoregressive" if drafter is None else "batch_speculative"
    timer = PhaseTimer(device)
    n = len(prompts)
    seqs = [list(p) for p in prompts]
    gens = [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]
    rounds = [[] for _ in range(n)]  # (drafted, accepted, proposed) per round
    emit_times = [[] for _ in range(n)]
    round_s = [[] for _ in range(n)]
    finished_at = [0.0] * n
    stopped = [False] * n
    bar = tqdm(total=n * max_new_tokens, desc=method, leave=False, disable=not progress)
    t0 = timer.now()

    def emit(i, tokens):
        tokens = tokens[: max_new_tokens - (len(seqs[i]) - len(prompts[i]))]
        for j, t in enumerate(tokens):
            if t in stops:
                tokens, stopped[i] = tokens[: j + 1], True
                break
        seqs[i] += tokens
        emit_times[i] += [timer.now() - t0] * len(tokens)
        bar.update(len(tokens))

    def remaining(i):
        return 0 if stopped[i] else max_new_tokens - (len(seqs[i]) - len(prompts[i]))

    if drafter is not None:
        drafter.reset()
    lm = BatchedLM(model, n, capacity=max(map(len, prompts)) + 2 * max_new_tokens + 8,
                   pad_id=min(stops) if stops else 0)
    active = [i for i in range(n) if remaining(i) > 0]
    if active:
        lm.keep_rows(active)
        with timer.phase("prefill"):
            logits = lm.logits([seqs[i] for i in active], 1)
        with timer.phase("sample"):
            for i, row in zip(active, logits):
                emit(i, [int(next_token(row[0], params, gens[i]))])
    while True:
        live = [j for j, i in enumerate(active) if remaining(i) > 0]
        for i in active:
            if remaining(i) <= 0 and not finished_at[i]:
                finished_at[i] = timer.now() - t0
        if not live:
            break
        if len(live) < len(active):
            lm.keep_rows(live)
            active = [active[j] for j in live]
        if lm.holes > compact_at * lm.batch * lm.width:
            lm.compact()
        t_round = timer.now()
        drafts, qs = [], []
        with timer.phase("draft"):
            for i in active:
                if drafter is None:
                    d, q = torch.empty(0, dtype=torch.long), None
                else:
                    d, q = drafter.propose(seqs[i], min(k, remaining(i) - 1), params, gens[i])
                drafts.append(d.reshape(-1).tolist())
                qs.append(q)
        with timer.phase("verify"):
            logits = lm.logits([seqs[i] + d for i, d in zip(active, drafts)], [len(d) + 1 for d in drafts])
        with timer.phase("sample"):
            if params.greedy:  # one argmax for every row, one wait
                width = max(len(x) for x in logits)
                best = torch.stack([torch.nn.functional.pad(x.argmax(-1), (0, width - len(x))) for x in logits])
                best = best.tolist()
            kept = []
            for j, (i, d, q, x) in enumerate(zip(active, drafts, qs, logits)):
                if params.greedy:
                    pick = best[j]
                    acc = next((a for a, t in enumerate(d) if t != pick[a]), len(d))
                    nxt = pick[acc]
                else:
                    p = probs_from_logits(x, params)
                    if q is None:  # deterministic proposals: one-hot distributions
                        q = torch.nn.functional.one_hot(torch.tensor(d, dtype=torch.long), p.shape[-1]).float()
                    draft = torch.tensor(d, dtype=torch.long, device=p.device)
                    acc, nxt = (int(v) for v in verify(p, q.to(p.device), draft, gens[i]))
                kept.append((j, len(seqs[i]) + acc))
                rounds[i].append((len(d), acc, d))
                emit(i, d[:acc] + [nxt])
        for j, n_keep in kept:
            lm.crop(j, n_keep)  # roll back past the row's rejected draft tokens
        lm.trim()
        if on_round is not None:
            on_round(lm, list(active))
        now = timer.now()
        for i in active:
            round_s[i].append(now - t_round)
    bar.close()
    results = []
    for i in range(n):
        times = [0.0] + emit_times[i]
        results.append(GenerationResult(
            method=method, tokens=seqs[i][len(prompts[i]):], prompt_tokens=len(prompts[i]),
            total_s=finished_at[i], ttft_s=emit_times[i][0] if emit_times[i] else 0.0,
            token_latencies_s=[b - a for a, b in zip(times, times[1:])], round_latencies_s=round_s[i],
            drafted_per_round=[d for d, _, _ in rounds[i]], accepted_per_round=[a for _, a, _ in rounds[i]],
            proposed_per_round=[p for _, _, p in rounds[i]], phase_s=dict(timer.seconds), peak_bytes={},
            meta={"seed": seed, "batch": n, "k": k if drafter is not None else 0,
                  "drafter": getattr(drafter, "name", None) if drafter is not None else None}))
    return results
