"""model.py — the bidirectional denoiser of GDSD: one plain-PyTorch module for the
tiny model, LLaDA-8B and Dream-7B, loading the hubs' own safetensors by their own weight names.

    embed -> n_layers x [ RMSNorm -> attention (RoPE, grouped KV heads, optional q/k/v bias, no causal
    mask, key-padding mask) -> +residual ; RMSNorm -> SwiGLU -> +residual ] -> RMSNorm -> untied head

Imports nothing from this project (torch, safetensors; transformers for hub tokenizers only). The file
reads top-down: configuration, the network, LoRA, then the hubs' layouts (config.json, weight names,
loading, saving) and the tokenizers.

How to use:
    model = load_model("tiny")                            # ~1M parameters, random init (seed=0)
    model = load_model("checkpoints/LLaDA-8B-Instruct", device="cuda", dtype=torch.bfloat16)
    tok = load_tokenizer("checkpoints/LLaDA-8B-Instruct")  # same directory; "tiny" -> CharTokenizer
    ids = torch.tensor([tok.encode(tok.format_prompt("2+2?"))])
    logits = model(ids)                                    # (1, T, V); position i predicts token i
    picked = model(ids, logits_mask=ids == tok.mask_id)    # (n_masked, V): the head runs only there
    params = add_lora(model, rank=128, alpha=64)           # the trainable adapters; the rest is frozen
    with lora_disabled(model): ref_logits = model(ids)     # the reference policy: base weights
    save_model(model, "out/ckpt")                          # hub layout, adapters merged into the tensors

Calling convention (shared with sample.py and loss.py):
    model(input_ids (N, T) long, attention_mask (N, T) 1 = real token or None, logits_mask (N, T) bool
    or None) -> logits (N, T, V), or (n_selected, V) of the selected positions in row-major order.
    Two optional arguments serve sample.py's KV cache: past (a dict the model fills with keys/values)
    and window=(lo, hi) (recompute only those positions against the cached rest); see Denoiser.forward.

Architecture facts, read from the hubs' configuration and modeling files (GSAI-ML/LLaDA-8B-Instruct,
Dream-org/Dream-v0-Instruct-7B):
  * both rotate "halves" (RoPE pairs dims j and j + d/2), inv_freq = θ^(-2j/d), angles in float32;
    LLaDA rotates in float32 (rope_full_precision), Dream in the activation dtype;
  * RMSNorm normalises in float32, casts back, then multiplies by its weight;
  * LLaDA's MLP is ff_out(silu(ff_proj(x)) * up_proj(x)): ff_proj is the gate;
  * Dream = Qwen2.5: q/k/v projections carry a bias (always, whatever the config says), o_proj does not;
    its embedding has padding_idx = pad id (= eos id), so that row gets no gradient (kept here);
  * all dropout rates are 0 in both configs (the model has none);
  * Dream's output at position i predicts token i+1; LLaDA's predicts token i.

Alignment: Dream's shift is undone in exactly one place, `_align_dream` (called by Denoiser.forward),
so every caller sees position i predicting token i for both families.

Departures from the hub code (neither changes the logits of unpadded inputs):
 1. Key-padding mask. LLaDA's hub attention ignores attention_mask entirely (it hard-codes
    attn_mask=None), so padded batches attend to their padding. Here every layer masks padded keys, for
    both families, so left-padded rows give the logits of the unpadded row (up to float rounding).
 2. Positions are counted from each row's first real token (cumsum of attention_mask - 1), as Dream's
    sampler does; with no padding this is 0..T-1 exactly as in both hubs. RoPE is relative, so the
    attention between real tokens is the same either way.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# ----------------------------------------------------------------------------------------------
# Configuration

TINY_VOCAB = 128  # character tokenizer: 0 pad, 1 eos, 2 mask, printable ASCII from 3 (ids 98..127 unused)


@dataclasses.dataclass
class ModelConfig:
    """Hyper-parameters of one denoiser. Field names are this project's; `config_from_hub` and
    `config_to_hub` translate them to and from each hub's config.json."""
    family: str            # "llada" (LLaDA weight names, no shift) | "dream" (Qwen2 names, shifted logits)
    vocab_size: int        # rows of the embedding = columns of the head
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int        # grouped-query attention: n_heads / n_kv_heads query heads share a KV head
    mlp_hidden: int        # SwiGLU width
    norm_eps: float
    rope_theta: float
    qkv_bias: bool
    mask_id: int           # the [MASK] token of the diffusion process
    eos_id: int
    pad_id: int
    max_seq_len: int = 4096        # recorded for the hub config (RoPE itself has no length limit)
    char_tokenizer: bool = False   # True: the built-in CharTokenizer (the tiny model)
    source_dir: Optional[str] = None  # directory the weights came from (tokenizer / hub code files
                                      # are copied from it by save_model); not written to config.json

    def __post_init__(self):
        if self.family not in ("llada", "dream"):
            raise ValueError(f"family must be 'llada' or 'dream', got {self.family!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into {self.n_heads} heads of even size "
                             "(RoPE rotates pairs)")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads}")
        for name in ("mask_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"{name} = {value} lies outside the vocabulary [0, {self.vocab_size}); "
                                 "set it to a token id of this model (config.json: mask_token_id / eos_token_id / "
                                 "pad_token_id)")

    @property
    def head_dim(self):
        return self.d_model // self.n_heads


