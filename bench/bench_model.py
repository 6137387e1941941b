"""bench_model.py — training throughput of the tiny denoiser on the CPU, and how much of the machine's
dense matmul rate it reaches.

Measures, in one run and on the same threads:
  * forward + backward tokens/s of `tiny` on (batch, seq) token ids (loss = mean logsumexp of the
    logits, so the LM head and every block run backward), and forward-only tokens/s under no_grad;
  * the model's achieved FLOP/s, counting 6 FLOPs per matmul weight per token for forward + backward
    (2 forward, 4 backward) plus the attention products (QKᵀ and AV: 4·T·d_model per layer per token
    forward, ×3 with backward); norms, RoPE, softmax and SiLU are not counted;
  * the dense matmul rate of this machine: float32 (n × n) @ (n × n) at n = --matmul_n, and at the
    model's largest GEMM shape (batch·seq × d_model) @ (d_model × mlp_hidden) for comparison.
The printed fraction is achieved / dense. Every timing is the median of --repeats runs after warm-up.

Run:
    python bench/bench_model.py                      # defaults: batch 64, seq 33 (sudoku prompt + answer)
    python bench/bench_model.py --threads 2 --batch 128 --seq 64 --grad_ckpt 1
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402


def median_seconds(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_flops_per_token(cfg, seq):
    """6 · (matmul weights) + 12 · n_layers · seq · d_model: forward + backward FLOPs of one token."""
    D, F, L, V = cfg.d_model, cfg.mlp_hidden, cfg.n_layers, cfg.vocab_size
    kv = cfg.n_kv_heads * cfg.head_dim
    weights = L * (D * D + 2 * D * kv + D * D + 3 * D * F) + D * V  # q, k, v, o, gate/up/down, head
    return 6 * weights + 3 * 4 * L * seq * D


def matmul_flops_per_s(m, k, n, repeats):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    return 2 * m * k * n / median_seconds(lambda: a @ b, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64, help="sequences per step (the tiny trainer's rollout batch)")
    p.add_argument("--seq", type=int, default=33, help="tokens per sequence (sudoku: 16-char puzzle + separator + 16)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (median reported)")
    p.add_argument("--matmul_n", type=int, default=1024, help="size of the square matmul that defines the dense rate")
    p.add_argument("--grad_ckpt", type=int, default=0, choices=[0, 1], help="activation checkpointing per block")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = M.load_model("tiny")
    model.gradient_checkpointing = bool(args.grad_ckpt)
    cfg = model.config
    ids = torch.randint(3, 98, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    tokens = args.batch * args.seq

    def train_step():
        model.zero_grad(set_to_none=True)
        model(ids).logsumexp(-1).mean().backward()

    def forward_only():
        with torch.no_grad():
            model(ids)

    t_train = median_seconds(train_step, args.repeats)
    t_fwd = median_seconds(forward_only, args.repeats)
    achieved = train_flops_per_token(cfg, args.seq) * tokens / t_train
    dense = matmul_flops_per_s(args.matmul_n, args.matmul_n, args.matmul_n, args.repeats)
    dense_model_shape = matmul_flops_per_s(tokens, cfg.d_model, cfg.mlp_hidden, args.repeats)

    n_params = sum(q.numel() for q in model.parameters())
    print(f"tiny: {n_params / 1e6:.2f}M parameters | batch {args.batch} x seq {args.seq} = {tokens} tokens | "
          f"threads {torch.get_num_threads()} | grad_ckpt {bool(args.grad_ckpt)} | torch {torch.__version__}")
    print(f"forward+backward : {tokens / t_train:10.0f} tokens/s  ({t_train * 1e3:.1f} ms/step)")
    print(f"forward only     : {tokens / t_fwd:10.0f} tokens/s  ({t_fwd * 1e3:.1f} ms/step)")
    print(f"model FLOP/s (fwd+bwd, matmuls + attention products): {achieved / 1e9:.2f} GFLOP/s")
    print(f"dense matmul {args.matmul_n}^3 float32              : {dense / 1e9:.2f} GFLOP/s")
    print(f"dense matmul at the model's MLP shape ({tokens}x{cfg.d_model} @ {cfg.d_model}x{cfg.mlp_hidden}): "
          f"{dense_model_shape / 1e9:.2f} GFLOP/s")
    print(f"fraction of dense matmul rate: {achieved / dense:.3f} (of the MLP-shape rate: {achieved / dense_model_shape:.3f})")


if __name__ == "__main__":
    main()
