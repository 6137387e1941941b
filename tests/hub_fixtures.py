"""Tiny random checkpoints in the LLaDA and Dream hub layouts, written to disk for tests.

Each writer produces what a downloaded hub directory holds, at toy size:
  * config.json with the hub's own field names and model_type ("llada" / "Dream");
  * model.safetensors (or shards + model.safetensors.index.json) under the hub's weight names,
    Dream with grouped KV heads and q/k/v biases;
  * a byte-level BPE tokenizer (256 byte symbols, no merges, plus the family's special tokens) and a
    chat template in the family's format, so load_tokenizer works offline. Dream can also be written
    the way its hub ships it: vocab.json + merges.txt and a custom tokenizer class name.

The writers import nothing from model.py: they spell out the hub names and shapes themselves, so a
test comparing model.py against them checks model.py's mapping. Each returns the written tensors
(hub name -> float32 tensor) for plain transcriptions of the forward pass.

    from hub_fixtures import write_llada_checkpoint, write_dream_checkpoint, LLADA_IDS, DREAM_IDS
    tensors = write_llada_checkpoint(tmp_path / "llada")
"""
import json
import os

import torch
from safetensors.torch import save_file

# Special tokens of the toy vocabularies, after the 256 byte symbols (ids 0..255).
LLADA_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|mdm_mask|>"]
DREAM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]
LLADA_IDS = {"bos": 256, "eos": 257, "pad": 257, "eot": 260, "mask": 261}
DREAM_IDS = {"eos": 256, "pad": 256, "bos": 259, "mask": 260}
VOCAB = 264  # rows of the toy embeddings: bytes + specials + a few unused ids, as real vocabularies pad

# Chat templates in each family's format (one user turn; the generation prompt opens the answer).
LLADA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                  "{{ m['content'] }}<|eot_id|>{% endfor %}"
                  "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
DREAM_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _random(shape, std, g):
    return torch.randn(shape, generator=g) * std


def _norm_weight(d, g):
    return 1.0 + 0.2 * torch.randn(d, generator=g)  # not all-ones, so a dropped norm weight would show


def _write_weights(path, tensors, dtype, shards):
    """model.safetensors, or `shards` files plus the index the hub uses for large models."""
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return
    keys = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[s::shards]}
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def _byte_vocab():
    from tokenizers import pre_tokenizers
    return {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}


def _write_tokenizer_json(path, specials):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    tk = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tk.save(os.path.join(path, "tokenizer.json"))


def _added_tokens_decoder(specials):
    return {str(256 + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True} for i, s in enumerate(specials)}


def _write_json(path, name, obj):
    with open(os.path.join(path, name), "w") as f:
        json.dump(obj, f, indent=2)


def write_llada_checkpoint(path, *, d_model=32, n_layers=2, n_heads=4, mlp_hidden=48, seed=0,
                           dtype=torch.float32, shards=1, tokenizer=True, rope_theta=500000.0, eps=1e-5):
    """A random LLaDA-layout checkpoint in `path`; returns {hub name: float32 tensor}."""
    os.makedirs(path, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pre = "model.transformer"
    t = {f"{pre}.wte.weight": _random((VOCAB, d_model), 1.0, g)}
    for i in range(n_layers):
        b = f"{pre}.blocks.{i}"
        t[f"{b}.attn_norm.weight"] = _norm_weight(d_model, g)
        for name in ("q_proj", "k_proj", "v_proj", "attn_out"):
            t[f"{b}.{name}.weight"] = _random((d_model, d_model), d_model ** -0.5, g)
        t[f"{b}.ff_norm.weight"] = _norm_weight(d_model, g)
        t[f"{b}.ff_proj.weight"] = _random((mlp_hidden, d_model), d_model ** -0.5, g)
        t[f"{b}.up_proj.weight"] = _random((mlp_hidden, d_model), d_model ** -0.5, g)
        t[f"{b}.ff_out.weight"] = _random((d_model, mlp_hidden), mlp_hidden ** -0.5, g)
    t[f"{pre}.ln_f.weight"] = _norm_weight(d_model, g)
    t[f"{pre}.ff_out.weight"] = _random((VOCAB, d_model), d_model ** -0.5, g)
    _write_weights(path, t, dtype, shards)
    # the field set of GSAI-ML/LLaDA-8B-Instruct's config.json, at toy size
    _write_json(path, "config.json", {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d_model,
        "embedding_dropout": 0.0, "embedding_size": VOCAB, "eos_token_id": LLADA_IDS["eos"], "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": LLADA_IDS["mask"], "max_sequence_length": 256,
        "mlp_hidden_size": mlp_hidden, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
        "n_heads": n_heads, "n_kv_heads": n_heads, "n_layers": n_layers, "pad_token_id": LLADA_IDS["pad"],
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": eps, "rope": True,
        "rope_full_precision": True, "rope_theta": rope_theta, "scale_logits": False,
        "transformers_version": "4.46.3", "use_cache": False, "vocab_size": VOCAB, "weight_tying": False,
    })
    if tokenizer:
        _write_tokenizer_json(path, LLADA_SPECIALS)
        _write_json(path, "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False, "chat_template": LLADA_TEMPLATE, "fast_tokenizer": True,
            "trust_remote_code": True, "merges_file": None, "vocab_file": None,  # fields of the real file
            "added_tokens_decoder": _added_tokens_decoder(LLADA_SPECIALS)})
    return t