CONFIGS = {
    # LLaDA layout, 1.08M parameters; character vocabulary (see CharTokenizer)
    "tiny": ModelConfig(family="llada", vocab_size=TINY_VOCAB, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4,
                        mlp_hidden=512, norm_eps=1e-5, rope_theta=10000.0, qkv_bias=False,
                        mask_id=2, eos_id=1, pad_id=0, max_seq_len=512, char_tokenizer=True),
    # GSAI-ML/LLaDA-8B-Instruct config.json
    "llada-8b": ModelConfig(family="llada", vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                            mlp_hidden=12288, norm_eps=1e-5, rope_theta=500000.0, qkv_bias=False,
                            mask_id=126336, eos_id=126081, pad_id=126081, max_seq_len=4096),
    # Dream-org/Dream-v0-Instruct-7B config.json
    "dream-7b": ModelConfig(family="dream", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                            mlp_hidden=18944, norm_eps=1e-6, rope_theta=1000000.0, qkv_bias=True,
                            mask_id=151666, eos_id=151643, pad_id=151643, max_seq_len=131072),
}


# ----------------------------------------------------------------------------------------------
# The network

class RMSNorm(nn.Module):
    """y = w · x / sqrt(mean(x²) + eps); normalised in (at least) float32 and cast back before the weight,
    as both hubs do."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions, head_dim, theta):
    """cos, sin of RoPE angles pos · θ^(-2j/d), j < d/2, each repeated for both halves: (N, T, d) float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (N, T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (N, T, d)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin, full_precision):
    """Rotate-half RoPE: x·cos + rot(x)·sin with rot(x1, x2) = (-x2, x1).

    Precision follows each hub: full_precision (LLaDA's rope_full_precision) rotates in (at least)
    float32 and casts back; otherwise (Dream/Qwen2) cos and sin are cast to x's dtype and the rotation
    runs in it. In float32 the two agree; in bf16 they differ by about one bf16 ulp."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32)) if full_precision else x  # (N, H, T, d)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[:, None].to(xf.dtype), sin[:, None].to(xf.dtype)  # (N|1, 1, T, d)
    return (xf * cos + rotated * sin).to(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: bidirectional attention and SwiGLU, each added to the residual stream.

    Internal names (q_proj ... down_proj) are mapped to each hub's names by `hub_names`."""

    def __init__(self, cfg):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.rope_fp32 = cfg.family == "llada"  # LLaDA rotates in float32, Dream in the activation dtype
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.gate_proj = nn.Linear(d, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, d, bias=False)

    def forward(self, h, cos, sin, key_mask, kv=None, start=None):
        """h (N, w, D) -> (N, w, D). Without `kv`, w = T: the whole canvas.

        kv (a dict) makes the block keep keys and values for the sampler's cache (sample.py):
        start None -> the w = T positions' keys/values are stored in kv; start s -> h holds positions
        s .. s+w-1 only, whose fresh keys/values overwrite their slots in kv, and the queries attend
        to all T slots (the rest as cached: the approximation a KV cache makes in a bidirectional model)."""
        N, w, _ = h.shape
        x = self.attn_norm(h)
        q = self.q_proj(x).view(N, w, self.n_heads, self.head_dim).transpose(1, 2)  # (N, H, w, d)
        k = self.k_proj(x).view(N, w, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (N, Hkv, w, d)
        v = self.v_proj(x).view(N, w, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (N, Hkv, w, d)
        q, k = apply_rope(q, cos, sin, self.rope_fp32), apply_rope(k, cos, sin, self.rope_fp32)
        if kv is not None:
            if start is None:
                kv["k"], kv["v"] = k, v  # (N, Hkv, T, d) each, keys already rotated
            else:
                kv["k"][:, :, start:start + w], kv["v"][:, :, start:start + w] = k, v
                k, v = kv["k"], kv["v"]  # (N, Hkv, T, d)
        if self.n_kv_heads != self.n_heads:
            # grouped KV heads: KV head j serves query heads j·g .. j·g+g-1 (g = H / Hkv), as in both hubs;
            # expanding (rather than SDPA's enable_gqa) keeps every SDPA kernel available with a mask
            g = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)  # (N, H, T, d)
        # no causal mask: every position attends to every real (unpadded) position
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (N, H, w, d)
        h = h + self.o_proj(att.transpose(1, 2).reshape(N, w, -1))
        x = self.mlp_norm(h)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Denoiser(nn.Module):
    """The masked-diffusion denoiser: token ids -> aligned logits (position i predicts token i).

    `.blocks` is an nn.ModuleList (FSDP2 shards each block); set `.gradient_checkpointing = True` to
    recompute each block's activations in the backward pass instead of storing them."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        # Dream's hub embedding has padding_idx = pad id: that row receives no gradient
        padding_idx = config.pad_id if config.family == "dream" else None
        self.embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=padding_idx)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, logits_mask=None, past=None, window=None):
        """Logits (N, T, V), or (n_selected, V) at the True positions of logits_mask, in row-major order.

        past, window: the sampler's KV cache (sample.py's calling convention). `past` is a dict the
        model owns: a call with window=None stores every layer's keys/values of the canvas in it; a call
        with window=(lo, hi) recomputes only positions lo..hi-1 (lo-1..hi-1 for Dream, whose logits at
        lo come from position lo-1) against the cached keys/values of the rest, and returns the logits
        selected by logits_mask[:, lo:hi] (its other columns are ignored; None = all of the window)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (N, T), got shape {tuple(input_ids.shape)}")
        N, T = input_ids.shape
        for name, m in (("attention_mask", attention_mask), ("logits_mask", logits_mask)):
            if m is not None and m.shape != (N, T):
                raise ValueError(f"{name} must have the shape of input_ids {(N, T)}, got {tuple(m.shape)}")
        if window is not None and len(past or ()) != len(self.blocks):
            raise ValueError("a window call needs `past` filled by a call on the whole canvas (window=None) first")
        if attention_mask is None:
            positions = torch.arange(T, device=input_ids.device)[None]  # (1, T)
            key_mask = None
        else:
            attention_mask = attention_mask.bool()
            # an all-padding row would attend to nothing (NaN); one host sync, cheap next to the forward
            if not bool(attention_mask.any(dim=1).all()):
                raise ValueError("a row of attention_mask has no real token (all padding): drop that row")
            # positions count from each row's first real token (departure 2); padding keys are masked
            positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (N, T)
            key_mask = attention_mask[:, None, None, :]  # (N, 1, 1, T) True = may be attended to
        lo, hi = (0, T) if window is None else window
        start = max(lo - 1, 0) if self.config.family == "dream" else lo  # first position computed
        cos, sin = rope_cos_sin(positions[:, start:hi], self.config.head_dim, self.config.rope_theta)  # (N|1, w, d)
        h = self.embed(input_ids[:, start:hi])  # (N, w, D)
        for i, block in enumerate(self.blocks):
            if past is not None:
                h = block(h, cos, sin, key_mask, kv=past.setdefault(i, {}), start=None if window is None else start)
            elif self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, cos, sin, key_mask, use_reentrant=False)
            else:
                h = block(h, cos, sin, key_mask)
        if self.config.family == "dream":
            h = _align_dream(h)[:, lo - start:]  # (N, hi - lo, D)
        if logits_mask is not None:
            h = h[logits_mask[:, lo:hi].bool()]  # (n, D): the norm and the vocabulary-sized head run only here
        return self.head(self.norm(h))  # (N, T, V) or (n, V)


