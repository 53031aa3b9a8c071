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
:func:`plan_shape` finds the shape that collects the most expected tokens from a drafter's
acceptance by rank, and :func:`best_tree` weighs that against the measured verify cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TokenTree", "check_shape", "full_shape", "grow_tree", "plan_shape", "best_tree", "tree_mask",
           "tree_positions", "verify_tree_greedy", "verify_tree", "tree_generate"]


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
    from .sampling import probs_from_logits

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


def plan_shape(rank_acceptance, n_nodes: int) -> tuple[list[tuple[int, ...]], float]:
    """The static shape of ``n_nodes`` nodes that maximises the expected number of accepted
    tokens, for a drafter whose rank-``r`` guess at depth ``d`` is the target's token with
    probability ``rank_acceptance[d-1][r]`` (given that its parent was; the ranks exclude each
    other). A node is on the accepted path with the product of these along its rank path, so
    the best tree of ``n`` nodes holds the ``n`` most probable paths; they are taken greedily,
    each next the most probable child slot of a node already in the tree (Sequoia's dynamic
    programme solves the same problem when the probabilities do not factor this way).
    Returns ``(shape, expected accepted tokens)``; rows past the last are the last row."""
    import heapq

    table = [list(map(float, row)) for row in rank_acceptance]
    if not table or not all(table) or n_nodes < 1:
        raise ValueError("need a non-empty table of acceptance by depth and rank, and n_nodes >= 1")

    def a(depth, rank):
        row = table[min(depth, len(table)) - 1]
        return row[rank] if rank < len(row) else 0.0

    shape, total = [], 0.0
    heap = [(-a(1, 0), (0,))]
    while heap and len(shape) < n_nodes:
        neg, path = heapq.heappop(heap)
        prob = -neg
        if prob <= 0:
            break
        shape.append(path)
        total += prob
        # its first child, and its next younger sibling
        heapq.heappush(heap, (-prob * a(len(path) + 1, 0), path + (0,)))
        parent_prob = prob / a(len(path), path[-1]) if a(len(path), path[-1]) > 0 else 0.0
        heapq.heappush(heap, (-parent_prob * a(len(path), path[-1] + 1), path[:-1] + (path[-1] + 1,)))
    return shape, total


def best_tree(rank_acceptance, verify_cost, draft_cost: float, sizes=range(1, 65)):
    """The tree size whose expected tokens per unit of time is largest: for each ``n`` of
    ``sizes``, the best shape (:func:`plan_shape`), its expected tokens per round
    (accepted + 1) and its cost in target decode steps: ``verify_cost(n + 1)`` (the measured
    cost of scoring ``n + 1`` tokens, in decode steps) plus ``draft_cost`` per level drafted.
    Returns a DataFrame, one row per size, with ``tokens_per_step``; the best row maximises it."""
    import pandas as pd

    rows = []
    for n in sizes:
        shape, accepted = plan_shape(rank_acceptance, n)
        depth = max(len(r) for r in shape)
        cost = float(verify_cost(len(shape) + 1)) + draft_cost * depth
        rows.append(dict(n_nodes=len(shape), depth=depth, expected_tokens=accepted + 1, cost=cost,
                         tokens_per_step=(accepted + 1) / cost, shape=shape))
    return pd.DataFrame(rows).drop_duplicates("n_nodes")


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
    from .decoding import start_speculation
    from .sampling import GREEDY, probs_from_logits

    params = GREEDY if params is None else params
    run = start_speculation(target, drafter, prompt_ids, max_new_tokens, params, stop_ids, seed, progress, "tree",
                            cache)
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
        run.rounds.append((len(tree), len(path)))
        run.proposals.append([tree.tokens[i] for i in path])
        run.emit([tree.tokens[i] for i in path] + [nxt])
        run.round_latencies.append(run.timer.now() - t_round)
    return run.result()


def _clip_depth(tree: TokenTree, max_depth: int) -> tuple[TokenTree, list[int]]:
    """The tree without nodes deeper than ``max_depth``, and the kept nodes' old indices."""
    keep = [i for i, d in enumerate(tree.depths) if d <= max_depth]
    if len(keep) == len(tree):
        return tree, keep
    index = {n: i for i, n in enumerate(keep)}
    return TokenTree(tuple(tree.tokens[n] for n in keep), tuple(index.get(tree.parents[n], -1) for n in keep)), keep
