"""What chapter 10's draft head is scored by, on the target's features (:mod:`specdec.headdata`).

* :func:`head_loss` -- cross-entropy of the head's distribution against the target's on the
  draft vocabulary, unrolled ``steps`` draft steps on the head's own outputs (EAGLE-3's
  training-time test, :meth:`specdec.eagle.EagleHead.unrolled`), later steps weighted less;
  only the positions that predict answer tokens, where drafting happens, are scored.
* :func:`evaluate_head` -- held-out loss, the greedy agreement at each draft position, the
  expected acceptance at temperature 1 (``sum min(p, q)``), the tokens per target pass a
  greedy chain of K drafts would give (``tau``), acceptance by rank and the head's calibration.

Training (:mod:`specdec.headtrain`) minimises the first and watches the second.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .headdata import FeatureSet

__all__ = ["head_loss", "evaluate_head", "batches_by_length", "feature_batch"]


# -- batches and the loss --------------------------------------------------------------------


def feature_batch(fs: FeatureSet, indices, steps: int, device):
    """Padded tensors for texts ``indices``: rows ``s = 0 .. T-2`` (the pairs), ``steps`` extra
    positions of padding for the unrolled steps, and for step ``j`` a mask of the rows whose
    prediction (position ``s + j``) exists and lies in the answer."""
    n = max(len(fs.tokens[i]) for i in indices) - 1
    B = len(indices)
    H = fs.finals[indices[0]].shape[-1]
    feats = torch.zeros(B, n, fs.features[indices[0]].shape[-1])
    tokens = torch.zeros(B, n + steps, dtype=torch.long)
    finals = torch.zeros(B, n + steps + 1, H)
    lse = torch.zeros(B, n + steps + 1)
    argmax = torch.full((B, n + steps + 1), -1, dtype=torch.long)
    length = torch.zeros(B, dtype=torch.long)
    start = torch.zeros(B, dtype=torch.long)
    for row, i in enumerate(indices):
        T = len(fs.tokens[i])
        feats[row, : T - 1] = fs.features[i][: T - 1].float()
        tokens[row, : T - 1] = fs.tokens[i][1:]
        finals[row, :T] = fs.finals[i].float()
        lse[row, :T] = fs.lse[i]
        argmax[row, :T] = fs.argmax[i]
        length[row], start[row] = T, fs.starts[i]
    rows = torch.arange(n)
    masks = []
    for j in range(1, steps + 1):
        pos = rows[None, :] + j  # the position whose prediction row s's step j makes
        masks.append((pos <= length[:, None] - 1) & (pos + 1 >= start[:, None]))
    to = dict(device=device)
    return (feats.to(**to), tokens.to(**to), finals.to(**to), lse.to(**to), argmax.to(**to),
            [m.to(**to) for m in masks])


def head_loss(head, batch, steps: int, decay: float = 0.8, regression: float = 0.0, feature_noise: float = 0.0):
    """The weighted cross-entropy of the unrolled steps, and per step the greedy agreement
    with the target's argmax, the expected acceptance ``sum min(p, q)`` at temperature 1 and
    the number of rows, on the rows of ``batch`` (:func:`feature_batch`).

    ``regression > 0`` adds EAGLE-1's feature regression: a SmoothL1 loss, weighted by
    ``regression``, between the head's output read as a feature (``norm_out(h)``, what the
    LM-head rows multiply) and the target's final normalised hidden state at the position it
    predicts from -- without it ``h`` is only whatever vector gives the right distribution.
    ``feature_noise`` adds uniform noise of that width to the target's features (EAGLE-1's
    remedy for the gap between real features and the head's own outputs)."""
    feats, tokens, finals, lse, argmax, masks = batch
    n = feats.shape[1]
    if feature_noise > 0 and torch.is_grad_enabled():
        feats = feats + (torch.rand_like(feats) - 0.5) * feature_noise
    outs = head.unrolled(head.fuse(feats), tokens, steps)
    total, weight, stats = 0.0, 0.0, []
    for j, (h, mask) in enumerate(zip(outs, masks), start=1):
        # only the rows whose prediction lies in the answer are scored: the prompt's rows
        # matter as keys of the head's attention, not as predictions
        out = head.norm_out(h[mask])
        logq = F.log_softmax((out @ head.lm_rows.T).float(), -1)
        # the target's probabilities on the draft vocabulary (they sum to at most 1)
        fin = finals[:, j: j + n][mask]
        logp = fin @ head.target_rows.T - lse[:, j: j + n][mask][:, None]
        p = logp.exp()
        ce = -(p * logq).sum(-1)
        rows = max(len(ce), 1)
        step_loss = ce.sum() / rows
        if regression > 0:
            reg = F.smooth_l1_loss(out.float(), fin, reduction="sum") / (rows * fin.shape[-1])
            step_loss = step_loss + regression * reg
        total = total + decay ** (j - 1) * step_loss
        weight += decay ** (j - 1)
        with torch.no_grad():
            best = argmax[:, j: j + n][mask]
            agree = (head.d2t[logq.argmax(-1)] == best).float()
            accept = torch.minimum(p, logq.exp()).sum(-1)
            # where the target's argmax ranks among the head's guesses (len(d2t): not among them)
            idx = _target_to_draft(head)[best.clamp(min=0)]
            mine = logq.gather(-1, idx.clamp(min=0).unsqueeze(-1))
            rank = torch.where(idx >= 0, (logq > mine).sum(-1), torch.full_like(idx, len(head.d2t)))
            top = logq.max(-1).values.exp()  # the head's confidence in its first guess
            stats.append(dict(agree=_spread(agree, mask), accept=_spread(accept, mask), mask=mask,
                              ce=_spread(ce.detach(), mask), rank=_spread(rank, mask, len(head.d2t)),
                              confidence=_spread(top, mask)))
    return total / weight, stats