def _align_dream(h):
    """Undo Dream's shift — the one place it happens. Dream's output at position j predicts token j+1,
    so the aligned output at position i is the one computed at i-1:  aligned_i = out_{i-1}, i ≥ 1.
    Position 0 has no predecessor and keeps its own output, as Dream's sampler does; it is always a
    prompt token (never masked, never scored). Shifting the hidden states before the position-wise norm
    and head equals shifting the logits, and lets logits_mask select before the head."""
    return torch.cat([h[:, :1], h[:, :-1]], dim=1)  # (N, T, D)


def init_weights(model, seed=0):
    """Random init of a fresh model: N(0, 0.02) for embeddings and projections, zero biases, unit norms.
    A dedicated generator on the weights' device makes them a function of `seed` alone, drawn in place
    (no host copy: an 8B model made on the GPU this way takes seconds)."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model


# ----------------------------------------------------------------------------------------------
# LoRA

# Default targets per family, by the hub's projection names, and their internal names.
LORA_TARGETS = {
    "llada": {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "attn_out": "o_proj",
              "ff_proj": "gate_proj", "up_proj": "up_proj", "ff_out": "down_proj"},
    "dream": {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj",
              "gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"},
}


class LoRALinear(nn.Module):
    """y = base(x) + (α/r) · B A dropout(x), with A (r, in), B (out, r) = 0 at init, so the adapted model
    starts exactly at the base. Adapters are float32 whatever the base dtype (bf16 would round away
    small optimizer updates); the input is cast to their dtype and the update back to the output's."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device, dtype=torch.float32)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's default (global RNG)
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout)
        self.enabled = True  # False = the base weights alone (the reference policy)

    def forward(self, x):
        y = self.base(x)
        if not self.enabled:
            return y
        dx = self.lora_B(self.lora_A(self.dropout(x).to(self.lora_A.weight.dtype)))
        return y + (self.scale * dx).to(y.dtype)

    def delta_weight(self):
        """(α/r) · B A in float32: the change of the base weight the adapter makes."""
        return self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())


