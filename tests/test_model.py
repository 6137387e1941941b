"""Tests of model.py: the denoiser's math against a plain transcription of the hub architectures,
loading and saving the hubs' layouts, logit alignment, padding, LoRA, tokenizers and every error.

The hub-layout checkpoints are tiny random ones written by hub_fixtures.py (real config fields and
weight names, GQA and q/k/v bias for Dream). `transcribe` below recomputes their logits from the raw
tensors with explicit loops over rows and heads in float64, sharing no code with model.py.
"""
import copy
import json
import math
import os

import pytest
import torch

import model as M
from hub_fixtures import DREAM_IDS, LLADA_IDS, VOCAB, write_dream_checkpoint, write_llada_checkpoint


# ----------------------------------------------------------------------------------------------
# A plain transcription of both hub architectures

def transcribe(t, cfg, ids, attention_mask=None):
    """Raw (unshifted) logits (N, T, V) of a hub checkpoint, from its tensors `t` and config.json `cfg`.

    Per row and per head: x = emb; x += W_o·concat_h softmax(q_h k_g^T / sqrt(d) over real keys) v_g with
    g = h // (H / H_kv), RoPE rotating dims (j, j + d/2) by pos·θ^(-2j/d); x += W_down(silu(W_gate x) ⊙ W_up x);
    logits = W_head · rmsnorm(x). Positions count from each row's first real token."""
    llada = cfg["model_type"] == "llada"
    if llada:
        D, H, Hkv, L = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["n_layers"]
        eps = cfg["rms_norm_eps"]
        p = lambda i, n: t[f"model.transformer.blocks.{i}.{n}"].double()
        emb, final, head = (t[f"model.transformer.{n}.weight"].double() for n in ("wte", "ln_f", "ff_out"))
        names = dict(an="attn_norm", q="q_proj", k="k_proj", v="v_proj", o="attn_out", mn="ff_norm",
                     gate="ff_proj", up="up_proj", down="ff_out")
    else:
        D, H, Hkv, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
        eps = cfg["rms_norm_eps"]
        p = lambda i, n: t[f"model.layers.{i}.{n}"].double()
        emb, final, head = t["model.embed_tokens.weight"].double(), t["model.norm.weight"].double(), t["lm_head.weight"].double()
        names = dict(an="input_layernorm", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                     o="self_attn.o_proj", mn="post_attention_layernorm", gate="mlp.gate_proj", up="mlp.up_proj",
                     down="mlp.down_proj")
    d, theta = D // H, cfg["rope_theta"]

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    def linear(x, i, n):
        y = x @ p(i, f"{names[n]}.weight").T
        bias = f"{names[n]}.bias"
        full = f"model.layers.{i}.{bias}" if not llada else f"model.transformer.blocks.{i}.{bias}"
        return y + t[full].double() if full in t else y

    def rope(x, pos):  # x (T, d) of one head
        out = x.clone()
        for j in range(d // 2):
            ang = pos * theta ** (-2.0 * j / d)
            c, s = torch.cos(ang), torch.sin(ang)
            out[:, j] = x[:, j] * c - x[:, j + d // 2] * s
            out[:, j + d // 2] = x[:, j + d // 2] * c + x[:, j] * s
        return out

    N, T = ids.shape
    mask = torch.ones(N, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rows = []
    for n in range(N):
        pos = (mask[n].long().cumsum(0) - 1).clamp(min=0).double()
        x = emb[ids[n]]  # (T, D)
        for i in range(L):
            h = rms(x, p(i, f"{names['an']}.weight"))
            q, k, v = linear(h, i, "q"), linear(h, i, "k"), linear(h, i, "v")
            heads = []
            for hh in range(H):
                g = hh // (H // Hkv)
                qh = rope(q[:, hh * d:(hh + 1) * d], pos)
                kh = rope(k[:, g * d:(g + 1) * d], pos)
                scores = qh @ kh.T / math.sqrt(d)
                scores[:, ~mask[n]] = -math.inf  # padded keys are never attended to
                heads.append(torch.softmax(scores, -1) @ v[:, g * d:(g + 1) * d])
            x = x + linear(torch.cat(heads, -1), i, "o")
            h = rms(x, p(i, f"{names['mn']}.weight"))
            gate = linear(h, i, "gate")
            x = x + linear(gate * torch.sigmoid(gate) * linear(h, i, "up"), i, "down")
        rows.append(rms(x, final) @ head.T)
    return torch.stack(rows)  # (N, T, V)


def read_cfg(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def tensors_of(path):
    from safetensors.torch import load_file
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llada"))
    return path, write_llada_checkpoint(path)


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dream"))
    return path, write_dream_checkpoint(path)


def dataclasses_equal(a, b):
    """Equal configurations, wherever they were loaded from."""
    return {**vars(a), "source_dir": None} == {**vars(b), "source_dir": None}


def rand_ids(N, T, seed=0, high=VOCAB):
    return torch.randint(0, high, (N, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Configurations

def test_builtin_hub_configs_have_the_hub_parameter_counts_and_weight_names():
    # totals of the hubs' model.safetensors.index.json (bf16 bytes / 2) and their tensor counts
    expected = {"llada-8b": (8_015_581_184, 291), "dream-7b": (7_615_616_512, 339)}
    for name, (n_params, n_tensors) in expected.items():
        with torch.device("meta"):
            model = M.Denoiser(M.CONFIGS[name])
        assert sum(p.numel() for p in model.parameters()) == n_params
        names = M.hub_names(model.config)
        assert len(names) == n_tensors and set(names) == set(model.state_dict())
    llada = M.hub_names(M.CONFIGS["llada-8b"])
    assert llada["blocks.31.gate_proj.weight"] == "model.transformer.blocks.31.ff_proj.weight"
    assert llada["blocks.0.down_proj.weight"] == "model.transformer.blocks.0.ff_out.weight"
    assert llada["head.weight"] == "model.transformer.ff_out.weight"
    dream = M.hub_names(M.CONFIGS["dream-7b"])
    assert dream["blocks.27.k_proj.bias"] == "model.layers.27.self_attn.k_proj.bias"
    assert dream["head.weight"] == "lm_head.weight"


def test_tiny_config_size_and_character_vocabulary():
    cfg = M.CONFIGS["tiny"]
    D, F, L, V = cfg.d_model, cfg.mlp_hidden, cfg.n_layers, cfg.vocab_size
    closed_form = 2 * V * D + D + L * (4 * D * D + 3 * D * F + 2 * D)  # embed, head, final norm, blocks
    model = M.load_model("tiny")
    assert sum(p.numel() for p in model.parameters()) == closed_form == 1_082_496
    assert (cfg.family, cfg.vocab_size, cfg.pad_id, cfg.eos_id, cfg.mask_id) == ("llada", 128, 0, 1, 2)


def test_mask_id_must_lie_inside_the_vocabulary():
    with pytest.raises(ValueError, match=r"mask_id = 128 lies outside the vocabulary \[0, 128\)"):
        M.ModelConfig(**{**vars(M.CONFIGS["tiny"]), "mask_id": 128})
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        M.ModelConfig(**{**vars(M.CONFIGS["tiny"]), "n_kv_heads": 3})


# ----------------------------------------------------------------------------------------------
# The forward pass

def test_shapes_and_logits_mask_selects_rows_in_row_major_order():
    model = M.load_model("tiny")
    ids = rand_ids(3, 9, high=98)
    full = model(ids)
    assert full.shape == (3, 9, 128)
    sel = torch.rand(3, 9, generator=torch.Generator().manual_seed(1)) < 0.4
    assert torch.allclose(model(ids, logits_mask=sel), full[sel], atol=1e-6)
    assert model(ids, logits_mask=torch.zeros(3, 9, dtype=torch.bool)).shape == (0, 128)


def test_attention_is_bidirectional():
    model = M.load_model("tiny")
    ids = rand_ids(1, 8, high=98)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 98
    # the last token influences the first position: no causal mask
    assert (model(ids)[0, 0] - model(changed)[0, 0]).abs().max() > 1e-4


def test_left_padding_gives_the_unpadded_logits():
    model = M.load_model("tiny")
    row, other = rand_ids(1, 7, seed=1, high=98), rand_ids(1, 10, seed=2, high=98)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], dim=1)  # (1, 10), pad id 0
    batch = torch.cat([padded, other])  # (2, 10): row 0 left-padded by 3, row 1 full length
    attn = torch.ones(2, 10, dtype=torch.long)
    attn[0, :3] = 0
    out = model(batch, attention_mask=attn)
    torch.testing.assert_close(out[0, 3:], model(row)[0], rtol=0, atol=2e-5)
    torch.testing.assert_close(out[1], model(other)[0], rtol=0, atol=2e-5)
    assert torch.equal(model(batch, attention_mask=attn.bool()), out)  # a bool mask means the same


def test_llada_layout_matches_the_plain_transcription(llada_dir):
    path, t = llada_dir
    model = M.load_model(path)
    ids = rand_ids(2, 11, seed=3)
    ref = transcribe(t, read_cfg(path), ids)
    torch.testing.assert_close(model(ids).double(), ref, rtol=1e-4, atol=1e-4)
    attn = torch.ones(2, 11, dtype=torch.bool)
    attn[1, :4] = False
    ref_pad = transcribe(t, read_cfg(path), ids, attn)
    torch.testing.assert_close(model(ids, attention_mask=attn).double()[attn], ref_pad[attn], rtol=1e-4, atol=1e-4)


def test_dream_layout_matches_the_transcription_shifted_by_one(dream_dir):
    path, t = dream_dir
    model = M.load_model(path)
    assert model.config.n_kv_heads == 2 and model.config.qkv_bias
    ids = rand_ids(2, 11, seed=4)
    raw = transcribe(t, read_cfg(path), ids)  # Dream's own output: position j predicts token j+1
    aligned = model(ids).double()
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1], rtol=1e-4, atol=1e-4)  # position i predicts token i
    torch.testing.assert_close(aligned[:, 0], raw[:, 0], rtol=1e-4, atol=1e-4)  # no predecessor: kept as is
    sel = torch.zeros(2, 11, dtype=torch.bool)
    sel[0, 5], sel[1, 1], sel[1, 10] = True, True, True
    torch.testing.assert_close(model(ids, logits_mask=sel).double(), raw[:, :-1][sel[:, 1:]], rtol=1e-4, atol=1e-4)


def test_dream_padding_matches_the_transcription_after_the_first_real_token(dream_dir):
    path, t = dream_dir
    model = M.load_model(path)
    ids = rand_ids(2, 9, seed=5)
    attn = torch.ones(2, 9, dtype=torch.bool)
    attn[0, :3] = False
    raw = transcribe(t, read_cfg(path), ids, attn)
    aligned = model(ids, attention_mask=attn).double()
    # the first real token's predecessor is padding: compare the positions after it
    torch.testing.assert_close(aligned[0, 4:], raw[0, 3:-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aligned[1, 1:], raw[1, :-1], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# The sampler's KV cache: past and window

def window_logits(model, ids, attn, lo, hi, logits_mask=None):
    """Logits of a window call after a fresh `past` of the same canvas (a cache refreshed now)."""
    past = {}
    model(ids, attention_mask=attn, past=past)
    return model(ids, attention_mask=attn, logits_mask=logits_mask, past=past, window=(lo, hi))


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_window_on_a_fresh_cache_gives_the_full_forward(family, llada_dir, dream_dir):
    """With keys/values cached from the same canvas, recomputing a window (the current block: dual
    cache; the block and everything after it: prefix cache) reproduces the full pass there. With
    left padding, and Dream's shift taking the window's first logits from the position before it."""
    model = M.load_model((llada_dir if family == "llada" else dream_dir)[0], dtype=torch.float64)
    ids = rand_ids(3, 14, seed=6)
    attn = torch.ones(3, 14, dtype=torch.bool)
    attn[0, :4], attn[2, :1] = False, False
    full = model(ids, attention_mask=attn)  # (3, 14, V)
    for lo, hi in ((6, 10), (6, 14), (10, 14)):
        torch.testing.assert_close(window_logits(model, ids, attn, lo, hi), full[:, lo:hi], rtol=0, atol=1e-12)
    sel = torch.zeros(3, 14, dtype=torch.bool)
    sel[0, 7], sel[1, 6], sel[1, 9], sel[2, 8] = True, True, True, True
    sel_outside = sel.clone()
    sel_outside[:, 12] = True  # columns outside the window are ignored
    torch.testing.assert_close(window_logits(model, ids, attn, 6, 10, sel_outside), full[sel], rtol=0, atol=1e-12)
    # the cache is what makes it an approximation: a stale cache changes the window's logits
    past = {}
    model(ids, attention_mask=attn, past=past)
    changed = ids.clone()
    changed[:, 6:10] = (ids[:, 6:10] + 1) % VOCAB
    stale = model(changed, attention_mask=attn, past=past, window=(6, 10))
    exact = model(changed, attention_mask=attn)[:, 6:10]
    assert (stale - exact).abs().max() > 1e-6


def test_window_without_a_filled_past_is_an_error():
    model = M.load_model("tiny")
    with pytest.raises(ValueError, match="needs `past` filled by a call on the whole canvas"):
        model(rand_ids(2, 6, high=98), past={}, window=(2, 4))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    ids = rand_ids(2, 8, high=98)
    grads = []
    for ckpt in (False, True):
        model = M.load_model("tiny")
        model.gradient_checkpointing = ckpt
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_tiny_init_is_a_function_of_the_seed():
    a, b, c = M.load_model("tiny", seed=1), M.load_model("tiny", seed=1), M.load_model("tiny", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.q_proj.weight"], sc["blocks.0.q_proj.weight"])


# ----------------------------------------------------------------------------------------------
# Loading and saving

@pytest.mark.parametrize("family", ["tiny", "llada", "dream"])
def test_save_then_load_is_bit_identical(family, llada_dir, dream_dir, tmp_path):
    model = M.load_model("tiny") if family == "tiny" else M.load_model({"llada": llada_dir, "dream": dream_dir}[family][0])
    M.save_model(model, str(tmp_path))
    back = M.load_model(str(tmp_path))
    ids = rand_ids(2, 7, high=98)
    assert torch.equal(model(ids), back(ids))
    assert dataclasses_equal(model.config, back.config)
    if family != "tiny":  # the written file holds exactly the fixture's tensors, under the hub names
        src, out = tensors_of({"llada": llada_dir, "dream": dream_dir}[family][0]), tensors_of(str(tmp_path))
        assert src.keys() == out.keys() and all(torch.equal(src[k], out[k]) for k in src)


def test_sharded_checkpoint_loads_like_the_single_file(tmp_path):
    write_dream_checkpoint(str(tmp_path / "one"), seed=7)
    write_dream_checkpoint(str(tmp_path / "three"), seed=7, shards=3)
    assert os.path.isfile(tmp_path / "three" / "model.safetensors.index.json")
    ids = rand_ids(2, 6)
    assert torch.equal(M.load_model(str(tmp_path / "one"))(ids), M.load_model(str(tmp_path / "three"))(ids))


def test_load_model_casts_to_the_requested_dtype(llada_dir):
    model = M.load_model(llada_dir[0], dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(rand_ids(1, 5)).dtype == torch.bfloat16


def test_tiny_checkpoint_is_recognised_as_tiny(tmp_path):
    M.save_model(M.load_model("tiny"), str(tmp_path))
    assert read_cfg(str(tmp_path))[M._CHAR_MARKER] is True and read_cfg(str(tmp_path))["model_type"] == "llada"
    assert isinstance(M.load_tokenizer(str(tmp_path)), M.CharTokenizer)
    assert dataclasses_equal(M.load_model(str(tmp_path)).config, M.CONFIGS["tiny"])


def test_save_keeps_the_hub_config_fields_and_copies_the_tokenizer(dream_dir, tmp_path):
    src = str(tmp_path / "src")
    write_dream_checkpoint(src, tokenizer="vocab_merges")
    out = str(tmp_path / "out")
    M.save_model(M.load_model(src), out)
    assert read_cfg(out) == {**read_cfg(src), "torch_dtype": "float32"}  # every hub field survives
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= set(os.listdir(out))
    a, b = M.load_tokenizer(src), M.load_tokenizer(out)
    assert a.encode(a.format_prompt("x = 1")) == b.encode(b.format_prompt("x = 1"))


# ----------------------------------------------------------------------------------------------
# LoRA

def trained_lora_model(seed=0, steps=3):
    """Tiny model with rank-4 adapters after a few AdamW steps; also returns the base model."""
    torch.manual_seed(seed)
    base = M.load_model("tiny")
    model = copy.deepcopy(base)
    params = M.add_lora(model, rank=4, alpha=8)
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = rand_ids(4, 8, high=98)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), torch.roll(ids, 1, 1).flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, base, ids


def test_lora_with_zero_b_is_exactly_the_base_and_only_adapters_train():
    base = M.load_model("tiny")
    model = copy.deepcopy(base)
    params = M.add_lora(model, rank=4, alpha=8)
    ids = rand_ids(2, 8, high=98)
    assert torch.equal(model(ids), base(ids))
    # all seven LLaDA projections of every block, A and B each
    assert len(params) == 2 * 7 * base.config.n_layers
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert model.blocks[0].down_proj.lora_B.weight.abs().sum() == 0


def test_adapters_off_reproduce_the_base_after_training():
    model, base, ids = trained_lora_model()
    assert (model(ids) - base(ids)).abs().max() > 1e-3  # the adapters learned something
    with M.lora_disabled(model):
        assert torch.equal(model(ids), base(ids))
    assert (model(ids) - base(ids)).abs().max() > 1e-3  # switched back on afterwards
    sb = base.state_dict()
    for n, p in model.named_parameters():  # the frozen base weights never moved
        if ".base." in n:
            assert torch.equal(p, sb[n.replace(".base.", ".")])


def test_save_merges_the_adapters_without_touching_the_module(tmp_path):
    model, base, ids = trained_lora_model()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    M.save_model(model, str(tmp_path))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(M.load_model(str(tmp_path))(ids), model(ids), rtol=1e-5, atol=1e-5)
    # the written weight is W + (α/r)·B·A
    wrapped = model.blocks[1].o_proj
    expected = wrapped.base.weight + 2.0 * wrapped.lora_B.weight @ wrapped.lora_A.weight
    saved = tensors_of(str(tmp_path))["model.transformer.blocks.1.attn_out.weight"]
    torch.testing.assert_close(saved, expected, rtol=1e-6, atol=1e-6)


def test_lora_state_dict_round_trip_through_the_resume_path():
    """lora_state_dict is what train.py saves; its resume loads it with set_model_state_dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    model, base, ids = trained_lora_model()
    state = M.lora_state_dict(model)
    assert all(".lora_A." in k or ".lora_B." in k for k in state) and len(state) == 2 * 7 * 4
    fresh = copy.deepcopy(base)
    M.add_lora(fresh, rank=4, alpha=8)
    set_model_state_dict(fresh, state, options=StateDictOptions(full_state_dict=True, strict=False))
    assert torch.equal(fresh(ids), model(ids))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        M.lora_state_dict(base)


def test_lora_targets_follow_the_family(dream_dir):
    model = M.load_model(dream_dir[0])
    M.add_lora(model, rank=2, alpha=2, targets=["o_proj", "gate_proj"])
    assert isinstance(model.blocks[0].o_proj, M.LoRALinear) and isinstance(model.blocks[0].gate_proj, M.LoRALinear)
    assert not isinstance(model.blocks[0].q_proj, M.LoRALinear)
    with pytest.raises(ValueError, match=r"unknown LoRA target\(s\) \['attn_out'\] for the dream layout"):
        M.add_lora(M.load_model(dream_dir[0]), rank=2, alpha=2, targets=["attn_out"])
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        M.add_lora(model, rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank must be positive"):
        M.add_lora(M.load_model("tiny"), rank=0, alpha=2)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with M.lora_disabled(M.load_model("tiny")):
            pass


def test_lora_on_a_bf16_model_keeps_float32_adapters():
    model = M.load_model("tiny", dtype=torch.bfloat16)
    M.add_lora(model, rank=4, alpha=8)
    assert model.blocks[0].q_proj.lora_A.weight.dtype == torch.float32
    assert model(rand_ids(1, 6, high=98)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# Tokenizers

def test_char_tokenizer_round_trip_and_specials():
    tok = M.load_tokenizer("tiny")
    ids = tok.encode("1 2+3=~")
    assert ids[0] == ord("1") - 32 + 3 and max(ids) == 97 and tok.format_prompt("ab") == "ab"
    assert tok.decode(ids + [tok.eos_id, tok.pad_id, tok.mask_id]) == "1 2+3=~"
    assert tok.decode([120]) == "\ufffd"
    with pytest.raises(ValueError, match="printable ASCII only"):
        tok.encode("caf\u00e9")


def test_hub_tokenizers_apply_the_chat_template_and_take_ids_from_the_config(llada_dir, dream_dir, tmp_path):
    tok = M.load_tokenizer(llada_dir[0])
    prompt = tok.format_prompt("2+2?")
    assert prompt == "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ids = tok.encode(prompt)
    assert ids[0] == LLADA_IDS["bos"] and ids.count(LLADA_IDS["bos"]) == 1  # no second, automatic BOS
    assert (tok.mask_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (LLADA_IDS["mask"], LLADA_IDS["eos"], LLADA_IDS["pad"], VOCAB)
    assert tok.decode(tok.encode("héllo") + [tok.mask_id, tok.eos_id]) == "héllo"
    dream = M.load_tokenizer(dream_dir[0])
    assert dream.format_prompt("hi").endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert dream.mask_id == DREAM_IDS["mask"]
    # Dream as the hub ships it: vocab.json + merges.txt and a custom class name, read without remote code
    path = str(tmp_path / "vm")
    write_dream_checkpoint(path, tokenizer="vocab_merges")
    vm = M.load_tokenizer(path)
    text = dream.format_prompt("sum of 12 and 30")
    assert vm.encode(text) == dream.encode(text) and vm.decode(vm.encode(text)) == text


# ----------------------------------------------------------------------------------------------
# Errors: each names the problem and the fix

def test_load_errors_name_the_problem(tmp_path, llada_dir):
    with pytest.raises(FileNotFoundError, match="neither a built-in model"):
        M.load_model(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="billions of random weights"):
        M.load_model("llada-8b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        M.load_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        M.load_tokenizer(str(tmp_path / "nope"))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(read_cfg(llada_dir[0])))
    with pytest.raises(FileNotFoundError, match="no model.safetensors nor model.safetensors.index.json"):
        M.load_model(str(no_weights))
    no_tok = str(tmp_path / "no_tok")
    write_llada_checkpoint(no_tok, tokenizer=False)
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        M.load_tokenizer(no_tok)


def test_missing_and_unexpected_weights_raise_one_error_listing_them(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path)
    t = write_llada_checkpoint(path)
    t = dict(t)
    del t["model.transformer.blocks.1.up_proj.weight"]
    t["model.transformer.blocks.1.mlp.up_proj.weight"] = torch.zeros(48, 32)
    t["model.transformer.blocks.0.q_proj.weight"] = torch.zeros(16, 32)
    save_file(t, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError) as err:
        M.load_model(path)
    msg = str(err.value)
    assert "1 missing weight(s): model.transformer.blocks.1.up_proj.weight" in msg
    assert "1 unexpected weight(s): model.transformer.blocks.1.mlp.up_proj.weight" in msg
    assert "model.transformer.blocks.0.q_proj.weight (16, 32) (config implies (32, 32))" in msg


def test_missing_shard_is_named(tmp_path):
    path = str(tmp_path)
    write_llada_checkpoint(path, shards=2)
    os.remove(os.path.join(path, "model-00002-of-00002.safetensors"))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        M.load_model(path)


@pytest.mark.parametrize("edit, message", [
    ({"model_type": "llama"}, "model_type 'llama'"),
    ({"weight_tying": True}, "weight_tying = True; this implementation supports only False"),
    ({"rope_full_precision": False}, "rope_full_precision = False"),
    ({"residual_dropout": 0.1}, "residual_dropout = 0.1"),
    ({"mask_token_id": VOCAB}, f"mask_id = {VOCAB} lies outside the vocabulary"),
    ({"mask_token_id": None}, "config.json has no mask_token_id"),
])
def test_unsupported_or_invalid_configs_are_rejected(edit, message, tmp_path):
    path = str(tmp_path)
    write_llada_checkpoint(path, tokenizer=False)
    cfg = {**read_cfg(path), **edit}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=message):
        M.load_model(path)


def test_forward_input_errors():
    model = M.load_model("tiny")
    ids = rand_ids(2, 5, high=98)
    with pytest.raises(ValueError, match="all padding"):
        model(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"logits_mask must have the shape of input_ids \(2, 5\)"):
        model(ids, logits_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"input_ids must be \(N, T\)"):
        model(ids[0])