def write_dream_checkpoint(path, *, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=48, seed=0,
                           dtype=torch.float32, shards=1, tokenizer="json", rope_theta=1000000.0, eps=1e-6):
    """A random Dream-layout (Qwen2 names) checkpoint in `path`; returns {hub name: float32 tensor}.

    tokenizer: "json" (tokenizer.json), "vocab_merges" (vocab.json + merges.txt and the custom
    DreamTokenizer class name, as the hub ships it) or None."""
    os.makedirs(path, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    hd = d_model // n_heads
    t = {"model.embed_tokens.weight": _random((VOCAB, d_model), 1.0, g)}
    for i in range(n_layers):
        b = f"model.layers.{i}"
        t[f"{b}.input_layernorm.weight"] = _norm_weight(d_model, g)
        for name, rows in (("q_proj", n_heads * hd), ("k_proj", n_kv_heads * hd), ("v_proj", n_kv_heads * hd)):
            t[f"{b}.self_attn.{name}.weight"] = _random((rows, d_model), d_model ** -0.5, g)
            t[f"{b}.self_attn.{name}.bias"] = _random((rows,), 0.3, g)
        t[f"{b}.self_attn.o_proj.weight"] = _random((d_model, n_heads * hd), d_model ** -0.5, g)
        t[f"{b}.post_attention_layernorm.weight"] = _norm_weight(d_model, g)
        t[f"{b}.mlp.gate_proj.weight"] = _random((mlp_hidden, d_model), d_model ** -0.5, g)
        t[f"{b}.mlp.up_proj.weight"] = _random((mlp_hidden, d_model), d_model ** -0.5, g)
        t[f"{b}.mlp.down_proj.weight"] = _random((d_model, mlp_hidden), mlp_hidden ** -0.5, g)
    t["model.norm.weight"] = _norm_weight(d_model, g)
    t["lm_head.weight"] = _random((VOCAB, d_model), d_model ** -0.5, g)
    _write_weights(path, t, dtype, shards)
    # the field set of Dream-org/Dream-v0-Instruct-7B's config.json, at toy size
    _write_json(path, "config.json", {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": DREAM_IDS["bos"], "eos_token_id": DREAM_IDS["eos"], "hidden_act": "silu",
        "hidden_size": d_model, "initializer_range": 0.02, "intermediate_size": mlp_hidden,
        "mask_token_id": DREAM_IDS["mask"], "max_position_embeddings": 256, "max_window_layers": n_layers,
        "model_type": "Dream", "num_attention_heads": n_heads, "num_hidden_layers": n_layers,
        "num_key_value_heads": n_kv_heads, "pad_token_id": DREAM_IDS["pad"], "rms_norm_eps": eps,
        "rope_scaling": None, "rope_theta": rope_theta, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": str(dtype).replace("torch.", ""), "transformers_version": "4.46.2", "use_cache": True,
        "use_mrope": False, "use_sliding_window": False, "vocab_size": VOCAB,
    })
    common = {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "mask_token": "<|mask|>", "clean_up_tokenization_spaces": False, "chat_template": DREAM_TEMPLATE,
              "added_tokens_decoder": _added_tokens_decoder(DREAM_SPECIALS)}
    if tokenizer == "json":
        _write_tokenizer_json(path, DREAM_SPECIALS)
        _write_json(path, "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **common})
    elif tokenizer == "vocab_merges":
        _write_json(path, "vocab.json", _byte_vocab())
        with open(os.path.join(path, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        _write_json(path, "tokenizer_config.json", {
            "tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
            "add_bos_token": False, "add_prefix_space": False, "errors": "replace", **common})
    elif tokenizer is not None:
        raise ValueError(f"tokenizer must be 'json', 'vocab_merges' or None, got {tokenizer!r}")
    return t
