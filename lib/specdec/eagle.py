"""A draft head that reads the target's own hidden states: EAGLE-3-lite (chapter 10).

A separate small draft model must guess the target's next token from the text alone. The
target has already done most of that work: its hidden states after reading the text are the
features its LM head turns into the next-token distribution. EAGLE (Li et al., 2024) drafts
from those features with one small decoder layer; EAGLE-3 (Li et al., 2025) fuses a low, a
middle and a high layer's features and trains the head on its own outputs ("training-time
test", :mod:`specdec.headtrain`). This module is the head and its drafter:

* :class:`HeadConfig` -- the head's shape: the target's width, heads and MLP; which target
  layers it reads; how many tokens its draft vocabulary has.
* :class:`EagleHead` -- ``fuse`` (a linear map from the kept layers, side by side, to one
  feature), one decoder layer whose attention reads the feature *and* the embedding of the
  next token (``2 * hidden`` wide), and the target's frozen LM-head rows for the draft
  vocabulary (``d2t``: draft index -> target token id). A draft over a reduced vocabulary is
  a distribution ``q`` that is zero outside it, so the rejection step stays exact.
* :class:`EagleDrafter` -- the :class:`specdec.drafters.Drafter` that proposes with it.

The bookkeeping, on the text ``x_0 .. x_{T-1}``. ``F_t`` is the target's (fused) feature at
position ``t``, computed when the target read ``x_t``; it predicts ``x_{t+1}``. The head's
input at position ``t`` is the *pair* ``(F_t, x_{t+1})``, and its output ``h_t`` is its guess
at the target's feature one position on, which the LM head turns into a distribution for
``x_{t+2}``. After a round the target has read every token but the last (the correction or
bonus token it has just produced), so pairs ``0 .. T-2`` are all known: the head catches up on
the new ones (the verify pass computed their features, :meth:`specdec.cache.CachedLM.features`)
and drafts ``x_T``. Each further draft token feeds the pair ``(h, last draft token)``: the
head's own output stands in for the feature the target has not computed yet. The head's own
KV cache is rolled back to the real pairs before each round, as the target's is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cache import decoder_layers
from .checks import require_int
from .sampling import probs_from_logits, sample
from .registry import ModelUnavailableError, book_head_dir, head_available  # noqa: F401
from .tokentree import grow_tree

__all__ = ["HeadConfig", "default_feature_layers", "EagleHead", "HeadCache", "training_time_test_mask",
           "EagleDrafter", "save_head",
           "DRAFT_VOCAB", "load_head", "book_head_dir", "head_available", "load_book_head"]


def default_feature_layers(n_layers: int) -> tuple[int, ...]:
    """EAGLE-3's choice: a low, a middle and a high decoder layer (0-based indices of the
    layers whose outputs are read): the second, the one before the middle, the fourth from
    the top. Fewer when the model is too shallow to have three."""
    if n_layers < 1:
        raise ValueError(f"need at least one layer, got {n_layers}")
    return tuple(sorted({min(1, n_layers - 1), max(0, n_layers // 2 - 1), max(0, n_layers - 4)}))


#: Tokens in the book's draft vocabulary: the most frequent ones of the target's answers
#: (:func:`specdec.headdata.draft_vocabulary`); the head's distribution is zero elsewhere.
DRAFT_VOCAB = 4096


@dataclass(frozen=True)
class HeadConfig:
    """The shape of a head; :meth:`for_target` copies the target's."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    feature_layers: tuple[int, ...]
    draft_vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    train_lm_rows: bool = False  # the LM-head rows of the draft vocabulary trained too (EAGLE-3's choice)

    def __post_init__(self):
        object.__setattr__(self, "feature_layers", tuple(int(i) for i in self.feature_layers))
        for name in ("hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "draft_vocab_size"):
            require_int(name, getattr(self, name), 1)
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if not self.feature_layers or list(self.feature_layers) != sorted(set(self.feature_layers)):
            raise ValueError(f"feature_layers must be distinct ascending indices, got {self.feature_layers!r}")

    @classmethod
    def for_target(cls, target, feature_layers: tuple[int, ...] | None = None, draft_vocab_size: int = DRAFT_VOCAB):
        cfg = target.config
        n_layers = len(decoder_layers(target))
        layers = default_feature_layers(n_layers) if feature_layers is None else tuple(feature_layers)
        if any(not 0 <= i < n_layers for i in layers):
            raise ValueError(f"feature_layers {layers} outside the target's {n_layers} layers")
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"the head implements plain RoPE, not {rope.get('rope_type')!r}")
        return cls(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                   num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                   feature_layers=layers, draft_vocab_size=min(draft_vocab_size, cfg.vocab_size),
                   rms_norm_eps=cfg.rms_norm_eps, rope_theta=float(theta))

    def to_dict(self) -> dict:
        return {**asdict(self), "feature_layers": list(self.feature_layers)}


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding of ``x (..., n, d)`` at ``positions (n,)`` or ``(B, n)``,
    in the half-split convention of Llama's."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv  # (..., n, d/2)
    if angles.ndim == 3:  # (B, n, d/2): broadcast over the heads
        angles = angles.unsqueeze(1)
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class HeadCache:
    """The head's own keys and values: buffers that grow by doubling; rollback moves a cursor."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def crop(self, n_keep: int) -> None:
        if not 0 <= n_keep <= self.length:
            raise ValueError(f"cannot keep {n_keep} positions of a head cache holding {self.length}")
        self.length = n_keep

    def append(self, k: torch.Tensor, v: torch.Tensor):
        """Add ``k, v (kv_heads, n, head_dim)``; returns the valid keys and values."""
        end = self.length + k.shape[1]
        if self.k is None or end > self.k.shape[1]:
            room = max(end, 64, 0 if self.k is None else 2 * self.k.shape[1])
            k_new, v_new = k.new_empty(k.shape[0], room, k.shape[2]), v.new_empty(v.shape[0], room, v.shape[2])
            if self.k is not None:
                k_new[:, : self.length], v_new[:, : self.length] = self.k[:, : self.length], self.v[:, : self.length]
            self.k, self.v = k_new, v_new
        self.k[:, self.length:end], self.v[:, self.length:end] = k, v
        self.length = end
        return self.k[:, :end], self.v[:, :end]


class EagleHead(nn.Module):
    """One decoder layer over (target feature, next token), the target's LM head on top.

    ``embedding`` and ``lm_head`` are the target's weights ``(V, hidden)`` (the same tensor
    when tied, as in SmolLM2); they stay frozen and are not part of the head's state: only
    the rows ``lm_head[d2t]`` of the draft vocabulary are kept, as a buffer.
    """

    def __init__(self, cfg: HeadConfig, embedding: torch.Tensor, lm_head: torch.Tensor, d2t: torch.Tensor):
        super().__init__()
        d2t = torch.as_tensor(d2t, dtype=torch.long)
        if d2t.ndim != 1 or len(d2t) != cfg.draft_vocab_size or len(set(d2t.tolist())) != len(d2t):
            raise ValueError(f"d2t must hold {cfg.draft_vocab_size} distinct target token ids")
        if int(d2t.min()) < 0 or int(d2t.max()) >= embedding.shape[0]:
            raise ValueError(f"d2t holds ids outside the target's vocabulary of {embedding.shape[0]}")
        H, nh, nkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.cfg = cfg
        self.fuse = nn.Linear(len(cfg.feature_layers) * H, H, bias=False)
        self.norm_feature, self.norm_token = _RMSNorm(H, cfg.rms_norm_eps), _RMSNorm(H, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(2 * H, nh * hd, bias=False)
        self.k_proj = nn.Linear(2 * H, nkv * hd, bias=False)
        self.v_proj = nn.Linear(2 * H, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, H, bias=False)
        self.norm_mlp = _RMSNorm(H, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(H, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(H, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, H, bias=False)
        self.norm_out = _RMSNorm(H, cfg.rms_norm_eps)
        object.__setattr__(self, "embedding", embedding.detach())  # frozen, not a parameter
        self.register_buffer("d2t", d2t.to(embedding.device))
        rows = lm_head.detach()[self.d2t].clone()
        # the target's own rows, frozen: what training compares the head's distribution with
        self.register_buffer("target_rows", rows, persistent=False)
        if cfg.train_lm_rows:  # the head's own rows: they start as the target's, are trained and saved
            self.head_rows = nn.Parameter(rows.clone())

    @property
    def lm_rows(self) -> torch.Tensor:
        """The LM-head rows the head drafts with: its own when trained, else the target's."""
        return self.head_rows if self.cfg.train_lm_rows else self.target_rows

    @classmethod
    def for_target(cls, target, d2t, feature_layers=None, train_lm_rows: bool = False) -> "EagleHead":
        """A freshly initialised head for ``target`` over the draft vocabulary ``d2t``."""
        from dataclasses import replace

        cfg = replace(HeadConfig.for_target(target, feature_layers, draft_vocab_size=len(d2t)),
                      train_lm_rows=train_lm_rows)
        head = cls(cfg, target.get_input_embeddings().weight, target.get_output_embeddings().weight, d2t)
        return head.to(next(target.parameters()).device)

    @property
    def vocab_size(self) -> int:
        """The target's vocabulary (the length of a full-vocabulary ``q``)."""
        return self.embedding.shape[0]

    # -- the pieces of one position ------------------------------------------------------------

    def _qkv(self, feature, tokens, positions):
        """Queries, keys, values ``(..., heads, n, head_dim)`` for pairs (feature, token)."""
        cfg = self.cfg
        emb = F.embedding(tokens, self.embedding).to(feature.dtype)
        x = torch.cat([self.norm_feature(feature), self.norm_token(emb)], -1)
        lead = x.shape[:-1]  # (..., n)

        def heads(t, n_heads):
            return t.view(*lead, n_heads, cfg.head_dim).transpose(-3, -2)

        q = _rope(heads(self.q_proj(x), cfg.num_heads), positions, cfg.rope_theta)
        k = _rope(heads(self.k_proj(x), cfg.num_kv_heads), positions, cfg.rope_theta)
        return q, k, heads(self.v_proj(x), cfg.num_kv_heads)

    def _finish(self, feature, attn):
        """Residual, MLP, residual: the head's output feature ``h``."""
        h = feature + self.o_proj(attn.transpose(-3, -2).flatten(-2))
        m = self.norm_mlp(h)
        return h + self.down_proj(F.silu(self.gate_proj(m)) * self.up_proj(m))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (``d2t`` maps an index to the target's token id)."""
        return self.norm_out(h) @ self.lm_rows.T

    # -- drafting: one sequence, with a cache --------------------------------------------------

    def step(self, cache: HeadCache, feature: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Read pairs ``(feature (n, H), tokens (n,))`` at positions ``start .. start+n-1``
        after the ``cache``'s (which must hold exactly ``start`` positions); returns ``h (n, H)``."""
        if cache.length != start:
            raise ValueError(f"the head cache holds {cache.length} positions, not {start}")
        n = feature.shape[0]
        positions = torch.arange(start, start + n, device=feature.device)
        q, k, v = self._qkv(feature, tokens, positions)
        keys, values = cache.append(k, v)
        mask = None
        if n > 1:  # causal among the new positions, all earlier ones visible
            mask = torch.arange(keys.shape[1], device=q.device) <= (start + torch.arange(n, device=q.device))[:, None]
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return self._finish(feature, attn)

    def step_tree(self, cache: HeadCache, feature: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
        """Read tree nodes' pairs ``(feature (m, H), tokens (m,))`` at ``positions (m,)``; entry
        ``i`` attends to the cache entries where ``visible[i]`` (``(m, cache.length + m)`` bool:
        the real pairs, its ancestors' entries and its own). Returns ``h (m, H)``."""
        q, k, v = self._qkv(feature, tokens, positions)
        keys, values = cache.append(k, v)
        if visible.shape != (feature.shape[0], keys.shape[1]):
            raise ValueError(f"visible must have shape {(feature.shape[0], keys.shape[1])}, got {tuple(visible.shape)}")
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, enable_gqa=True)
        return self._finish(feature, attn)

    # -- training: every position at once, unrolled on the head's own outputs ----------------

    def unrolled(self, features: torch.Tensor, tokens: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """The head's outputs for ``steps`` draft steps from every position at once.

        ``features (B, n, H)`` are the fused target features of positions ``0 .. n-1`` and
        ``tokens (B, n + steps)`` the text from ``x_1`` on (``tokens[:, s + j - 1]`` is
        ``x_{s+j}``, padded at the end). Row ``s`` of step ``j`` (1-based) is what drafting
        computes when the last real pair is ``s``: its input is ``(h_s^{(j-1)}, x_{s+j})``
        (``h^{(0)}`` = the target's feature), at position ``s + j - 1``; it attends to the real
        pairs ``0 .. s`` and to its own chain's steps ``2 .. j`` -- exactly the keys a drafting
        round holds. Returns ``[h^{(1)}, ..., h^{(steps)}]``, each ``(B, n, H)``; ``h^{(j)}``
        row ``s`` predicts ``x_{s+j+1}``.
        """
        B, n, _ = features.shape
        if tokens.shape != (B, n + steps):
            raise ValueError(f"tokens must have shape {(B, n + steps)}, got {tuple(tokens.shape)}")
        rows = torch.arange(n, device=features.device)
        scale = 1.0 / math.sqrt(self.cfg.head_dim)
        group = self.cfg.num_heads // self.cfg.num_kv_heads
        causal = rows[None, :] <= rows[:, None]  # real key c visible from row s when c <= s
        keys, values, outs, feature = [], [], [], features
        for j in range(1, steps + 1):
            q, k, v = self._qkv(feature, tokens[:, j - 1: j - 1 + n], rows + (j - 1))
            keys.append(k.repeat_interleave(group, dim=1))
            values.append(v.repeat_interleave(group, dim=1))
            real = (q @ keys[0].transpose(-1, -2)) * scale
            real = real.masked_fill(~causal, float("-inf"))
            diag = [(q * kk).sum(-1, keepdim=True) * scale for kk in keys[1:]]
            weights = torch.cat([real, *diag], -1).softmax(-1)
            attn = weights[..., :n] @ values[0]
            for i, vv in enumerate(values[1:]):
                attn = attn + weights[..., n + i: n + i + 1] * vv
            feature = self._finish(feature, attn)
            outs.append(feature)
        return outs


def training_time_test_mask(n: int, steps: int) -> torch.Tensor:
    """Which keys each query of :meth:`EagleHead.unrolled` sees, as one dense mask
    ``(steps * n, steps * n)``: entry ``[(j - 1) * n + s, (i - 1) * n + c]`` holds when step
    ``j``'s row ``s`` attends to step ``i``'s row ``c`` -- the real pairs ``c <= s`` (step 1) and
    its own chain's earlier drafts at the same row (``c = s``, ``2 <= i <= j``), the keys a
    drafting round holds. ``unrolled`` computes the same attention without forming it: one
    causal block and one diagonal per step."""
    require_int("n", n, 1)
    require_int("steps", steps, 1)
    rows = torch.arange(n)
    mask = torch.zeros(steps * n, steps * n, dtype=torch.bool)
    for j in range(steps):
        block = slice(j * n, (j + 1) * n)
        mask[block, :n] = rows[None, :] <= rows[:, None]
        for i in range(1, j + 1):
            mask[block, i * n: (i + 1) * n] = torch.eye(n, dtype=torch.bool)
    return mask


class EagleDrafter:
    """Drafts with an :class:`EagleHead` from the target's features (see the module notes).

    The loop binds it to the target's cache (:meth:`bind`), which then keeps the layers in
    ``feature_layers``. Greedy proposals are the head's argmax; sampled ones are drawn from
    its distribution over the draft vocabulary, returned in the target's vocabulary (zero
    outside the draft vocabulary) for the rejection step.
    """

    def __init__(self, head: EagleHead, name: str = "eagle"):
        self.head = head.eval()
        self.name = name
        self.feature_layers = head.cfg.feature_layers
        self.target_lm = None
        self.reset()

    def bind(self, target_lm) -> None:
        if tuple(target_lm.feature_layers) != self.feature_layers:
            raise ValueError(f"the target's cache keeps layers {target_lm.feature_layers}, "
                             f"the head reads {self.feature_layers}")
        self.target_lm = target_lm
        self.reset()

    def reset(self) -> None:
        self.cache = HeadCache()
        self.n_real = 0  # real pairs (target features) the head cache holds
        self._h_last = None  # the head's output at the last of them

    def _catch_up(self, seq) -> torch.Tensor:
        """Feed the head the real pairs it has not seen; returns its output at the last one."""
        if self.target_lm is None:
            raise RuntimeError("EagleDrafter needs the target's cache: speculative_generate binds it")
        head = self.head
        end = len(seq) - 1  # pairs 0 .. end-1 are known: the target has read all but the last token
        if self.target_lm.length < end or self.n_real > end:
            raise RuntimeError(f"the head is out of step with the target (target read {self.target_lm.length} "
                               f"tokens, head holds {self.n_real} pairs, text has {len(seq)})")
        self.cache.crop(self.n_real)  # forget last round's draft steps
        if end == self.n_real and self._h_last is not None:  # asked again about the same text
            return self._h_last
        feats = self.target_lm.features(self.n_real, end).to(head.lm_rows.dtype)
        toks = torch.tensor(seq[self.n_real + 1: end + 1], dtype=torch.long, device=head.d2t.device)
        h = head.step(self.cache, head.fuse(feats), toks, start=self.n_real)[-1:]
        self.n_real, self._h_last = end, h
        return h

    @torch.inference_mode()
    def propose(self, seq, k, params, generator=None):
        head = self.head
        if k == 0:
            return torch.empty(0, dtype=torch.long, device=head.d2t.device), None
        h = self._catch_up(seq)
        end = self.n_real
        tokens, probs = [], []
        for i in range(k):
            logits = head.logits(h)[0]
            if params.greedy:
                idx = logits.argmax(-1)
            else:
                q = probs_from_logits(logits, params)
                idx = sample(q, generator)
                probs.append(torch.zeros(head.vocab_size, device=q.device, dtype=q.dtype).index_copy_(0, head.d2t, q))
            token = head.d2t[idx]
            tokens.append(token)
            if i + 1 < k:
                h = head.step(self.cache, h, token.view(1), start=end + i)
        return torch.stack(tokens), (torch.stack(probs) if probs else None)

    @torch.inference_mode()
    def propose_tree(self, seq, params, generator=None, shape=None, depth: int = 4, top_k: int = 4,
                     n_nodes: int = 16):
        """A token tree and its draft distributions (:func:`specdec.trees.grow_tree`, which
        documents ``shape``, ``depth``, ``top_k`` and ``n_nodes``). Each level's nodes are read
        by the head in one step, each attending to the real pairs, its ancestors and itself."""
        head = self.head
        device = head.d2t.device
        h_root = self._catch_up(seq)
        end = self.n_real
        out_h, entry = {-1: h_root}, {}

        def expand(nodes, tokens, parents, depths):
            hs = torch.cat([out_h[parents[n]] for n in nodes])
            toks = torch.tensor([tokens[n] for n in nodes], device=device)
            positions = torch.tensor([end + depths[n] - 1 for n in nodes], device=device)
            base = self.cache.length
            visible = torch.zeros(len(nodes), base + len(nodes), dtype=torch.bool, device=device)
            visible[:, : self.n_real] = True
            for i, n in enumerate(nodes):
                a = parents[n]
                while a >= 0:
                    visible[i, entry[a]] = True
                    a = parents[a]
                visible[i, base + i] = True
                entry[n] = base + i
            new = head.step_tree(self.cache, hs, toks, positions, visible)
            for i, n in enumerate(nodes):
                out_h[n] = new[i: i + 1]
            return head.logits(new)

        return grow_tree(head.logits(h_root)[0], expand, params, generator, shape, depth, top_k, n_nodes,
                         d2t=head.d2t, vocab_size=head.vocab_size)


# -- files -----------------------------------------------------------------------------------


def save_head(head: EagleHead, directory: str | Path, provenance: dict | None = None) -> Path:
    """Write ``head.safetensors`` (weights in bfloat16, ``d2t``) and ``head.json`` (shape,
    provenance) into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in head.state_dict().items()}
    save_file(state, directory / "head.safetensors")
    (directory / "head.json").write_text(json.dumps({"config": head.cfg.to_dict(), "provenance": provenance or {}},
                                                    indent=2) + "\n")
    return directory


def load_head(directory: str | Path, target) -> EagleHead:
    """The head saved in ``directory``, attached to ``target``'s embedding and LM head, in the
    target's dtype and on its device."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, weights = directory / "head.json", directory / "head.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no head in {directory} (expected head.json and head.safetensors); "
                                "train one with python -m specdec.headtrain")
    cfg = HeadConfig(**json.loads(meta_path.read_text())["config"])
    state = load_file(weights)
    p = next(target.parameters())
    head = EagleHead(cfg, target.get_input_embeddings().weight, target.get_output_embeddings().weight, state["d2t"])
    head.load_state_dict({k: v.to(p.dtype) if v.is_floating_point() else v for k, v in state.items()})
    return head.to(p.device, p.dtype).eval()


def load_book_head(target) -> EagleHead:
    """The book's trained head for SmolLM2-135M, on ``target``; a clear error where it is missing."""
    if not head_available():
        raise ModelUnavailableError(f"the trained head is not in {book_head_dir()}: it is committed with the book "
                                    "(check out data/heads/), or train it with `python -m specdec.headtrain`")
    return load_head(book_head_dir(), target)
