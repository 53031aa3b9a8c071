"""What one generation measured, how it is stored, and the book's figures of speculation.

A :class:`GenerationResult` holds the raw measurements of one generation; everything a
plot needs (acceptance rate, acceptance by position, tokens per second) is derived from
them, so nothing is stored twice. Results travel as JSON lines: one object per line,
``to_dict`` adds the derived summary for convenience and ``from_dict`` ignores it.

The figures, each defined once here from the rounds (``drafted[i]`` tokens drafted and
``accepted[i]`` of them accepted in round ``i``) or from timings, and called by every loop,
benchmark, report and chapter:

* :func:`acceptance_rate` -- accepted drafted tokens / drafted tokens;
* :func:`alpha_estimate` -- the i.i.d. model's per-token acceptance alpha (counts only
  tokens that were tested);
* :func:`tokens_per_round` -- tau, tokens per target pass: accepted drafts + the target's own;
* :func:`acceptance_by_position` -- *conditional*: P(draft ``i`` accepted | drafts before it were);
* :func:`survival_by_position` -- *survival*: P(the round's drafts up to ``i`` all accepted);
* :func:`cost_ratio` -- c, one draft step over one target decode step;
* :func:`verify_cost` -- v(n), scoring ``n`` tokens in one pass over one decode step;
* :func:`speedup` -- one generation's throughput over a baseline's (decode-only by default).
  The law's prediction with measured costs is :func:`specdec.theory.predicted_speedup`.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

__all__ = ["GenerationResult", "speedup", "write_jsonl", "read_jsonl", "acceptance_rate", "alpha_estimate",
           "tokens_per_round", "acceptance_by_position", "survival_by_position", "cost_ratio", "verify_cost"]


# -- the figures of speculation, from rounds and timings -------------------------------------


def acceptance_rate(drafted, accepted) -> float | None:
    """Accepted drafted tokens / drafted tokens over all rounds (None when nothing was drafted)."""
    d = sum(drafted)
    return sum(accepted) / d if d else None


def alpha_estimate(accepted, drafted) -> float | None:
    """Per-token acceptance probability alpha of the i.i.d. model, from rounds.

    Each round tests drafted tokens in order until the first rejection: a round that accepts
    ``a`` of ``d`` tokens made ``a`` successes and, if ``a < d``, one failure. The maximum-
    likelihood alpha is successes / trials. (The plain ratio accepted/drafted is smaller: it
    counts the tokens after a rejection, which were never tested, as failures.)
    """
    succ = sum(accepted)
    trials = succ + sum(1 for a, d in zip(accepted, drafted) if a < d)
    return succ / trials if trials else None


def tokens_per_round(drafted, accepted) -> float | None:
    """tau: tokens emitted per target pass, accepted drafts plus the one the target adds, over
    the rounds that drafted (None when none did)."""
    rounds = [a for a, d in zip(accepted, drafted) if d > 0]
    return (sum(rounds) + len(rounds)) / len(rounds) if rounds else None


def acceptance_by_position(drafted, accepted) -> list[float]:
    """Conditional acceptance: for draft position ``i = 0, 1, ...``, P(draft ``i`` is accepted |
    it was drafted and every draft before it was accepted). The chain's ``a_i`` in
    :func:`specdec.theory.chain_tokens`."""
    k_max = max(drafted, default=0)
    out = []
    for i in range(k_max):
        reached = [a for a, d in zip(accepted, drafted) if d > i and a >= i]
        out.append(sum(a > i for a in reached) / len(reached) if reached else float("nan"))
    return out


def survival_by_position(drafted, accepted, k: int | None = None) -> list[float]:
    """Survival: for positions ``i = 1 .. k``, among rounds that drafted at least ``i`` tokens, the
    share whose drafts ``1 .. i`` were all accepted -- the product of the conditional
    acceptances up to ``i`` (:func:`acceptance_by_position`) when every round drafts ``k``."""
    k = max(drafted, default=0) if k is None else k
    out = []
    for i in range(1, k + 1):
        reached = [a for a, d in zip(accepted, drafted) if d >= i]
        out.append(sum(a >= i for a in reached) / len(reached) if reached else float("nan"))
    return out


def cost_ratio(draft_seconds: float, draft_steps: int, step_seconds: float) -> float:
    """c: the seconds of one draft step (``draft_seconds / draft_steps``) over one target decode
    step's ``step_seconds``."""
    if draft_steps <= 0 or step_seconds <= 0:
        raise ValueError("need at least one draft step and a positive decode step time")
    return draft_seconds / draft_steps / step_seconds


def verify_cost(times: dict) -> dict[int, float]:
    """v(n) from timings: ``times[n]`` the seconds (one or several samples) of scoring ``n``
    tokens in one pass after the same context; v(n) is the median of ``n`` over the median of 1."""
    import statistics

    def med(x):
        return statistics.median(x) if hasattr(x, "__len__") else float(x)

    if 1 not in times:
        raise ValueError("v(n) is relative to a decode step: time n = 1 too")
    base = med(times[1])
    return {int(n): med(t) / base for n, t in sorted(times.items())}


