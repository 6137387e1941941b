"""bench_loss.py — peak memory and time of loss.denoiser_scores against the naive full-logits path.

Scores B completions of length L after a prompt of P tokens with vocabulary V (defaults:
B = 8, L = 256, V = 126464 of LLaDA, P = 128) under a small bidirectional denoiser (one transformer
encoder layer, d_model 64), so the logits dominate memory as they do for LLaDA / Dream.

    naive     the model's full logits (2B, P+L, V) for the coupled pair, log_softmax over the
              completion slice (2B, L, V), gather the sampled tokens, keep M / M^c
    gathered  loss.denoiser_scores: logits_mask makes the head run at the B·L scored positions
              only, and φ = logit[x0] - logsumexp is computed in row chunks (no log-softmax copy)
    chunked   the same with completions_per_call = --chunk: c completions (2c sequences) per
              model call, each call checkpointed under autograd (its forward reruns in backward)

Two modes: `score` (no_grad: the old / reference scores) and `train` (forward + backward of the
pre-training loss -S.mean()/L: the current policy's pass).

Memory is measured honestly on the CPU: every (variant, mode) runs in a fresh subprocess, which
records its resident set size just before the call (/proc/self/statm) and the kernel's peak RSS
after it (getrusage ru_maxrss); the difference is the call's peak. (tracemalloc does not see
torch's allocations; tensors above glibc's 32 MB mmap limit return to the OS when freed, smaller
ones may stay cached, which can only overstate a peak.) Time is the median of --repeats calls in the
same subprocess, on --threads threads. Both variants' scores are compared (max |ΔS|).

Run:
    python bench/bench_loss.py                        # both modes, ~10 GB free RAM needed for naive train
    python bench/bench_loss.py --modes score --vocab 32000
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import loss as L  # noqa: E402

MASK_ID = 2
VARIANTS = ("naive", "gathered", "chunked")


class SmallDenoiser(nn.Module):
    """Embedding, one bidirectional encoder layer, untied LM head; the calling convention of loss.py."""

    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.block = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=2 * d_model,
                                                dropout=0.0, batch_first=True)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None, logits_mask=None):
        pad = None if attention_mask is None else ~attention_mask.bool()
        h = self.block(self.embed(input_ids), src_key_padding_mask=pad)  # (N, T, d)
        if logits_mask is not None:
            h = h[logits_mask]  # (n, d): the head runs only at the selected positions
        return self.head(h)  # (N, T, V) or (n, V)


def naive_scores(model, prompt_ids, x0, mask):
    """Plain transcription of the coupled logprob score with full logits and a log-softmax copy."""
    B, Lc = x0.shape
    P = prompt_ids.shape[1]
    x_m, x_mc = x0.masked_fill(mask, MASK_ID), x0.masked_fill(~mask, MASK_ID)
    ids = torch.cat([torch.cat([prompt_ids, x_m], 1), torch.cat([prompt_ids, x_mc], 1)])  # (2B, P+L)
    logits = model(ids)  # (2B, P+L, V)
    logp = torch.log_softmax(logits[:, P:].float(), dim=-1)  # (2B, L, V)
    phi = logp.gather(-1, x0.repeat(2, 1).unsqueeze(-1))[..., 0]  # (2B, L)
    return 0.5 * ((phi[:B] * mask).sum(-1) + (phi[B:] * ~mask).sum(-1))  # (B,)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args):
    """One (variant, mode) in this fresh process: peak RSS increase of the first call, median time."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallDenoiser(args.vocab, args.d_model)
    prompt_ids = torch.randint(3, args.vocab, (args.batch, args.prompt_len))
    x0 = torch.randint(3, args.vocab, (args.batch, args.length))
    mask = L.forward_process(0, args.batch, args.length, 1)[0]

    def run():
        with torch.set_grad_enabled(args.mode == "train"):
            if args.variant == "naive":
                s = naive_scores(model, prompt_ids, x0, mask)
            else:
                per_call = args.chunk if args.variant == "chunked" else None
                s = L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK_ID, estimator="logprob",
                                      completions_per_call=per_call)
            if args.mode == "train":
                (-s.mean() / args.length).backward()
                model.zero_grad(set_to_none=True)
        return s.detach()

    before = rss_bytes()
    t0 = time.perf_counter()
    s = run()
    times = [time.perf_counter() - t0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # ru_maxrss is in KiB
    for _ in range(args.repeats - 1):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"peak": peak, "time": statistics.median(times), "scores": s.tolist()}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # problem size
    p.add_argument("--batch", type=int, default=8, help="completions B per micro-batch")
    p.add_argument("--length", type=int, default=256, help="completion (canvas) length L")
    p.add_argument("--prompt_len", type=int, default=128, help="prompt length P")
    p.add_argument("--vocab", type=int, default=126464, help="vocabulary size V (LLaDA: 126464)")
    p.add_argument("--d_model", type=int, default=64, help="hidden size of the small denoiser")
    p.add_argument("--chunk", type=int, default=2, help="completions per model call of the chunked variant")
    # measurement
    p.add_argument("--modes", default="score,train", help="comma list of: score (no_grad), train (fwd+bwd)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per subprocess (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    # internal: one measurement in a subprocess
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["score", "train"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        return child(args)

    B, Lc, P, V = args.batch, args.length, args.prompt_len, args.vocab
    print(f"B={B} L={Lc} P={P} V={V} d_model={args.d_model} threads={args.threads} repeats={args.repeats}; "
          f"float32 logits of (B·L, V) = {B * Lc * V * 4 / 2**30:.2f} GiB, (2B, P+L, V) = "
          f"{2 * B * (P + Lc) * V * 4 / 2**30:.2f} GiB")
    shared = ("batch", "length", "prompt_len", "vocab", "d_model", "chunk", "repeats", "threads")
    base = [sys.executable, os.path.abspath(__file__)] + [f"--{k}={getattr(args, k)}" for k in shared]
    for mode in args.modes.split(","):
        res = {}
        for variant in VARIANTS:
            out = subprocess.run(base + [f"--variant={variant}", f"--mode={mode}"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{variant}/{mode} failed:\n{out.stderr}")
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {mode:5s} {variant:8s} peak {res[variant]['peak'] / 2**30:6.2f} GiB   time {res[variant]['time']:7.3f} s")
        n = res["naive"]
        for variant in VARIANTS[1:]:
            g = res[variant]
            diff = max(abs(a - b) for a, b in zip(n["scores"], g["scores"]))
            print(f"  {mode:5s} naive/{variant}: peak memory {n['peak'] / g['peak']:.1f}x lower, "
                  f"time {n['time'] / g['time']:.1f}x faster (max |ΔS| = {diff:.2e} on |S| ~ {abs(n['scores'][0]):.0f})")


if __name__ == "__main__":
    main()
