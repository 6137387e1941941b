"""memory_plan.py — expected peak memory per GPU of one GDSD round for LLaDA-8B / Dream-7B under
train.py (FSDP2 over N GPUs, LoRA or full fine-tuning, activation checkpointing on or off, rollout
batch, generation length), phase by phase, built from

  * parameter, gradient and AdamW state sizes (exact counts of model.py's modules), sharded over N;
  * per-layer activation bytes, counted on model.py's own Block (forward, backward, with LoRA and
    dropout as configured) at the run's exact shapes and dtypes: the block runs on FakeTensors (shapes
    and dtypes without data, so an 8B layer costs nothing) under bench/memtrack.py's tensor counter;
  * the tensors of the rest of a round, written out below from the code that makes them (the LM
    head at the scored positions, the sampler's float64 buffers, the scores' row chunks, FSDP2's
    gathered weights, AdamW's state).

What each phase holds (c = bytes per compute element: 2 in bf16, 4 in fp32; B = rollout batch,
T = prompt + completion tokens, R = rows at which the head runs):
  rollout   weights (+ the whole model gathered in compute dtype under FSDP: train.gathered) + the
            largest of: one block's inference working set on B·T tokens, the head on R = B·block
            rows, the sampler's (R, V) buffers (logits, float64 uniforms, -log u, exp z: c + 24 B)
  scoring   weights (+ FSDP: root and two blocks gathered) + the largest of: a block's working set on
            2B·T tokens (mask and complement stacked), the head on all R = B·L completion positions
  update    weights, fp32 gradients, AdamW state (2 fp32 per trainable weight, made by the first
            step) + saved activations (checkpointing: each block's input; off: everything a block
            saves, per layer) + the largest of: the head's logits and their gradient (2·R·V·c),
            one block's recompute + backward, the optimizer step's temporaries

Run:
    python bench/memory_plan.py                          # the official recipe on 8 × 80 GB, both models
    python bench/memory_plan.py --gpus 4 --gpu_gib 39.4  # another machine
    python bench/memory_plan.py --check bench/results/real_width-llada.json   # plan vs a measured round

The --check form re-plans the exact configuration a bench/real_width.py run measured (reduced depth,
its dtype, one process) and prints plan and measurement side by side; exit status 1 if a phase
differs by more than 15%.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import model as M  # noqa: E402
from memtrack import PeakMemory  # noqa: E402

GiB = 2 ** 30
TOLERANCE = 0.15
FITS = 0.9  # share of a GPU's memory a plan may fill
MODELS = {"llada": "llada-8b", "dream": "dream-7b"}
CHUNK_ELEMENTS = 1 << 23  # loss.py's _CHUNK_ELEMENTS: target_scores works on (rows, V) float32 chunks of this size


@dataclasses.dataclass
class Plan:
    """One configuration of a round (the official LLaDA recipe by default)."""
    family: str = "llada"
    n_layers: int = None          # None: the hub model's depth
    gpus: int = 8
    dtype: str = "bf16"           # train.py --dtype
    lora_rank: int = 128          # 0 = full fine-tuning
    lora_dropout: float = 0.05
    grad_ckpt: bool = True
    rollout_batch: int = 6        # completions per chunk (G = 6: one prompt per chunk)
    prompt_len: int = 200
    gen_length: int = 256
    block_length: int = 32
    reference: bool = True        # β > 0: reference scores (LoRA off, or a frozen bf16 copy)
    mu: int = 8                   # optimizer passes: passes after the first score the rollout policy beforehand
    first_round: bool = False     # True: no AdamW state before the first optimizer step
    foreach: bool = True          # AdamW's multi-tensor step (its default on CUDA, not on the CPU)
    vocab_size: int = None        # None: the model's; other values for quick checks
    widths: dict = None           # overrides of d_model / mlp_hidden / heads (smoke runs)

    @property
    def fsdp(self):
        return self.gpus > 1 or self.dtype == "bf16"  # train.py shards whenever a process group exists

    @property
    def c(self):
        return 2 if self.dtype == "bf16" else 4

    def config(self):
        cfg = dataclasses.replace(M.CONFIGS[MODELS[self.family]], **(self.widths or {}))
        if self.n_layers is not None:
            cfg = dataclasses.replace(cfg, n_layers=self.n_layers)
        if self.vocab_size is not None:  # special tokens at the top ids, as hub_checkpoint.hub_overrides
            cfg = dataclasses.replace(cfg, vocab_size=self.vocab_size, mask_id=self.vocab_size - 1,
                                      eos_id=self.vocab_size - 2, pad_id=self.vocab_size - 2)
        return cfg


# ----------------------------------------------------------------------------------------------
# Sizes of weights and optimizer state: exact counts of model.py's modules (built on the meta device).

def param_counts(cfg, lora_rank):
    """(per block, root = embedding + final norm + head, LoRA per block) parameter counts."""
    with torch.device("meta"):
        block = M.Block(cfg)
        holder = _OneBlock(cfg, block)
        n_block = sum(p.numel() for p in block.parameters())
        n_lora = sum(p.numel() for p in M.add_lora(holder, lora_rank, 2 * lora_rank)) if lora_rank else 0
    root = 2 * cfg.vocab_size * cfg.d_model + cfg.d_model
    return n_block, root, n_lora


class _OneBlock(torch.nn.Module):
    """What add_lora needs of a model (.config, .blocks) around one block."""

    def __init__(self, cfg, block):
        super().__init__()
        self.config, self.blocks = cfg, torch.nn.ModuleList([block])


def weight_bytes(plan, cfg):
    """Bytes per GPU of stored weights, gradients and AdamW state, and of the whole model gathered in
    compute dtype (FSDP: what train.gathered and a forward's all-gathers materialise)."""
    n_block, n_root, n_lora_block = param_counts(cfg, plan.lora_rank)
    n_total, n_lora = n_root + cfg.n_layers * n_block, cfg.n_layers * n_lora_block
    frozen = 2 if plan.dtype == "bf16" else 4  # train.build_models: frozen weights bf16 under --dtype bf16
    if plan.lora_rank:
        stored, trainable = n_total * frozen + n_lora * 4, n_lora  # adapters are fp32
    else:
        stored, trainable = n_total * 4 + (n_total * frozen if plan.reference else 0), n_total
    N = plan.gpus
    return {
        "weights": stored / N,
        "grads": 4 * trainable / N,
        "adam": 8 * trainable / N,
        "gathered_model": (n_total + n_lora) * plan.c if plan.fsdp else 0,
        "gathered_block": (n_block + n_lora_block) * plan.c if plan.fsdp else 0,
        "gathered_root": n_root * plan.c if plan.fsdp else 0,
        "trainable": trainable,
    }


# ----------------------------------------------------------------------------------------------
# Per-layer activation bytes: one model.py Block at the round's shapes, counted on FakeTensors.

def block_profile(cfg, plan, n_seq, seq_len, *, grad, train):
    """(Cached) _block_profile: the same block at the same shapes recurs across a table's rows."""
    key = (repr(cfg), plan.dtype, plan.lora_rank, plan.lora_dropout, plan.grad_ckpt, plan.fsdp, n_seq, seq_len, grad, train)
    if key not in _PROFILES:
        _PROFILES[key] = _block_profile(cfg, plan, n_seq, seq_len, grad=grad, train=train)
    return _PROFILES[key]


_PROFILES = {}


def _block_profile(cfg, plan, n_seq, seq_len, *, grad, train):
    """Bytes of one block's call on (n_seq, seq_len) tokens, as train.py runs it:
        peak_fwd   largest bytes alive at once during the forward (made inside it, output included)
        held       alive after the forward: the output and what autograd saved for the backward
        peak_bwd   largest bytes alive during forward + backward, minus the parameter gradients
                   that stay (those are counted with the weights)
    Compute dtype as under train.py: bf16 blocks with bf16 adapters (FSDP2 casts every weight), or
    all fp32. grad: forward under autograd; train: LoRA dropout active."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    dtype = torch.bfloat16 if plan.dtype == "bf16" else torch.float32
    with torch.device("meta"):  # shapes and dtypes first (casting FakeTensor parameters is not supported)
        block = M.Block(cfg)
        if plan.lora_rank:
            M.add_lora(_OneBlock(cfg, block), plan.lora_rank, 2 * plan.lora_rank, plan.lora_dropout)
        block.to(dtype).train(train)
        if not grad:
            block.requires_grad_(False)
    with FakeTensorMode():
        for module in block.modules():  # FakeTensor parameters: no memory, no data
            for name, p in [(n, p) for n, p in module._parameters.items() if p is not None]:
                module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype), p.requires_grad)
        h = torch.randn(n_seq, seq_len, cfg.d_model, dtype=dtype, requires_grad=grad)  # the residual stream
        positions = torch.arange(seq_len)[None].expand(n_seq, seq_len)
        cos, sin = M.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        key_mask = torch.ones(n_seq, 1, 1, seq_len, dtype=torch.bool)
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx, PeakMemory("cpu") as mem:
            if grad and plan.grad_ckpt:
                from torch.utils.checkpoint import checkpoint
                out = checkpoint(block, h, cos, sin, key_mask, use_reentrant=False)
            else:
                out = block(h, cos, sin, key_mask)
            peak_fwd, held = mem.highest, mem.current
            if grad:
                out.backward(torch.ones_like(out))
        param_grads = sum(p.grad.numel() * p.grad.element_size() for p in block.parameters() if p.grad is not None)
        peak_bwd = mem.highest - (0 if plan.fsdp else param_grads)  # FSDP: unsharded grads are transient
    return {"peak_fwd": peak_fwd, "held": held, "peak_bwd": peak_bwd if grad else 0}


# ----------------------------------------------------------------------------------------------
# The rest of a round, from the code that makes each tensor.

def head_bytes(cfg, rows, c, grad):
    """The model's tail at `rows` selected positions: the selected hidden states, RMSNorm's fp32
    copy, the logits (rows, V); under autograd also what the norm and the head save."""
    d, V = cfg.d_model, cfg.vocab_size
    fwd = rows * d * (c + 4 + c) + rows * V * c
    return fwd + (rows * d * (4 + 4 + c) if grad else 0)


def sampler_bytes(cfg, rows, c):
    """sample.generate at one step, τ > 0 (low-confidence remasking): the logits with the mask token
    banned (a copy), float64 uniforms, -log u and exp(z) (gumbel_argmax): rows × V × (c + 24)."""
    return rows * cfg.vocab_size * (c + 24)


def chunk_bytes(rows, vocab):
    """One float32 row chunk of loss.target_scores: min(rows, 2^23 / V) rows of V."""
    return min(rows, max(1, CHUNK_ELEMENTS // vocab)) * vocab * 4


def rope_bytes(n_seq, seq_len, cfg):
    """positions (long) and cos / sin (float32) of the forward."""
    return n_seq * seq_len * (8 + 2 * 4 * cfg.head_dim)


def plan_round(plan):
    """{phase: {"total": bytes, parts...}} for one round of `plan` (per GPU)."""
    cfg = plan.config()
    c, d, V = plan.c, cfg.d_model, cfg.vocab_size
    B, T, L = plan.rollout_batch, plan.prompt_len + plan.gen_length, plan.gen_length
    w = weight_bytes(plan, cfg)
    adam_before = 0 if plan.first_round else w["adam"]
    static = w["weights"] + adam_before
    out = {}

    # rollout: B sequences, the head at the current block's B·block_length masked positions
    rows = B * plan.block_length
    blk = block_profile(cfg, plan, B, T, grad=False, train=False)
    h = B * T * d * c + rope_bytes(B, T, cfg)
    # the previous step's banned-token logits and uniforms live on while the model runs again
    previous = rows * V * (c + 8)
    work = max(h + blk["peak_fwd"] + previous, head_bytes(cfg, rows, c, False) + previous, sampler_bytes(cfg, rows, c))
    out["rollout"] = {"weights": static, "gathered": w["gathered_model"], "working": work}

    # scoring: 2B sequences (mask and complement), head at every completion position (B·L rows)
    rows = B * L
    # rollout-policy scores (LoRA dropout active) for passes 2..μ; with μ = 1 only the reference's,
    # LoRA off (pass 1 reuses the policy's own scores: train.teacher_scores)
    scorer = plan if plan.mu > 1 else dataclasses.replace(plan, lora_rank=0)
    blk = block_profile(cfg, scorer, 2 * B, T, grad=False, train=plan.mu > 1)
    h = 2 * B * T * d * c + rope_bytes(2 * B, T, cfg)
    work = max(h + blk["peak_fwd"], head_bytes(cfg, rows, c, False) + chunk_bytes(rows, V))
    gathered = w["gathered_root"] + 2 * w["gathered_block"]
    out["scoring"] = {"weights": static, "gathered": gathered, "working": work}

    # update: saved activations of all layers, then the backward's largest moment
    blk = block_profile(cfg, plan, 2 * B, T, grad=True, train=True)
    h = 2 * B * T * d * c  # one block's input (the residual stream)
    # saved for the backward: every block's input (checkpointing keeps only that) or everything a
    # block saves (`held` counts the block's output, which is the next block's input); the last
    # block's output is not saved (the head keeps only the selected rows)
    per_layer = h if plan.grad_ckpt else blk["held"]
    saved = cfg.n_layers * per_layer + rope_bytes(2 * B, T, cfg)
    head_saved = head_bytes(cfg, rows, c, True)
    backward_head = rows * V * c + 2 * chunk_bytes(rows, V)  # the logits' gradient and its row chunks
    # the last block's backward (its recompute under checkpointing): its profile counts its output,
    # freed by then in the model, in place of its input, which the model still holds
    recompute = blk["peak_bwd"]
    step = w["grads"] if plan.foreach else 0  # the multi-tensor step makes an fp32 temporary per weight
    # the backward's largest moment, or the optimizer step (AdamW state made by the first step)
    work = max(saved + head_saved + backward_head, saved + recompute, w["adam"] - adam_before + step)
    out["update"] = {"weights": static, "grads": w["grads"], "gathered": gathered, "working": work}
    for phase in out.values():
        phase["total"] = sum(phase.values())
    return out


# ----------------------------------------------------------------------------------------------
# Tables.

def fmt_gib(x):
    return f"{x / GiB:6.1f}"


def official_table(gpus, gpu_gib, families=("llada", "dream")):
    """Rows of the plan for the official recipe and its variants, per model."""
    room = FITS * gpu_gib
    lines = [f"Expected peak memory per GPU (GiB) of one GDSD round in steady state (AdamW state made): "
             f"{gpus} GPUs, FSDP2, bf16, G = 6 completions of a 200-token prompt per chunk, block 32. "
             f"fits: peak under {room:.0f} GiB ({FITS:.0%} of {gpu_gib:g} GiB, room for the CUDA context "
             f"and the allocator's fragmentation).",
             "",
             "| model | fine-tuning | act. ckpt | gen length | rollout batch | rollout | scoring | update | peak | fits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for family in families:
        for lora in (128, 0):
            for ckpt in (True, False):
                for gen, batch in ((128, 6), (256, 6), (512, 6), (256, 12)):
                    p = Plan(family=family, gpus=gpus, lora_rank=lora, grad_ckpt=ckpt, gen_length=gen, rollout_batch=batch)
                    r = plan_round(p)
                    peak = max(v["total"] for v in r.values())
                    lines.append(f"| {MODELS[family]} | {'LoRA r 128' if lora else 'full'} | {'on' if ckpt else 'off'} | "
                                 f"{gen} | {batch} | {fmt_gib(r['rollout']['total'])} | {fmt_gib(r['scoring']['total'])} | "
                                 f"{fmt_gib(r['update']['total'])} | {fmt_gib(peak)} | "
                                 f"{'yes' if peak < room * GiB else 'no'} |")
    return lines


def plan_of_measurement(meas):
    """The Plan of a measured round (bench/real_width.py or gpu_check.py's JSON)."""
    return Plan(**{k: meas["plan"][k] for k in meas["plan"]})


def check(meas):
    """Plan against measurement, per phase: lines and whether every phase is within TOLERANCE."""
    plan = plan_of_measurement(meas)
    predicted = plan_round(plan)
    lines = [f"{meas['name']}: plan vs measured peak memory (GiB), {plan.family} {plan.n_layers} layer(s), {plan.dtype}, "
             f"{plan.gpus} process(es), LoRA r {plan.lora_rank}, ckpt {'on' if plan.grad_ckpt else 'off'}",
             "| phase | plan | measured | plan / measured |", "|---|---|---|---|"]
    ok = True
    for phase in ("rollout", "scoring", "update"):
        p, m = predicted[phase]["total"], meas["phases"][phase]["peak_bytes"]
        ratio = p / m
        ok &= abs(ratio - 1) <= TOLERANCE
        lines.append(f"| {phase} | {p / GiB:.3f} | {m / GiB:.3f} | {ratio:.3f} |")
    return lines, ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, default=8, help="GPUs (FSDP2 shards over all of them)")
    p.add_argument("--gpu_gib", type=float, default=79.2, help="memory per GPU in GiB, for the 'fits' column "
                   "(an 80 GB H100 / A100 reports 79.2 GiB)")
    p.add_argument("--family", choices=sorted(MODELS), nargs="+", default=["llada", "dream"], help="models to plan")
    p.add_argument("--check", nargs="*", default=[], help="JSON files of measured rounds to compare with the plan")
    p.add_argument("--out", default=None, help="also write the printed lines to this file")
    args = p.parse_args(argv)
    lines, ok = [], True
    if args.check:
        for path in args.check:
            more, good = check(json.load(open(path)))
            lines += more + [""]
            ok &= good
    else:
        lines = official_table(args.gpus, args.gpu_gib, args.family)
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
