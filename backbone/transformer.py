"""The OmniAR backbone: one decoder-only transformer, read top to bottom.

Takes token ids, continuous embeddings, or a mix of both; returns final hidden states.
Heads (heads/) turn hidden states into losses and samples; the backbone never knows
which modality it is looking at.

Defaults follow the Llama family (RMSNorm, RoPE, grouped-query attention, SwiGLU);
switches cover GPT-2 (LayerNorm, learned positions, GELU, biases) so that both families
of checkpoints load into this one file (backbone/hf_import.py). Ablation switches (issue 8):
Primer's squared ReLU and causal depthwise Q/K/V convolution (So et al. 2021), AdaMoE's
mixture of experts with null experts (backbone/moe.py), and the non-causal prefix decoder
(``prefix_lm``: the prompt attends bidirectionally; Wang et al. 2022).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import Cache, KVCache
from .masks import MaskSpec, build_mask
from .mlp import MLP
from .moe import MoE


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def check_field_types(obj, what: str):
    """ValueError naming a dataclass field whose value has the wrong type: a config's ``n_layer:
    "four"`` or ``lr: [1, 2]`` (a bool is not a number; an int is a float)."""
    import dataclasses
    import math
    for f in dataclasses.fields(obj):
        v, t = getattr(obj, f.name), str(f.type)
        if v is None and "None" in t:
            continue
        base = t.split("|")[0].strip()
        ok = {"int": isinstance(v, int) and not isinstance(v, bool),
              "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "bool": isinstance(v, bool), "str": isinstance(v, str),
              "dict": isinstance(v, dict)}.get(base, True)
        if not ok:
            kind = {"int": "a whole number", "float": "a finite number", "bool": "true or false",
                    "str": "a string", "dict": "a mapping"}[base]
            raise ValueError(f"{what} setting {f.name} must be {kind}, got {v!r}")


@dataclass
class ModelArgs:
    vocab_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None          # < n_head: grouped-query attention (Ainslie et al. 2023)
    dim: int = 384
    head_dim: int | None = None           # default dim // n_head
    intermediate_size: int | None = None  # default 4*dim, or ~8/3*dim for SwiGLU
    block_size: int = 256                 # maximum context (positions)
    norm: str = "rmsnorm"                 # "rmsnorm" | "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"                   # "swiglu" | "relu2" (Primer) | "gelu" | "gelu_tanh" (GPT-2)
    pos: str = "rope"                     # "rope" | "learned" (GPT-2)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None      # {"rope_type": "llama3", ...} as in HF configs
    qkv_bias: bool = False                # Qwen2, GPT-2
    out_bias: bool = False                # GPT-2
    mlp_bias: bool = False                # GPT-2
    dropout: float = 0.0
    qkv_conv: int = 0                     # Primer-EZ: causal depthwise conv of this width after Q, K, V (0 = off; paper: 3)
    n_experts: int = 0                    # AdaMoE: real experts per MLP (0 = dense MLP)
    n_null_experts: int = 0               # AdaMoE: null experts (output 0, cost no FLOPs)
    experts_per_tok: int = 2              # top-k over real + null experts
    moe_intermediate_size: int | None = None  # hidden size of one expert (default: intermediate_size)
    moe_aux_weight: float = 0.01          # load-balancing loss weight (Switch/AdaMoE)
    prefix_lm: bool = False               # non-causal decoder: prompts are encoded bidirectionally
    extra: dict = field(default_factory=dict)  # free-form notes carried in config.json

    def __post_init__(self):
        check_field_types(self, "model")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_head
        if self.intermediate_size is None:
            self.intermediate_size = (find_multiple(int(2 * 4 * self.dim / 3), 32)
                                      if self.mlp == "swiglu" else 4 * self.dim)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if self.n_experts and not (1 <= self.experts_per_tok <= self.n_experts + self.n_null_experts):
            raise ValueError(f"experts_per_tok={self.experts_per_tok} must be in [1, n_experts + n_null_experts]")
        if self.n_null_experts and not self.n_experts:
            raise ValueError("n_null_experts needs n_experts > 0 (a mixture of experts)")
        if self.qkv_conv < 0:
            raise ValueError(f"qkv_conv must be >= 0 (0 = off), got {self.qkv_conv}")
        for name, val, allowed in [("norm", self.norm, NORMS), ("mlp", self.mlp, MLPS), ("pos", self.pos, ("rope", "learned"))]:
            if val not in allowed:
                raise ValueError(f"unknown {name}={val!r}; choose one of {list(allowed)}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelArgs":
        """Named size preset, optionally overridden, e.g. ``ModelArgs.from_name("mini", vocab_size=65)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        # merge before construction so derived fields (n_kv_head, head_dim, intermediate_size)
        # follow the overrides instead of staying frozen at the base preset's values
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


