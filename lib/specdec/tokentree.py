"""A token tree: its structure, its attention mask and positions, and how a drafter grows one.

These are the parts of chapter 11's trees that lower layers need: the cache runs a tree's
verify pass (:meth:`specdec.cache.CachedLM.tree_logits`, which needs :func:`tree_mask` and
:func:`tree_positions`) and drafters grow trees (:func:`grow_tree`). Verification and the tree
loop are in :mod:`specdec.trees`, which re-exports everything here.

* :class:`TokenTree` -- nodes (token ids) and their parents, parents before children;
* :func:`check_shape`, :func:`full_shape` -- static shapes as rank paths;
* :func:`grow_tree` -- a tree grown level by level from a drafter's logits (EAGLE-2's dynamic
  growth when greedy, a static shape when sampling);
* :func:`tree_mask`, :func:`tree_positions` -- the verify pass's mask and position ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import probs_from_logits

__all__ = ["TokenTree", "check_shape", "full_shape", "grow_tree", "tree_mask", "tree_positions"]


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


def check_shape(shape) -> None:
    """A static tree shape -- a list of rank paths, ``(0,)`` the first child of the root,
    ``(0, 1)`` the second child of that -- must be closed under prefixes and under lower sibling
    ranks; a ValueError says which path breaks it."""
    paths = set(shape)
    if len(paths) != len(shape) or not shape or any(len(r) == 0 for r in paths):
        raise ValueError("a tree shape is a non-empty list of distinct, non-empty rank paths")
    for r in paths:
        if len(r) > 1 and r[:-1] not in paths:
            raise ValueError(f"rank path {r} is in the shape but its parent {r[:-1]} is not")
        if r[-1] > 0 and r[:-1] + (r[-1] - 1,) not in paths:
            raise ValueError(f"rank path {r} is in the shape but its elder sibling is not")


def full_shape(depth: int, top_k: int, n_nodes: int) -> list[tuple[int, ...]]:
    """A static tree shape of at most ``n_nodes`` rank paths: breadth first through the tree in
    which every node has ``top_k`` children, ``depth`` levels, lower ranks first -- a simple
    shape that is closed under prefixes and under lower sibling ranks."""
    if depth < 1 or top_k < 1 or n_nodes < 1:
        raise ValueError("depth, top_k and n_nodes must be >= 1")
    shape, level = [], [()]
    for _ in range(depth):
        nxt = []
        for prefix in level:
            for r in range(top_k):
                if len(shape) == n_nodes:
                    return shape
                shape.append(prefix + (r,))
                nxt.append(prefix + (r,))
        level = nxt
    return shape


def grow_tree(root_logits: torch.Tensor, expand, params, generator=None, shape=None, depth: int = 4, top_k: int = 4,
              n_nodes: int = 16, d2t: torch.Tensor | None = None, vocab_size: int | None = None):
    """Grow a draft tree level by level; returns ``(TokenTree, q)``.

    ``root_logits`` are the drafter's logits for the token after the text; ``expand(nodes,
    tokens, parents, depths)`` returns the drafter's logits ``(len(nodes), V')`` after each of
    ``nodes`` (indices into the lists of every node grown so far). Logits are over the draft's
    vocabulary, ``d2t`` mapping its indices to the target's ids (the identity when ``None``).

    ``shape``: a static tree as rank paths (:func:`check_shape`): the r-th child is the r-th
    most likely token when greedy, the r-th draw without replacement when sampling. Without a
    shape, greedy trees grow dynamically (EAGLE-2): each level expands its ``top_k`` most likely
    nodes by path probability into their ``top_k`` most likely tokens, ``depth`` levels, and
    the ``n_nodes`` most likely nodes are kept (an ancestor is at least as likely as its
    descendants). Sampling uses ``full_shape(depth, top_k, n_nodes)`` then: a tree pruned by the
    values drawn would not draw its children from the ``q`` the verification uses.

    ``q`` is ``None`` when greedy; when sampling, ``(N + 1, vocab_size)``: row 0 the root's
    distribution, row ``i + 1`` node ``i``'s (zero for leaves), in the target's vocabulary.
    """
    if shape is None and not params.greedy:
        shape = full_shape(depth, top_k, n_nodes)
    if shape is not None:
        shape = [tuple(r) for r in shape]
        check_shape(shape)
        depth = max(len(r) for r in shape)
    device = root_logits.device
    vocab_size = vocab_size if vocab_size is not None else root_logits.shape[-1]
    to_target = (lambda j: int(d2t[j])) if d2t is not None else int
    tok, par, ranks, score, depths = [], [], [], [], []
    q_rows: dict[int, torch.Tensor] = {}
    logits_of = {-1: root_logits}
    level = [-1]
    for d in range(1, depth + 1):
        if d > 1:
            if shape is not None:
                todo = [n for n in level if any(len(r) > len(ranks[n]) and r[: len(ranks[n])] == ranks[n]
                                                for r in shape)]
            else:
                todo = sorted(level, key=lambda n: -score[n])[:top_k]
            if not todo:
                break
            rows = expand(todo, tok, par, depths)
            for i, n in enumerate(todo):
                logits_of[n] = rows[i]
        else:
            todo = [-1]
        new_level = []
        for n in todo:
            prefix = () if n < 0 else ranks[n]
            width = (sum(1 for r in shape if len(r) == len(prefix) + 1 and r[:-1] == prefix)
                     if shape is not None else top_k)
            logits = logits_of[n].float()
            if params.greedy:
                logp = logits.log_softmax(-1)
                idx = logp.topk(min(width, logp.shape[-1])).indices
            else:
                qd = probs_from_logits(logits, params)
                width = min(width, int((qd > 0).sum()))
                idx = torch.multinomial(qd, width, replacement=False, generator=generator)
                logp = qd.clamp_min(1e-30).log()
                full = torch.zeros(vocab_size, device=device, dtype=qd.dtype)
                q_rows[n] = full.index_copy_(0, d2t, qd) if d2t is not None else qd
            for r, j in enumerate(idx.tolist()):
                tok.append(to_target(j))
                par.append(n)
                ranks.append(prefix + (r,))
                score.append((0.0 if n < 0 else score[n]) + float(logp[j]))
                depths.append(d)
                new_level.append(len(tok) - 1)
        level = new_level
    keep = list(range(len(tok)))
    if shape is None:
        keep = sorted(keep, key=lambda n: (-score[n], depths[n]))[:n_nodes]
    keep = sorted(keep, key=lambda n: (depths[n], n))  # parents before children
    index = {n: i for i, n in enumerate(keep)}
    if any(par[n] >= 0 and par[n] not in index for n in keep):
        raise RuntimeError("a kept node lost its parent")
    tree = TokenTree(tuple(tok[n] for n in keep), tuple(index[par[n]] if par[n] >= 0 else -1 for n in keep))
    if params.greedy:
        return tree, None
    q = torch.zeros(len(keep) + 1, vocab_size, device=device)
    if -1 in q_rows:
        q[0] = q_rows[-1]
    for n, i in index.items():
        if n in q_rows:
            q[i + 1] = q_rows[n]
    return tree, q


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