def _lora_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def add_lora(model, rank, alpha, dropout=0.0, targets=None):
    """Wrap the target projections of every block in LoRA adapters and freeze everything else.

    targets: hub projection names of the model's family (default: all seven, LORA_TARGETS).
    Returns the list of the new trainable parameters."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    if _lora_modules(model):
        raise ValueError("the model already has LoRA adapters; reload the model before adding new ones")
    table = LORA_TARGETS[model.config.family]
    targets = list(table) if targets is None else list(targets)
    unknown = [t for t in targets if t not in table]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown} for the {model.config.family} layout; "
                         f"choose from {list(table)}")
    model.requires_grad_(False)
    params = []
    for block in model.blocks:
        for t in targets:
            wrapped = LoRALinear(getattr(block, table[t]), rank, alpha, dropout)
            setattr(block, table[t], wrapped)
            params += [wrapped.lora_A.weight, wrapped.lora_B.weight]
    return params


@contextlib.contextmanager
def lora_disabled(model):
    """Run the base weights (adapters switched off) inside the `with` statement: GDSD's reference policy."""
    mods = [m for _, m in _lora_modules(model)]
    if not mods:
        raise ValueError("the model has no LoRA adapters: switching them off would leave the trained weights "
                         "in place, not the reference; keep a frozen copy of the initial model instead")
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(mods, before):
            m.enabled = e


def _merged_state(model):
    """Internal-name state of the plain model, with each adapter's delta added to its base weight."""
    state = {}
    loras = dict(_lora_modules(model))
    for name, t in model.state_dict().items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base." in name:  # a wrapped projection: blocks.i.q_proj.base.weight -> blocks.i.q_proj.weight
            owner, _, leaf = name.rpartition(".base.")
            if leaf == "weight":
                t = (t.float() + loras[owner].delta_weight().to(t.device)).to(t.dtype)
            name = f"{owner}.{leaf}"
        state[name] = t
    return state


def lora_state_dict(model):
    """{parameter name: tensor} of the adapters only (names as in model.state_dict())."""
    state = {n: t.detach() for n, t in model.state_dict().items() if ".lora_A." in n or ".lora_B." in n}
    if not state:
        raise ValueError("the model has no LoRA adapters")
    return state


# ----------------------------------------------------------------------------------------------
# Hub layouts: config.json translation

