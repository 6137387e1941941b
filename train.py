"""train.py — GDSD reinforcement learning for masked diffusion LLMs (and the tiny model's pre-training).

One RL round (the README's "GDSD in one screen", whose step numbers label its phases), in order
inside `rl_step`: draw prompts -> G completions each (eval.rollout) scored by the training reward
(reward.py) -> advantages -> the teacher's scores (rollout policy and reference) on the masks every
pass will draw -> μ optimizer passes (gradients accumulated over chunks and draws) -> metrics. What
differs between algorithms is one row of the `ALGOS` table.

Run:
    python train.py                                    # tiny model, sudoku, GDSD, CPU, minutes
    python train.py --task countdown --algo espo       # any task / algorithm on the tiny model
    torchrun --nproc_per_node=8 train.py --task sudoku --model llada     # LLaDA-8B-Instruct, 8 GPUs
    python train.py --resume runs/NAME                 # continue a stopped run from its checkpoint

Writes RUN/metrics.jsonl (one JSON line per step), RUN/checkpoint/, and RUN/curves.png at each
held-out evaluation when matplotlib is installed (--wandb PROJECT: the same metrics to W&B).

Distributed: one code path for 1 and N processes (torchrun's RANK / WORLD_SIZE); gloo on CPU, nccl
on GPU; FSDP2 `fully_shard` per block then the root. Work is split into *chunks* (a few whole
prompt groups) whose randomness depends only on (seed, step, chunk): N processes reproduce one
process on the same global batch.
"""
import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import sys
import time
import uuid

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import eval as E
import loss as L
import model as M
import reward as R
import sample as S
from eval import UserError, cli, reading  # one place for user errors, shared with eval.py

# ----------------------------------------------------------------------------------------------
# Algorithms: everything an RL round needs to know about an objective, in one table.

@dataclasses.dataclass(frozen=True)
class Algo:
    score: str         # the score of `policy_scores`: "logprob" | "centered" | "elbo" (coupled masks, step 5),
                       # "one_pass" (d1's token log p) | "spg" (SPG's ELBO and EUBO of all its draws at once)
    advantages: object  # step 2: (rewards (N,), G) -> (advantages (N,), share of groups whose rewards are equal)
    loss: object       # steps 6-7: (s_θ, s_old, s_ref, chunk, args) -> (loss, metrics)
    uses_old: bool     # whether the loss reads the rollout policy's scores
    uses_ref: bool     # whether β > 0 needs a reference policy


def _gdsd(s, old, ref, c, a):
    return L.gdsd_loss(s, old, ref, c.adv, length=c.length, psi=a.psi, beta=a.beta)


def _gdsd_official(s, old, ref, c, a):
    return L.gdsd_official_loss(s, old, ref, c.adv, length=c.length, psi=a.psi, beta=a.beta, eps=a.eps)


ALGOS = {
    "gdsd": Algo("logprob", L.rloo_advantages, _gdsd, True, True),
    "gdsd-tlc": Algo("centered", L.rloo_advantages, _gdsd, True, True),
    "gdsd-official": Algo("logprob", L.rloo_advantages, _gdsd_official, True, True),
    "gdsd-tlc-official": Algo("elbo", L.rloo_advantages, _gdsd_official, True, True),  # what the "TLC" trainer computes
    "espo": Algo("elbo", L.rloo_advantages, lambda s, old, ref, c, a: L.espo_loss(
        s, old, ref, c.adv, length=c.length, clip_eps=a.clip_eps, beta=a.beta), True, True),
    "d1": Algo("one_pass", L.group_mean_advantages, lambda s, old, ref, c, a: L.d1_loss(
        s, old, ref, c.adv, clip_eps=a.clip_eps, beta=a.beta, token_mask=c.token_mask), True, True),
    "wd1": Algo("one_pass", L.rloo_advantages, lambda s, old, ref, c, a: L.wd1_loss(
        (s * c.token_mask).sum(-1), c.rewards, group_size=a.group_size), False, False),
    # no KL term: the official SPG trainer refuses β > 0
    "spg": Algo("spg", L.group_mean_advantages, lambda s, old, ref, c, a: L.spg_loss(
        *s, c.adv, c.token_mask.sum(-1), mix_weight=a.spg_mix_weight), False, False),
}


ROOT = os.path.dirname(os.path.abspath(__file__))  # shipped tiny bases live in ROOT/bases

