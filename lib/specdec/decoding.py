"""The autoregressive loop and the speculative loop (chapter 4).

Both loops start the same way: the target reads the prompt (prefill) and samples the
first token, so time to first token is the same for both. Then

* autoregressive: one target forward pass per token;
* speculative: per round, the drafter proposes K tokens, the target scores all K+1
  positions in one forward pass, :func:`specdec.sampling.verify` keeps a prefix and adds
  one token, and the target's cache is rolled back past the rejected tokens.

With ``temperature=0`` both are greedy and produce identical tokens; with sampling, the
speculative output has exactly the target's distribution (chapter 3).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .cache import CachedLM
from .drafters import Drafter
from .metrics import GenerationResult
from .profiling import PhaseTimer
from .sampling import GREEDY, SamplingParams, probs_from_logits, sample, verify

__all__ = ["autoregressive_generate", "speculative_generate"]


def autoregressive_generate(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams = GREEDY,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    seed: int = 0,
    progress: bool = False,
) -> GenerationResult:
    """Generate one token per target forward pass; the baseline every speedup is measured against."""
    run = _Run(model, prompt_ids, max_new_tokens, stop_ids, seed, progress, method="autoregressive")
    if run.done:
        return run.result()
    logits = run.prefill()
    while not run.done:
        with run.timer.phase("sample"):
            token = sample(probs_from_logits(logits, params), run.generator)
        run.emit(token.view(1))
        if run.done:
            break
        with run.timer.phase("verify"):  # for the baseline, "verify" is the plain decode step
            logits = run.target.logits(run.seq, n_last=1)[0]
    return run.result()


def speculative_generate(
    target: torch.nn.Module,
    drafter: Drafter,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    k: int,
    params: SamplingParams = GREEDY,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    seed: int = 0,
    progress: bool = False,
) -> GenerationResult:
    """Speculative decoding: ``drafter`` proposes up to ``k`` tokens a round, ``target`` verifies."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens drafted per round) must be an integer >= 1, got {k!r}")
    run = _Run(target, prompt_ids, max_new_tokens, stop_ids, seed, progress, method="speculative")
    run.meta.update(k=k, drafter=getattr(drafter, "name", type(drafter).__name__))
    drafter.reset()
    if run.done:
        return run.result()
    first = run.prefill()
    with run.timer.phase("sample"):
        run.emit(sample(probs_from_logits(first, params), run.generator).view(1))
    while not run.done:
        t_round = run.timer.now()
        k_round = min(k, run.remaining - 1)  # never draft past max_new_tokens
        with run.timer.phase("draft"):
            draft, q = drafter.propose(run.seq, k_round, params, run.generator)
            draft = draft.cpu()
        with run.timer.phase("verify"):
            logits = run.target.logits(torch.cat([run.seq, draft]), n_last=len(draft) + 1)
        with run.timer.phase("sample"):
            p = probs_from_logits(logits, params)
            on_device = draft.to(p.device)
            if q is None:  # a model-free drafter: its proposals are one-hot
                q = torch.nn.functional.one_hot(on_device, p.shape[-1]).float()
            n, nxt = verify(p, q.to(p.device), on_device, run.generator)
            n = int(n)
        run.target.crop(len(run.seq) + n)  # roll back past the rejected draft tokens
        run.rounds.append((len(draft), n))
        run.proposals.append(draft.tolist())
        run.emit(torch.cat([draft[:n], nxt.view(1)]))
        run.round_latencies.append(run.timer.now() - t_round)
    return run.result()


class _Run:
    """Book-keeping shared by both loops: validation, emitted tokens, stop tokens, timings."""

    def __init__(self, model, prompt_ids, max_new_tokens, stop_ids, seed, progress, method):
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long).cpu()
        if prompt_ids.ndim == 2 and prompt_ids.shape[0] == 1:
            prompt_ids = prompt_ids[0]
        if prompt_ids.ndim != 1 or len(prompt_ids) == 0:
            raise ValueError(f"prompt_ids must be a non-empty 1-D sequence of token ids, got shape {tuple(prompt_ids.shape)}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        self.target = CachedLM(model)
        ctx = self.target.max_length
        if ctx and len(prompt_ids) + max_new_tokens > ctx:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {ctx} tokens; shorten the prompt or lower max_new_tokens"
            )
        self.prompt_len = len(prompt_ids)
        self.seq = prompt_ids
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(int(s) for s in stop_ids)
        # Random numbers are drawn where the probabilities live (the target's device).
        self.generator = torch.Generator(device=self.target.device).manual_seed(seed)
        self.timer = PhaseTimer(self.target.device)
        self.meta = {"seed": seed}
        self.method = method
        self.stopped = False
        self.rounds: list[tuple[int, int]] = []  # (drafted, accepted) per round
        self.proposals: list[list[int]] = []  # the drafted token ids per round
        self.round_latencies: list[float] = []
        self.emit_times: list[float] = []
        self.bar = tqdm(total=max_new_tokens, desc=method, leave=False, disable=not progress)
        self.t0 = self.timer.now()

    @property
    def n_new(self) -> int:
        return len(self.seq) - self.prompt_len

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - self.n_new

    @property
    def done(self) -> bool:
        return self.stopped or self.remaining <= 0

    def prefill(self) -> torch.Tensor:
        with self.timer.phase("prefill"):
            return self.target.logits(self.seq, n_last=1)[0]

    def emit(self, tokens: torch.Tensor) -> None:
        """Append tokens, cutting at max_new_tokens and after the first stop token."""
        tokens = tokens.cpu()[: self.remaining]
        for i, t in enumerate(tokens.tolist()):
            if t in self.stop_ids:
                tokens, self.stopped = tokens[: i + 1], True
                break
        self.seq = torch.cat([self.seq, tokens])
        now = self.timer.now()
        self.emit_times += [now - self.t0] * len(tokens)
        self.bar.update(len(tokens))

    def result(self) -> GenerationResult:
        self.bar.close()
        times = [0.0] + self.emit_times
        return GenerationResult(
            method=self.method,
            tokens=self.seq[self.prompt_len :].tolist(),
            prompt_tokens=self.prompt_len,
            total_s=self.timer.now() - self.t0,
            ttft_s=self.emit_times[0] if self.emit_times else 0.0,
            token_latencies_s=[b - a for a, b in zip(times, times[1:])],
            round_latencies_s=self.round_latencies,
            drafted_per_round=[d for d, _ in self.rounds],
            accepted_per_round=[a for _, a in self.rounds],
            proposed_per_round=self.proposals,
            phase_s=dict(self.timer.seconds),
            peak_bytes=dict(self.timer.peak_bytes),
            meta=self.meta,
        )
