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
the rest) -- one mechanism, in the cache layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenTree", "tree_mask", "tree_positions", "verify_tree_greedy", "verify_tree"]


@dataclass(frozen=True)
class TokenTree:
    """``tokens[i]`` is node ``i``'s token; ``parents[i]`` its parent node, or -1 for a child of
    the root (the last token of the text, which the verify pass reads first). Every parent comes
    before its children, so node order is a valid reading order. Siblings may repeat a token:
    candidates drawn with replacement can, and their verification must see every draw."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]

    def __post_init__(self):
        tokens, parents = tuple(int(t) for t in self.tokens), tuple(int(p) for p in self.parents)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "parents", parents)
        if len(tokens) != len(parents):
            raise ValueError(f"{len(tokens)} tokens but {len(parents)} parents")
        for i, p in enumerate(parents):
            if not -1 <= p < i:
                raise ValueError(f"node {i}'s parent {p} must be -1 (the root) or an earlier node")

    @classmethod
    def chain(cls, tokens) -> "TokenTree":
        """A tree with one child per node: the ordinary draft."""
        tokens = [int(t) for t in tokens]
        return cls(tuple(tokens), tuple(range(-1, len(tokens) - 1)))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def depths(self) -> list[int]:
        """Depth of every node (a child of the root has depth 1)."""
        out = []
        for p in self.parents:
            out.append(1 if p < 0 else out[p] + 1)
        return out

    def children(self, node: int) -> list[int]:
        """The children of ``node`` (-1: the root), in node order -- the order they are tried."""
        return [i for i, p in enumerate(self.parents) if p == node]

    def path_to(self, node: int) -> list[int]:
        """The nodes from the root's child down to ``node``."""
        path = []
        while node >= 0:
            path.append(node)
            node = self.parents[node]
        return path[::-1]

    def ancestors(self) -> torch.Tensor:
        """``A[i, j]``: node ``j`` is node ``i`` or one of its ancestors, ``(N, N)`` bool."""
        n = len(self)
        a = torch.zeros(n, n, dtype=torch.bool)
        for i, p in enumerate(self.parents):
            a[i, i] = True
            if p >= 0:
                a[i] |= a[p]
        return a


def tree_mask(tree: TokenTree, n_cached: int, n_tail: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The additive attention mask ``(1, 1, n_tail + N, n_cached + n_tail + N)`` of a verify pass
    that feeds ``n_tail`` text tokens (causal among themselves) and then the tree's ``N`` nodes,
    after ``n_cached`` cached positions: every query sees the cache; the text tokens see each
    other causally; a node sees all text tokens, itself and its ancestors. 0 where attention is
    allowed, the dtype's most negative number elsewhere (valid for eager and SDPA attention)."""
    n = len(tree)
    allowed = torch.zeros(n_tail + n, n_cached + n_tail + n, dtype=torch.bool)
    allowed[:, :n_cached] = True
    allowed[:n_tail, n_cached:n_cached + n_tail] = torch.ones(n_tail, n_tail, dtype=torch.bool).tril()
    allowed[n_tail:, n_cached:n_cached + n_tail] = True
    allowed[n_tail:, n_cached + n_tail:] = tree.ancestors()
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.view(1, 1, *allowed.shape).to(device)


def tree_positions(tree: TokenTree, n_cached: int, n_tail: int, device="cpu") -> torch.Tensor:
    """Position ids ``(1, n_tail + N)``: the text tokens at their places, a node at the last text
    token's position plus its depth."""
    last = n_cached + n_tail - 1
    pos = list(range(n_cached, n_cached + n_tail)) + [last + d for d in tree.depths]
    return torch.tensor([pos], dtype=torch.long, device=device)


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


def verify_tree(p: torch.Tensor, q: torch.Tensor, tree: TokenTree, generator: torch.Generator | None = None,
                replacement: bool = True) -> tuple[list[int], int]:
    """Multi-candidate recursive rejection sampling.

    ``p (N+1, V)`` are the target's distributions after the root (row 0) and after each node
    (row ``i+1``); ``q (N+1, V)`` the draft's distribution from which the children of the root
    (row 0) and of each node (row ``i+1``) were drawn -- independently (``replacement=True``) or
    one after another without replacement (``replacement=False``: each next sibling drawn from
    ``q`` with the earlier siblings removed). Children are tried in node order. Returns
    ``(accepted path nodes, next token)``: the next token is the target's bonus token when the
    path ends at a leaf, else a draw from the last residual.
    """
    path, node = [], -1
    while True:
        target = p[node + 1].double().clone()
        proposal = q[node + 1].double().clone()
        accepted = None
        for child in tree.children(node):
            x = tree.tokens[child]
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