# Defaults: the official LLaDA recipe for hub models; tuned values for `tiny`.
HUB_DEFAULTS = dict(
    gen_length=256, block_length=32, diffusion_steps=64, temperature=1.0, max_prompt_len=400,
    group_size=6, prompts_per_step=8, rollout_batch=6, mu=8, num_mc=1, beta=1e-3, psi=1.0,
    eps=4e-4, clip_eps=0.2, lr=3e-6, warmup=10, weight_decay=0.01, grad_clip=0.2,
    lora_rank=128, lora_alpha=64, lora_dropout=0.05, steps=1000, eval_every=100, n_eval=256,
    save_every=50, grad_ckpt=True, eval_gen_length=256, eval_block_length=32,
)
TINY_DEFAULTS = dict(
    block_length=None, temperature=1.0, max_prompt_len=64,
    group_size=8, prompts_per_step=32, rollout_batch=64, mu=4, num_mc=1, beta=0.0, psi=1.0,
    eps=4e-4, clip_eps=0.2, lr=1e-4, warmup=0, weight_decay=0.0, grad_clip=1.0,
    lora_rank=0, lora_alpha=None, lora_dropout=0.0, steps=30, eval_every=10, n_eval=256,
    save_every=10, grad_ckpt=False, eval_block_length=None,
    # the demo's base (bases/tiny-sudoku): solves most puzzles it answers, leaves many unanswered
    pretrain_steps=600, pretrain_batch=64, pretrain_lr=1e-3, pretrain_no_answer=0.45,
)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # --- what to train
    g = p.add_argument_group("task and model")
    g.add_argument("--task", default="sudoku", help=f"task name, one of {sorted(R.TASKS)}")
    g.add_argument("--data", default=None,
                   help="local training file in the task's official format (default: the task's own generator)")
    g.add_argument("--eval_data", default=None,
                   help="local held-out file (default: the generator's test split); never trained on")
    g.add_argument("--exclude_data", nargs="+", default=None,
                   help="other held-out files the training split must not overlap (e.g. the official test file; "
                        "sudoku: its solution grids, countdown: its number triples)")
    g.add_argument("--model", default="tiny",
                   help="'tiny', 'llada', 'dream', or a local directory with a checkpoint in the hub layout")
    g.add_argument("--init", default=None,
                   help="tiny only: base checkpoint directory to start RL from (default: the shipped bases/tiny-TASK, "
                        "else runs/tiny-TASK-base/checkpoint, pre-trained on the fly)")
    g.add_argument("--dtype", choices=["bf16", "fp32"],
                   help="compute dtype (default: bf16 on CUDA, fp32 on CPU). bf16 = FSDP2 mixed precision, on 1 "
                        "process too: bf16 weights in the forward and backward, fp32 gradient reduction, fp32 "
                        "trainable weights and optimizer state, fp32 scores and losses; frozen weights (the LoRA "
                        "base, the reference copy) are stored in bf16")
    g.add_argument("--algo", default="gdsd", choices=sorted(ALGOS) + ["pretrain"],
                   help="training objective ('pretrain' = masked-diffusion pre-training of the tiny model)")
    # --- the objective
    g = p.add_argument_group("objective (loss.py)")
    g.add_argument("--psi", type=float, help="ψ, guidance scale on the advantage")
    g.add_argument("--beta", type=float,
                   help="β, weight of the reference policy in the teacher / KL coefficient of the baselines")
    g.add_argument("--eps", type=float, help="ε, clamp width of the official-code log-ratio")
    g.add_argument("--clip_eps", type=float, help="PPO clip range of d1 / ESPO")
    g.add_argument("--num_mc", type=int, help="mask draws per completion and inner pass")
    g.add_argument("--score_chunk", type=int, default=None,
                   help="coupled-mask scores: completions scored per forward call, checkpointed (default: all at "
                        "once; a few at a time bounds memory at LLaDA's 126k vocabulary and long completions)")
    g.add_argument("--mu", type=int, help="μ, optimizer passes per rollout round")
    g.add_argument("--prompt_mask_prob", type=float, default=0.15,
                   help="d1 / wd1 / spg: probability of masking each prompt token (spg: also tokens of earlier blocks)")
    g.add_argument("--spg_num_t", type=int, default=2,
                   help="spg: mask draws per completion and inner pass, in one call (the EUBO averages over them)")
    g.add_argument("--spg_masking", default="block", choices=["block", "random"],
                   help="spg: 'block' = one block of --block_length being decoded, earlier blocks clean, "
                        "later ones masked; 'random' = a random subset of the whole completion")
    g.add_argument("--spg_eubo_beta", type=float, default=1.5, help="spg: β of the evidence upper bound")
    g.add_argument("--spg_mix_weight", type=float, default=0.5,
                   help="spg: weight of the EUBO for negative-advantage completions, the rest ELBO (1 = EUBO only)")
    # --- rollouts
    g = p.add_argument_group("rollouts (sample.py)")
    g.add_argument("--gen_length", type=int, help="completion canvas length L")
    g.add_argument("--block_length", type=int,
                   help="semi-autoregressive block length (default: 32 for hub models; the whole completion for tiny "
                        "and for --remasking entropy, Dream's order)")
    g.add_argument("--diffusion_steps", type=int, help="denoising steps per completion")
    g.add_argument("--temperature", type=float, help="sampling temperature τ of rollouts")
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random", "entropy"],
                   help="order in which positions are revealed")
    g.add_argument("--top_p", type=float, default=None,
                   help="--remasking entropy (Dream's sampler): nucleus mass of rollouts (default: 0.95 when "
                        "--temperature > 0, as the official Dream rollouts; greedy evaluation never filters)")
    g.add_argument("--rollout_cache", default="none", choices=["none", "prefix", "dual"],
                   help="KV cache of the rollout sampler: none = the exact sampler; prefix / dual = Fast-dLLM's "
                        "caches, faster but an approximation (another rollout policy than the denoiser's)")
    g.add_argument("--threshold", type=float, default=None,
                   help="rollouts also reveal every candidate whose confidence softmax(z)[x] reaches this probability "
                        "(Fast-dLLM's parallel decoding; --remasking low_confidence only; default: off)")
    g.add_argument("--group_size", type=int, help="G, completions per prompt")
    g.add_argument("--prompts_per_step", type=int, help="prompts per RL step, over all processes")
    g.add_argument("--rollout_batch", type=int,
                   help="completions per chunk (a multiple of G): the unit of generation and of gradient accumulation")
    g.add_argument("--max_prompt_len", type=int, help="longer prompts are an error")
    # --- optimisation
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="RL steps (rollout rounds)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (constant after warm-up)")
    g.add_argument("--warmup", type=int, help="linear warm-up steps")
    g.add_argument("--weight_decay", type=float, help="AdamW weight decay")
    g.add_argument("--adam_betas", type=float, nargs=2, default=(0.9, 0.99), help="AdamW betas")
    g.add_argument("--grad_clip", type=float, help="global gradient-norm clip")
    g.add_argument("--lora_rank", type=int, help="LoRA rank (0 = full fine-tuning)")
    g.add_argument("--lora_alpha", type=float, help="LoRA alpha (the tiny model has no default)")
    g.add_argument("--lora_dropout", type=float, help="LoRA dropout")
    g.add_argument("--grad_ckpt", type=int, choices=[0, 1], help="activation checkpointing per block")
    g.add_argument("--pretrain_steps", type=int, help="pretrain: optimizer steps")
    g.add_argument("--pretrain_batch", type=int, help="pretrain: examples per step")
    g.add_argument("--pretrain_lr", type=float, help="pretrain: AdamW learning rate")
    g.add_argument("--pretrain_no_answer", type=float,
                   help="pretrain: fraction of examples whose reference is the empty answer (the base then sometimes "
                        "answers nothing, which the verifier scores 0)")
    # --- run bookkeeping
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default: runs/TASK-MODEL-ALGO)")
    g.add_argument("--resume", default=None,
                   help="run directory to resume from its newest complete checkpoint (no other flag but --steps)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that already holds a run, deleting its checkpoints and metrics")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (prompts, rollouts, masks)")
    g.add_argument("--save_every", type=int, help="checkpoint every N steps (and at the end)")
    g.add_argument("--eval_every", type=int,
                   help="held-out evaluation every N steps (0 = only at the start and the end)")
    g.add_argument("--n_eval", type=int, help="held-out examples per evaluation")
    g.add_argument("--eval_gen_length", type=int, help="completion length used in evaluation")
    g.add_argument("--eval_block_length", type=int, help="block length used in evaluation")
    g.add_argument("--eval_cache", default="none", choices=["none", "prefix", "dual"],
                   help="KV cache of the evaluation sampler (see --rollout_cache)")
    g.add_argument("--eval_forced", type=int, choices=[0, 1], default=1,
                   help="also score every held-out evaluation with EOS never sampled (eval.py --suppress_eos; "
                        "logged as forced_*): the skill apart from the choice to answer. 0 halves the cost of "
                        "evaluations")
    g.add_argument("--time_budget", type=float, default=None,
                   help="stop once this many seconds were spent in rollouts and updates (evaluations and "
                        "checkpoints not counted), evaluating and saving at that step; --steps stays the upper "
                        "bound (default: off)")
    g.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log every step's metrics to this Weights & Biases project (needs `pip install wandb`)")
    g.add_argument("--train_size", type=int, default=20000, help="generated training examples (generator tasks)")
    g.add_argument("--max_bad_steps", type=int, default=3,
                   help="stop (last good weights saved) after this many steps in a row with skipped updates "
                        "(a non-finite loss, reward or gradient, or exploding weights)")
    return p


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return resolve_defaults(args, given_flags(argv))


def given_flags(argv):
    """Names of the flags written on the command line (a second parse with every default suppressed)."""
    p = build_parser()
    for action in p._actions:  # (argparse has no public way to tell a default from a given value)
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def resolve_defaults(args, given=frozenset()):
    """Fill unset flags from the hub or tiny table, unset the flags this run does not read (an error
    if they were given), then check every value. `given`: the flags written on the command line."""
    if args.resume is not None:
        return resume_config(args, given)
    if args.task not in R.TASKS:
        raise UserError(f"unknown task {args.task!r}; known tasks: {sorted(R.TASKS)}")
    tiny = is_tiny(args.model)
    if args.algo == "pretrain" and not tiny:
        raise UserError("--algo pretrain trains the built-in tiny model only; "
                        "hub models start from their instruct weights")
    table = TINY_DEFAULTS if tiny else HUB_DEFAULTS
    if not tiny and args.remasking == "entropy":  # Dream's order: the whole completion at once
        fill(args, block_length=table["gen_length"] if args.gen_length is None else args.gen_length)
    fill(args, **table)
    if tiny:
        if args.task not in E.TINY_TASK_LENGTHS:
            raise UserError(f"the tiny model has no compact format for task {args.task!r}; "
                            f"use one of {sorted(E.TINY_TASK_LENGTHS)} or a hub model")
        gen, steps = E.TINY_TASK_LENGTHS[args.task]
        fill(args, gen_length=gen, diffusion_steps=steps)
        fill(args, block_length=args.gen_length, eval_gen_length=args.gen_length)
        fill(args, eval_block_length=args.block_length)
        if args.model == "tiny" and args.algo != "pretrain":
            shipped = os.path.join(ROOT, "bases", f"tiny-{args.task}")
            fill(args, init=shipped if os.path.isfile(os.path.join(shipped, "model.safetensors"))
                 else checkpoint_dir(tiny_base_run(args.task)))
    if args.remasking == "entropy" and args.temperature > 0:  # the official Dream rollouts' nucleus
        fill(args, top_p=0.95)
    args.grad_ckpt = bool(args.grad_ckpt)
    fill(args, dtype=default_dtype())
    fill(args, out=f"runs/{args.task}-{os.path.basename(str(args.model).rstrip('/'))}-{args.algo}")
    unread = unread_flags(args)
    wrong = sorted(given & set(unread))
    if wrong:
        raise UserError(f"--{wrong[0]} is not read by this run: {unread[wrong[0]]}")
    for flag in unread:
        setattr(args, flag, None)
    check_values(args)
    return args


def fill(args, **defaults):
    """Set each flag that is still unset (`is None`: `or` would also replace a given 0)."""
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


# Loss flags and the algorithms that read them. β is read by the algorithms with a reference term
# (`Algo.uses_ref`), num_mc by those scoring coupled masks, prompt_mask_prob by the one-pass ones.
LOSS_FLAGS = {"psi": ("gdsd", "gdsd-tlc", "gdsd-official", "gdsd-tlc-official"),
              "eps": ("gdsd-official", "gdsd-tlc-official"),
              "clip_eps": ("espo", "d1"),
              **{f: ("spg",) for f in ("spg_num_t", "spg_masking", "spg_eubo_beta", "spg_mix_weight")}}
RL_FLAGS = ("psi", "beta", "eps", "clip_eps", "num_mc", "prompt_mask_prob", "mu", "time_budget",
            "steps", "lr", "warmup", "group_size", "prompts_per_step", "temperature", "diffusion_steps",
            "spg_num_t", "spg_masking", "spg_eubo_beta", "spg_mix_weight")
