"""bench_sample.py — throughput of sample.generate against the loop transcription of LLaDA's sampler,
and the sampler's own overhead per denoising step.

Model: model.py's tiny model (LLaDA layout, vocabulary 128); --vocab / --layers / --d_model build
the same architecture at another size, randomly initialised, to show where the sampler's own work
matters: large vocabularies (LLaDA's is 126464), where the transcription's whole-canvas float64
noise and softmax dominate the step.
Workload (default flags): batch 64, prompts of 16 tokens (every 4th row left-padded), 32
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
    python bench/bench_sample.py                      # 1 thread, the default workload
    python bench/bench_sample.py --threads 2 --block_length 8 --repeats 5
    python bench/bench_sample.py --vocab 32768 --layers 2 --batch 16 --prompt_len 64 \
        --gen_length 64 --temperatures 1.0 --repeats 2   # a large vocabulary (a few minutes)
"""
import argparse
import dataclasses
import os
import statistics
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import model as M  # noqa: E402
import sample as S  # noqa: E402
from reference_sampler import llada_reference  # noqa: E402


def load(vocab, d_model, layers):
    """model.py's tiny model, or its architecture resized (random init). Returns (model, description)."""
    tiny = M.CONFIGS["tiny"]
    if (vocab, d_model, layers) == (tiny.vocab_size, tiny.d_model, tiny.n_layers):
        return M.load_model("tiny").eval(), "model.load_model('tiny')"
    cfg = dataclasses.replace(tiny, vocab_size=vocab, d_model=d_model, n_layers=layers, char_tokenizer=False)
    return M.init_weights(M.Denoiser(cfg)).eval(), f"tiny architecture resized (vocab {vocab}, d_model {d_model}, {layers} layers)"


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
    p.add_argument("--vocab", type=int, default=M.CONFIGS["tiny"].vocab_size, help="vocabulary size (LLaDA: 126464)")
    p.add_argument("--d_model", type=int, default=M.CONFIGS["tiny"].d_model, help="width")
    p.add_argument("--layers", type=int, default=M.CONFIGS["tiny"].n_layers, help="depth")
    # --- measurement
    p.add_argument("--repeats", type=int, default=3, help="timed calls per variant (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the samplers' generator")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, name = load(args.vocab, args.d_model, args.layers)
    c = model.config
    ids = dict(mask=c.mask_id, pad=c.pad_id, vocab=c.vocab_size)
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