@dataclass
class GenerationResult:
    # our loops: "autoregressive", "speculative"; transformers generate() (specdec.bench):
    # "hf_autoregressive", "hf_assisted", "hf_prompt_lookup" (specdec.analysis.METHODS)
    method: str
    tokens: list[int]  # the generated token ids (the prompt excluded)
    prompt_tokens: int
    total_s: float  # wall time of the whole generation
    ttft_s: float  # time to first token: prefill plus the first sampling step
    token_latencies_s: list[float]  # gap before each generated token (the first is ttft_s)
    round_latencies_s: list[float] = field(default_factory=list)  # one per speculative round
    drafted_per_round: list[int] = field(default_factory=list)
    accepted_per_round: list[int] = field(default_factory=list)
    # the drafted token ids of each round, accepted or not (empty in files written before it
    # was recorded, and for the autoregressive loop); ``specdec.display`` draws them
    proposed_per_round: list[list[int]] = field(default_factory=list)
    phase_s: dict[str, float] = field(default_factory=dict)  # prefill, draft, verify, sample
    peak_bytes: dict[str, int] = field(default_factory=dict)  # per phase
    text: str = ""
    meta: dict = field(default_factory=dict)  # pair, drafter, k, prompt id, domain, ...

    @property
    def n_new(self) -> int:
        return len(self.tokens)

    @property
    def decode_s(self) -> float:
        """Time after the first token."""
        return self.total_s - self.ttft_s

    @property
    def tokens_per_s(self) -> float:
        """End-to-end throughput: every token over the whole wall time, prefill included."""
        return self.n_new / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode throughput: the tokens after the first over the time after the first token
        (NaN when fewer than two tokens were generated)."""
        if self.n_new < 2 or self.decode_s <= 0:
            return float("nan")
        return (self.n_new - 1) / self.decode_s

    @property
    def overhead_s(self) -> float:
        """Wall time not spent in a timed phase: bookkeeping, rollback, stop checks."""
        return max(0.0, self.total_s - sum(self.phase_s.values()))

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted drafted tokens / drafted tokens (None when nothing was drafted)."""
        return acceptance_rate(self.drafted_per_round, self.accepted_per_round)

    @property
    def mean_accepted(self) -> float | None:
        """Mean number of drafted tokens accepted per round, over rounds that drafted anything."""
        accepted = [a for a, d in zip(self.accepted_per_round, self.drafted_per_round) if d > 0]
        return sum(accepted) / len(accepted) if accepted else None

    @property
    def tokens_per_round(self) -> float | None:
        """tau: tokens per target pass over the rounds that drafted (:func:`tokens_per_round`)."""
        return tokens_per_round(self.drafted_per_round, self.accepted_per_round)

    @property
    def acceptance_by_position(self) -> list[float]:
        """P(draft position i is accepted | position i was drafted and reached), i = 0, 1, ..."""
        return acceptance_by_position(self.drafted_per_round, self.accepted_per_round)

    @property
    def peak_mem_bytes(self) -> int:
        return max(self.peak_bytes.values(), default=0)

    def summary(self) -> dict:
        return {
            "n_new": self.n_new,
            "decode_s": self.decode_s,
            "tokens_per_s": self.tokens_per_s,
            "overhead_s": self.overhead_s,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted": self.mean_accepted,
            "acceptance_by_position": self.acceptance_by_position,
            "peak_mem_bytes": self.peak_mem_bytes,
        }

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationResult":
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = required - d.keys()
        if missing:
            raise ValueError(f"not a GenerationResult record: missing {sorted(missing)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def speedup(result: GenerationResult, baseline: GenerationResult, end_to_end: bool = False) -> float:
    """The book's one definition of a speedup: ``result``'s tokens per second over
    ``baseline``'s, both measured in the same run on the same prompt.

    The headline is the *decode* speedup (tokens after the first, over the time after the
    first token): prefill and the first token cost the same with and without a draft, and
    speculative decoding only changes what comes after. ``end_to_end=True`` gives the ratio of
    whole-generation throughputs (first token included), which the book shows beside it.
    """
    if end_to_end:
        return result.tokens_per_s / baseline.tokens_per_s if baseline.tokens_per_s > 0 else float("nan")
    return result.decode_tokens_per_s / baseline.decode_tokens_per_s


def write_jsonl(path: str | Path, results: Iterable[GenerationResult], append: bool = True) -> Path:
    """Append (or write) results as JSON lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        for r in results:
            f.write(json.dumps(r.to_dict()) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[GenerationResult]:
    """Read results written by :func:`write_jsonl`; blank lines are skipped."""
    out = []
    with Path(path).open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(GenerationResult.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
    return out