PRETRAIN_FLAGS = ("pretrain_steps", "pretrain_batch", "pretrain_lr", "pretrain_no_answer")


def unread_flags(args):
    """{flag: why, and what to do} for every flag this configuration never reads. They are unset
    (None) in its config, so the printed and saved config shows what the run uses."""
    why = {}
    if args.algo == "pretrain":
        counterpart = {"steps": " (its length is --pretrain_steps)", "lr": " (its rate is --pretrain_lr)"}
        for f in RL_FLAGS:
            why[f] = f"--algo pretrain reads the --pretrain_* flags, not the RL ones{counterpart.get(f, '')}; drop it"
    else:
        readers = dict(LOSS_FLAGS, beta=[a for a, x in ALGOS.items() if x.uses_ref],
                       num_mc=[a for a, x in ALGOS.items() if x.score not in ("one_pass", "spg")],
                       score_chunk=[a for a, x in ALGOS.items() if x.score not in ("one_pass", "spg")],
                       prompt_mask_prob=[a for a, x in ALGOS.items() if x.score in ("one_pass", "spg")])
        for f, algos in readers.items():
            if args.algo not in algos:
                why[f] = f"--algo {args.algo} does not use it (only {', '.join(algos)} do); drop it"
        if args.init != checkpoint_dir(tiny_base_run(args.task)):  # no base pre-trained on the fly
            for f in PRETRAIN_FLAGS:
                why[f] = (f"this RL run starts from {args.init or args.model} and pre-trains nothing; to start "
                          "from another base, pre-train it first (--algo pretrain --out DIR) and pass "
                          "--init DIR/checkpoint")
    if args.init is not None and args.model != "tiny":
        why["init"] = f"RL on --model {args.model} starts from that checkpoint itself; drop --init"
    if args.remasking != "entropy" or args.algo == "pretrain":
        why["top_p"] = "it filters the rollouts of Dream's entropy sampler only (--remasking entropy); drop it"
    if args.lora_rank == 0:
        why["lora_alpha"] = why["lora_dropout"] = ("it shapes LoRA adapters and --lora_rank is 0 (full fine-tuning); "
                                                   "drop it or set --lora_rank")
    return why


def at_least(n, note=""):
    return lambda v: v >= n, f">= {n}{note}"


def between(low, high, closed="[]", note=""):
    ok = {"[]": lambda v: low <= v <= high, "[)": lambda v: low <= v < high,
          "(]": lambda v: low < v <= high, "()": lambda v: low < v < high}[closed]
    return ok, f"in {closed[0]}{low}, {high}{closed[1]}{note}"