# Hub config.json options this implementation does not model: the values it accepts for each (an
# absent field means the hub's default, which is accepted).
_LLADA_REQUIRED = {"block_type": ("llama",), "layer_norm_type": ("rms",), "activation_type": ("silu",),
                   "rope": (True,), "rope_full_precision": (True,), "alibi": (False,), "weight_tying": (False,),
                   "include_bias": (False,), "bias_for_layer_norm": (False, None), "scale_logits": (False,),
                   "input_emb_norm": (False,), "attention_layer_norm": (False,), "layer_norm_with_affine": (True,),
                   "block_group_size": (1,), "attention_dropout": (0,), "residual_dropout": (0,),
                   "embedding_dropout": (0,)}
_DREAM_REQUIRED = {"hidden_act": ("silu",), "tie_word_embeddings": (False,), "rope_scaling": (None,),
                   "use_sliding_window": (False,), "attention_dropout": (0,)}
# Fields written for a model without a source config.json (the rest of each hub's config.json).
_LLADA_HUB_DEFAULTS = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "embedding_dropout": 0.0,
    "flash_attention": False, "include_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mlp_ratio": 4, "multi_query_attention": None, "precision": "amp_bf16",
    "residual_dropout": 0.0, "rope": True, "rope_full_precision": True, "scale_logits": False,
    "use_cache": False, "weight_tying": False,
}
_DREAM_HUB_DEFAULTS = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "hidden_act": "silu", "initializer_range": 0.02, "rope_scaling": None, "sliding_window": None,
    "tie_word_embeddings": False, "use_cache": False, "use_mrope": False, "use_sliding_window": False,
}
_CHAR_MARKER = "gdsd_char_tokenizer"  # config.json field marking a checkpoint of the character-vocabulary model


def _family_of(hub):
    """The family named by config.json's model_type (never by the directory name)."""
    model_type = str(hub.get("model_type", "")).lower()
    if model_type == "llada":
        return "llada"
    if model_type == "dream":
        return "dream"
    raise ValueError(f"config.json has model_type {hub.get('model_type')!r}; supported are 'llada' (LLaDA layout) "
                     "and 'Dream' (Qwen2 layout). Point at a LLaDA or Dream checkpoint directory.")


def _token_id(hub, key):
    value = hub.get(key)
    if isinstance(value, list):  # some configs list several EOS ids; the first is the canonical one
        value = value[0] if value else None
    if value is None:
        raise ValueError(f"config.json has no {key}; add it (LLaDA-8B: mask 126336, eos/pad 126081; "
                         "Dream-7B: mask 151666, eos/pad 151643)")
    return int(value)


def config_from_hub(hub, source_dir=None):
    """ModelConfig from a hub config.json dict (LLaDA's d_model/n_layers/... or Qwen2's hidden_size/...)."""
    family = _family_of(hub)
    required = _LLADA_REQUIRED if family == "llada" else _DREAM_REQUIRED
    for key, allowed in required.items():
        if key in hub and hub[key] not in allowed:
            raise ValueError(f"config.json sets {key} = {hub[key]!r}; this implementation supports only "
                             f"{' or '.join(map(repr, allowed))}")
    if family == "llada":
        n_heads = hub["n_heads"]
        n_kv = hub.get("n_kv_heads") or (1 if hub.get("multi_query_attention") else n_heads)
        mlp = hub.get("mlp_hidden_size") or hub.get("mlp_ratio", 4) * hub["d_model"]
        return ModelConfig(
            family="llada", vocab_size=hub.get("embedding_size") or hub["vocab_size"], d_model=hub["d_model"],
            n_layers=hub["n_layers"], n_heads=n_heads, n_kv_heads=n_kv, mlp_hidden=mlp,
            norm_eps=hub.get("rms_norm_eps", 1e-5), rope_theta=hub.get("rope_theta", 10000.0),
            qkv_bias=bool(hub.get("include_qkv_bias", False)), mask_id=_token_id(hub, "mask_token_id"),
            eos_id=_token_id(hub, "eos_token_id"), pad_id=_token_id(hub, "pad_token_id"),
            max_seq_len=hub.get("max_sequence_length", 4096), char_tokenizer=bool(hub.get(_CHAR_MARKER, False)),
            source_dir=source_dir)
    return ModelConfig(
        family="dream", vocab_size=hub["vocab_size"], d_model=hub["hidden_size"], n_layers=hub["num_hidden_layers"],
        n_heads=hub["num_attention_heads"], n_kv_heads=hub.get("num_key_value_heads") or hub["num_attention_heads"],
        mlp_hidden=hub["intermediate_size"], norm_eps=hub.get("rms_norm_eps", 1e-6),
        rope_theta=hub.get("rope_theta", 10000.0), qkv_bias=True,  # Dream's attention always has q/k/v bias
        mask_id=_token_id(hub, "mask_token_id"), eos_id=_token_id(hub, "eos_token_id"),
        pad_id=_token_id(hub, "pad_token_id"), max_seq_len=hub.get("max_position_embeddings", 131072),
        char_tokenizer=bool(hub.get(_CHAR_MARKER, False)), source_dir=source_dir)


