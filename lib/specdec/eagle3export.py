"""The book's draft head in EAGLE-3's checkpoint format, the one serving engines load.

Chapter 10's head has EAGLE-3's shape -- a linear map fusing three target layers, one decoder
layer whose attention reads the feature and the next token's embedding side by side, the
target's LM-head rows for a reduced draft vocabulary -- so it can be written in the format of
the EAGLE-3 trainer that vLLM (``"method": "eagle3"``) and SGLang read. Four conventions
differ from the book's, and this module is where they are translated:

* names: ``fuse`` is ``fc``; the layer's parts live under ``midlayer.`` with Llama's names
  (``norm_token`` is ``input_layernorm``, ``norm_feature`` is ``hidden_norm``, ``norm_mlp`` is
  ``post_attention_layernorm``); ``norm_out`` is ``norm``; the draft rows are ``lm_head``;
* the attention input: the book puts ``[feature, token embedding]`` side by side, EAGLE-3
  ``[token embedding, feature]``, so the two column blocks of ``q_proj``, ``k_proj`` and
  ``v_proj`` swap;
* the draft vocabulary: the book's ``d2t`` holds target ids, EAGLE-3's *offsets*
  (``target id = draft index + d2t[draft index]``), with ``t2d`` the mask of target ids drafted;
* the layers read: the book counts a layer by its output (layer ``i``), the engines by the
  input of the layer that follows (``eagle_aux_hidden_state_layer_ids``: ``i + 1``; 0 would be
  the embeddings).

:func:`load_eagle3` reads such a checkpoint back into an :class:`~specdec.eagle.EagleHead`, so
the translation is checked by a round trip: the same logits, draft for draft.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .eagle import EagleHead, HeadConfig

__all__ = ["export_eagle3", "load_eagle3"]

_RENAME = {  # the book's name -> EAGLE-3's
    "fuse.weight": "fc.weight",
    "norm_token.weight": "midlayer.input_layernorm.weight",
    "norm_feature.weight": "midlayer.hidden_norm.weight",
    "q_proj.weight": "midlayer.self_attn.q_proj.weight",
    "k_proj.weight": "midlayer.self_attn.k_proj.weight",
    "v_proj.weight": "midlayer.self_attn.v_proj.weight",
    "o_proj.weight": "midlayer.self_attn.o_proj.weight",
    "norm_mlp.weight": "midlayer.post_attention_layernorm.weight",
    "gate_proj.weight": "midlayer.mlp.gate_proj.weight",
    "up_proj.weight": "midlayer.mlp.up_proj.weight",
    "down_proj.weight": "midlayer.mlp.down_proj.weight",
    "norm_out.weight": "norm.weight",
}
_SWAPPED = ("q_proj.weight", "k_proj.weight", "v_proj.weight")  # input [feature, token] -> [token, feature]


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    half = w.shape[1] // 2
    return torch.cat([w[:, half:], w[:, :half]], 1)


def export_eagle3(head: EagleHead, directory: str | Path, target_config=None,
                  dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``head`` as an EAGLE-3 checkpoint: ``config.json`` (a one-layer Llama config with
    ``draft_vocab_size`` and ``eagle_aux_hidden_state_layer_ids``) and ``model.safetensors``.
    ``target_config``: the target's ``transformers`` config, for the fields a loader copies
    (vocabulary size, special tokens, context length)."""
    from safetensors.torch import save_file

    cfg = head.cfg
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    book = {k: v.detach() for k, v in head.state_dict().items()}
    state = {}
    for name, new in _RENAME.items():
        w = book[name]
        state[new] = _swap_halves(w) if name in _SWAPPED else w
    state["lm_head.weight"] = head.lm_rows.detach()
    state = {k: v.to(dtype).contiguous().cpu() for k, v in state.items()}
    d2t = head.d2t.detach().cpu().long()
    state["d2t"] = (d2t - torch.arange(len(d2t))).contiguous()  # offsets, EAGLE-3's convention
    t2d = torch.zeros(head.vocab_size, dtype=torch.bool)
    t2d[d2t] = True
    state["t2d"] = t2d
    save_file(state, directory / "model.safetensors")

    tc = target_config
    config = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "vocab_size": head.vocab_size,
        "draft_vocab_size": cfg.draft_vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "max_position_embeddings": getattr(tc, "max_position_embeddings", 8192),
        "bos_token_id": getattr(tc, "bos_token_id", None),
        "eos_token_id": getattr(tc, "eos_token_id", None),
        # the engines number a layer's features by the layer that reads them: output of i = i + 1
        "eagle_aux_hidden_state_layer_ids": [i + 1 for i in cfg.feature_layers],
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i + 1 for i in cfg.feature_layers],
                         "use_aux_hidden_state": True},
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_eagle3(directory: str | Path, target) -> EagleHead:
    """Read an EAGLE-3 checkpoint written by :func:`export_eagle3` (or a trainer using the same
    names) back into an :class:`EagleHead` on ``target``'s embedding, dtype and device."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"no EAGLE-3 checkpoint in {directory} (expected config.json and model.safetensors)")
    c = json.loads((directory / "config.json").read_text())
    ids = c.get("eagle_aux_hidden_state_layer_ids") or c.get("eagle_config", {}).get("eagle_aux_hidden_state_layer_ids")
    if not ids or min(ids) < 1:
        raise ValueError("the checkpoint names no target layers after the embeddings "
                         "(eagle_aux_hidden_state_layer_ids)")
    state = load_file(directory / "model.safetensors")
    d2t = state["d2t"].long() + torch.arange(len(state["d2t"]))
    cfg = HeadConfig(hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                     num_heads=c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"],
                     head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
                     feature_layers=tuple(i - 1 for i in ids), draft_vocab_size=c["draft_vocab_size"],
                     rms_norm_eps=c["rms_norm_eps"], rope_theta=float(c.get("rope_theta", 10000.0)),
                     train_lm_rows=True)
    p = next(target.parameters())
    head = EagleHead(cfg, target.get_input_embeddings().weight, target.get_output_embeddings().weight, d2t)
    book = {name: (_swap_halves(state[new]) if name in _SWAPPED else state[new]) for name, new in _RENAME.items()}
    book["head_rows"] = state["lm_head.weight"]
    book["d2t"] = d2t
    head.load_state_dict({k: v.to(p.dtype) if v.is_floating_point() else v for k, v in book.items()})
    return head.to(p.device, p.dtype).eval()