# The accepted values of every numeric flag (float flags must also be finite).
RANGES = {
    "psi": (lambda v: v > 0, "> 0"), "beta": between(0, 1), "eps": between(0, 1, "()"),
    "clip_eps": between(0, 1, "()"), "num_mc": at_least(1), "mu": at_least(1), "prompt_mask_prob": between(0, 1, "[)"),
    "gen_length": at_least(1), "block_length": at_least(1), "diffusion_steps": at_least(1),
    "temperature": at_least(0, " (0 = greedy)"),
    "group_size": at_least(2, " (advantages compare the completions of one prompt)"),
    "prompts_per_step": at_least(1), "rollout_batch": at_least(1), "max_prompt_len": at_least(1),
    "steps": at_least(1), "lr": between(0, 1, "(]"), "warmup": at_least(0), "weight_decay": at_least(0),
    "adam_betas": (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "grad_clip": (lambda v: v > 0, "> 0 (a bound on the gradient norm; a negative one reverses the gradient)"),
    "lora_rank": at_least(0, " (0 = full fine-tuning)"), "lora_alpha": (lambda v: v > 0, "> 0"),
    "lora_dropout": between(0, 1, "[)"), "pretrain_steps": at_least(1), "pretrain_batch": at_least(1),
    "pretrain_lr": between(0, 1, "(]"), "pretrain_no_answer": between(0, 1, "[)"),
    "seed": (lambda v: 0 <= v < 2 ** 63, "in [0, 2**63)"), "save_every": at_least(1),
    "eval_every": at_least(0, " (0 = only at the start and the end)"), "n_eval": at_least(1),
    "eval_gen_length": at_least(1), "eval_block_length": at_least(1), "train_size": at_least(1),
    "max_bad_steps": at_least(1), "spg_num_t": at_least(1), "spg_eubo_beta": (lambda v: v > 0, "> 0"),
    "spg_mix_weight": between(0, 1), "threshold": between(0, 1, "(]", " (a probability)"),
    "top_p": between(0, 1, "(]", " (a probability mass)"), "score_chunk": at_least(1),
    "time_budget": (lambda v: v > 0, "> 0 (seconds)"),
}
MAX_GENERATED = 10 ** 6  # examples a task generator makes at start; more would take hours


def check_values(args):
    """Every flag in its range, the block and batch geometry consistent, the named paths usable."""
    for flag, (ok, want) in RANGES.items():
        value = getattr(args, flag)
        values = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and not (all(math.isfinite(v) for v in values) and ok(value)):
            raise UserError(f"--{flag} {' '.join(map(str, values))} is out of range: it must be {want}")
    if args.lora_rank > 0 and args.lora_alpha is None:
        raise UserError("--lora_rank needs --lora_alpha with the tiny model (it has no default); "
                        "e.g. --lora_alpha twice the rank")
    for gen, block, steps, which in ((args.gen_length, args.block_length, args.diffusion_steps, ""),
                                     (args.eval_gen_length, args.eval_block_length, None, "eval_")):
        if gen % block:
            raise UserError(f"--{which}gen_length {gen} is not a multiple of --{which}block_length {block}; "
                            f"use a block length that divides it (equal to it: one block)")
        if steps is not None and steps % (gen // block):
            raise UserError(f"--diffusion_steps {steps} is not a multiple of the number of blocks "
                            f"(gen_length / block_length = {gen // block}): every block takes the same number of steps")
    if args.algo != "pretrain":
        G, B = args.group_size, args.rollout_batch
        if B % G:
            raise UserError(f"--rollout_batch {B} is not a multiple of --group_size {G}: "
                            "a chunk must hold whole prompt groups")
        if (args.prompts_per_step * G) % B:
            raise UserError(f"prompts_per_step × group_size = {args.prompts_per_step * G} completions do not split "
                            f"into chunks of --rollout_batch {B}")
    for flag, file_flag in (("train_size", "data"), ("n_eval", "eval_data")):
        if getattr(args, file_flag) is None and getattr(args, flag) > MAX_GENERATED:
            raise UserError(f"--{flag} {getattr(args, flag)} asks the {args.task} generator for more than "
                            f"{MAX_GENERATED} examples, which takes hours; use fewer, or a file (--{file_flag})")
    for flag in ("data", "eval_data"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise UserError(f"--{flag} {path} is not a file; pass the path of a local copy in the task's format "
                            "(README: 'Tasks and data')")
    on_the_fly = checkpoint_dir(tiny_base_run(args.task))
    if args.init not in (None, on_the_fly) and not os.path.isfile(os.path.join(args.init, "config.json")):
        raise UserError(f"--init {args.init} has no config.json; pass a checkpoint directory written by train.py, "
                        "or omit --init to pre-train one")
    if args.model != "tiny":
        E.resolve_model_path(args.model)
    if args.wandb is not None:
        wandb_module(args.wandb)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file, not a run directory; choose another --out")


def resume_config(args, given):
    """The configuration saved with the newest complete checkpoint of the run to resume, with --steps
    extended when given; any other flag would be ignored, so it is an error."""
    run_dir = args.resume
    extra = sorted(given - {"resume", "steps"})
    if extra:
        raise UserError(f"--resume continues {run_dir} with the configuration saved in its checkpoint and takes "
                        f"no flag but --steps (got {', '.join('--' + f for f in extra)}); to change them, start a "
                        "new run (another --out)")
    ckpt = newest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"cannot resume {run_dir}: it holds no complete checkpoint (a checkpoint directory with "
                        f"its {MARKER} file); start the run again without --resume (add --overwrite to replace "
                        "what is there)")
    state = read_state(ckpt)
    # a flag added after the run was saved takes its default (the behaviour the run had)
    resumed = argparse.Namespace(**{**vars(build_parser().parse_args([])), **state["config"]})
    fill(resumed, dtype=default_dtype())
    resumed.out, resumed.resume = run_dir, True
    done = state["step"]
    total = resumed.pretrain_steps if resumed.algo == "pretrain" else resumed.steps
    if args.steps is not None:
        if resumed.algo == "pretrain":
            raise UserError("--steps counts RL steps; a pre-training run cannot be extended "
                            "(its learning rate decays over --pretrain_steps)")
        if args.steps <= done:
            raise UserError(f"--steps {args.steps} does not extend {run_dir}: its checkpoint is at step {done}; "
                            "pass a larger --steps")
        resumed.steps = args.steps
    elif done >= total:
        raise UserError(f"{run_dir} has finished ({done} of {total} steps); to continue it, pass --steps N "
                        f"with N > {done}")
    spent = state.get("metrics", {}).get("train_s", 0.0)
    if resumed.algo != "pretrain" and out_of_time(spent, done, resumed.time_budget):
        raise UserError(f"{run_dir} has spent its --time_budget of {resumed.time_budget:g} s ({spent:.1f} s of "
                        f"rollouts and updates in {done} steps); to train longer, start a new run from its "
                        f"checkpoint {checkpoint_dir(run_dir)} (--init for the tiny model, --model otherwise)")
    return resumed


def out_of_time(spent, steps_done, budget):
    """Whether a run under --time_budget stops after `steps_done` steps that took `spent` seconds of
    rollouts and updates: when the next step, at the mean step time so far, would end more than half a
    step past the budget. So runs end on average at the budget, a slow algorithm neither always over it
    (stopping once past it) nor always under (stopping before it)."""
    if budget is None or steps_done == 0:
        return False
    return spent + 0.5 * spent / steps_done >= budget


# ----------------------------------------------------------------------------------------------
# Distributed set-up: one path for 1 and N processes.

def default_dtype():
    """bf16 where it is fast (CUDA); fp32 on the CPU, where bf16 matmuls are emulated on most chips."""
    return "bf16" if torch.cuda.is_available() else "fp32"


def is_tiny(model):
    """`tiny`, or a checkpoint directory of the tiny character-vocabulary model (marked in its config.json)."""
    if model == "tiny" or not os.path.isdir(str(model)):
        return model == "tiny"
    return read_model_config(model).char_tokenizer


def read_model_config(path):
    """The ModelConfig of a checkpoint directory's config.json; a UserError says what in it is wrong."""
    file = os.path.join(path, "config.json")
    fix = "a checkpoint directory needs the hub's config.json (or the one train.py wrote)"
    with reading(file, fix):
        with open(file, encoding="utf-8") as f:
            hub = json.load(f)
        if not isinstance(hub, dict):
            raise ValueError(f"it holds a JSON {type(hub).__name__}, not an object of model settings")
        try:
            cfg = M.config_from_hub(hub)
        except (KeyError, TypeError) as e:  # a missing field, or one of the wrong type met by arithmetic
            raise ValueError(f"a field is missing or of the wrong type ({type(e).__name__}: {e})") from e
    kinds = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}
    for field in dataclasses.fields(cfg):
        value, want = getattr(cfg, field.name), kinds.get(field.type)
        if want and (not isinstance(value, want) or (isinstance(value, bool) and field.type is not bool)):
            raise UserError(f"{file}: {field.name} = {value!r} is not of type {field.type.__name__}; {fix}")
    return cfg


def check_world(args, world):
    """Every rank must run the same number of sharded forward passes, or FSDP waits forever."""
    if args.algo == "pretrain":
        units, what = args.pretrain_batch, "--pretrain_batch"
    else:
        units = args.prompts_per_step * args.group_size // args.rollout_batch
        what = "the number of chunks (prompts_per_step × group_size / rollout_batch)"
    if units % world:
        raise UserError(f"{what} = {units} does not split over {world} processes; "
                        "choose values so that it is a multiple of the process count")


def seed_for(*parts):
    """A 63-bit seed that depends only on its parts (run seed, step, chunk, pass, ...)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# Models: the policy, the reference and FSDP2 sharding.

def shard(model, dtype):
    """FSDP2: shard every block, then the root. dtype "bf16": the weights are cast to bf16 for the
    forward and backward, gradients are reduced in fp32 and land in the (fp32) sharded trainable
    weights, so the optimizer updates fp32 weights with fp32 state."""
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if dtype == "bf16"
          else MixedPrecisionPolicy())
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def build_models(args, device, world):
    """The trained policy and, when β > 0, a way to run the reference policy.

    LoRA runs use the base weights with adapters switched off as the reference (no copy); full
    fine-tuning keeps a frozen copy of the initial weights.
    Storage dtypes: trainable weights (all of them, or the LoRA adapters) are fp32, so the optimizer
    never rounds an update to bf16; under --dtype bf16 the frozen weights (the LoRA base, the
    reference copy) are stored in bf16, the hubs' dtype, and FSDP2 computes everything in bf16."""
    path = args.init if (args.model == "tiny" and args.init) else E.resolve_model_path(args.model)
    where = device if world == 1 else torch.device("cpu")  # N processes: fully_shard moves each shard
    if path != "tiny":
        read_model_config(path)  # a clear message for a broken config.json before the weights are read
    frozen = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    with reading(f"the weights in {path}", "copy or download the checkpoint again"):
        policy = M.load_model(path, device=where, dtype=frozen if args.lora_rank > 0 else torch.float32, seed=args.seed)
    check_finite(policy.state_dict(), path)
    policy.gradient_checkpointing = args.grad_ckpt
    ref = None
    if args.lora_rank > 0:
        with seeded_rng(args.seed, where):  # the adapters' initialisation draws from the global RNG
            M.add_lora(policy, args.lora_rank, args.lora_alpha, args.lora_dropout)
    elif args.algo in ALGOS and ALGOS[args.algo].uses_ref and args.beta > 0:
        ref = M.load_model(path, device=where, dtype=frozen, seed=args.seed)
        ref.requires_grad_(False)
    if dist.is_initialized():  # N processes, or bf16 on one (setup_distributed)
        shard(policy, args.dtype)
        if ref is not None:
            shard(ref, args.dtype)
    return policy, ref, path


def check_finite(state, source):
    """Loaded weights must be finite: a NaN or inf would silently poison every update."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"the weights in {source} hold NaN or inf values ({len(bad)} tensor(s), e.g. {bad[0]}); "
                        "start from a checkpoint saved before the run diverged")


@contextlib.contextmanager
def seeded_rng(seed, device):
    """Inside the block, torch's global RNG of the CPU (and of `device` when it is a GPU) starts from
    `seed`; after it, the state is what it was. For modules that draw from the global RNG (LoRA
    dropout and initialisation): reproducible without reseeding anything outside the block."""
    gpus = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.random.default_generator.manual_seed(seed)
        if gpus:
            torch.cuda.manual_seed(seed)  # the current device, set by setup_distributed
        yield


@contextlib.contextmanager
def reference_of(policy, ref):
    """Yield a callable for the reference policy: the frozen copy, or the policy with LoRA off."""
    if ref is not None:
        yield ref
    else:
        with M.lora_disabled(policy):
            yield policy


@contextlib.contextmanager
def gathered(model):
    """Under FSDP, all-gather the weights once for a whole denoising loop instead of every step."""
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        yield
        return
    model.set_reshard_after_forward(False)  # keep blocks gathered between denoising steps
    for m in sharded:  # unshard() is not recursive
        m.unshard()
    try:
        yield
    finally:
        for m in sharded:
            m.reshard()
        model.set_reshard_after_forward(True)


# ----------------------------------------------------------------------------------------------
# Data: the training split without any held-out example, and the pre-training references.

def load_examples(task, args):
    """(training examples, held-out examples). Training never shares a key (a sudoku solution grid, a
    countdown number triple) with the held-out file, nor with any --exclude_data file."""
    held_out = task.load(args.eval_data) if args.eval_data else task.examples("test", args.n_eval, args.seed)
    held_out_files = [f for f in [args.eval_data] + list(args.exclude_data or []) if f]
    exclude = {task.key(ex) for f in held_out_files for ex in task.load(f)}
    if args.data:
        train = [ex for ex in task.load(args.data) if task.key(ex) not in exclude]
        if not train:
            raise UserError(f"every example of --data {args.data} is also in a held-out file; nothing is left to "
                            "train on")
    else:
        train = task.examples("train", args.train_size, args.seed, exclude=exclude)
    return train, held_out[: args.n_eval]


def encode_completions(tok, texts, length):
    """Reference completions as a full canvas of `length` tokens, the tail filled with EOS."""
    out = torch.full((len(texts), length), tok.eos_id, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tok.encode(t)
        if len(ids) > length:
            raise ValueError(f"reference completion of {len(ids)} tokens does not fit --gen_length {length}: "
                             f"{t[:60]!r}")
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def evaluate(policy, tok, task, examples, args, device, rank, world):
    """The held-out evaluation (eval.py's) at this run's evaluation settings. With --eval_forced the
    same examples again with EOS never sampled (eval.py --suppress_eos), under "forced_" keys: a
    policy can gain accuracy by answering more often or by answering better, and "answered" beside
    "forced_accuracy" tells the two apart."""
    settings = dict(gen_length=args.eval_gen_length, block_length=args.eval_block_length, batch_size=args.rollout_batch,
                    max_prompt_len=args.max_prompt_len, device=device, remasking=args.remasking, rank=rank,
                    world=world, cache=args.eval_cache)
    with gathered(policy):
        out = E.evaluate(policy, tok, task, examples, **settings)
        if args.eval_forced:
            forced = E.evaluate(policy, tok, task, examples, suppress_eos=True, **settings)
            out.update({f"forced_{k}": v for k, v in forced.items()})
    return out


# ----------------------------------------------------------------------------------------------
# Scores and losses of one micro-batch and one draw.

@dataclasses.dataclass
class Chunk:
    """A few whole prompt groups: the unit of generation and of gradient accumulation."""
    index: int
    prompt_ids: torch.Tensor  # (B, P) left-padded prompts
    attn: torch.Tensor        # (B, P) their attention mask
    x0: torch.Tensor          # (B, L) completions
    token_mask: torch.Tensor  # (B, L) completion tokens up to and including the first EOS
    rewards: torch.Tensor     # (B,) training rewards
    adv: torch.Tensor         # (B,) advantages
    zero_std: float           # share of its groups whose rewards are all equal
    old: list = None          # [pass][draw] scores of the rollout policy (pass 0: the policy's own, detached)
    ref: list = None          # [pass][draw] scores of the reference policy, or None

    @property
    def length(self):
        return self.x0.shape[1]


def policy_scores(model, algo, chunk, seed, draw, args, mask_id):
    """The score the algorithm needs for one draw: (B,) coupled-mask score, (B, L) one-pass log p, or
    SPG's bounds. Masks and dropout depend only on (seed, draw), so θ, old and ref are scored on the
    same ones."""
    prompt_ids, attn, x0 = chunk.prompt_ids, chunk.attn, chunk.x0
    # LoRA dropout draws the same masks for θ and old on the same seeds, so S_θ = S_old at θ = θ_old
    with seeded_rng(seed_for(seed, draw, "dropout"), x0.device):
        if algo.score == "one_pass":
            return L.one_pass_logprobs(model, prompt_ids, x0, mask_id=mask_id, prompt_mask_prob=args.prompt_mask_prob,
                                       seed=seed_for(seed, draw), attention_mask=attn)
        if algo.score == "spg":  # all num_t draws in one call: (ELBO (B,), EUBO (B,))
            block = args.block_length if args.spg_masking == "block" else None
            return L.spg_scores(model, prompt_ids, x0, chunk.token_mask.sum(-1), mask_id=mask_id, seed=seed,
                                num_t=args.spg_num_t, block_length=block, eubo_beta=args.spg_eubo_beta,
                                prompt_mask_prob=args.prompt_mask_prob, attention_mask=attn)
        # draw k of the seed's forward process; the draws after it are not made
        mask = L.forward_process(seed, x0.shape[0], x0.shape[1], draw + 1, x0.device)[draw]  # (B, L)
        return L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=mask_id, estimator=algo.score,
                                 attention_mask=attn, completions_per_call=args.score_chunk)


# ----------------------------------------------------------------------------------------------
# Checkpoints: hub-layout weights + optimizer state + JSON state, whole after a kill at any instant.
#
# A save writes OUT/checkpoint.tmp completely, then its COMPLETE marker, then rotates: checkpoint ->
# checkpoint.old, checkpoint.tmp -> checkpoint, delete checkpoint.old. A directory is deleted marker
# first, so a half-deleted one never looks complete. Resume finishes a rotation a kill interrupted,
# from the newest complete checkpoint of the three names.

MARKER = "COMPLETE"
RUN_FILES = ("metrics.jsonl", "metrics.jsonl.tmp", "checkpoint", "checkpoint.tmp", "checkpoint.old",
             "curves.png", "curves.png.tmp", "wandb_id")
LOCK_FILE = ".lock"
RESTART = "restore it from a copy, or start the run again without --resume"


def checkpoint_dir(out):
    return os.path.join(out, "checkpoint")


def checkpoint_names(out):
    """The names of a checkpoint during a rotation: current, being written, previous."""
    final = checkpoint_dir(out)
    return final, final + ".tmp", final + ".old"


def is_complete(path):
    return os.path.isfile(os.path.join(path, MARKER))


def discard(path):
    """Delete a checkpoint directory, its marker first, or a file; nothing if absent."""
    if os.path.isdir(path) and not os.path.islink(path):
        if os.path.lexists(os.path.join(path, MARKER)):
            os.remove(os.path.join(path, MARKER))
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def fsync(path):
    """Flush a file, or a directory's entries, to disk: a power cut must not reorder the rotation."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def read_state(ckpt):
    """A checkpoint's state.json: step, config, metrics, first_eval and the sha256 of its other files."""
    path = os.path.join(ckpt, "state.json")
    with reading(path, RESTART):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("config"), dict)):
        raise UserError(f"{path} lacks its step or config (it was edited or damaged); {RESTART}")
    return state


