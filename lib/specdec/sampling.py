"""From logits to probabilities, and the rejection-sampling step (chapter 3).

Everything here works in float32, whatever the model's dtype, and on any number of
leading batch dimensions, so the same function serves the speculative loop (one
round at a time) and the statistical checks (many independent rounds at once).

Greedy decoding is the special case ``temperature == 0``: the distribution becomes a
one-hot vector on the argmax, and the very same rejection step then accepts a drafted
token exactly when it equals the target's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "SamplingParams",
    "GREEDY",
    "probs_from_logits",
    "sample",
    "next_token",
    "verify",
    "verify_greedy",
    "output_distribution",
    "acceptance_probability",
    "total_variation",
    "first_tokens",
    "goodness_of_fit",
]


@dataclass(frozen=True)
class SamplingParams:
    """How logits become a distribution: temperature, then top-k, then top-p (HF's order).

    ``temperature=0`` means greedy.  ``top_k=0`` and ``top_p=1.0`` switch those filters off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(temperature=0.0)


def probs_from_logits(logits: torch.Tensor, params: SamplingParams = SamplingParams()) -> torch.Tensor:
    """Turn logits ``(..., V)`` into probabilities ``(..., V)`` in float32.

    The draft and the target must go through this same transform before the
    rejection test: the guarantee is then that the output follows the *transformed*
    target distribution, which is what plain sampling from the target would give.
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token always stays.
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``probs (..., V)``; returns shape ``(...)``."""
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return out.reshape(probs.shape[:-1])


def next_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The token after ``logits (..., V)``: the argmax when greedy, else a sample.

    Greedy decoding takes the argmax directly; sampling from the one-hot distribution of
    :func:`probs_from_logits` would give the same token at the price of a pass over the
    vocabulary.
    """
    if params.greedy:
        return logits.argmax(-1)
    return sample(probs_from_logits(logits, params), generator)


def verify(
    p: torch.Tensor,
    q: torch.Tensor,
    draft: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The speculative-sampling step: accept a prefix of the draft, then emit one token.

    Args:
        p: target probabilities ``(..., K+1, V)`` at the K drafted positions and one more.
        q: draft probabilities ``(..., K, V)`` from which ``draft`` was sampled.
        draft: drafted token ids ``(..., K)``.

    Returns:
        ``(n_accepted, next_token)``: how many drafted tokens are kept (``0..K``) and the
        token that follows them. Token i is accepted with probability
        ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection the next token comes from
        the residual ``norm(max(0, p_i - q_i))``; if all K are accepted it is a bonus token
        drawn from ``p_K``. With K = 0 this is plain sampling from ``p``.
    """
    K = draft.shape[-1]
    if p.shape[-2] != K + 1 or q.shape[-2] != K:
        raise ValueError(f"need p with K+1={K + 1} rows and q with K={K} rows, got {tuple(p.shape)} and {tuple(q.shape)}")
    if p.shape[:-2] != q.shape[:-2] or p.shape[:-2] != draft.shape[:-1]:
        raise ValueError(f"batch shapes differ: p {tuple(p.shape)}, q {tuple(q.shape)}, draft {tuple(draft.shape)}")
    if p.shape[-1] != q.shape[-1]:
        raise ValueError(f"draft and target distributions differ in size: {q.shape[-1]} vs {p.shape[-1]}")
    p, q = p.float(), q.float()
    idx = draft.unsqueeze(-1)
    p_x = p[..., :K, :].gather(-1, idx).squeeze(-1)
    q_x = q.gather(-1, idx).squeeze(-1)
    u = torch.rand(p_x.shape, generator=generator, device=p.device)
    accepted = u * q_x < p_x  # u < p/q, written so that q = 0 cannot divide by zero
    n = accepted.long().cumprod(-1).sum(-1)  # length of the accepted prefix
    # Row n of q padded with a zero row: the residual max(0, p - q) is then p itself
    # when every drafted token was accepted, which is exactly the bonus distribution.
    q_pad = torch.cat([q, q.new_zeros(*q.shape[:-2], 1, q.shape[-1])], dim=-2)
    row = n[..., None, None].expand(*n.shape, 1, p.shape[-1])
    residual = (p.gather(-2, row) - q_pad.gather(-2, row)).clamp_min(0).squeeze(-2)
    mass = residual.sum(-1, keepdim=True)
    # A rejection implies p < q somewhere, hence mass > 0; the fallback only guards round-off.
    residual = torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), p.gather(-2, row).squeeze(-2))
    return n, sample(residual, generator)


