"""real_width.py — one GDSD round of LLaDA-8B-Instruct / Dream-v0-Instruct-7B at their real layer
widths and vocabularies with only 1–2 of their layers, on the CPU: seconds and peak memory per phase
(rollout, old / reference scoring, update), beside the memory plan's prediction for the same
configuration (bench/memory_plan.py; they must agree within 15%).

The official recipe's shapes (train.py's hub defaults): G = 6 completions of one ~200-token prompt,
256-token completions, block 32, LoRA r 128 / α 64 / dropout 0.05 on all seven projections,
activation checkpointing, β = 1e-3 (reference scores with LoRA off), num_mc 1. Reduced for CPU time
only: 8 denoising steps (one per block; the recipe uses 64) and μ = 1 optimizer pass (the recipe: 8);
neither changes a phase's peak memory. The checkpoint is written once by bench/hub_checkpoint.py
(real config.json, sharded bf16 safetensors with an index) and loaded by train.py's build_models.

    python bench/real_width.py --family llada                # ~3 GB checkpoint, then one round
    python bench/real_width.py --family dream --layers 2
    python bench/real_width.py --family llada --smoke        # shrunken widths: the code path in seconds

Writes bench/results/real_width-FAMILY.json (or --out): the configuration, per phase seconds and
peak bytes, and the round's metrics; `python bench/memory_plan.py --check FILE` re-plans it.
The CPU runs in fp32 by default (train.py's default there; bf16 matmuls are emulated on most CPUs,
several times slower); --dtype bf16 runs the GPU's mixed-precision path (FSDP2 over one process).
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import eval as E  # noqa: E402
import hub_checkpoint as H  # noqa: E402
import memory_plan as MP  # noqa: E402
import rl_round as R  # noqa: E402
import train as T  # noqa: E402

# Shrunken widths for --smoke: the same layouts (Dream keeps grouped KV heads and biases), ~100x smaller.
SMOKE_WIDTHS = {"llada": dict(d_model=256, mlp_hidden=768, n_heads=4, n_kv_heads=4),
                "dream": dict(d_model=224, mlp_hidden=1184, n_heads=7, n_kv_heads=1)}
SMOKE_VOCAB = 4096


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--family", choices=sorted(H.HUB_CONFIGS), default="llada", help="hub layout and widths")
    p.add_argument("--layers", type=int, default=1, help="transformer layers kept (the hubs: 32 / 28)")
    p.add_argument("--dir", default=None, help="checkpoint directory (default checkpoints/FAMILY-NL; written if absent)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="train.py --dtype (default: its own, fp32 on CPU)")
    p.add_argument("--prompt_len", type=int, default=200, help="prompt tokens")
    p.add_argument("--gen_length", type=int, default=256, help="completion tokens")
    p.add_argument("--group_size", type=int, default=6, help="G, completions of the prompt (one chunk)")
    p.add_argument("--diffusion_steps", type=int, default=8, help="denoising steps (one per block is the least)")
    p.add_argument("--mu", type=int, default=1, help="optimizer passes")
    p.add_argument("--lora_rank", type=int, default=128, help="LoRA rank (0 = full fine-tuning)")
    p.add_argument("--grad_ckpt", type=int, choices=[0, 1], default=1, help="activation checkpointing")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help=f"shrunken widths and a {SMOKE_VOCAB}-token vocabulary, 32+32 tokens: seconds")
    p.add_argument("--widths", default=None, help="other widths, e.g. d_model=1024,mlp_hidden=3072,n_heads=8,n_kv_heads=8,vocab_size=126464")
    p.add_argument("--out", default=None, help="JSON result (default bench/results/real_width-FAMILY[-smoke].json)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    widths, vocab = (dict(SMOKE_WIDTHS[a.family]), SMOKE_VOCAB) if a.smoke else (None, None)
    if a.smoke:
        a.prompt_len, a.gen_length, a.diffusion_steps = min(a.prompt_len, 32), min(a.gen_length, 32), 1
    if a.widths:
        widths = dict((k, int(v)) for k, v in (kv.split("=") for kv in a.widths.split(",")))
        vocab = widths.pop("vocab_size", vocab)
    tag = f"{a.family}-{a.layers}l" + ("-smoke" if a.smoke else "") + ("-narrow" if a.widths else "")
    directory = a.dir or os.path.join("checkpoints", tag)
    if not os.path.isfile(os.path.join(directory, "model.safetensors.index.json")):
        t = time.time()
        overrides = H.hub_overrides(a.family, **(widths or {}), **({"vocab_size": vocab} if vocab else {}))
        H.write_checkpoint(directory, a.family, a.layers, shard_gb=1.0, **overrides)
        print(f"[write] {directory} in {time.time() - t:.0f}s", flush=True)
    flags = dict(dtype=a.dtype, gen_length=a.gen_length, group_size=a.group_size, diffusion_steps=a.diffusion_steps,
                 mu=a.mu, lora_rank=a.lora_rank, grad_ckpt=a.grad_ckpt)
    args = R.round_args(directory, **{k: v for k, v in flags.items() if v is not None})
    if args.block_length > args.gen_length:
        args.block_length = args.gen_length
    rank, world, device, why = E.setup_distributed(args.dtype)
    print(f"[setup] {why}; dtype {args.dtype}; {torch.get_num_threads()} threads", flush=True)
    t = time.time()
    policy, ref, optimizer = R.build(args, device)
    print(f"[load] {sum(p.numel() for p in policy.parameters()) / 1e9:.2f}B parameters "
          f"({sum(p.numel() for p in policy.parameters() if p.requires_grad) / 1e6:.0f}M trainable) in {time.time() - t:.0f}s", flush=True)
    prompt = R.synthetic_prompt(policy.config, a.prompt_len)
    result = R.rl_round(policy, ref, optimizer, args, prompt, device)
    meas = {
        "name": f"real_width {tag}",
        "command": "python bench/real_width.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device), "threads": torch.get_num_threads(),
        "plan": dict(family=a.family, n_layers=a.layers, gpus=world, dtype=args.dtype, lora_rank=args.lora_rank,
                     lora_dropout=args.lora_dropout, grad_ckpt=bool(args.grad_ckpt), rollout_batch=args.group_size,
                     prompt_len=a.prompt_len, gen_length=args.gen_length, block_length=args.block_length,
                     reference=args.beta > 0, mu=args.mu, first_round=True, foreach=device.type == "cuda",
                     vocab_size=vocab,
                     widths=widths),
        "recipe": {k: getattr(args, k) for k in ("diffusion_steps", "mu", "num_mc", "beta", "lora_alpha", "temperature")},
        "phases": {k: result[k] for k in R.PHASES},
        "metrics": result["metrics"],
    }
    out = a.out or os.path.join(HERE, "results", f"real_width-{tag}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(meas, f, indent=1)
    lines, ok = MP.check(meas)
    print(f"\n| phase | seconds | peak GiB (measured) |\n|---|---|---|")
    for k in R.PHASES:
        print(f"| {k} | {result[k]['seconds']:.1f} | {result[k]['peak_bytes'] / 2**30:.3f} |")
    print("\n" + "\n".join(lines))
    print(f"\nmetrics {json.dumps(result['metrics'])}\nwritten {out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