def newest_checkpoint(out):
    """The complete checkpoint of the highest step among the rotation's names (a tie: the current one), or None."""
    complete = [p for p in checkpoint_names(out) if is_complete(p)]
    return max(complete, key=lambda p: read_state(p)["step"], default=None)


def finish_rotation(out):
    """Bring a rotation to its end from wherever a kill stopped it: the newest complete checkpoint
    becomes OUT/checkpoint and the other names are deleted. A kill inside leaves it newest and complete."""
    final, tmp, old = checkpoint_names(out)
    newest = newest_checkpoint(out)
    if newest == tmp and os.path.isdir(final):
        discard(old)
        os.replace(final, old)  # the previous checkpoint lives on until the new one has its name
    if newest == old:
        discard(final)  # incomplete, or older
    if newest not in (None, final):
        os.replace(newest, final)
    discard(tmp)
    discard(old)
    fsync(out)


def full_cpu_copy(policy, args):
    """A plain (unsharded) CPU copy of an FSDP-sharded policy, for writing; collective on all ranks."""
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):  # no memory for a second random initialisation of billions of weights
        copy = M.Denoiser(policy.config)
        if args.lora_rank > 0:
            M.add_lora(copy, args.lora_rank, args.lora_alpha, args.lora_dropout)
    copy.load_state_dict(state, assign=True)
    return copy


