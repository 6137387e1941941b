"""bench_cache.py — what the sampler's KV caches and threshold decoding buy, and what they cost.

sample.generate(cache="none") is the exact sampler; cache="prefix" / "dual" (Fast-dLLM's KV caches)
and threshold (its confidence-aware parallel decoding) approximate it: another rollout policy.
Three measurements, each a comparison within this one run:

 1. Throughput at hub-like shapes: a random LLaDA-layout model (default 4 layers x 128 wide, 32k
    vocabulary; the issue's 8 x 512 with --layers 8 --d_model 512), batch 6, prompt 200, completion
    256, block 32, at 64 and 128 steps. Completion tokens per CPU second of none / prefix / dual /
    dual + threshold, the ratio to none, and the share of completion tokens identical to the exact
    sampler's (greedy by default). A random model is never confident, so its threshold never fires;
    and at these widths the LM head (run at the masked positions in every mode) weighs more against
    the network than in LLaDA-8B, so the ratios understate a hub model's.
 2. Accuracy on the shipped tiny base (bases/tiny-sudoku): the greedy held-out sudoku score of each
    mode on 256 test puzzles, with the evaluation protocol's one block of 16 (--blocks 16 4: also
    with four blocks of 4).
 3. The RL round at the official tiny settings: a random 4 x 128 LLaDA-layout model (the tiny
    architecture and character vocabulary), a 568-token prompt, a 32-token completion in one block,
    32 steps, G = 4, μ = 2, β = 1e-3, fp32: rollout and update seconds of train.rl_step with the exact
    sampler and with the dual cache (+ threshold), and the time of one old-score forward (at pass 1
    of μ the old scores equal the policy's own detached scores: one of the μ is redundant).

Times are CPU seconds of this process (1 thread by default; see `timed`).

Run:
    python bench/bench_cache.py                              # the defaults: a few minutes, 1 thread
    python bench/bench_cache.py --sections 1 --layers 8 --d_model 512 --batch 2   # the issue's width
    python bench/bench_cache.py --sections 2 3
"""
import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import model as M  # noqa: E402
import reward as R  # noqa: E402
import sample as S  # noqa: E402
import eval as E  # noqa: E402
import train as T  # noqa: E402

# (label, cache, threshold): the modes compared in every section
MODES = [("none", "none", None), ("prefix", "prefix", None), ("dual", "dual", None), ("dual+thr", "dual", "threshold")]