GPT2_STYLE = dict(norm="layernorm", mlp="gelu_tanh", pos="learned", qkv_bias=True, out_bias=True, mlp_bias=True)
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=4, n_kv_head=2, dim=32, block_size=64),
    "nano": dict(n_layer=4, n_head=4, dim=128, block_size=64),           # nanoGPT's CPU recipe shape
    "mini": dict(n_layer=6, n_head=6, dim=384, block_size=256),          # nanoGPT shakespeare_char shape
    "small": dict(n_layer=12, n_head=12, dim=768, block_size=1024),      # GPT-2 small shape
    "llama-1b": dict(n_layer=16, n_head=32, n_kv_head=8, dim=2048, intermediate_size=8192,
                     block_size=8192, rope_theta=500000.0),              # Llama-3.2-1B shape
    "nano-gpt2": dict(n_layer=4, n_head=4, dim=128, block_size=64, **GPT2_STYLE),
    "mini-gpt2": dict(n_layer=6, n_head=6, dim=384, block_size=256, **GPT2_STYLE),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32 as Llama does, so bf16 runs keep the statistics exact. Written out
        # (as HF's LlamaRMSNorm) rather than F.rms_norm: on CPU that is a slower composite, and
        # the same arithmetic as HF keeps greedy outputs identical to the exported model's
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


