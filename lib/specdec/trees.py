"""Token trees: several continuations drafted at once, verified in one target pass (chapter 11).

A chain drafts one guess per position; when the first guess is wrong the whole round is lost.
A *tree* drafts several candidates per position -- siblings -- and the target scores every node
in one forward pass, each node attending only to the text and to its own ancestors. This module
holds the parts that do not depend on who drafted the tree:

* :class:`TokenTree` -- nodes (token ids) and their parents, parents before children;
* :func:`tree_mask` and :func:`tree_positions` -- the attention mask and position ids of the
  verify pass (a node sits at the position of its depth);
* :func:`verify_tree_greedy` -- the longest path that follows the target's argmax;
* :func:`verify_tree` -- multi-candidate recursive rejection sampling: at each node the
  children are tried in turn, each against the *residual* left by the siblings rejected before
  it (SpecInfer, Miao et al. 2024), with candidates drawn from the draft's distribution with
  replacement or, Sequoia-style, without. Every try is an ordinary accept/reject step against
  the distribution the output must still follow, so the token emitted at each position is
  distributed exactly as the target's.

:meth:`specdec.cache.CachedLM.tree_logits` runs the verify pass and
:meth:`specdec.cache.CachedLM.keep_path` keeps the accepted path's keys and values (and drops
the rest) -- one mechanism, in the cache layer. Drafters build trees with ``propose_tree``
(chapter 10's head, :meth:`specdec.eagle.EagleDrafter.propose_tree`; prompt lookup,
:meth:`specdec.drafters.NGramDrafter.propose_tree`), and :func:`tree_generate` is the loop.

A tree's *shape* can be fixed in advance as rank paths (:func:`check_shape`, :func:`full_shape`);
which shape and size to draft is arithmetic, not mechanism: :func:`specdec.theory.plan_shape`
finds the shape that collects the most expected tokens from a drafter's acceptance by rank,
and :func:`specdec.theory.plan_drafting` weighs chains and trees against the measured verify
cost (both are importable from here too).
"""

from __future__ import annotations

import torch

from .decoding import start_speculation
from .sampling import GREEDY, probs_from_logits

# the tree's structure, mask and growth live below the cache, which runs tree passes; the planner
# lives with the law it applies; both are importable from here, the chapter's module
from .theory import best_tree, plan_shape  # noqa: F401
from .tokentree import TokenTree, check_shape, full_shape, grow_tree, tree_mask, tree_positions  # noqa: F401

__all__ = ["TokenTree", "check_shape", "full_shape", "grow_tree", "plan_shape", "best_tree", "tree_mask",
           "tree_positions", "verify_tree_greedy", "verify_tree", "tree_generate"]


def verify_tree_greedy(logits: torch.Tensor, tree: TokenTree) -> tuple[list[int], int]:
    """Greedy verification: ``logits (N+1, V)`` -- row 0 the target's prediction after the root,
    row ``i+1`` after node ``i``. Follows the child whose token is the target's argmax for as
    long as there is one; returns ``(accepted path nodes, the target's next token)``."""
    best = logits.argmax(-1).tolist()
    path, node = [], -1
    while True:
        nxt = best[node + 1]
        child = next((c for c in tree.children(node) if tree.tokens[c] == nxt), None)
        if child is None:
            return path, nxt
        path.append(child)
        node = child


