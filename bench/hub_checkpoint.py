"""hub_checkpoint.py — random checkpoints in the exact hub layouts of LLaDA-8B-Instruct and
Dream-v0-Instruct-7B, at their real widths, with as many of their layers as asked for.

What a downloaded hub directory holds, minus the tokenizer and the hub's Python files:
  * config.json: the hub's own file (every field and value of GSAI-ML/LLaDA-8B-Instruct's or
    Dream-org/Dream-v0-Instruct-7B's config.json), with only the layer count changed;
  * the weights under the hub's names and shapes, in bf16 (the hubs' dtype), in shards
    model-0000i-of-0000n.safetensors filled in the hub's order up to --shard_gb each, plus
    model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}), as the hub ships them.
The names and shapes are spelled out here, not taken from model.py, so loading these directories
with model.load_model checks model.py's mapping against an independent transcription.

Values: N(0, 0.02) for embeddings and projections, zero biases, unit norms: a random model whose
logits have a realistic spread, for memory and speed measurements only (never commit the weights).

    python bench/hub_checkpoint.py --family llada --layers 1 --out checkpoints/llada-1layer
    python bench/hub_checkpoint.py --family dream --layers 2 --out checkpoints/dream-2layers --shard_gb 1

Real width means large files even at one layer: the embedding and the untied head alone are
2 × 126464 × 4096 (LLaDA) or 2 × 152064 × 3584 (Dream) bf16 values, about 2 GB.
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

# The hubs' config.json files (LLaDA's has no torch_dtype field; its weights are bf16).
HUB_CONFIGS = {
    "llada": {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
        "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
        "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
        "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": 126464, "weight_tying": False,
    },
    "dream": {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": 151665, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
        "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
        "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
        "use_cache": True, "use_mrope": False, "use_sliding_window": False, "vocab_size": 152064,
    },
}
LAYER_FIELD = {"llada": "n_layers", "dream": "num_hidden_layers"}


def hub_config(family, n_layers=None, **overrides):
    """The hub's config.json dict, with `n_layers` layers (default: all) and any other field replaced
    (`overrides`, e.g. smaller widths for a quick smoke run)."""
    if family not in HUB_CONFIGS:
        raise ValueError(f"family must be one of {sorted(HUB_CONFIGS)}, got {family!r}")
    config = dict(HUB_CONFIGS[family], **overrides)
    if n_layers is not None:
        config[LAYER_FIELD[family]] = n_layers
        if family == "dream":
            config["max_window_layers"] = n_layers
    return config


# ModelConfig field (model.py) -> each hub's config.json field, for shrunken variants (smoke runs)
HUB_FIELDS = {
    "llada": {"d_model": ("d_model",), "mlp_hidden": ("mlp_hidden_size",), "n_heads": ("n_heads",),
              "n_kv_heads": ("n_kv_heads",), "vocab_size": ("vocab_size", "embedding_size")},
    "dream": {"d_model": ("hidden_size",), "mlp_hidden": ("intermediate_size",), "n_heads": ("num_attention_heads",),
              "n_kv_heads": ("num_key_value_heads",), "vocab_size": ("vocab_size",)},
}


def hub_overrides(family, **fields):
    """config.json overrides for model.py ModelConfig fields (d_model, mlp_hidden, n_heads, n_kv_heads,
    vocab_size); a smaller vocabulary moves the special tokens to its top ids."""
    out = {}
    for k, v in fields.items():
        for name in HUB_FIELDS[family][k]:
            out[name] = v
    if "vocab_size" in fields:
        V = fields["vocab_size"]
        out.update(mask_token_id=V - 1, eos_token_id=V - 2, pad_token_id=V - 2)
        if family == "dream":
            out["bos_token_id"] = V - 3
    return out


def weight_shapes(family, config):
    """[(hub weight name, shape)] in the hub's order: embedding, blocks 0..n-1, final norm, head."""
    if family == "llada":
        d, hidden, vocab, layers = config["d_model"], config["mlp_hidden_size"], config["embedding_size"], config["n_layers"]
        kv = config["n_kv_heads"] * d // config["n_heads"]
        pre = "model.transformer"
        out = [(f"{pre}.wte.weight", (vocab, d))]
        for i in range(layers):
            b = f"{pre}.blocks.{i}"
            out += [(f"{b}.attn_norm.weight", (d,)), (f"{b}.q_proj.weight", (d, d)), (f"{b}.k_proj.weight", (kv, d)),
                    (f"{b}.v_proj.weight", (kv, d)), (f"{b}.attn_out.weight", (d, d)), (f"{b}.ff_norm.weight", (d,)),
                    (f"{b}.ff_proj.weight", (hidden, d)), (f"{b}.up_proj.weight", (hidden, d)),
                    (f"{b}.ff_out.weight", (d, hidden))]
        return out + [(f"{pre}.ln_f.weight", (d,)), (f"{pre}.ff_out.weight", (vocab, d))]
    d, hidden, vocab, layers = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]
    out = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(layers):
        b = f"model.layers.{i}"
        out += [(f"{b}.input_layernorm.weight", (d,)),
                (f"{b}.self_attn.q_proj.weight", (d, d)), (f"{b}.self_attn.q_proj.bias", (d,)),
                (f"{b}.self_attn.k_proj.weight", (kv, d)), (f"{b}.self_attn.k_proj.bias", (kv,)),
                (f"{b}.self_attn.v_proj.weight", (kv, d)), (f"{b}.self_attn.v_proj.bias", (kv,)),
                (f"{b}.self_attn.o_proj.weight", (d, d)), (f"{b}.post_attention_layernorm.weight", (d,)),
                (f"{b}.mlp.gate_proj.weight", (hidden, d)), (f"{b}.mlp.up_proj.weight", (hidden, d)),
                (f"{b}.mlp.down_proj.weight", (d, hidden))]
    return out + [("model.norm.weight", (d,)), ("lm_head.weight", (vocab, d))]