NORMS = {"rmsnorm": RMSNorm, "layernorm": nn.LayerNorm}
MLPS = ("swiglu", "relu2", "gelu", "gelu_tanh")


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """(head_dim/2,) inverse frequencies, with Llama-3 long-context scaling if configured."""
    hd = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = args.rope_scaling
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        mid = (wavelen <= old / lo) & (wavelen >= old / hi)
        inv = torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    elif rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise ValueError(f"unsupported rope_scaling {rs}")
    return inv.float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, nh, T, hs); cos/sin (B, 1, T, hs). Rotate-half convention, as HF Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = args.n_head, args.n_kv_head, args.head_dim
        self.wqkv = nn.Linear(args.dim, (args.n_head + 2 * args.n_kv_head) * args.head_dim, bias=args.qkv_bias)
        self.wo = nn.Linear(args.n_head * args.head_dim, args.dim, bias=args.out_bias)
        self.dropout = args.dropout
        if args.qkv_conv:  # Primer: one 1-D kernel per channel of q, k and v; starts as identity
            taps = torch.zeros(args.qkv_conv, (args.n_head + 2 * args.n_kv_head) * args.head_dim)
            taps[0] = 1.0
            self.conv = nn.Parameter(taps)  # (K, C): tap j multiplies the projection of token t-j

    def causal_conv(self, u: Tensor, positions: Tensor, input_pos: Tensor | None,
                    kv_cache: KVCache | None = None) -> Tensor:
        """Primer's depthwise convolution over time, causal. u (B, T, C) -> (B, T, C).

        Tap j reads token t-j only when position[t] >= j, so it never crosses a window start,
        left padding or a packed document boundary. With a KV cache the raw projections are
        cached too (KVCache.raw), so prefill, decoding and rollback give the same result as a
        full forward pass."""
        K, T = self.conv.shape[0], u.shape[1]
        pos = positions if positions.dim() == 2 else positions.unsqueeze(0)            # (B|1, T)
        if kv_cache is not None:
            raw = kv_cache.update_raw(input_pos, u)                               # (B, S, C)
            slots = input_pos if input_pos.dim() == 2 else input_pos.unsqueeze(0).expand(u.shape[0], -1)
            taps = [raw.gather(1, (slots - j).clamp(min=0)[..., None].expand(-1, -1, u.shape[2]))
                    for j in range(K)]                                                 # K x (B, T, C)
        else:
            padded = F.pad(u, (0, 0, K - 1, 0))                                        # (B, T+K-1, C)
            taps = [padded[:, K - 1 - j:K - 1 - j + T] for j in range(K)]
        y = taps[0] * self.conv[0]
        for j in range(1, K):
            y = y + taps[j] * (self.conv[j] * (pos >= j).unsqueeze(-1).to(u.dtype))
        return y

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor | None,
                input_pos: Tensor | None, positions: Tensor | None = None,
                kv_cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        qkv = self.wqkv(x)                                                              # (B, T, C)
        if hasattr(self, "conv"):
            qkv = self.causal_conv(qkv, positions, input_pos, kv_cache)
        qkv = qkv.view(B, T, self.n_head + 2 * self.n_kv_head, self.head_dim).transpose(1, 2)
        qk, v = qkv.split([self.n_head + self.n_kv_head, self.n_kv_head], dim=1)  # (B, nh+nkv, T, hs), (B, nkv, T, hs)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # q and k rotated in one go
        q, k = qk.split([self.n_head, self.n_kv_head], dim=1)                  # (B, nh, T, hs), (B, nkv, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(input_pos, k, v)                 # (B, nkv, S, hs)
        is_causal = mask is None and T > 1  # with a cache this is a prefill from slot 0: Tq == Tk
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        Norm = NORMS[args.norm]
        self.attn_norm, self.mlp_norm = Norm(args.dim, eps=args.norm_eps), Norm(args.dim, eps=args.norm_eps)
        self.attn = Attention(args)
        self.mlp = MoE(args) if args.n_experts else MLP(args)
        self.drop = nn.Dropout(args.dropout)

    def forward(self, x, rope, mask, input_pos, skip_mlp: bool = False, sims: list | None = None,
                positions: Tensor | None = None, kv_cache: KVCache | None = None):
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, input_pos, positions, kv_cache))
        if skip_mlp:  # FFN-SkipLLM: attention (and so the KV cache) always runs; only the FFN is skipped
            return x
        y = x + self.drop(self.mlp(self.mlp_norm(x)))
        if sims is not None:  # how much this FFN turns the residual stream: cos(in, out), (B, T)
            sims.append(F.cosine_similarity(x.float(), y.float(), dim=-1))
        return y


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.pos_embeddings = nn.Embedding(args.block_size, args.dim) if args.pos == "learned" else None
        self.drop = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.norm = NORMS[args.norm](args.dim, eps=args.norm_eps)
        if args.pos == "rope":
            self.register_buffer("inv_freq", rope_inv_freq(args), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith(("attn.wo.weight", "mlp.w_out.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * args.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # ---- KV cache -------------------------------------------------------------------------
    def new_cache(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None, device=None,
                  static: bool = False) -> Cache:
        """A fresh per-generation Cache of (max_batch, n_kv_head, max_seq, head_dim) buffers per layer.
        ``static``: attention always spans all max_seq slots (for a compiled decode step)."""
        if max_seq > self.args.block_size and self.args.pos == "learned":
            raise ValueError(f"max_seq={max_seq} exceeds block_size={self.args.block_size}")
        p = self.tok_embeddings.weight
        a = self.args
        raw_dim = (a.n_head + 2 * a.n_kv_head) * a.head_dim if a.qkv_conv else 0  # Primer's conv input
        return Cache([KVCache(max_batch, a.n_kv_head, max_seq, a.head_dim, dtype or p.dtype, device or p.device,
                              static, raw_dim) for _ in self.layers])

    # ---- forward --------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D) input embeddings."""
        return self.tok_embeddings(input_ids)

    def forward(self, input_ids: Tensor | None = None, embeds: Tensor | None = None,
                embed_mask: Tensor | None = None, positions: Tensor | None = None,
                mask: MaskSpec | Tensor | None = None, input_pos: Tensor | None = None,
                n_layers: int | None = None, skip_mlp: frozenset = frozenset(),
                mlp_sims: list | None = None, cache: Cache | None = None) -> Tensor:
        """Run the backbone and return the final (normed) hidden states.

        Args:
            input_ids: (B, T) token ids, or None when ``embeds`` carries everything.
            embeds: (B, T, D) continuous input embeddings (image patches, series segments).
            embed_mask: (B, T) bool, True where ``embeds`` replaces the token embedding
                (a mixed sequence). Without it, ``embeds`` is the whole input.
            positions: (B, T) or (T,) position ids for RoPE / learned positions.
                Default: ``input_pos`` when decoding with the cache, else 0..T-1.
            mask: a MaskSpec (causal / prefix / block ids / padding) or a ready-made
                (B, 1, T, S) bool mask. None = causal.
            input_pos: (T,) cache slots to write in ``cache``, or (B, T) per-row slots (then pass
                ``mask`` too).
            cache: the generation's KV cache (``new_cache``), or None for a plain forward pass.
            n_layers: run only the first n layers, then the final norm (early exit: the top layers are dropped).
            skip_mlp: indices of layers whose FFN is skipped (FFN-SkipLLM).
            mlp_sims: a list that receives, per layer run, cos(FFN input, output) as (B, T).
        Returns:
            h: (B, T, D) hidden states.
        """
        if input_ids is not None:
            x = self.tok_embeddings(input_ids)
            if embeds is not None:
                if embed_mask is None:
                    raise ValueError("embeds given together with input_ids need an embed_mask")
                x = torch.where(embed_mask.unsqueeze(-1), embeds.to(x.dtype), x)
        elif embeds is not None:
            x = embeds
        else:
            raise ValueError("give input_ids or embeds")
        B, T, _ = x.shape
        if cache is not None and input_pos is None:
            raise ValueError("with a KV cache, pass input_pos (the cache slots to write)")
        if positions is None:
            positions = input_pos if input_pos is not None else torch.arange(T, device=x.device)
        if ((input_pos is None or T > 1) and not torch.compiler.is_compiling()  # (a data-dependent check)
                and int(positions.max()) >= self.args.block_size):
            raise ValueError(f"position {int(positions.max())} exceeds block_size={self.args.block_size}")
        if isinstance(mask, MaskSpec):
            mask = mask.build(T, x.device)
        if mask is None and input_pos is not None and input_pos.dim() == 2:
            raise ValueError("per-row cache slots (input_pos of shape (B, T)) need an explicit mask")
        if mask is None and cache is not None and cache.static:
            # a static cache returns every slot: mask the ones after each query's own slot
            mask = build_mask(input_pos, torch.arange(cache.max_seq, device=x.device))
        elif mask is None and input_pos is not None and T > 1 and int(input_pos[0]) != 0:
            # chunked prefill / verification with a cache: causal over absolute slots
            # (a prefill from slot 0 keeps mask=None and takes SDPA's is_causal path)
            S = int(input_pos[-1]) + 1
            mask = build_mask(input_pos, torch.arange(S, device=x.device))

        rope = None
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(positions)
        else:
            freqs = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (B?, T, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)
            if emb.dim() == 2:
                emb = emb.unsqueeze(0)
            rope = (emb.cos().to(x.dtype).unsqueeze(1), emb.sin().to(x.dtype).unsqueeze(1))  # (B, 1, T, hs)
        x = self.drop(x)
        for i, layer in enumerate(self.layers if n_layers is None else self.layers[:n_layers]):
            x = layer(x, rope, mask, input_pos, i in skip_mlp, mlp_sims, positions=positions,
                      kv_cache=None if cache is None else cache.layers[i])
        return self.norm(x)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
            if self.pos_embeddings is not None:
                n -= self.pos_embeddings.weight.numel()
        return n
