"""The autoregressive loop and the speculative loop (chapter 4).

Both loops start the same way: the target reads the prompt (prefill) and samples the
first token, so time to first token is the same for both. Then

* autoregressive: one target forward pass per token;
* speculative: per round, the drafter proposes K tokens, the target scores all K+1
  positions in one forward pass, :func:`specdec.sampling.verify` keeps a prefix and adds
  one token, and the target's cache is rolled back past the rejected tokens.

With ``temperature=0`` both are greedy and produce identical tokens; with sampling, the
speculative output has exactly the target's distribution (chapter 3). Greedy rounds take
the argmax directly (:func:`specdec.sampling.verify_greedy`, which gives what ``verify``
gives on one-hot distributions). The autoregressive step is timed as ``"decode"``; a
speculative round as ``"draft"``, ``"verify"`` and ``"sample"``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .cache import CachedLM
from .checks import require_int
from .drafters import Drafter
from .metrics import GenerationResult
from .profiling import PhaseTimer
from .sampling import GREEDY, SamplingParams, next_token, probs_from_logits, verify, verify_greedy

__all__ = ["autoregressive_generate", "speculative_generate", "start_speculation", "Generation"]


def autoregressive_generate(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams = GREEDY,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    seed: int = 0,
    progress: bool = False,
    cache: str = "preallocated",
    memory: bool = False,
) -> GenerationResult:
    """Generate one token per target forward pass; the baseline every speedup is measured against."""
    run = Generation(model, prompt_ids, max_new_tokens, stop_ids=stop_ids, seed=seed, progress=progress,
                     method="autoregressive", cache=cache, memory=memory)
    if run.done:
        return run.result()
    logits = run.prefill()
    while not run.done:
        with run.timer.phase("sample"):
            token = next_token(logits, params, run.generator)
        run.emit([int(token)])
        if run.done:
            break
        with run.timer.phase("decode"):
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
    cache: str = "preallocated",
    memory: bool = False,
) -> GenerationResult:
    """Speculative decoding: ``drafter`` proposes up to ``k`` tokens a round, ``target`` verifies.

    The host waits for the device once a round, to learn what was accepted; the draft stays
    on the target's device until then. A drafter with a ``feature_layers`` attribute (chapter
    10's head) gets the target's cache through ``drafter.bind(cached_lm)`` before the first
    round: the cache then keeps those layers' outputs for every position the target has read
    (:meth:`specdec.cache.CachedLM.features`).
    """
    require_int("k (tokens drafted per round)", k, 1)
    run = start_speculation(target, drafter, prompt_ids, max_new_tokens, params=params, stop_ids=stop_ids, seed=seed,
                            progress=progress, method="speculative", cache=cache, memory=memory)
    run.meta.update(k=k)
    device = run.target.device
    while not run.done:
        t_round = run.timer.now()
        k_round = min(k, run.remaining - 1)  # never draft past max_new_tokens
        with run.timer.phase("draft"):
            draft, q = drafter.propose(run.seq, k_round, params, run.generator)
            draft = draft.to(device)
        with run.timer.phase("verify"):
            logits = run.target.logits(run.seq, n_last=len(draft) + 1, suffix=draft)
        with run.timer.phase("sample"):
            if params.greedy:
                n, nxt = verify_greedy(logits, draft)
            else:
                p = probs_from_logits(logits, params)
                if q is None:  # deterministic proposals: their distributions are one-hot
                    q = torch.nn.functional.one_hot(draft, p.shape[-1]).float()
                n, nxt = verify(p, q.to(device), draft, run.generator)
            n, nxt, *drafted = torch.cat([n.view(1), nxt.view(1), draft]).tolist()  # the one wait
        run.target.crop(len(run.seq) + n)  # roll back past the rejected draft tokens
        run.record_round(drafted, n, nxt, t_round)
    return run.result()


def start_speculation(target, drafter, prompt_ids, max_new_tokens: int, *, params: SamplingParams = GREEDY,
                      stop_ids=frozenset(), seed: int = 0, progress: bool = False, method: str = "speculative",
                      cache: str = "preallocated", memory: bool = False) -> "Generation":
    """The start every speculative loop shares (chains here, trees in :mod:`specdec.trees`): the
    :class:`Generation`, the drafter reset (and bound to the target's cache when it reads its
    features), the prefill and the first token. Returns the generation; it may already be done."""
    run = Generation(target, prompt_ids, max_new_tokens, stop_ids=stop_ids, seed=seed, progress=progress,
                     method=method, cache=cache, memory=memory,
                     feature_layers=getattr(drafter, "feature_layers", ()))
    run.meta.update(drafter=getattr(drafter, "name", type(drafter).__name__))
    drafter.reset()
    if run.target.feature_layers:  # a drafter that reads the target's hidden states
        drafter.bind(run.target)
    if not run.done:
        first = run.prefill()
        with run.timer.phase("sample"):
            run.emit([int(next_token(first, params, run.generator))])
    return run


class Generation:
    """One generation in progress, shared by every loop (autoregressive, chain, tree).

    It holds the target's cache (``target``, a :class:`specdec.cache.CachedLM`), the text so far
    (``seq``, a list of token ids on the host: appending is O(1), and the stop-token check and
    the caches' prefix bookkeeping need the ids there anyway), the random generator, the phase
    timer and what each round drafted and kept. A loop calls :meth:`prefill` once, then per
    round drafts, verifies, rolls the cache back and books the round with :meth:`record_round`
    (or, without a draft, :meth:`emit`), until :attr:`done`; :meth:`result` gives the
    :class:`specdec.metrics.GenerationResult`.
    """

    def __init__(self, model, prompt_ids, max_new_tokens: int, *, stop_ids=frozenset(), seed: int = 0,
                 progress: bool = False, method: str = "autoregressive", cache: str = "preallocated",
                 memory: bool = False, feature_layers=()):
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long).cpu()
        if prompt_ids.ndim == 2 and prompt_ids.shape[0] == 1:
            prompt_ids = prompt_ids[0]
        if prompt_ids.ndim != 1 or len(prompt_ids) == 0:
            raise ValueError(f"prompt_ids must be a non-empty 1-D sequence of token ids, got shape {tuple(prompt_ids.shape)}")
        require_int("max_new_tokens", max_new_tokens, 0)
        self.target = CachedLM(model, cache=cache, capacity=len(prompt_ids) + max_new_tokens + 1,
                               feature_layers=feature_layers)
        ctx = self.target.max_length
        if ctx and len(prompt_ids) + max_new_tokens > ctx:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {ctx} tokens; shorten the prompt or lower max_new_tokens"
            )
        self.prompt_len = len(prompt_ids)
        self.seq: list[int] = prompt_ids.tolist()
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(int(s) for s in stop_ids)
        # Random numbers are drawn where the probabilities live (the target's device).
        self.generator = torch.Generator(device=self.target.device).manual_seed(seed)
        self.timer = PhaseTimer(self.target.device, memory=memory)
        self.meta = {"seed": seed, "cache": cache}
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

    def record_round(self, proposed: list[int], n_accepted: int, next_token: int, started: float,
                     n_drafted: int | None = None) -> None:
        """Book one speculative round that began at ``started`` (``timer.now()``): the drafted
        tokens on the verified path (``proposed``; a chain's whole draft), how many of them were
        accepted, and the token the target added; emits ``proposed[:n_accepted] + [next_token]``.
        ``n_drafted`` counts the tokens drafted when more were scored than ``proposed`` holds (a
        tree's size)."""
        self.rounds.append((len(proposed) if n_drafted is None else n_drafted, n_accepted))
        self.proposals.append(list(proposed))
        self.emit(list(proposed[:n_accepted]) + [next_token])
        self.round_latencies.append(self.timer.now() - started)

    def emit(self, tokens: list[int]) -> None:
        """Append tokens, cutting at max_new_tokens and after the first stop token."""
        tokens = tokens[: self.remaining]
        for i, t in enumerate(tokens):
            if t in self.stop_ids:
                tokens, self.stopped = tokens[: i + 1], True
                break
        self.seq += tokens
        now = self.timer.now()
        self.emit_times += [now - self.t0] * len(tokens)
        self.bar.update(len(tokens))

    def result(self) -> GenerationResult:
        self.bar.close()
        total = self.timer.now() - self.t0
        times = [0.0] + self.emit_times
        return GenerationResult(
            method=self.method,
            tokens=self.seq[self.prompt_len :],
            prompt_tokens=self.prompt_len,
            total_s=total,
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
