"""bench_sample.py — throughput of sample.generate against the loop transcription of LLaDA's sampler,
and the sampler's own overhead per denoising step.

Model: model.load_model("tiny") when model.py provides it (--model auto, the default), otherwise a
stand-in of the same shape (LLaDA layout: RMSNorm, rotary attention, SwiGLU; d_model 128, 4 layers,
vocabulary 128) so the script also runs without model.py; the header line says which one ran.
--model standin with --vocab / --layers / --d_model shows where the sampler's own work matters:
large vocabularies (LLaDA's is 126464), where the transcription's whole-canvas float64 noise and
softmax dominate the step.
Workload (issue defaults): batch 64, prompts of 16 tokens (every 4th row left-padded), 32
completion tokens, 32 steps, one block of 32, low-confidence remasking at τ = 1 (rollouts) and
τ = 0 (evaluation).

Printed, all measured in this one run (median of --repeats, the variants' calls interleaved so a
shared machine's drifts hit them alike, after a warm-up):
    tokens/s   completion tokens per second of generate and of tests/reference_sampler.py's
               llada_reference (whole-canvas logits and noise, per-row top-k loop); their ratio
               (target >= 1.5x); the two canvases are asserted identical (same seed)
    outside    seconds per step spent outside the model (the samplers' own work) and inside it
    step/fwd   generate's time per denoising step over one bare forward pass of the model on the
               same (B, P+L) batch with full logits (target <= 1.15x), and over a bare forward
               pass with the logits_mask of a mid-block step

Run:
    python bench/bench_sample.py                      # 1 thread, the issue's workload
    python bench/bench_sample.py --threads 2 --block_length 8 --repeats 5
    python bench/bench_sample.py --model standin --vocab 32768 --layers 2 --batch 16 --prompt_len 64 \
        --gen_length 64 --temperatures 1.0 --repeats 2   # a large vocabulary (a few minutes)
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import sample as S  # noqa: E402
from reference_sampler import llada_reference  # noqa: E402


class StandIn(nn.Module):
    """A tiny LLaDA-layout denoiser (the calling convention of sample.py), for when model.py is
    absent: pre-norm blocks of bidirectional rotary attention and a SwiGLU MLP, untied head."""

    def __init__(self, vocab=128, d=128, layers=4, heads=4, hidden=512, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.heads, self.emb = heads, nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            b = nn.Module()
            b.n1, b.n2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
            b.qkv, b.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
            b.gate, b.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
            b.down = nn.Linear(hidden, d, bias=False)
            self.blocks.append(b)
        self.norm, self.head = nn.RMSNorm(d, eps=1e-5), nn.Linear(d, vocab, bias=False)

    def rotate(self, t, pos):
        half = t.shape[-1] // 2
        freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)  # (half,)
        ang = pos[:, None, :, None].float() * freq  # (N, 1, T, half)
        a, b = t[..., :half], t[..., half:]
        return torch.cat([a * ang.cos() - b * ang.sin(), a * ang.sin() + b * ang.cos()], dim=-1)

    def forward(self, input_ids, attention_mask=None, logits_mask=None):
        N, T = input_ids.shape
        real = torch.ones(N, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        pos = (real.long().cumsum(1) - 1).clamp(min=0)  # (N, T)
        h = self.emb(input_ids)  # (N, T, d)
        for b in self.blocks:
            q, k, v = b.qkv(b.n1(h)).view(N, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (N, H, T, dh)
            a = F.scaled_dot_product_attention(self.rotate(q, pos), self.rotate(k, pos), v,
                                               attn_mask=real[:, None, None, :])
            h = h + b.out(a.transpose(1, 2).reshape(N, T, -1))
            x = b.n2(h)
            h = h + b.down(F.silu(b.gate(x)) * b.up(x))
        h = self.norm(h)
        if logits_mask is not None:
            h = h[logits_mask]  # (n, d)
        return self.head(h)  # (N, T, V) or (n, V)


def load(which, vocab, d_model, layers):
    """model.py's tiny model when present (preferred by --model auto), else the stand-in.

    Returns (model, special ids, description)."""
    if which in ("auto", "tiny"):
        try:
            import model as M
            m = M.load_model("tiny").eval()
            c = m.config
            return m, dict(mask=c.mask_id, pad=c.pad_id, vocab=c.vocab_size), "model.load_model('tiny')"
        except (ImportError, AttributeError) as e:
            if which == "tiny":
                raise SystemExit(f"--model tiny needs model.py's load_model: {e}")
    # TODO: --model auto falls back to the stand-in only while model.py's tiny model is missing
    m = StandIn(vocab=vocab, d=d_model, layers=layers).eval()
    return m, dict(mask=2, pad=0, vocab=vocab), f"stand-in (vocab {vocab}, d_model {d_model}, {layers} layers)"


class Clocked:
    """Wraps a denoiser and adds up the seconds spent inside it."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.model(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def interleaved(fns, repeats):
    """Median seconds of each function, calls interleaved so drifts of a shared machine hit all alike.

    Each fn returns (output, seconds spent in the model). Returns [(median total, median model, output)]."""
    for fn in fns:
        fn()  # warm-up
    runs = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            out, in_model = fn()
            runs[i].append((time.perf_counter() - t0, in_model, out))
    return [(statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2]) for rs in runs]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # --- workload
    p.add_argument("--batch", type=int, default=64, help="rows per generate call")
    p.add_argument("--prompt_len", type=int, default=16, help="prompt tokens per row")
    p.add_argument("--gen_length", type=int, default=32, help="completion tokens per row")
    p.add_argument("--steps", type=int, default=32, help="denoising steps")
    p.add_argument("--block_length", type=int, default=32, help="block length (default: one block)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.0], help="τ values to run")
    # --- model
    p.add_argument("--model", default="auto", choices=["auto", "tiny", "standin"],
                   help="auto: model.py's tiny model if present, else the stand-in")
    p.add_argument("--vocab", type=int, default=128, help="stand-in vocabulary size (LLaDA: 126464)")
    p.add_argument("--d_model", type=int, default=128, help="stand-in width")
    p.add_argument("--layers", type=int, default=4, help="stand-in depth")
    # --- measurement
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the samplers' generator")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, ids, name = load(args.model, args.vocab, args.d_model, args.layers)
    B, P, L = args.batch, args.prompt_len, args.gen_length
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(3, min(ids["vocab"], 98), (B, P), generator=g)  # printable ids of the tiny vocabulary
    attn = torch.ones(B, P, dtype=torch.bool)
    # a few left-padded rows, as in training batches
    for i in range(0, B, 4):
        attn[i, : i % P] = False
        prompt[i, : i % P] = ids["pad"]
    n_params = sum(q.numel() for q in model.parameters())
    print(f"model: {name}, {n_params / 1e6:.2f}M parameters | batch {B}, prompt {P}, gen_length {L}, "
          f"steps {args.steps}, block {args.block_length}, threads {args.threads}, repeats {args.repeats}")

    # bare forward passes on the same batch (a canvas half revealed, as mid-sampling)
    canvas = torch.cat([prompt, torch.full((B, L), ids["mask"], dtype=torch.long)], dim=1)  # (B, P+L)
    canvas[:, P: P + L // 2] = 50
    full_attn = torch.cat([attn, torch.ones(B, L, dtype=torch.bool)], dim=1)
    lmask = canvas == ids["mask"]
    lmask[:, :P] = False
    blocks = L // args.block_length
    calls = blocks * sum(k > 0 for k in S.linear_schedule(args.block_length, args.steps // blocks))

    @torch.no_grad()
    def bare(logits_mask):
        # `calls` forward passes, so each is timed under the same conditions as a sampling run
        clocked = Clocked(model)
        for _ in range(calls):
            clocked(canvas, attention_mask=full_attn, logits_mask=logits_mask)
        return None, clocked.seconds

    for tau in args.temperatures:
        kw = dict(gen_length=L, steps=args.steps, block_length=args.block_length, temperature=tau,
                  remasking="low_confidence", mask_id=ids["mask"], attention_mask=attn)

        def run(sampler):
            clocked = Clocked(model)
            out = sampler(clocked, prompt, generator=torch.Generator().manual_seed(args.seed), **kw)
            return out, clocked.seconds

        (t_gen, m_gen, ours), (t_ref, m_ref, ref), (t_fwd, _, _), (t_fwd_sel, _, _) = interleaved(
            [lambda: run(S.generate), lambda: run(llada_reference), lambda: bare(None), lambda: bare(lmask)],
            args.repeats)
        t_fwd, t_fwd_sel = t_fwd / calls, t_fwd_sel / calls
        assert torch.equal(ours, ref), "generate and the loop transcription disagree"
        tok = B * L
        step = t_gen / calls
        print(f"τ={tau:g}: generate {tok / t_gen:8.0f} tok/s ({t_gen:.3f} s) | transcription {tok / t_ref:8.0f} tok/s "
              f"({t_ref:.3f} s) | speed-up {t_ref / t_gen:.2f}x (target >= 1.5x) | outputs identical")
        print(f"      outside the model: generate {(t_gen - m_gen) / calls * 1e3:.2f} ms/step, transcription "
              f"{(t_ref - m_ref) / calls * 1e3:.2f} ms/step; in the model {m_gen / calls * 1e3:.2f} vs "
              f"{m_ref / calls * 1e3:.2f} ms/step")
        print(f"      per step {step * 1e3:.2f} ms over {calls} steps | bare forward, full logits {t_fwd * 1e3:.2f} ms "
              f"-> {step / t_fwd:.2f}x (target <= 1.15x) | bare forward, logits_mask {t_fwd_sel * 1e3:.2f} ms "
              f"-> {step / t_fwd_sel:.2f}x")


if __name__ == "__main__":
    main()
