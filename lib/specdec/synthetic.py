"""Models made rather than loaded: derived drafts, random-weight models, synthetic pairs.

* **Drafts derived from a model**: :func:`first_layers_copy` keeps a model's first layers and
  exits through its own final norm and output head (an "early exit", no training).
* **Random-weight models**: :func:`random_model` builds a real architecture from its config in
  ``data/configs`` (:func:`specdec.registry.model_config`) with random weights; every tensor has
  its real shape, so a forward pass costs what the real model's does, where the weights are
  absent.
* **Synthetic pairs with a dialled agreement**: :func:`synthetic_pair` builds a tiny random
  Llama target and a draft made of its first layers, whose agreement is set by one knob;
  :func:`measure_acceptance` measures the acceptance rate of any draft against a target, and
  :func:`calibrate_synthetic` finds the knob that gives a wanted rate
  (:class:`SyntheticCalibration`).

Everything here runs offline and needs no weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field

import torch

from .checks import require_int
from .profiling import torch_threads
from .registry import model_config

__all__ = [
    "TeacherDraftLM",
    "first_layers_copy",
    "random_model",
    "synthetic_pair",
    "measure_acceptance",
    "SyntheticCalibration",
    "calibrate_synthetic",
]

# --------------------------------------------------------------------------------------------
# Drafts derived from a model
# --------------------------------------------------------------------------------------------


def _decoder_layers(model) -> tuple[torch.nn.Module, str]:
    """The module holding the decoder layers and the attribute name of that ModuleList."""
    n = model.config.get_text_config(decoder=True).num_hidden_layers
    candidates = []
    for owner in model.modules():
        for name, child in owner.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n:
                candidates.append((owner, name))
    if len(candidates) != 1:
        raise ValueError(
            f"cannot tell which ModuleList of {type(model).__name__} holds its {n} decoder layers "
            f"(found {len(candidates)} candidates)"
        )
    return candidates[0]


def first_layers_copy(model, n_layers: int, share_weights: bool = False):
    """A copy of ``model`` that keeps only its first ``n_layers`` decoder layers.

    Embeddings, final norm and output head stay as they are, so the copy is an "early exit"
    of the model through its own head, with no training. ``config.num_hidden_layers`` (and
    any per-layer list such as ``config.layer_types``) is cut to match, so a transformers
    ``DynamicCache`` built for the copy has one entry per kept layer. With
    ``share_weights=True`` the copy reuses the model's parameter tensors (no extra memory);
    otherwise it owns a deep copy.
    """
    config = model.config.get_text_config(decoder=True)
    total = config.num_hidden_layers
    require_int("n_layers", n_layers, 1, total)
    if getattr(config, "is_heterogeneous", False):
        raise ValueError("first_layers_copy does not handle heterogeneous per-layer configs")
    owner, name = _decoder_layers(model)
    layers = getattr(owner, name)
    memo = {}
    if share_weights:
        for tensor in list(model.parameters()) + list(model.buffers()):
            memo[id(tensor)] = tensor
    setattr(owner, name, torch.nn.ModuleList(list(layers)[:n_layers]))
    try:
        draft = copy.deepcopy(model, memo)
    finally:
        setattr(owner, name, layers)
    draft_config = draft.config.get_text_config(decoder=True)
    draft_config.num_hidden_layers = n_layers
    for attr in ("layer_types", "mlp_layer_types"):
        value = getattr(draft_config, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == total:
            setattr(draft_config, attr, type(value)(value[:n_layers]))
    # The kept layers must index the cache 0..n-1; a layer pointing past the end would break it.
    for i, layer in enumerate(getattr(_decoder_layers(draft)[0], name)):
        for module in layer.modules():
            idx = getattr(module, "layer_idx", None)
            if idx is not None and idx != i:
                raise ValueError(f"layer {i} of the copy has layer_idx {idx}: cannot reuse it as a shallower model")
    return draft


# --------------------------------------------------------------------------------------------
# Random-weight models
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _skip_init():
    """Build modules without running any weight initialisation (we fill the weights ourselves)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally, only slower
        yield
        return
    with no_init_weights():
        yield