def _spread(values: torch.Tensor, mask: torch.Tensor, fill=0) -> torch.Tensor:
    """``values`` of the rows where ``mask`` holds, put back in a tensor of ``mask``'s shape."""
    out = values.new_full(mask.shape, fill)
    out[mask] = values
    return out


def _target_to_draft(head) -> torch.Tensor:
    """``t2d[token id]``: the token's index in the draft vocabulary, -1 where it has none."""
    t2d = torch.full((head.vocab_size,), -1, dtype=torch.long, device=head.d2t.device)
    t2d[head.d2t] = torch.arange(len(head.d2t), device=head.d2t.device)
    return t2d


def batches_by_length(fs: FeatureSet, batch_tokens: int, generator) -> list[list[int]]:
    """Texts grouped by length into batches of about ``batch_tokens`` padded tokens, shuffled."""
    order = sorted(range(len(fs)), key=lambda i: len(fs.tokens[i]))
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * len(fs.tokens[i]) > batch_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    perm = torch.randperm(len(out), generator=generator).tolist()
    return [out[i] for i in perm]


@torch.no_grad()
def evaluate_head(head, fs: FeatureSet, steps: int = 4, batch_tokens: int = 4096, by_domain: bool = False,
                  ranks: int = 4) -> dict:
    """Held-out figures of ``head`` on ``fs``: loss (the unweighted mean over steps), per draft
    position the greedy agreement with the target given the earlier ones agreed
    (``agree[j]``: the fraction of chains still alive at step ``j+1`` that step ``j+1``
    extends) and the expected acceptance at temperature 1 of the first steps (``accept``),
    and ``tau``, the mean tokens per target pass of a greedy chain of ``steps`` drafts
    (accepted drafts + the target's own token), from every answer position. On greedy text
    these are what drafting gives (an accepted draft token equals the text's next token); on
    sampled text they are the agreement with the target's argmax along the text.
    ``by_domain`` adds ``tau_by_domain``. ``rank_acceptance[j][r]``: among chains alive at step
    ``j+1``, the share whose target token is the head's ``r``-th guess (``r < ranks``) -- what
    a greedy tree's ``r``-th child at that depth would catch (:func:`specdec.theory.plan_shape`).
    ``calibration``: for chains alive at step ``j+1``, counted in ten bins of the head's
    probability of its first guess (``n[j][b]``) and how many of those guesses were the
    target's token (``accepted[j][b]``) -- whether a confident draft is a right one, the
    premise of EAGLE-2's dynamic trees."""
    was_training = head.training
    head.eval()
    g = torch.Generator().manual_seed(0)
    alive_sum = torch.zeros(steps + 1)
    rank_sum = torch.zeros(steps, ranks)
    bins = torch.linspace(0, 1, 11)
    conf_n, conf_hit = torch.zeros(steps, 10), torch.zeros(steps, 10)
    accept_sum, accept_rows = torch.zeros(steps), torch.zeros(steps)
    loss_sum, loss_rows = 0.0, 0.0
    accepted_total, chains = 0.0, 0.0
    domains = {}
    for idx in batches_by_length(fs, batch_tokens, g):
        batch = feature_batch(fs, idx, steps, head.d2t.device)
        _, stats = head_loss(head, batch, steps)
        masks = batch[-1]
        # chains start at every row whose first prediction is in the answer and complete
        base = masks[0]
        alive = base.clone()
        length = torch.zeros_like(base, dtype=torch.float)
        alive_sum[0] += base.sum().item()
        for j, st in enumerate(stats):
            valid = st["mask"] & base
            live = alive & valid  # chains alive before this step
            for r in range(ranks):
                rank_sum[j, r] += (live & (st["rank"] == r)).sum().item()
            b = torch.bucketize(st["confidence"][live], bins[1:-1])
            conf_n[j] += torch.bincount(b, minlength=10).float()
            conf_hit[j] += torch.bincount(b, weights=st["agree"][live].float(), minlength=10)
            alive = alive & valid & (st["agree"] > 0)
            length += alive.float()
            alive_sum[j + 1] += alive.sum().item()
            accept_sum[j] += (st["accept"] * st["mask"]).sum().item()
            accept_rows[j] += st["mask"].sum().item()
        accepted_total += length[base].sum().item()
        chains += base.sum().item()
        for st in stats:
            loss_sum += (st["ce"] * st["mask"]).sum().item() / steps
            loss_rows += st["mask"].sum().item() / steps
        if by_domain:
            for row, i in enumerate(idx):
                d = domains.setdefault(fs.domains[i], [0.0, 0.0])
                d[0] += length[row][base[row]].sum().item()
                d[1] += base[row].sum().item()
    if was_training:
        head.train()
    agree = [(alive_sum[j + 1] / alive_sum[j]).item() if alive_sum[j] else math.nan for j in range(steps)]
    rank_acc = [(rank_sum[j] / alive_sum[j]).tolist() if alive_sum[j] else [math.nan] * ranks for j in range(steps)]
    calibration = dict(bins=bins.tolist(), n=conf_n.tolist(), accepted=conf_hit.tolist())
    out = dict(loss=loss_sum / max(loss_rows, 1), agree=agree, rank_acceptance=rank_acc, calibration=calibration,
               accept=(accept_sum / accept_rows.clamp(min=1)).tolist(),
               tau=1.0 + accepted_total / max(chains, 1), n_positions=int(chains))
    if by_domain:
        out["tau_by_domain"] = {d: 1.0 + a / max(c, 1) for d, (a, c) in domains.items()}
    return out