def random_tensor(name, shape, dtype, generator):
    """N(0, 0.02) weights, unit norm weights, zero biases (drawn in float32, stored in `dtype`)."""
    if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def write_checkpoint(path, family, n_layers=None, *, dtype=torch.bfloat16, shard_gb=5.0, seed=0, **overrides):
    """Write a random checkpoint in `family`'s hub layout to `path`; returns the config dict.

    Shards are filled in the hub's weight order, each up to `shard_gb` GB (the size transformers'
    save_pretrained uses by default is 5 GB); one tensor per shard at least. A single shard is still
    written with an index, as the hubs ship even small checkpoints sharded."""
    config = hub_config(family, n_layers, **overrides)
    os.makedirs(path, exist_ok=True)
    shapes = weight_shapes(family, config)
    limit = shard_gb * 1e9
    element = torch.empty((), dtype=dtype).element_size()
    groups, size = [[]], 0  # consecutive names per shard
    for name, shape in shapes:
        nbytes = element * torch.Size(shape).numel()
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    g = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for s, group in enumerate(groups):
        file = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        part = {name: random_tensor(name, shape, dtype, g) for name, shape in group}  # one shard in memory at a time
        save_file(part, os.path.join(path, file), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in part.values())
        weight_map.update({name: file for name in part})
        del part
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", required=True, choices=sorted(HUB_CONFIGS), help="LLaDA-8B-Instruct or Dream-v0-Instruct-7B layout")
    p.add_argument("--layers", type=int, default=1, help="transformer layers to keep (the hubs have 32 / 28)")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--shard_gb", type=float, default=1.0, help="largest shard size in GB (the hubs use 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = p.parse_args(argv)
    config = write_checkpoint(args.out, args.family, args.layers, shard_gb=args.shard_gb, seed=args.seed)
    index = json.load(open(os.path.join(args.out, "model.safetensors.index.json")))
    print(f"{args.out}: {args.family} layout, {config[LAYER_FIELD[args.family]]} layer(s), "
          f"{index['metadata']['total_size'] / 1e9:.2f} GB bf16 in {len(set(index['weight_map'].values()))} shard(s)")


if __name__ == "__main__":
    main()