@torch.no_grad()
def _fill_random(model, std: float, generator: torch.Generator) -> None:
    """Matrices ~ N(0, std^2), biases 0, norm scales 1: the usual transformer initialisation
    (without per-model refinements such as GPT-2's scaled residual projections)."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, std, generator=generator)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def _build_random(config, dtype: torch.dtype, device: str, seed: int, std: float | None = None):
    from transformers import AutoModelForCausalLM

    with torch.device(device), _skip_init():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    _fill_random(model, config.initializer_range if std is None else std, generator)
    model.tie_weights()
    return model.eval()


def random_model(key: str, dtype: torch.dtype = torch.float32, device: str = "cpu", num_layers: int | None = None, seed: int = 0):
    """A model with the architecture of ``key`` (see :data:`CONFIG_KEYS`) and random weights.

    Every tensor has its real shape, so a forward pass costs what the real model's does:
    this is how the book measures decode cost where the weights are absent. ``num_layers``
    keeps fewer decoder layers (to fit a CPU); weights are ``N(0, initializer_range^2)``.
    """
    overrides = {}
    if num_layers is not None:
        require_int("num_layers", num_layers, 1)
        overrides["num_hidden_layers"] = num_layers
    config = model_config(key)
    for name, value in overrides.items():
        setattr(config, name, value)
    return _build_random(config, dtype, device, seed)


# --------------------------------------------------------------------------------------------
# Synthetic pairs with a dialled agreement
# --------------------------------------------------------------------------------------------


def _synthetic_config(vocab_size: int, n_layers: int, hidden: int, n_heads: int, n_kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=4096,
        initializer_range=1.0 / math.sqrt(hidden),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def synthetic_pair(
    agreement_knob: float,
    vocab_size: int = 512,
    n_layers: int = 8,
    draft_layers: int = 1,
    hidden: int = 128,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    logit_std: float = 4.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """A tiny random Llama target and a draft whose agreement with it is set by one knob.

    The target has ``n_layers`` layers. In every layer after the first ``draft_layers`` the
    two residual-branch output projections (``o_proj`` and ``down_proj``) are multiplied by
    ``eps = agreement_knob``; the draft is the target's first ``draft_layers`` layers with
    the same embeddings, norm and head (:func:`first_layers_copy`). So ``eps = 0`` makes the
    target compute exactly what the draft computes (acceptance 1), and a growing ``eps`` lets
    the later layers pull the target away from the draft (acceptance falls towards that of
    two unrelated models). The draft costs about ``draft_layers / n_layers`` of the target.

    The output head is scaled so the logits have standard deviation about ``logit_std``,
    peaked enough that greedy agreement and sampled acceptance both move smoothly with eps.
    The weights depend only on ``seed`` (not on eps), so pairs with different knobs share
    everything but the scale of the later layers. Returns ``(draft, target)`` in eval mode.
    Use :func:`calibrate_synthetic` to find the knob for a wanted acceptance rate.
    """
    if not agreement_knob >= 0:
        raise ValueError(f"agreement_knob (eps) must be >= 0, got {agreement_knob!r}")
    if not 1 <= draft_layers < n_layers:
        raise ValueError(f"need 1 <= draft_layers < n_layers, got draft_layers={draft_layers}, n_layers={n_layers}")
    if hidden % n_heads or n_heads % n_kv_heads:
        raise ValueError(f"hidden ({hidden}) must divide into n_heads ({n_heads}), which must divide into n_kv_heads ({n_kv_heads})")
    config = _synthetic_config(vocab_size, n_layers, hidden, n_heads, n_kv_heads)
    target = _build_random(config, torch.float32, "cpu", seed)
    with torch.no_grad():
        # After the final RMSNorm the hidden state has unit scale per coordinate, so this head
        # gives logits with standard deviation ~ logit_std.
        head = target.get_output_embeddings().weight
        head.mul_(logit_std / (head.std() * math.sqrt(hidden)))
        for weight in _late_projections(target, draft_layers):
            weight.mul_(agreement_knob)
    draft = first_layers_copy(target, draft_layers)
    return draft.to(device=device, dtype=dtype).eval(), target.to(device=device, dtype=dtype).eval()


def _late_projections(target, draft_layers: int) -> list[torch.Tensor]:
    """The residual-branch output weights of the layers the draft does not have."""
    return [
        w
        for layer in target.model.layers[draft_layers:]
        for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)
    ]


def _one_thread():
    """Tiny models run on one CPU thread (:func:`specdec.profiling.torch_threads`)."""
    return torch_threads(1)


@torch.no_grad()
def measure_acceptance(
    draft,
    target,
    params=None,
    n_contexts: int = 32,
    context_len: int = 48,
    prompt_len: int = 4,
    seed: int = 0,
) -> float:
    """Mean acceptance rate alpha = E[sum_x min(p(x), q(x))] over contexts the target writes.

    Each context starts from ``prompt_len`` random tokens and is continued by the target
    itself (sampling with ``params``; greedy when ``params.temperature == 0``), as in
    speculative decoding, where every position the draft guesses follows target-made text.
    Both models then score every position in one forward pass
    (:func:`specdec.selfspec.acceptance_along`, which gives alpha per position; for greedy
    params, the indicator that the two argmaxes agree).
    """
    from .sampling import SamplingParams

    params = SamplingParams() if params is None else params
    with _one_thread():
        return _measure_acceptance(draft, target, params, n_contexts, context_len, prompt_len, seed)


@torch.no_grad()
def _measure_acceptance(draft, target, params, n_contexts, context_len, prompt_len, seed) -> float:
    from transformers import DynamicCache

    from .sampling import probs_from_logits, sample
    from .selfspec import acceptance_along

    device = next(target.parameters()).device
    vocab = target.config.vocab_size
    generator = torch.Generator(device="cpu").manual_seed(seed)
    seq = torch.randint(vocab, (n_contexts, prompt_len), generator=generator).to(device)
    cache = DynamicCache(config=target.config)
    logits = target(seq, past_key_values=cache, use_cache=True).logits[:, -1]
    for _ in range(context_len):
        nxt = sample(probs_from_logits(logits, params).cpu(), generator).to(device)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        logits = target(nxt[:, None], past_key_values=cache, use_cache=True).logits[:, -1]
    # both models score every generated token of the contexts (the one estimator of the book)
    return acceptance_along(draft, target, seq, start=prompt_len, params=params).mean().item()


@dataclass(frozen=True)
class SyntheticCalibration:
    """The knob that gives a wanted acceptance rate, and the rate measured at it."""

    target_alpha: float
    eps: float
    alpha: float
    greedy: bool
    pair_kwargs: dict = field(default_factory=dict)


def calibrate_synthetic(
    target_alpha: float,
    params=None,
    tol: float = 0.01,
    max_iter: int = 30,
    eps_max: float = 64.0,
    n_contexts: int = 32,
    context_len: int = 48,
    measure_seed: int = 1,
    **pair_kwargs,
) -> SyntheticCalibration:
    """Find ``eps`` such that :func:`synthetic_pair` (with ``pair_kwargs``) has acceptance
    ``target_alpha`` under ``params`` (default: sampling at temperature 1), by bisection.

    Acceptance falls as eps grows, from 1 at eps = 0. The contexts used to measure it are
    drawn with ``measure_seed``; measure the returned pair on other contexts to check it.
    """
    from .sampling import SamplingParams

    params = SamplingParams() if params is None else params
    if not 0 < target_alpha < 1:
        raise ValueError(f"target_alpha must be strictly between 0 and 1, got {target_alpha}")

    # Build the pair once at eps = 1; every other eps only rescales the later layers.
    draft, target = synthetic_pair(1.0, **pair_kwargs)
    draft_layers = draft.config.num_hidden_layers
    base = [w.detach().clone() for w in _late_projections(target, draft_layers)]

    def alpha_at(eps: float) -> float:
        with torch.no_grad():
            for w, w0 in zip(_late_projections(target, draft_layers), base):
                w.copy_(w0 * eps)
        return measure_acceptance(draft, target, params, n_contexts=n_contexts, context_len=context_len, seed=measure_seed)

    lo, hi = 0.0, 1.0
    a_hi = alpha_at(hi)
    while a_hi > target_alpha:
        lo, hi = hi, 2 * hi
        if hi > eps_max:
            raise ValueError(
                f"even eps={eps_max} leaves acceptance at {a_hi:.3f} > {target_alpha}: this synthetic pair "
                "cannot go that low; lower logit_std or draft_layers, or raise n_layers"
            )
        a_hi = alpha_at(hi)
    best = (hi, a_hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        a_mid = alpha_at(mid)
        if abs(a_mid - target_alpha) < abs(best[1] - target_alpha):
            best = (mid, a_mid)
        if abs(a_mid - target_alpha) <= tol:
            break
        if a_mid > target_alpha:
            lo = mid
        else:
            hi = mid
    return SyntheticCalibration(target_alpha, best[0], best[1], params.greedy, dict(pair_kwargs))


# -- a synthetic draft over another vocabulary, derived from the target (chapter 8) ----------


class TeacherDraftLM:
    """A draft "model" over the draft's vocabulary whose guesses come from the target.

    Asked for the next draft token after a draft-token context, it decodes the context to
    text, tokenises it for the target, takes the target's next-token distribution ``p``, and
    pushes it to the draft's vocabulary: each target token's mass goes to the first draft
    token of that token's text (what a draft modelling the same text would put there).
    Gaussian noise of standard deviation ``noise`` on the log-probabilities, fixed per
    context, makes it an imperfect draft. It runs the target without a cache, so it is a
    tool for measuring acceptance, not for speed. The codecs are
    :class:`specdec.crossvocab.TokenCodec` (chapter 8).
    """

    def __init__(self, target, draft_codec, target_codec, noise: float = 1.0, seed: int = 0):
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.target, self.draft_codec, self.target_codec = target, draft_codec, target_codec
        self.noise, self.seed = float(noise), int(seed)
        first = torch.full((target_codec.vocab_size,), -1, dtype=torch.long)
        for t in range(target_codec.vocab_size):
            data = target_codec.token_bytes(t)
            if data:
                first[t] = draft_codec.encode_bytes(data)[0]
        self.first_draft_token = first
        self.vocab_size = draft_codec.vocab_size

    def reset(self) -> None:
        pass

    @torch.inference_mode()
    def logits(self, seq: torch.Tensor, n_last: int = 1) -> torch.Tensor:
        if n_last != 1:
            raise ValueError("TeacherDraftLM scores one position at a time (n_last=1)")
        ids = self.target_codec.encode_bytes(self.draft_codec.decode_bytes(seq))
        if not ids:
            raise ValueError("the context has no text for the target to read")
        device = next(self.target.parameters()).device
        p = self.target(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().softmax(-1).cpu()
        valid = self.first_draft_token >= 0
        push = torch.zeros(self.vocab_size).index_add_(0, self.first_draft_token[valid], p[valid])
        g = torch.Generator().manual_seed((hash(tuple(seq.tolist())) ^ self.seed) & 0x7FFFFFFF)
        return (torch.log(push + 1e-9) + self.noise * torch.randn(self.vocab_size, generator=g))[None]