def llada_layout(layers, d_model, vocab, seed=0):
    """A random LLaDA-layout denoiser: head size 128 as LLaDA-8B, MLP 3 x d_model (its ratio)."""
    cfg = dataclasses.replace(M.CONFIGS["tiny"], vocab_size=vocab, d_model=d_model, n_layers=layers,
                              n_heads=max(1, d_model // 128), n_kv_heads=max(1, d_model // 128),
                              mlp_hidden=3 * d_model, char_tokenizer=vocab == M.TINY_VOCAB)
    return M.init_weights(M.Denoiser(cfg), seed).eval()


def timed(fn):
    """fn's output and the CPU seconds this process spent in it: on a shared machine, other jobs'
    load changes wall time much more than the CPU time of a single-threaded run."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


# ----------------------------------------------------------------------------------------------
# 1. Throughput at hub-like shapes

def throughput(args):
    model = llada_layout(args.layers, args.d_model, args.vocab)
    c = model.config
    B, P, L = args.batch, args.prompt_len, args.gen_length
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, c.vocab_size, (B, P), generator=g)
    attn = torch.ones(B, P, dtype=torch.bool)
    for i in range(0, B, 3):  # some left-padded rows, as in a batch of real prompts
        attn[i, : 8 * i] = False
        prompt[i, : 8 * i] = c.pad_id
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n1. throughput | random LLaDA layout {c.n_layers} x {c.d_model}, vocab {c.vocab_size}, "
          f"{n_params / 1e6:.1f}M parameters | batch {B}, prompt {P}, completion {L}, block {args.block_length}, "
          f"τ = {args.temperature:g}, threshold {args.threshold} | {torch.get_num_threads()} thread(s)")
    print(f"   {'steps':>5} {'mode':<9} {'tok/s':>8} {'x none':>7} {'identical':>9} {'CPU s':>8}")
    for steps in args.steps:
        runs = {}  # label -> (completion, seconds); "none" runs first
        for label, cache, thr in MODES:
            out, sec = timed(lambda: S.generate(
                model, prompt, gen_length=L, steps=steps, block_length=args.block_length, mask_id=c.mask_id,
                temperature=args.temperature, attention_mask=attn, generator=torch.Generator().manual_seed(1),
                cache=cache, threshold=args.threshold if thr else None))
            runs[label] = (out[:, P:], sec)
            exact, t_none = runs["none"]
            same = (out[:, P:] == exact).double().mean().item()
            print(f"   {steps:>5} {label:<9} {B * L / sec:>8.1f} {t_none / sec:>6.2f}x {same:>9.3f} {sec:>8.1f}", flush=True)


# ----------------------------------------------------------------------------------------------
# 2. Accuracy on the shipped tiny base

def held_out_score(model, tok, task, examples, *, block_length, cache, threshold):
    """Greedy held-out accuracy with eval.py's evaluation (the tiny model reveals one token per step)."""
    return E.evaluate(model, tok, task, examples, gen_length=16, block_length=block_length, batch_size=len(examples),
                      max_prompt_len=64, device=torch.device("cpu"), cache=cache, threshold=threshold)["accuracy"]


def accuracy(args):
    path = os.path.join(ROOT, "bases", "tiny-sudoku")
    model, tok, task = M.load_model(path).eval(), M.load_tokenizer(path), R.get_task("sudoku")
    examples = task.examples("test", args.n_eval, 0)
    print(f"\n2. held-out sudoku score of bases/tiny-sudoku, greedy, {len(examples)} test puzzles, "
          f"16 tokens in 16 steps, threshold {args.threshold}")
    print(f"   {'block':>5} {'mode':<9} {'score':>6} {'- none':>7} {'CPU s':>8}")
    for block in args.blocks:
        base = None
        for label, cache, thr in MODES + [("none+thr", "none", "threshold")]:
            score, sec = timed(lambda: held_out_score(model, tok, task, examples, block_length=block, cache=cache,
                                                      threshold=args.threshold if thr else None))
            base = score if label == "none" else base
            print(f"   {block:>5} {label:<9} {score:>6.3f} {score - base:>+7.3f} {sec:>8.1f}", flush=True)


# ----------------------------------------------------------------------------------------------
# 3. The RL round at the official tiny settings

FILLER = ("Each row, each column and each 2x2 box of the grid must hold every digit from 1 to 4 exactly "
          "once; a 0 marks a blank cell to fill. ")


class LongPrompt:
    """A task whose prompts are another task's, led by filler text to `length` characters (tokens of
    the character vocabulary). Scored by the original task."""

    def __init__(self, task, length):
        self.task, self.length = task, length

    def prompt(self, example, style):
        p = self.task.prompt(example, style)
        return (FILLER * (self.length // len(FILLER) + 1))[: self.length - len(p)] + p

    def reward(self, text, example, style):
        return self.task.reward(text, example, style)


def rl_round_seconds(policy, ref, tok, task, train, args, step):
    """CPU seconds (rollout, rest) of one train.rl_step on one process, its rollouts timed by
    wrapping eval.rollout for the call (the rest is the update: scores, losses, optimizer)."""
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=args.lr)
    original, rollouts = E.rollout, []

    def rollout(*a, **kw):
        out, sec = timed(lambda: original(*a, **kw))
        rollouts.append(sec)
        return out

    E.rollout = rollout
    try:
        _, total = timed(lambda: T.rl_step(step, policy, ref, optimizer, tok, task, train, args, torch.device("cpu"), 0, 1))
    finally:
        E.rollout = original
    return sum(rollouts), total - sum(rollouts)


def rl_round(args):
    tok, task = M.CharTokenizer(), LongPrompt(R.get_task("sudoku"), args.round_prompt_len)
    train = R.get_task("sudoku").examples("train", 64, 0)
    policy = llada_layout(4, 128, M.TINY_VOCAB)
    flags = ["--task", "sudoku", "--gen_length", "32", "--diffusion_steps", "32", "--block_length", "32",
             "--group_size", "4", "--prompts_per_step", "1", "--rollout_batch", "4", "--mu", "2", "--num_mc", "1",
             "--beta", "1e-3", "--max_prompt_len", str(args.round_prompt_len + 1)]
    P = len(tok.encode(task.prompt(train[0], "tiny")))
    print(f"\n3. RL round (train.rl_step) | random LLaDA layout 4 x 128, vocab {M.TINY_VOCAB}, fp32 | prompt {P}, "
          f"completion 32 in one block, 32 steps, G = 4, μ = 2, β = 1e-3 | CPU seconds, median of {args.rounds} round(s)")
    print(f"   {'mode':<9} {'rollout s':>9} {'update s':>9} {'round s':>8} {'x exact':>8} {'rollout share':>13}")
    results = {}
    modes = [("none", "none", None), ("dual", "dual", None), ("dual+thr", "dual", args.threshold)]
    for label, cache, thr in modes:
        run = T.parse_args(flags + ["--rollout_cache", cache] + (["--threshold", str(thr)] if thr else []))
        times = []
        for r in range(args.rounds):
            pol = copy.deepcopy(policy).train()
            ref = copy.deepcopy(policy).requires_grad_(False)
            times.append(rl_round_seconds(pol, ref, tok, task, train, run, step=r))
        roll = statistics.median(t[0] for t in times)
        upd = statistics.median(t[1] for t in times)
        results[label] = (roll, upd)
        t_exact = sum(results["none"])
        print(f"   {label:<9} {roll:>9.2f} {upd:>9.2f} {roll + upd:>8.2f} {(roll + upd) / t_exact:>7.2f}x "
              f"{roll / (roll + upd):>13.2f}", flush=True)
    # the update half: one old-score forward = one no-grad call on the 2G coupled sequences
    ids = torch.randint(3, 98, (8, P + 32), generator=torch.Generator().manual_seed(0))
    scored = torch.zeros_like(ids, dtype=torch.bool)
    scored[:, P:] = True
    with torch.no_grad():
        policy(ids, logits_mask=scored)
        old = statistics.median(timed(lambda: policy(ids, logits_mask=scored))[1] for _ in range(3))
    print(f"   one old-score forward (2G = 8 sequences of {P + 32} tokens, no grad): {old:.3f} CPU s, "
          f"{old / results['none'][1]:.0%} of the exact round's update, which runs μ = 2 of them; the one of "
          f"pass 1 equals the policy's own detached scores of pass 1")
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3], help="which measurements to run")
    # --- 1. throughput
    p.add_argument("--layers", type=int, default=4, help="1: depth of the random LLaDA-layout model")
    p.add_argument("--d_model", type=int, default=128, help="1: width (heads of 128, MLP 3 x width)")
    p.add_argument("--vocab", type=int, default=32768, help="1: vocabulary size")
    p.add_argument("--batch", type=int, default=6, help="1: rows per generate call (G of the official recipe)")
    p.add_argument("--prompt_len", type=int, default=200, help="1: prompt tokens")
    p.add_argument("--gen_length", type=int, default=256, help="1: completion tokens")
    p.add_argument("--block_length", type=int, default=32, help="1: block length")
    p.add_argument("--steps", type=int, nargs="+", default=[64, 128], help="1: denoising steps to compare")
    p.add_argument("--temperature", type=float, default=0.0, help="1: τ (0 = greedy, where 'identical' is exact agreement)")
    # --- shared
    p.add_argument("--threshold", type=float, default=0.9, help="confidence threshold of the +thr modes (Fast-dLLM's default)")
    p.add_argument("--n_eval", type=int, default=256, help="2: held-out puzzles")
    p.add_argument("--blocks", type=int, nargs="+", default=[16], help="2: block lengths (16 = the evaluation's one block; 4: four blocks)")
    p.add_argument("--round_prompt_len", type=int, default=568, help="3: prompt tokens of the RL round")
    p.add_argument("--rounds", type=int, default=1, help="3: timed RL rounds per mode (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0, c0 = time.time(), time.process_time()
    if 1 in args.sections:
        throughput(args)
    if 2 in args.sections:
        accuracy(args)
    if 3 in args.sections:
        rl_round(args)
    print(f"\ntotal {time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")


if __name__ == "__main__":
    main()