def config_to_hub(cfg, base=None, dtype=None):
    """The hub config.json dict of `cfg`: `base` (the source config.json, if any) or the hub's defaults,
    overwritten with every hyper-parameter of `cfg` under the hub's own field names."""
    if cfg.family == "llada":
        hub = dict(_LLADA_HUB_DEFAULTS, **(base or {}))
        hub.update(model_type="llada", d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                   n_kv_heads=cfg.n_kv_heads, mlp_hidden_size=cfg.mlp_hidden, rms_norm_eps=cfg.norm_eps,
                   rope_theta=cfg.rope_theta, include_qkv_bias=cfg.qkv_bias, vocab_size=cfg.vocab_size,
                   embedding_size=cfg.vocab_size, mask_token_id=cfg.mask_id, eos_token_id=cfg.eos_id,
                   pad_token_id=cfg.pad_id, max_sequence_length=cfg.max_seq_len)
    else:
        if not cfg.qkv_bias:
            raise ValueError("the Dream layout always has q/k/v biases; a dream-family config needs qkv_bias=True")
        hub = dict(_DREAM_HUB_DEFAULTS, **(base or {}))
        hub.update(model_type="Dream", hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                   num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                   intermediate_size=cfg.mlp_hidden, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                   vocab_size=cfg.vocab_size, mask_token_id=cfg.mask_id, eos_token_id=cfg.eos_id,
                   pad_token_id=cfg.pad_id, max_position_embeddings=cfg.max_seq_len)
    if dtype is not None:
        hub["torch_dtype"] = str(dtype).replace("torch.", "")
    hub.pop(_CHAR_MARKER, None)
    if cfg.char_tokenizer:
        hub[_CHAR_MARKER] = True
    return hub


# ----------------------------------------------------------------------------------------------
# Hub weight names, loading and saving

def hub_names(cfg):
    """{internal parameter name: hub weight name} of a plain (adapter-free) model of this config."""
    if cfg.family == "llada":
        pre = "model.transformer"
        names = {"embed.weight": f"{pre}.wte.weight", "norm.weight": f"{pre}.ln_f.weight",
                 "head.weight": f"{pre}.ff_out.weight"}
        per_block = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
                     "o_proj": "attn_out", "mlp_norm": "ff_norm", "gate_proj": "ff_proj", "up_proj": "up_proj",
                     "down_proj": "ff_out"}
        block_prefix = f"{pre}.blocks"
    else:
        names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                 "head.weight": "lm_head.weight"}
        per_block = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
                     "v_proj": "self_attn.v_proj", "o_proj": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
                     "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj"}
        block_prefix = "model.layers"
    for i in range(cfg.n_layers):
        for ours, theirs in per_block.items():
            names[f"blocks.{i}.{ours}.weight"] = f"{block_prefix}.{i}.{theirs}.weight"
            if cfg.qkv_bias and ours in ("q_proj", "k_proj", "v_proj"):
                names[f"blocks.{i}.{ours}.bias"] = f"{block_prefix}.{i}.{theirs}.bias"
    return names


def _read_config(path):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist; pass a directory holding the hub "
                                "files (config.json + model.safetensors or its sharded index), e.g. "
                                "`huggingface-cli download GSAI-ML/LLaDA-8B-Instruct --local-dir DIR`")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{cfg_file} is missing: a checkpoint directory needs the hub's config.json "
                                "next to its safetensors (copy it from the hub repository)")
    with open(cfg_file) as f:
        return json.load(f)