def verify_greedy(target_logits: torch.Tensor, draft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`verify` for ``temperature == 0``, on logits: the same answer, no distributions.

    With one-hot ``p`` and ``q`` a drafted token is accepted exactly when it is the target's
    argmax, and the token after the accepted prefix is the target's argmax there. Takes
    ``target_logits (..., K+1, V)`` and ``draft (..., K)``; returns ``(n_accepted, next_token)``.
    """
    K = draft.shape[-1]
    if target_logits.shape[-2] != K + 1:
        raise ValueError(f"need K+1={K + 1} rows of target logits, got {tuple(target_logits.shape)}")
    best = target_logits.argmax(-1)
    n = (draft == best[..., :K]).long().cumprod(-1).sum(-1)
    return n, best.gather(-1, n.unsqueeze(-1)).squeeze(-1)


def acceptance_probability(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """alpha = sum_x min(p(x), q(x)) = 1 - TV(p, q): the chance one drafted token is kept."""
    return torch.minimum(p.float(), q.float()).sum(-1)


def output_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The exact distribution of the token emitted at one position, computed analytically.

    P(x) = q(x) min(1, p(x)/q(x)) + (1 - alpha) norm(max(0, p - q))(x). Chapter 3 proves it
    equals p; the tests check that numerically. ``p`` and ``q`` are ``(..., V)``.
    """
    p, q = p.double(), q.double()
    accept_part = torch.minimum(p, q)
    residual = (p - q).clamp_min(0)
    mass = residual.sum(-1, keepdim=True)
    reject_part = torch.where(mass > 0, residual / mass.clamp_min(1e-300), torch.zeros_like(p))
    return accept_part + (1 - accept_part.sum(-1, keepdim=True)) * reject_part


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = 1/2 sum |p - q|."""
    return 0.5 * (p.double() - q.double()).abs().sum(-1)


# --- statistical checks of the sampler (chapters 3 and 8) ---------------------------------


def first_tokens(
    p: torch.Tensor,
    q: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    q_verify: torch.Tensor | None = None,
    chunk: int = 10_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` independent one-token rounds of :func:`verify` at one position.

    Each round drafts ``x ~ q``, verifies it against ``p`` and emits the first token (``x`` if
    accepted, else the residual token); the bonus row is ``p`` again. ``q_verify`` hands the
    rejection step another distribution than the one ``x`` was drawn from -- a deliberate
    bug, for negative controls. Runs in chunks so memory stays ``O(chunk * V)``.
    Returns ``(first_tokens (n,), accepted (n,) bool)``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    q_verify = q if q_verify is None else q_verify
    out, acc = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        P = torch.stack([p, p]).float().expand(m, 2, -1)
        x = torch.multinomial(q.float(), m, replacement=True, generator=generator)[:, None]
        k, nxt = verify(P, q_verify.float().expand(m, 1, -1), x, generator)
        out.append(torch.where(k == 1, x[:, 0], nxt))
        acc.append(k == 1)
    return torch.cat(out), torch.cat(acc)


def goodness_of_fit(tokens: torch.Tensor, p: torch.Tensor, min_expected: float = 5.0) -> tuple[float, float, int]:
    """Pearson's chi-square test of sampled token ids against the distribution ``p`` (V,).

    Tokens whose expected count is below ``min_expected`` are pooled into one cell (folded into
    the smallest other cell if even the pool is that small), so the chi-square approximation
    holds for large vocabularies. A sampled token that ``p`` gives
    probability 0 makes the sample impossible: ``(inf, 0.0, dof)``. Returns
    ``(chi2, p_value, degrees_of_freedom)``.
    """
    from scipy import stats

    p = p.double().cpu()
    tokens = tokens.reshape(-1).cpu()
    n = len(tokens)
    counts = torch.bincount(tokens, minlength=p.numel()).double()
    expected = p / p.sum() * n
    if counts[expected == 0].sum() > 0:
        return float("inf"), 0.0, 0
    big = expected >= min_expected
    obs, exp = counts[big], expected[big]
    rest_obs, rest_exp = counts[~big].sum(), expected[~big].sum()
    if rest_exp >= min_expected or len(exp) == 0:
        obs, exp = torch.cat([obs, rest_obs.view(1)]), torch.cat([exp, rest_exp.view(1)])
    elif rest_exp > 0:  # too little to stand alone: fold the rare tokens into the smallest cell
        i = int(exp.argmin())
        obs[i] += rest_obs
        exp[i] += rest_exp
    obs, exp = obs[exp > 0].numpy(), exp[exp > 0].numpy()
    if len(exp) < 2:
        raise ValueError("p puts (almost) all its mass on one token: a chi-square test has nothing to test")
    chi2, pval = stats.chisquare(obs, exp * obs.sum() / exp.sum())
    return float(chi2), float(pval), len(exp) - 1
