"""Hugging Face checkpoints in and out: GPT-2, Llama, Qwen2, Mistral -> OmniModel, and back.

Reads a LOCAL folder only (config.json + *.safetensors); nothing is ever downloaded and
nothing is unpickled. One table per family maps our weight names to HF's; the same table
drives import (``load_hf``) and export (``export_hf``).

Weight layouts (D = dim, hs = head_dim, nh / nkv = query / key-value heads, I = intermediate):
    ours                         GPT-2 (Conv1D, stored [in, out])    Llama / Qwen2 / Mistral ([out, in])
    tok_embeddings  (V, D)       wte (V, D)                          embed_tokens (V, D)
    pos_embeddings  (T, D)       wpe (T, D)                          -
    attn.wqkv  ((nh+2nkv)hs, D)  c_attn (D, 3D), transposed          cat(q_proj, k_proj, v_proj), dim 0
    attn.wo    (D, nh*hs)        c_proj (D, D), transposed           o_proj
    mlp.w_in   (2I or I, D)      c_fc (D, I), transposed             cat(gate_proj, up_proj), dim 0
    mlp.w_out  (D, I)            c_proj (I, D), transposed           down_proj
Both use rotate-half RoPE with the same q/k row order, so no permutation is needed.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .container import OmniModel, atomic_write_text
from .transformer import ModelArgs, rope_inv_freq

SUPPORTED = ("gpt2", "llama", "qwen2", "mistral")
LLAMA_LIKE = ("llama", "qwen2", "mistral")

# (our name, HF name or tuple of HF names concatenated along dim 0, transpose?) -- "{i}" = layer.
# Bias rows are used only when our model has that bias; unused HF keys are reported.
GPT2_MAP = [
    ("tok_embeddings.weight", "transformer.wte.weight", False),
    ("pos_embeddings.weight", "transformer.wpe.weight", False),
    ("layers.{i}.attn_norm.weight", "transformer.h.{i}.ln_1.weight", False),
    ("layers.{i}.attn_norm.bias", "transformer.h.{i}.ln_1.bias", False),
    ("layers.{i}.attn.wqkv.weight", "transformer.h.{i}.attn.c_attn.weight", True),
    ("layers.{i}.attn.wqkv.bias", "transformer.h.{i}.attn.c_attn.bias", False),
    ("layers.{i}.attn.wo.weight", "transformer.h.{i}.attn.c_proj.weight", True),
    ("layers.{i}.attn.wo.bias", "transformer.h.{i}.attn.c_proj.bias", False),
    ("layers.{i}.mlp_norm.weight", "transformer.h.{i}.ln_2.weight", False),
    ("layers.{i}.mlp_norm.bias", "transformer.h.{i}.ln_2.bias", False),
    ("layers.{i}.mlp.w_in.weight", "transformer.h.{i}.mlp.c_fc.weight", True),
    ("layers.{i}.mlp.w_in.bias", "transformer.h.{i}.mlp.c_fc.bias", False),
    ("layers.{i}.mlp.w_out.weight", "transformer.h.{i}.mlp.c_proj.weight", True),
    ("layers.{i}.mlp.w_out.bias", "transformer.h.{i}.mlp.c_proj.bias", False),
    ("norm.weight", "transformer.ln_f.weight", False),
    ("norm.bias", "transformer.ln_f.bias", False),
]
_L = "model.layers.{i}."
LLAMA_MAP = [
    ("tok_embeddings.weight", "model.embed_tokens.weight", False),
    ("layers.{i}.attn_norm.weight", _L + "input_layernorm.weight", False),
    *[(f"layers.{{i}}.attn.wqkv.{p}", tuple(_L + f"self_attn.{x}_proj.{p}" for x in "qkv"), False)
      for p in ("weight", "bias")],
    *[(f"layers.{{i}}.attn.wo.{p}", _L + f"self_attn.o_proj.{p}", False) for p in ("weight", "bias")],
    ("layers.{i}.mlp_norm.weight", _L + "post_attention_layernorm.weight", False),
    *[(f"layers.{{i}}.mlp.w_in.{p}", (_L + f"mlp.gate_proj.{p}", _L + f"mlp.up_proj.{p}"), False)
      for p in ("weight", "bias")],
    *[(f"layers.{{i}}.mlp.w_out.{p}", _L + f"mlp.down_proj.{p}", False) for p in ("weight", "bias")],
    ("norm.weight", "model.norm.weight", False),
]
# HF keys that hold no weights (old GPT-2 causal-mask buffers, cached RoPE frequencies)
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def _table(model_type: str, n_layer: int) -> list[tuple[str, str | tuple[str, ...], bool]]:
    """The family's mapping table with "{i}" expanded for every layer."""
    rows = GPT2_MAP if model_type == "gpt2" else LLAMA_MAP
    out = []
    for ours, hf, t in rows:
        for i in (range(n_layer) if "{i}" in ours else [0]):
            hf_i = tuple(h.format(i=i) for h in hf) if isinstance(hf, tuple) else hf.format(i=i)
            out.append((ours.format(i=i), hf_i, t))
    return out