def _weight_files(path):
    """The safetensors files of a checkpoint: model.safetensors, or every shard of the index."""
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
        if missing:
            raise FileNotFoundError(f"{index} lists shard(s) absent from {path}: {missing}; finish the download")
        return [os.path.join(path, s) for s in shards]
    raise FileNotFoundError(f"{path} has no model.safetensors nor model.safetensors.index.json; "
                            "download the weights (safetensors) into it")


def _list_problem(kind, names, limit=20):
    names = sorted(names)
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{len(names)} {kind}: {shown}"


def _load_dir(path, device, dtype):
    """Build on the meta device, then take the safetensors tensors as the parameters (assign=True)."""
    from safetensors import safe_open
    cfg = config_from_hub(_read_config(path), source_dir=os.path.abspath(path))
    with torch.device("meta"):
        model = Denoiser(cfg)
    expected = {theirs: ours for ours, theirs in hub_names(cfg).items()}  # hub name -> internal name
    shapes = {name: p.shape for name, p in model.state_dict().items()}
    state, unexpected, bad_shapes = {}, [], {}
    for file in _weight_files(path):
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                if key not in expected:
                    unexpected.append(key)
                    continue
                shape, want = tuple(f.get_slice(key).get_shape()), tuple(shapes[expected[key]])
                if shape != want:
                    bad_shapes[key] = f"{key} {shape} (config implies {want})"
                    continue
                t = f.get_tensor(key)
                state[expected[key]] = t.to(device=device, dtype=dtype or t.dtype)
    missing = [theirs for theirs, ours in expected.items() if ours not in state and theirs not in bad_shapes]
    problems = []
    if missing:
        problems.append(_list_problem("missing weight(s)", missing))
    if unexpected:
        problems.append(_list_problem("unexpected weight(s)", unexpected))
    if bad_shapes:
        problems.append(_list_problem("weight(s) with a wrong shape", bad_shapes.values()))
    if problems:
        raise ValueError(f"the weights in {path} do not match its config.json ({cfg.family} layout, "
                         f"{cfg.n_layers} layers): " + "; ".join(problems) +
                         ". Use the checkpoint's own config.json, or re-save the weights with save_model.")
    model.load_state_dict(state, strict=True, assign=True)
    return model


def load_model(name_or_path, device=None, dtype=None, seed=0):
    """A Denoiser from a built-in name ("tiny": random init from `seed`) or a checkpoint directory in
    a hub layout (config.json + model.safetensors or model.safetensors.index.json with its shards).

    dtype None keeps the stored dtype (float32 for "tiny"); device None is the CPU."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name_or_path == "tiny":
        model = init_weights(Denoiser(dataclasses.replace(CONFIGS["tiny"])), seed)  # a copy: configs stay pristine
        return model.to(device=device, dtype=dtype or torch.float32)
    if name_or_path in CONFIGS:
        raise ValueError(f"load_model({name_or_path!r}) would build billions of random weights; pass the directory "
                         f"of the downloaded hub checkpoint instead (for shapes only: "
                         f"`with torch.device('meta'): Denoiser(CONFIGS[{name_or_path!r}])`)")
    if not os.path.isdir(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path!r} is neither a built-in model ('tiny') nor an existing checkpoint "
                                "directory; download the hub checkpoint to a local directory and pass its path")
    return _load_dir(str(name_or_path), device, dtype)


# Files of a hub checkpoint other than its weights and config.json that save_model carries over: the
# tokenizer, the chat template, and the hub's own code (so the saved directory also loads there).
_COMPANION_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json")
_COMPANION_CODE_PREFIXES = ("configuration_", "modeling_", "tokenization_", "generation_utils")


def _companions(src):
    for name in sorted(os.listdir(src)):
        if name in _COMPANION_FILES or (name.endswith(".py") and name.startswith(_COMPANION_CODE_PREFIXES)):
            yield name


def save_model(model, path):
    """Write `model` in its hub layout: config.json + model.safetensors under the hub's weight names.

    LoRA adapters are merged into the written tensors (W + (α/r)·B·A); the module is not modified.
    The tokenizer, chat template and hub code files of the directory the model was loaded from
    (config.source_dir) are copied too, so load_model(path) and load_tokenizer(path) both work; the
    tiny model's config.json carries a marker field that makes load_tokenizer return the CharTokenizer."""
    from safetensors.torch import save_file
    cfg = model.config
    if any(hasattr(t, "full_tensor") for t in model.state_dict().values()):
        raise ValueError("save_model needs full tensors, got FSDP shards: gather a full state dict into an "
                         "unsharded copy first (get_model_state_dict(..., full_state_dict=True))")
    merged = _merged_state(model)  # internal name -> tensor, adapters folded in
    os.makedirs(path, exist_ok=True)
    names = hub_names(cfg)
    if set(merged) != set(names):
        raise ValueError(f"cannot save: the model's parameters do not match its config "
                         f"({_list_problem('differences', set(merged) ^ set(names))})")
    tensors = {names[k]: v.detach().to("cpu").contiguous() for k, v in merged.items()}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    src = cfg.source_dir
    base = None
    if src and os.path.isfile(os.path.join(src, "config.json")):
        with open(os.path.join(src, "config.json")) as f:
            base = json.load(f)
    hub = config_to_hub(cfg, base=base, dtype=next(iter(tensors.values())).dtype)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hub, f, indent=2)
    if src and os.path.isdir(src) and os.path.abspath(src) != os.path.abspath(path):
        for name in _companions(src):
            shutil.copyfile(os.path.join(src, name), os.path.join(path, name))