def save_checkpoint(args, policy, optimizer, step, metrics, first_eval, rank):
    """Write `out/checkpoint/`: hub-layout weights (LoRA merged, so they load anywhere), the
    adapters alone (a resumed run keeps the base as its reference), optimizer state and a JSON of
    step / config / metrics / the sha256 of every other file (verified on resume). Gathered on all
    ranks, written on rank 0 by the rotation above.

    No RNG state is stored: every random draw of step s (prompts, rollouts, masks, dropout) comes
    from generators seeded by (seed, s, ...), so a resumed run redraws exactly what it would have."""
    if dist.is_initialized():
        model_copy = full_cpu_copy(policy, args)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim_state = get_optimizer_state_dict(policy, optimizer, options=options)
    else:
        model_copy, optim_state = policy, optimizer.state_dict()
    if rank == 0:
        tmp = checkpoint_names(args.out)[1]
        discard(tmp)  # a killed save's leftover (resume has already promoted it if it was complete)
        M.save_model(model_copy, tmp)
        if args.lora_rank > 0:
            save_file(M.lora_state_dict(model_copy), os.path.join(tmp, "lora.safetensors"))
        torch.save({"optimizer": optim_state}, os.path.join(tmp, "trainer.pt"))
        sha256 = {name: sha256_of(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        state = {"step": step, "config": vars(args), "metrics": metrics, "first_eval": first_eval, "sha256": sha256}
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump(finite_or_null(state), f, indent=1, allow_nan=False)
        for name in os.listdir(tmp):
            fsync(os.path.join(tmp, name))
        open(os.path.join(tmp, MARKER), "w").close()  # written last: everything above is on disk
        fsync(tmp)
        finish_rotation(args.out)
    if dist.is_initialized():
        dist.barrier()


def restore_checkpoint(args, policy, optimizer, device):
    """Load weights (or adapters) and optimizer state of `out/checkpoint/`, each file checked against
    the sha256 its state.json recorded; return that state."""
    ckpt = checkpoint_dir(args.out)
    state = read_state(ckpt)
    for name, digest in state.get("sha256", {}).items():
        path = os.path.join(ckpt, name)
        if not os.path.isfile(path) or sha256_of(path) != digest:
            what = ("not the file that was saved (its sha256 differs from the one in state.json)"
                    if os.path.isfile(path) else "missing")
            raise UserError(f"{path} is {what}: it was changed or damaged after the save; {RESTART}")
    with reading(f"the weights in {ckpt}", RESTART):
        if args.lora_rank > 0:
            weights = load_file(os.path.join(ckpt, "lora.safetensors"))
        else:
            weights = M.load_model(ckpt, device="cpu", dtype=torch.float32).state_dict()
    check_finite(weights, ckpt)
    opts = StateDictOptions(full_state_dict=True, strict=args.lora_rank == 0)
    set_model_state_dict(policy, weights, options=opts)
    with reading(os.path.join(ckpt, "trainer.pt"), RESTART, also=(RuntimeError, pickle.UnpicklingError)):
        optim_state = torch.load(os.path.join(ckpt, "trainer.pt"), map_location="cpu", weights_only=False)["optimizer"]
    if dist.is_initialized():
        set_optimizer_state_dict(policy, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optim_state)
    return state


@contextlib.contextmanager
def run_directory(args, rank):
    """Own `out` for the whole run: an exclusive lock (released by the OS even on kill -9), then a
    fresh start refuses a directory holding a run unless --overwrite, and a resume first finishes
    any rotation a kill interrupted. The files are handled on rank 0; every rank waits for it."""
    lock = None
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        lock = open(os.path.join(args.out, LOCK_FILE), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise UserError(f"another process is running in {args.out} (it holds {os.path.join(args.out, LOCK_FILE)}); "
                            "wait for it to end, or choose another --out") from None
    try:
        if rank == 0 and args.resume:
            finish_rotation(args.out)
        elif rank == 0:
            found = [name for name in RUN_FILES if os.path.lexists(os.path.join(args.out, name))]
            if found and not args.overwrite:
                raise UserError(f"--out {args.out} already holds a run ({', '.join(found)}); continue it with "
                                f"--resume {args.out}, choose another --out, or add --overwrite to replace it")
            for name in found:
                discard(os.path.join(args.out, name))
        if dist.is_initialized():
            dist.barrier()
        yield
    finally:
        if lock is not None:
            lock.close()


# ----------------------------------------------------------------------------------------------
# Logging: one fixed-format line per step and the same numbers as JSON lines.

LOG_FIELDS = [("reward", "reward {:.3f}"), ("reward_std", "std {:.3f}"), ("zero_std", "zero-std {:.2f}"),
              ("loss", "loss {:.3e}"), ("grad_norm", "gnorm {:.3f}"), ("skipped_updates", "skipped {:d}"),
              ("kl", "kl {:.2e}"), ("clip_frac", "clip {:.2f}"), ("rollout_s", "rollout {:.2f}s"),
              ("update_s", "update {:.2f}s"), ("tokens_per_s", "{:.0f} tok/s")]


def finite_or_null(x):
    """`x` with every NaN or inf replaced by None: JSON has no such numbers and strict readers reject them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_null(v) for v in x]
    return x


def log_step(args, step, metrics, rank, wandb_run=None):
    if rank != 0:
        return
    parts = [f"step {step:5d}"] + [fmt.format(metrics[k]) for k, fmt in LOG_FIELDS if k in metrics]
    if "eval" in metrics:
        parts.append(eval_summary(metrics["eval"]))
    print(" | ".join(parts), flush=True)
    with open(os.path.join(args.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(finite_or_null({"step": step, **metrics}), allow_nan=False) + "\n")
    if wandb_run is not None:
        wandb_run.log(flat_metrics(metrics), step=step)


def eval_summary(ev):
    """The held-out numbers of the log line: accuracy, the share answered, accuracy forced to answer."""
    text = f"eval {ev['accuracy']:.3f} answered {ev.get('answered', float('nan')):.2f}"
    return text + (f" forced {ev['forced_accuracy']:.3f}" if "forced_accuracy" in ev else "")


def flat_metrics(metrics):
    """One level of names for W&B: the held-out numbers as "eval/KEY"; non-finite values left out."""
    flat = {k: v for k, v in metrics.items() if k != "eval"}
    flat.update({f"eval/{k}": v for k, v in metrics.get("eval", {}).items()})
    return {k: v for k, v in flat.items() if isinstance(v, (int, float)) and math.isfinite(v)}


# ----------------------------------------------------------------------------------------------
# Optional outputs: RUN/curves.png (matplotlib) and a Weights & Biases run (wandb). Neither package
# is a requirement; without matplotlib the run says once how to get the plot.

# (panel title, [(metric, or "eval/" + held-out metric; legend label)])
CURVES = [
    ("training reward (rollouts)", [("reward", "mean"), ("reward_std", "std within a group")]),
    ("held-out (greedy)", [("eval/accuracy", "accuracy"), ("eval/forced_accuracy", "accuracy forced to answer"),
                           ("eval/answered", "answered")]),
    ("loss", [("loss", None)]),
    ("gradient norm (before clipping)", [("grad_norm", None)]),
    ("KL to the reference", [("kl", None)]),
    ("seconds per step", [("rollout_s", "rollouts"), ("update_s", "updates")]),
]
WANDB_ID = "wandb_id"  # RUN/wandb_id: the W&B run a resumed run continues


def can_plot():
    """Whether matplotlib is importable; if not, say once how to get RUN/curves.png."""
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        print("[plot] matplotlib is not installed, so this run writes no RUN/curves.png: "
              "`pip install matplotlib` to get one (nothing else needs it)", flush=True)
        return False


def plot_curves(out, first_eval):
    """Write OUT/curves.png: every panel of CURVES against step, from OUT/metrics.jsonl (the held-out
    numbers from step 0, the base's). Through a temporary file, so a kill never leaves half a picture."""
    from matplotlib.figure import Figure  # (no pyplot: no global figure state, no GUI backend)
    from matplotlib.ticker import MaxNLocator
    rows = [json.loads(line) for _, line in metric_lines(os.path.join(out, "metrics.jsonl"))]
    if first_eval is not None:
        rows = [{"step": 0, "eval": first_eval}] + rows
    fig = Figure(figsize=(14, 7.5))
    for ax, (title, series) in zip(fig.subplots(2, 3).flat, CURVES):
        for key, label in series:
            group, _, name = key.rpartition("/")
            points = [(r["step"], (r.get(group) if group else r) or {}) for r in rows]
            points = [(step, d[name]) for step, d in points if isinstance(d.get(name), (int, float))]
            if points:
                ax.plot(*zip(*points), marker="o" if group else None, ms=3, label=label)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged by this run", ha="center", va="center", transform=ax.transAxes, color="gray")
        elif any(label for _, label in series):
            ax.legend(fontsize=8)
        ax.set(title=title, xlabel="step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(out)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path + ".tmp", format="png", dpi=90)
    os.replace(path + ".tmp", path)


def wandb_module(project):
    """The wandb package, or a UserError saying how to get it."""
    try:
        import wandb
    except ImportError:
        raise UserError(f"--wandb {project} needs the wandb package, which is not installed: "
                        "`pip install wandb` (then `wandb login`), or drop --wandb") from None
    return wandb


def start_wandb(args, rank):
    """The W&B run of --wandb PROJECT, on rank 0 (None elsewhere or without --wandb): the run's config,
    named after its directory. A resumed run continues the W&B run it started (id in RUN/wandb_id);
    W&B drops the rows of the steps redone after the checkpoint, which it already holds."""
    if args.wandb is None or rank != 0:
        return None
    wandb = wandb_module(args.wandb)
    id_file = os.path.join(args.out, WANDB_ID)
    if args.resume and os.path.isfile(id_file):
        with open(id_file, encoding="utf-8") as f:
            run_id = f.read().strip()
    else:
        run_id = uuid.uuid4().hex[:16]
        with open(id_file, "w", encoding="utf-8") as f:
            f.write(run_id + "\n")
    return wandb.init(project=args.wandb, id=run_id, resume="allow", name=os.path.basename(os.path.normpath(args.out)),
                      config=vars(args), dir=args.out)


def metric_lines(path):
    """(step, line) of every row of a metrics file. A partial last line is the append a kill
    interrupted and is dropped; a damaged line elsewhere is an error."""
    with reading(path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            step = json.loads(line)["step"]
            if not isinstance(step, int):
                raise TypeError(f"its step is {step!r}, not an integer")
        except (ValueError, TypeError, KeyError) as e:
            if n == len(lines) and not line.endswith("\n"):
                break
            raise UserError(f"{path}, line {n}: not a metrics row ({type(e).__name__}: {e}); it was edited or damaged: "
                            "repair or delete that line, then resume again") from None
        rows.append((step, line))
    return rows


def truncate_metrics(args, last_step):
    """On resume, keep the metric rows up to the checkpoint's step (the later ones are redone). The
    file is rewritten to a temporary one and renamed over it, so a kill leaves the old or the new one."""
    path = os.path.join(args.out, "metrics.jsonl")
    if not os.path.isfile(path):
        return
    kept = [line for step, line in metric_lines(path) if step <= last_step]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    fsync(args.out)


# ----------------------------------------------------------------------------------------------
# The non-finite guard: an update is skipped, or undone, rather than trained on and saved as good.

EXPLODED = 2.0  # an update that multiplies the norm of the trained weights by more than this is undone


def total_norm(tensors):
    """L2 norm of a list of (possibly FSDP-sharded) tensors: the same float on every rank."""
    norm = torch.nn.utils.get_total_norm(tensors)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def guarded_step(optimizer, params, grad_norm):
    """optimizer.step() unless the gradient norm is not finite. An update that leaves a weight
    non-finite, or multiplies the norm of the weights by more than EXPLODED (a far too large --lr),
    is undone, weights and optimizer state. Returns whether the update was kept. Costs a copy of the
    trained weights and their optimizer state; collective under FSDP (every rank decides alike)."""
    if not math.isfinite(grad_norm):
        return False
    with torch.no_grad():
        before = [p.detach().clone() for p in params]
    state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
             for p in params if p in optimizer.state}
    norm_before = total_norm(before)
    optimizer.step()
    norm_after = total_norm([p.detach() for p in params])
    if math.isfinite(norm_after) and norm_after <= EXPLODED * norm_before:
        return True
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)
    for p in params:  # (AdamW creates a parameter's state at its first step)
        if p in state:
            optimizer.state[p] = state[p]
        else:
            optimizer.state.pop(p, None)
    return False


# ----------------------------------------------------------------------------------------------
# One RL round.

def rl_step(step, policy, ref, optimizer, tok, task, train, args, device, rank, world):
    """One RL round, in the README's "GDSD in one screen" steps; returns its metrics, averaged over
    every rank."""
    algo = ALGOS[args.algo]
    t0 = time.time()
    chunks = rollout_chunks(step, policy, tok, task, train, args, device, rank, world)  # steps 1-2
    t1 = time.time()
    teacher_scores(step, policy, ref, algo, chunks, args, tok.mask_id)                 # steps 3-5
    passes = optimizer_passes(step, policy, optimizer, algo, chunks, args, device, tok.mask_id)  # steps 6-8
    t2 = time.time()

    # metrics, summed over ranks before dividing
    G, rewards = args.group_size, torch.cat([c.rewards for c in chunks])
    sums = dict(passes.pop("sums"), rewards=rewards.sum().item(), completions=rewards.numel(), chunks=len(chunks),
                group_std=rewards.view(-1, G).std(dim=1, unbiased=False).sum().item(),
                zero_std=sum(c.zero_std for c in chunks), nonfinite_rewards=(~torch.isfinite(rewards)).sum().item())
    total = dict(zip(sums, E.all_sum(list(sums.values()), device)))
    n = total["completions"]
    out = {"reward": total["rewards"] / n, "reward_std": total["group_std"] / (n / G),
           "zero_std": total["zero_std"] / total["chunks"]}
    out.update({k: total[k] / total["terms"] for k in sums if k not in out and k not in
                ("terms", "rewards", "completions", "chunks", "group_std", "nonfinite_rewards")})
    out.update(passes, nonfinite_rewards=int(total["nonfinite_rewards"]), rollout_s=t1 - t0, update_s=t2 - t1,
               tokens_per_s=n * args.gen_length / max(t2 - t0, 1e-9))
    return out


def rollout_chunks(step, policy, tok, task, train, args, device, rank, world):
    """Steps 1-2: this step's prompts (the same draw on every rank, chunk c takes its slice), G rollouts
    each scored by the training reward, and the advantages within each group; this rank's chunks."""
    algo, G = ALGOS[args.algo], args.group_size
    per_chunk = args.rollout_batch // G  # prompts per chunk
    rng = random.Random(seed_for(args.seed, "prompts", step))
    picks = [train[rng.randrange(len(train))] for _ in range(args.prompts_per_step)]
    style = E.prompt_style(tok)
    policy.eval()
    chunks = []
    for c in range(rank, args.prompts_per_step // per_chunk, world):
        examples = picks[c * per_chunk:(c + 1) * per_chunk]
        with gathered(policy):
            prompt_ids, attn, x0, texts, _ = E.rollout(
                policy, tok, task, examples, style=style, gen_length=args.gen_length, block_length=args.block_length,
                steps=args.diffusion_steps, temperature=args.temperature, remasking=args.remasking,
                max_prompt_len=args.max_prompt_len, seed=seed_for(args.seed, "rollout", step, c), device=device,
                repeat=G, cache=args.rollout_cache, threshold=args.threshold, top_p=args.top_p)
        rewards = torch.tensor([task.reward(t, examples[i // G], style) for i, t in enumerate(texts)],
                               dtype=torch.float32, device=device)  # completion i answers example i // G
        adv, zero_std = algo.advantages(rewards, G)
        token_mask = L.eos_completion_mask(x0, tok.eos_id)
        chunks.append(Chunk(c, prompt_ids, attn, x0, token_mask, rewards, adv, float(zero_std)))
    return chunks


def draws_of(algo, args):
    """Mask draws per chunk and pass (SPG draws its num_t masks inside one call)."""
    return 1 if algo.score in ("one_pass", "spg") else args.num_mc


def mask_seed(args, step, j, chunk):
    """The seed of pass j's masks (and dropout) for a chunk: θ, old and ref are scored on the same."""
    return seed_for(args.seed, "mask", step, j, chunk.index)


@torch.no_grad()
def teacher_scores(step, policy, ref, algo, chunks, args, mask_id):
    """Steps 3-5: the teacher's scores (rollout policy and reference) on the very masks and dropout
    each pass will draw, into chunk.old / chunk.ref. Pass 0 runs before any update, so its
    rollout-policy scores are the policy's own: they are taken (detached) from its forward in
    `optimizer_passes` instead of computed twice."""
    draws = draws_of(algo, args)
    policy.train()
    for c in chunks:
        if algo.uses_old:
            c.old = [[None] * draws] + [[policy_scores(policy, algo, c, mask_seed(args, step, j, c), k, args, mask_id)
                                         for k in range(draws)] for j in range(1, args.mu)]
        if algo.uses_ref and args.beta > 0:
            with reference_of(policy, ref) as ref_model:
                c.ref = [[policy_scores(ref_model, algo, c, mask_seed(args, step, j, c), k, args, mask_id)
                          for k in range(draws)] for j in range(args.mu)]


def optimizer_passes(step, policy, optimizer, algo, chunks, args, device, mask_id):
    """Steps 6-8: μ optimizer passes, the loss's gradient summed over draws, averaged over chunks (and
    ranks); an update is skipped on every rank when any rank's loss is not finite. Returns the loss
    metrics' sums ("sums", with their count "terms") and the passes' own metrics."""
    draws, params = draws_of(algo, args), [p for p in policy.parameters() if p.requires_grad]
    lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    policy.train()
    sums, grad_norms, skipped, nonfinite_losses = {"terms": 0.0}, [], 0, 0
    for j in range(args.mu):
        bad_terms = 0
        for i, c in enumerate(chunks):
            for k in range(draws):
                if dist.is_initialized():  # reduce gradients across ranks once, on the last backward
                    policy.set_requires_gradient_sync(i == len(chunks) - 1 and k == draws - 1)
                s = policy_scores(policy, algo, c, mask_seed(args, step, j, c), k, args, mask_id)
                s_old = (s.detach() if j == 0 else c.old[j][k]) if algo.uses_old else None
                loss, metrics = algo.loss(s, s_old, c.ref[j][k] if c.ref else None, c, args)
                (loss / len(chunks)).backward()
                for key, v in {"loss": loss.detach(), **metrics, "terms": 1}.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
                bad_terms += not math.isfinite(float(loss.detach()))  # (a NaN loss can have a finite gradient)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        bad_terms = int(E.all_sum([bad_terms], device)[0])
        nonfinite_losses += bad_terms
        if bad_terms or not guarded_step(optimizer, params, grad_norm):
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
        grad_norms.append(grad_norm)
    return {"sums": sums, "grad_norm": sum(grad_norms) / len(grad_norms), "skipped_updates": skipped,
            "nonfinite_losses": nonfinite_losses, "lr": lr}


# ----------------------------------------------------------------------------------------------
# Masked-diffusion pre-training of the tiny model (so RL starts from a partly competent base).

def pretrain_step(step, policy, optimizer, tok, task, train, args, device, rank, world):
    """One MDM step: −ELBO/L of reference completions under stratified coupled masks."""
    rng = random.Random(seed_for(args.seed, "pretrain", step))
    picks = [train[rng.randrange(len(train))] for _ in range(args.pretrain_batch)]
    no_answer = [rng.random() < args.pretrain_no_answer for _ in picks][rank::world]
    examples = picks[rank::world]
    style = E.prompt_style(tok)
    prompt_ids, attn = E.encode_prompts(tok, task, examples, style, args.max_prompt_len)
    references = ["" if empty else task.reference(ex, style) for ex, empty in zip(examples, no_answer)]
    x0 = encode_completions(tok, references, args.gen_length)  # "" = all EOS
    prompt_ids, attn, x0 = prompt_ids.to(device), attn.to(device), x0.to(device)
    # masks drawn for the whole global batch, so the run does not depend on the number of processes
    masks = L.forward_process(seed_for(args.seed, "pretrain-mask", step), args.pretrain_batch, x0.shape[1], 1, device)
    mask = masks[0][rank::world]
    policy.train()
    for group in optimizer.param_groups:  # cosine decay to 10% keeps the end of pre-training stable
        group["lr"] = args.pretrain_lr * (0.55 + 0.45 * math.cos(math.pi * step / args.pretrain_steps))
    elbo = L.denoiser_scores(policy, prompt_ids, x0, mask, mask_id=tok.mask_id, estimator="elbo", attention_mask=attn)
    loss = -elbo.mean() / x0.shape[1]
    loss.backward()
    params = [p for p in policy.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    loss_sum, n = E.all_sum([loss.item(), 1], device)
    kept = math.isfinite(loss_sum) and guarded_step(optimizer, params, grad_norm)
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_sum / n, "grad_norm": grad_norm, "skipped_updates": int(not kept)}


# ----------------------------------------------------------------------------------------------

def tiny_base_run(task):
    """Where RL on `tiny` pre-trains its base on the fly when bases/tiny-TASK is not shipped."""
    return f"runs/tiny-{task}-base"


def ensure_tiny_base(args, rank, world, device):
    """RL on `tiny` starts from a pre-trained base. When bases/TASK is not shipped, pre-train it on
    the fly with this run's --train_size and --pretrain_* values (and seed 0, as the shipped bases,
    so every seed starts from the same base), resuming a crashed pre-training. A base already there
    that was made with other values is an error, never silently reused."""
    base_run = tiny_base_run(args.task)
    if args.init != checkpoint_dir(base_run):
        return
    wanted = {k: getattr(args, k) for k in ("train_size",) + PRETRAIN_FLAGS}
    ckpt = newest_checkpoint(base_run)
    if ckpt is not None:
        state = read_state(ckpt)
        made = {k: state["config"].get(k) for k in wanted}
        differ = [k for k in wanted if made[k] != wanted[k]]
        if differ:
            raise UserError(f"{base_run} holds a base pre-trained with "
                            f"{', '.join(f'--{k} {made[k]}' for k in differ)}, not this run's "
                            f"{', '.join(f'--{k} {wanted[k]}' for k in differ)}; delete {base_run} to pre-train "
                            "it again, or pass the values it was made with")
        if state["step"] >= args.pretrain_steps:
            return
    E.log0(f"[setup] no finished base checkpoint in {base_run}: pre-training the tiny model first "
           "(deterministic, once)")
    argv = (["--resume", base_run] if ckpt is not None else
            ["--task", args.task, "--algo", "pretrain", "--seed", "0", "--out", base_run, "--overwrite",
             "--dtype", args.dtype]
            + [arg for k, v in wanted.items() for arg in (f"--{k}", str(v))])
    run(parse_args(argv), rank, world, device)


def run(args, rank, world, device):
    """Train (RL or pre-training) with a resolved config; returns the final metrics."""
    check_world(args, world)
    with run_directory(args, rank):
        E.log0("[config] " + json.dumps(vars(args), sort_keys=True))
        task = R.get_task(args.task)
        policy, ref, path = build_models(args, device, world)
        with reading(f"the tokenizer of {path}", "copy the hub checkpoint's tokenizer files into it"):
            tok = M.load_tokenizer(path)
        if (policy.config.mask_id, policy.config.eos_id) != (tok.mask_id, tok.eos_id):
            raise UserError(f"the config.json of {path} gives mask / eos token ids {policy.config.mask_id} / "
                            f"{policy.config.eos_id}, but its tokenizer uses {tok.mask_id} / {tok.eos_id}; "
                            "make config.json agree with the tokenizer")
        files = " and ".join(f"--{f} {getattr(args, f)}" for f in ("data", "eval_data") if getattr(args, f))
        with reading(files or f"the {args.task} examples"):
            train, test = load_examples(task, args)
        for examples, source in ((train, args.data or "the generated training split"),
                                 (test, args.eval_data or "the generated test split")):
            if not examples:
                raise UserError(f"{source} holds no examples; pass a file with some")
        params = [p for p in policy.parameters() if p.requires_grad]
        lr = args.pretrain_lr if args.algo == "pretrain" else args.lr
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(args.adam_betas), weight_decay=args.weight_decay)
        start, first_eval = 0, None
        if args.resume:
            state = restore_checkpoint(args, policy, optimizer, device)
            start, first_eval, metrics = state["step"], state["first_eval"], state["metrics"]
            if rank == 0:
                truncate_metrics(args, start)
            E.log0(f"[resume] from step {start} of {checkpoint_dir(args.out)}")
        total = args.pretrain_steps if args.algo == "pretrain" else args.steps
        eval_every = args.eval_every if args.eval_every > 0 else total  # 0: at the start and the end only
        plots = rank == 0 and can_plot()
        wandb_run = start_wandb(args, rank)
        if start == 0:
            first_eval = evaluate(policy, tok, task, test, args, device, rank, world)
            E.log0(f"[eval] step 0: {json.dumps(first_eval)}")
            metrics = {"eval": first_eval}
            if wandb_run is not None:
                wandb_run.log(flat_metrics(metrics), step=0)
        bad = 0
        spent = metrics.get("train_s", 0.0)  # seconds of rollouts and updates so far (--time_budget)
        for step in range(start + 1, total + 1):
            if args.algo == "pretrain":
                metrics = pretrain_step(step, policy, optimizer, tok, task, train, args, device, rank, world)
            else:
                metrics = rl_step(step, policy, ref, optimizer, tok, task, train, args, device, rank, world)
            if args.algo != "pretrain":  # the mean over ranks, so that every rank stops at the same step
                spent += E.all_sum([metrics["rollout_s"] + metrics["update_s"]], device)[0] / world
                metrics["train_s"] = spent
            last = step == total or out_of_time(spent, step, args.time_budget)
            bad = bad + 1 if metrics["skipped_updates"] else 0
            if step % eval_every == 0 or last:
                metrics["eval"] = evaluate(policy, tok, task, test, args, device, rank, world)
            log_step(args, step, metrics, rank, wandb_run)
            if plots and "eval" in metrics:
                plot_curves(args.out, first_eval)
            if bad >= args.max_bad_steps:
                save_checkpoint(args, policy, optimizer, step, metrics, first_eval, rank)
                raise UserError(f"{bad} steps in a row skipped updates (a non-finite loss, reward or gradient, "
                                f"or an exploding update); stopping, with the last good weights saved in "
                                f"{checkpoint_dir(args.out)}. Lower --lr or --psi, or check the data.")
            if step % args.save_every == 0 or last:
                save_checkpoint(args, policy, optimizer, step, metrics, first_eval, rank)
            if last:
                if step < total:
                    E.log0(f"[budget] {spent:.1f} s of rollouts and updates spent (--time_budget "
                           f"{args.time_budget:g}): stopping after step {step} of {total}")
                break
        if wandb_run is not None:
            wandb_run.finish()
        if first_eval is not None and "eval" in metrics:
            E.log0(f"[result] held-out {args.task} accuracy: start {first_eval['accuracy']:.3f} -> "
                   f"end {metrics['eval']['accuracy']:.3f} ({checkpoint_dir(args.out)})")
            if "forced_accuracy" in metrics["eval"] and "forced_accuracy" in first_eval:
                E.log0(f"[result] answered: start {first_eval['answered']:.3f} -> "
                       f"end {metrics['eval']['answered']:.3f}; "
                       f"accuracy forced to answer: start {first_eval['forced_accuracy']:.3f} -> "
                       f"end {metrics['eval']['forced_accuracy']:.3f}")
        return {"first_eval": first_eval, **metrics}


def main(argv=None):
    args = parse_args(argv)
    rank, world, device, why = E.setup_distributed(args.dtype)
    E.log0(f"[setup] {why}; dtype {args.dtype} (--dtype; default bf16 on CUDA, fp32 on CPU)")
    if args.model == "tiny" and args.algo != "pretrain" and not args.resume:
        ensure_tiny_base(args, rank, world, device)
    result = run(args, rank, world, device)
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    cli(main)