# ---- config ---------------------------------------------------------------------------------
def _rope(cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a transformers 4.x (rope_theta/rope_scaling) or
    5.x (rope_parameters) config."""
    rp = dict(cfg.get("rope_parameters") or {})
    theta = rp.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0
    scaling = rp or cfg.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r} is not supported (only 'llama3' and default RoPE)")
    return float(theta), dict(scaling)


def hf_config_to_args(cfg: dict) -> ModelArgs:
    """Map a HF config.json dict to ModelArgs. Raises ValueError for features we don't model.

    Sliding-window attention (Mistral, Qwen2 with use_sliding_window) is not implemented: a
    window smaller than the context is handled by clamping block_size to the window, inside
    which full causal attention is exactly what the window computes (with a warning).
    """
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        raise ValueError(f"unsupported model_type {mt!r}; supported: {list(SUPPORTED)}")
    if mt == "gpt2":
        act = cfg.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"GPT-2 activation {act!r} not supported")
        if cfg.get("scale_attn_by_inverse_layer_idx") or not cfg.get("scale_attn_weights", True):
            raise ValueError("GPT-2 attention scaling variants are not supported")
        return ModelArgs(vocab_size=cfg["vocab_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                         dim=cfg["n_embd"], intermediate_size=cfg.get("n_inner") or 4 * cfg["n_embd"],
                         block_size=cfg["n_positions"], norm="layernorm",
                         norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                         mlp="gelu" if act == "gelu" else "gelu_tanh", pos="learned",
                         qkv_bias=True, out_bias=True, mlp_bias=True)
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{mt}: hidden_act {cfg['hidden_act']!r} not supported (SwiGLU with silu only)")
    theta, scaling = _rope(cfg)
    block = cfg["max_position_embeddings"]
    window = cfg.get("sliding_window") if (mt == "mistral" or cfg.get("use_sliding_window")) else None
    if window and window < block:
        warnings.warn(f"{mt}: sliding_window={window} < max_position_embeddings={block}; sliding-window "
                      f"attention is not implemented, so the context is clamped to {window}")
        block = window
    attn_bias = bool(cfg.get("attention_bias", False))
    return ModelArgs(vocab_size=cfg["vocab_size"], n_layer=cfg["num_hidden_layers"],
                     n_head=cfg["num_attention_heads"],
                     n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                     dim=cfg["hidden_size"], head_dim=cfg.get("head_dim"),
                     intermediate_size=cfg["intermediate_size"], block_size=block, norm="rmsnorm",
                     norm_eps=cfg.get("rms_norm_eps", 1e-6), mlp="swiglu", pos="rope", rope_theta=theta,
                     rope_scaling=scaling, qkv_bias=attn_bias or mt == "qwen2", out_bias=attn_bias,
                     mlp_bias=bool(cfg.get("mlp_bias", False)))


def args_to_hf_config(args: ModelArgs, model_type: str, tie: bool) -> dict:
    """Inverse of ``hf_config_to_args`` for a model whose shape the HF family can express."""
    a = args
    if a.qkv_conv or a.n_experts or a.prefix_lm:
        raise ValueError("Primer's qkv_conv, mixture-of-experts and prefix_lm models have no HF equivalent to export to")
    if model_type == "gpt2":
        ok = (a.norm == "layernorm" and a.mlp in ("gelu", "gelu_tanh") and a.pos == "learned"
              and a.qkv_bias and a.out_bias and a.mlp_bias and a.n_kv_head == a.n_head
              and a.head_dim * a.n_head == a.dim)
        if not ok:
            raise ValueError("GPT-2 export needs layernorm, gelu, learned positions, all biases, no GQA")
        return dict(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=a.vocab_size,
                    n_layer=a.n_layer, n_head=a.n_head, n_embd=a.dim, n_inner=a.intermediate_size,
                    n_positions=a.block_size, n_ctx=a.block_size, layer_norm_epsilon=a.norm_eps,
                    activation_function="gelu" if a.mlp == "gelu" else "gelu_new",
                    bos_token_id=None, eos_token_id=None, tie_word_embeddings=tie)
    if model_type not in ("llama", "qwen2"):
        raise ValueError(f"export supports model_type 'gpt2', 'llama', 'qwen2'; got {model_type!r}")
    if a.norm != "rmsnorm" or a.mlp != "swiglu" or a.pos != "rope":
        raise ValueError(f"{model_type} export needs rmsnorm, swiglu and rope")
    if model_type == "llama" and not (a.qkv_bias == a.out_bias):
        raise ValueError("llama's attention_bias covers q/k/v and o together; use model_type='qwen2'")
    if model_type == "qwen2" and not (a.qkv_bias and not a.out_bias and not a.mlp_bias):
        raise ValueError("qwen2 export needs qkv_bias=True, out_bias=False, mlp_bias=False")
    rope = {"rope_type": "default", **(a.rope_scaling or {}), "rope_theta": a.rope_theta}
    cfg = dict(architectures=["LlamaForCausalLM" if model_type == "llama" else "Qwen2ForCausalLM"],
               model_type=model_type, vocab_size=a.vocab_size, hidden_size=a.dim,
               intermediate_size=a.intermediate_size, num_hidden_layers=a.n_layer,
               num_attention_heads=a.n_head, num_key_value_heads=a.n_kv_head, head_dim=a.head_dim,
               max_position_embeddings=a.block_size, rms_norm_eps=a.norm_eps, hidden_act="silu",
               rope_parameters=rope, rope_theta=a.rope_theta,  # 5.x and 4.x spellings
               rope_scaling=a.rope_scaling, tie_word_embeddings=tie,
               bos_token_id=None, eos_token_id=None)
    if model_type == "llama":
        cfg.update(attention_bias=a.qkv_bias, mlp_bias=a.mlp_bias)
    return cfg


# ---- weights --------------------------------------------------------------------------------
def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any((folder / f).exists() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            raise ValueError(f"{folder} has only pytorch_model.bin (a pickle); refusing to unpickle. "
                             "Convert it to safetensors first.")
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    return files


def _read_weights(folder: Path) -> dict[str, Tensor]:
    """{name: tensor} over all of the folder's safetensors files (memory-mapped, no pickle)."""
    sd = {}
    for f in _safetensors_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                sd[k] = fh.get_tensor(k)
    return sd


def _split_sizes(ours: str, args: ModelArgs) -> list[int]:
    """Row sizes of the HF pieces fused into one of our tensors (wqkv: q, k, v; w_in: gate, up)."""
    if ".wqkv." in ours:
        return [args.n_head * args.head_dim] + [args.n_kv_head * args.head_dim] * 2
    return [args.intermediate_size] * 2


def load_hf(folder, device=None, dtype: torch.dtype | None = None) -> OmniModel:
    """Load a local HF causal-LM folder into an OmniModel with one "lm" head (eval mode).

    folder: holds config.json and model.safetensors (or shards + model.safetensors.index.json).
    Raises FileNotFoundError for a missing folder/config (nothing is downloaded), ValueError for
    pickle-only folders, unsupported model types or features, and missing/unused weights.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder / 'config.json'} not found: load_hf reads a local Hugging Face "
                                "folder only (nothing is downloaded)")
    cfg = json.loads((folder / "config.json").read_text())
    args = hf_config_to_args(cfg)
    mt = cfg["model_type"]
    sd = _read_weights(folder)
    if mt == "gpt2" and not any(k.startswith("transformer.") for k in sd):  # openai's bare "h.0..."
        sd = {(k if k.startswith("lm_head.") else "transformer." + k): v for k, v in sd.items()}
    tie = bool(cfg.get("tie_word_embeddings", True))
    if not tie and "lm_head.weight" not in sd:
        raise ValueError(f"{folder}: tie_word_embeddings is false but lm_head.weight is missing")
    # the LM head by its dotted name (the container imports it): backbone/ imports nothing of heads/
    heads = {"lm": {"class": "heads.lm.LMHead", "kwargs": dict(dim=args.dim, vocab_size=args.vocab_size, tie=tie)}}
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = OmniModel.build(args, heads, meta={"hf_model_type": mt, "hf_source": str(folder),
                                                   "eos_token_id": cfg.get("eos_token_id"),
                                                   "bos_token_id": cfg.get("bos_token_id")})
    wanted = model.state_dict()
    out, used = {}, set()
    for ours, hf, transpose in _table(mt, args.n_layer):
        if "backbone." + ours not in wanted:
            continue  # a bias this model doesn't have
        names = hf if isinstance(hf, tuple) else (hf,)
        missing = [n for n in names if n not in sd]
        if missing:
            raise ValueError(f"{folder}: weight {missing[0]} missing (needed for {ours})")
        t = sd[names[0]] if len(names) == 1 else torch.cat([sd[n] for n in names], dim=0)
        out["backbone." + ours] = t.t() if transpose else t
        used.update(names)
    # tied: the container shares the embedding; a file may still store the copy, which we skip
    out["heads.lm.proj.weight"] = out["backbone.tok_embeddings.weight"] if tie else sd["lm_head.weight"]
    used.add("lm_head.weight")
    unused = [k for k in sd if k not in used and not k.endswith(IGNORED_SUFFIXES)]
    if unused:
        raise ValueError(f"{folder}: {len(unused)} weights would be ignored, e.g. {unused[:3]}")
    for k, t in out.items():
        if t.shape != wanted[k].shape:
            raise ValueError(f"{k}: shape {tuple(t.shape)} in the file, model expects {tuple(wanted[k].shape)}")
    dt = dtype or next(iter(out.values())).dtype
    model.load_state_dict({k: v.to(device=device, dtype=dt).contiguous() for k, v in out.items()},
                          strict=True, assign=True)
    bb = model.backbone
    if args.pos == "rope":  # non-persistent buffer, still on meta
        bb.inv_freq = rope_inv_freq(args).to(device=device)
    if tie:
        model.heads["lm"].proj.weight = bb.tok_embeddings.weight
    return model.eval()


def export_hf(model: OmniModel, folder, model_type: str = "gpt2", head: str = "lm") -> Path:
    """Write ``folder``/config.json + model.safetensors that transformers loads as
    GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM. Uses the same tables as load_hf."""
    lm = model.heads[head]
    if lm.proj.bias is not None:
        raise ValueError("HF causal LMs have no lm_head bias")
    args = model.args
    tie = lm.proj.weight is model.backbone.tok_embeddings.weight
    cfg = args_to_hf_config(args, model_type, tie)
    ours_sd = model.backbone.state_dict()
    sd = {}
    for ours, hf, transpose in _table(model_type, args.n_layer):
        if ours not in ours_sd:
            continue
        t = ours_sd[ours].detach().cpu()
        t = t.t() if transpose else t
        if isinstance(hf, tuple):
            sd.update(zip(hf, t.split(_split_sizes(ours, args), dim=0)))
        else:
            sd[hf] = t
    if not tie:
        sd["lm_head.weight"] = lm.proj.weight.detach().cpu()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2))
    return folder