def verify_tree(p: torch.Tensor, q: torch.Tensor | None, tree: TokenTree, generator: torch.Generator | None = None,
                replacement: bool = True) -> tuple[list[int], int]:
    """Multi-candidate recursive rejection sampling.

    ``p (N+1, V)`` are the target's distributions after the root (row 0) and after each node
    (row ``i+1``); ``q (N+1, V)`` the draft's distribution from which the children of the root
    (row 0) and of each node (row ``i+1``) were drawn -- independently (``replacement=True``) or
    one after another without replacement (``replacement=False``: each next sibling drawn from
    ``q`` with the earlier siblings removed). ``q=None``: the children were chosen
    deterministically (prompt lookup's matches); each is then its own one-point proposal, accepted
    with probability ``p(x)``, and a rejection removes ``x`` from the residual. Children are tried
    in node order. Returns
    ``(accepted path nodes, next token)``: the next token is the target's bonus token when the
    path ends at a leaf, else a draw from the last residual.
    """
    path, node = [], -1
    while True:
        target = p[node + 1].double().clone()
        proposal = None if q is None else q[node + 1].double().clone()
        accepted = None
        for child in tree.children(node):
            x = tree.tokens[child]
            if q is None:  # a one-point proposal at x
                if torch.rand((), generator=generator, device=p.device, dtype=torch.float64) < target[x]:
                    accepted = child
                    break
                target[x] = 0
                if target.sum() <= 0:
                    raise ValueError("the target's distribution has no mass left")
                target = target / target.sum()
                continue
            if proposal[x] <= 0:
                raise ValueError(f"node {child}'s token {x} has draft probability 0: it cannot have been drawn")
            u = torch.rand((), generator=generator, device=p.device, dtype=torch.float64)
            if u * proposal[x] < target[x]:  # accept with probability min(1, p(x)/q(x))
                accepted = child
                break
            residual = (target - proposal).clamp_min(0)
            mass = residual.sum()
            # a rejection is only possible where p(x) < q(x), so some mass remains (up to rounding)
            target = residual / mass if mass > 0 else target
            if not replacement:
                proposal[x] = 0
                left = proposal.sum()
                if left <= 0:
                    break
                proposal = proposal / left
        if accepted is None:
            nxt = torch.multinomial(target.float(), 1, generator=generator)
            return path, int(nxt)
        path.append(accepted)
        node = accepted
        if not tree.children(node):
            nxt = torch.multinomial(p[node + 1].float(), 1, generator=generator)
            return path, int(nxt)


def tree_generate(target, drafter, prompt_ids, max_new_tokens: int, params=None, stop_ids=frozenset(),
                  seed: int = 0, progress: bool = False, cache: str = "preallocated", **tree_options):
    """Speculative decoding with token trees: each round ``drafter.propose_tree`` drafts a tree,
    the target scores it in one pass (:meth:`specdec.cache.CachedLM.tree_logits`), greedy or
    sampling verification picks the accepted path and the next token, and the cache keeps that
    path (:meth:`specdec.cache.CachedLM.keep_path`). ``tree_options`` go to ``propose_tree``.
    Returns a :class:`specdec.metrics.GenerationResult` (a round's "drafted" count is the tree's
    size)."""

    params = GREEDY if params is None else params
    run = start_speculation(target, drafter, prompt_ids, max_new_tokens, params=params, stop_ids=stop_ids, seed=seed,
                            progress=progress, method="tree", cache=cache)
    run.meta.update(tree=dict(tree_options))
    while not run.done:
        t_round = run.timer.now()
        with run.timer.phase("draft"):
            tree, q = drafter.propose_tree(run.seq, params, run.generator, **tree_options)
            tree, kept = _clip_depth(tree, run.remaining - 1)  # never draft past max_new_tokens
            if q is not None:
                q = q[[0] + [i + 1 for i in kept]]
        with run.timer.phase("verify"):
            logits = run.target.tree_logits(run.seq, tree)
        with run.timer.phase("sample"):
            if params.greedy:
                path, nxt = verify_tree_greedy(logits, tree)
            else:
                p = probs_from_logits(logits, params)
                path, nxt = verify_tree(p, None if q is None else q.to(p.device), tree, run.generator,
                                        replacement=False)
        run.target.keep_path(len(run.seq), path)
        run.record_round([tree.tokens[i] for i in path], len(path), nxt, t_round, n_drafted=len(tree))
    return run.result()


def _clip_depth(tree: TokenTree, max_depth: int) -> tuple[TokenTree, list[int]]:
    """The tree without nodes deeper than ``max_depth``, and the kept nodes' old indices."""
    keep = [i for i, d in enumerate(tree.depths) if d <= max_depth]
    if len(keep) == len(tree):
        return tree, keep
    index = {n: i for i, n in enumerate(keep)}
    return TokenTree(tuple(tree.tokens[n] for n in keep), tuple(index.get(tree.parents[n], -1) for n in keep)), keep