# ----------------------------------------------------------------------------------------------
# Tokenizers

class CharTokenizer:
    """The tiny model's vocabulary: 0 <pad>, 1 <eos>, 2 <mask>, then printable ASCII (space .. ~) from
    id 3; ids 98..127 are unused (decoded as U+FFFD so a model emitting them is visible)."""
    pad_id, eos_id, mask_id = 0, 1, 2
    vocab_size = TINY_VOCAB
    first, last = 32, 126  # printable ASCII

    def encode(self, text):
        bad = sorted({c for c in text if not self.first <= ord(c) <= self.last})
        if bad:
            raise ValueError(f"the character tokenizer knows printable ASCII only; {text[:40]!r} contains {bad}")
        return [ord(c) - self.first + 3 for c in text]

    def decode(self, ids):
        out = []
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.eos_id, self.mask_id):
                continue
            out.append(chr(i - 3 + self.first) if 3 <= i <= self.last - self.first + 3 else "\ufffd")
        return "".join(out)

    def format_prompt(self, text):
        return text  # no chat template: the tiny model reads compact task strings


class HubTokenizer:
    """A transformers fast tokenizer with the ids the denoiser needs (taken from the model's config.json:
    LLaDA's tokenizer does not expose its mask token)."""

    def __init__(self, hf, mask_id, eos_id, pad_id, vocab_size):
        self.hf, self.mask_id, self.eos_id, self.pad_id, self.vocab_size = hf, mask_id, eos_id, pad_id, vocab_size

    def encode(self, text):
        # no automatic BOS/EOS: the chat template (format_prompt) already writes every special token
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids):
        drop = {self.pad_id, self.mask_id, self.eos_id}
        return self.hf.decode([int(i) for i in ids if int(i) not in drop], skip_special_tokens=False)

    def format_prompt(self, text):
        """One user turn through the checkpoint's chat template, ending with the assistant header."""
        if not self.hf.chat_template:
            return text
        return self.hf.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)


def load_tokenizer(name_or_path):
    """CharTokenizer for "tiny" or a tiny checkpoint; otherwise the directory's tokenizer (tokenizer.json,
    or Qwen2-style vocab.json + merges.txt as Dream ships) read by transformers without remote code,
    with the chat template of tokenizer_config.json / chat_template.jinja."""
    if name_or_path == "tiny":
        return CharTokenizer()
    path = str(name_or_path)
    cfg = config_from_hub(_read_config(path))
    if cfg.char_tokenizer:
        return CharTokenizer()
    import transformers
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        hf = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    elif os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
        # Dream's hub tokenizer class is custom code; its vocabulary and rules are Qwen2's byte-level BPE
        hf = transformers.Qwen2TokenizerFast.from_pretrained(path)
    else:
        raise FileNotFoundError(f"{path} has no tokenizer.json (nor vocab.json + merges.txt); copy the tokenizer "
                                "files of the hub checkpoint into it")
    template = os.path.join(path, "chat_template.jinja")
    if not hf.chat_template and os.path.isfile(template):
        with open(template) as f:
            hf.chat_template = f.read()
    return HubTokenizer(hf, cfg.mask_id, cfg.eos_id, cfg.pad_id, cfg.vocab_size)

