"""train.py — GDSD reinforcement learning for masked diffusion LLMs (and the tiny model's pre-training).

One RL round (the README's "The method"), visibly in order inside `rl_step`:
    draw prompts -> G completions each (sample.generate) -> verifier rewards (reward.py)
    -> RLOO advantages -> old / reference scores on shared mask seeds for all μ inner passes
    -> μ optimizer passes (gradient accumulation over micro-batches and draws) -> log.

Run:
    python train.py                                    # tiny model, sudoku, GDSD, CPU, minutes
    python train.py --task countdown --algo espo       # any task / algorithm on the tiny model
    torchrun --nproc_per_node=8 train.py --task sudoku --model llada     # LLaDA-8B-Instruct, 8 GPUs
    python train.py --resume runs/NAME                 # continue a stopped run from its checkpoint

Distributed: one code path for 1 and N processes (torchrun's RANK / WORLD_SIZE); gloo on CPU, nccl
on GPU; FSDP2 `fully_shard` per block then the root. Work is split into *chunks* (a few whole
prompt groups) whose randomness depends only on (seed, step, chunk): N processes reproduce one
process on the same global batch.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

import loss as L
import model as M
import reward as R
import sample as S

# ----------------------------------------------------------------------------------------------
# Algorithms: which denoiser score each one regresses or ratios, and which loss consumes it.

@dataclasses.dataclass(frozen=True)
class Algo:
    score: str          # "logprob" | "centered" | "elbo" (coupled-mask scores) | "one_pass" (d1) | "spg" (ELBO, EUBO)
    advantage: str      # "rloo" | "group_mean"
    uses_ref: bool      # whether β > 0 needs a reference policy


ALGOS = {
    "gdsd": Algo("logprob", "rloo", True),
    "gdsd-tlc": Algo("centered", "rloo", True),
    "gdsd-official": Algo("logprob", "rloo", True),
    "gdsd-tlc-official": Algo("elbo", "rloo", True),  # the released "TLC" trainer computes ELBO scores
    "espo": Algo("elbo", "rloo", True),
    "d1": Algo("one_pass", "group_mean", True),
    "wd1": Algo("one_pass", "rloo", False),
    "spg": Algo("spg", "group_mean", False),  # no KL term: the official SPG trainer refuses β > 0
}

ROOT = os.path.dirname(os.path.abspath(__file__))  # shipped tiny bases live in ROOT/bases

# Hub checkpoints the short names point at; they must be downloaded to a local directory first.
HUB_NAMES = {
    "llada": ("GSAI-ML/LLaDA-8B-Instruct", "checkpoints/LLaDA-8B-Instruct"),
    "dream": ("Dream-org/Dream-v0-Instruct-7B", "checkpoints/Dream-v0-Instruct-7B"),
}

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
    lora_rank=0, lora_alpha=0, lora_dropout=0.0, steps=30, eval_every=10, n_eval=256,
    save_every=10, grad_ckpt=False, eval_block_length=None,
    # the demo's base (bases/tiny-sudoku): solves most puzzles it answers, leaves many unanswered
    pretrain_steps=600, pretrain_batch=64, pretrain_lr=1e-3, pretrain_no_answer=0.45,
)
# Canvas lengths of the tiny model's compact answers (gen_length, diffusion steps).
TINY_TASK_LENGTHS = {"sudoku": (16, 16), "countdown": (16, 16)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # --- what to train
    g = p.add_argument_group("task and model")
    g.add_argument("--task", default="sudoku", help=f"task name, one of {sorted(R.TASKS)}")
    g.add_argument("--data", default=None, help="local training file in the task's official format (default: the task's own generator)")
    g.add_argument("--eval_data", default=None, help="local held-out file (default: the generator's test split)")
    g.add_argument("--model", default="tiny", help="'tiny', 'llada', 'dream', or a local directory with a checkpoint in the hub layout")
    g.add_argument("--init", default=None, help="tiny only: base checkpoint directory to start RL from (default: the shipped bases/tiny-TASK, else runs/tiny-TASK-base/checkpoint, pre-trained on the fly)")
    g.add_argument("--algo", default="gdsd", choices=sorted(ALGOS) + ["pretrain"], help="training objective ('pretrain' = masked-diffusion pre-training of the tiny model)")
    g.add_argument("--dtype", choices=["bf16", "fp32"],
                   help="compute dtype (default: bf16 on CUDA, fp32 on CPU). bf16 = FSDP2 mixed precision, on 1 process "
                        "too: bf16 weights in the forward and backward, fp32 gradient reduction, fp32 trainable "
                        "weights and optimizer state, fp32 scores and losses; frozen weights (the LoRA base, the "
                        "reference copy) are stored in bf16")
    # --- the objective
    g = p.add_argument_group("objective (loss.py)")
    g.add_argument("--psi", type=float, help="ψ, guidance scale on the advantage")
    g.add_argument("--beta", type=float, help="β, weight of the reference policy in the teacher / KL coefficient of the baselines")
    g.add_argument("--eps", type=float, help="ε, clamp width of the official-code log-ratio")
    g.add_argument("--clip_eps", type=float, help="PPO clip range of d1 / ESPO")
    g.add_argument("--num_mc", type=int, help="mask draws per completion and inner pass")
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
    g.add_argument("--block_length", type=int, help="semi-autoregressive block length (default: 32 for hub models; the whole completion for tiny and for --remasking entropy, Dream's order)")
    g.add_argument("--diffusion_steps", type=int, help="denoising steps per completion")
    g.add_argument("--temperature", type=float, help="sampling temperature τ of rollouts")
    g.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random", "entropy"], help="order in which positions are revealed")
    g.add_argument("--group_size", type=int, help="G, completions per prompt")
    g.add_argument("--prompts_per_step", type=int, help="prompts per RL step, over all processes")
    g.add_argument("--rollout_batch", type=int, help="completions per chunk (a multiple of G): the unit of generation and of gradient accumulation")
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
    g.add_argument("--lora_alpha", type=float, help="LoRA alpha")
    g.add_argument("--lora_dropout", type=float, help="LoRA dropout")
    g.add_argument("--grad_ckpt", type=int, choices=[0, 1], help="activation checkpointing per block")
    g.add_argument("--pretrain_steps", type=int, help="pretrain: optimizer steps")
    g.add_argument("--pretrain_batch", type=int, help="pretrain: examples per step")
    g.add_argument("--pretrain_lr", type=float, help="pretrain: AdamW learning rate")
    g.add_argument("--pretrain_no_answer", type=float, help="pretrain: fraction of examples whose reference is the empty answer (the base then sometimes answers nothing, which the verifier scores 0)")
    # --- run bookkeeping
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run directory (default: runs/TASK-MODEL-ALGO)")
    g.add_argument("--resume", default=None, help="run directory to resume from its checkpoint")
    g.add_argument("--seed", type=int, default=0, help="seed of every random choice (prompts, rollouts, masks)")
    g.add_argument("--save_every", type=int, help="checkpoint every N steps (and at the end)")
    g.add_argument("--eval_every", type=int, help="held-out evaluation every N steps (0 = only at the start and the end)")
    g.add_argument("--n_eval", type=int, help="held-out examples per evaluation")
    g.add_argument("--eval_gen_length", type=int, help="completion length used in evaluation")
    g.add_argument("--eval_block_length", type=int, help="block length used in evaluation")
    g.add_argument("--train_size", type=int, default=20000, help="generated training examples (generator tasks)")
    g.add_argument("--max_bad_steps", type=int, default=3, help="stop after this many non-finite updates in a row")
    args = p.parse_args(argv)
    return resolve_defaults(args)


def resolve_defaults(args):
    """Fill unset flags from the hub or tiny table, then check the batch geometry."""
    if args.task not in R.TASKS:
        sys.exit(f"error: unknown task {args.task!r}; known tasks: {sorted(R.TASKS)}")
    if args.resume:  # a resumed run takes its saved configuration; only --steps may be extended
        state = os.path.join(checkpoint_dir(args.resume), "state.json")
        if not os.path.isfile(state):
            sys.exit(f"error: cannot resume: {state} is missing (the run never wrote a complete checkpoint); start it again without --resume")
        saved = json.load(open(state))["config"]
        run_dir, steps = args.resume, args.steps
        args = argparse.Namespace(**{"dtype": default_dtype(), **saved})  # (runs saved before --dtype existed)
        args.out, args.resume, args.steps = run_dir, True, steps or saved["steps"]
        return args
    if args.algo in ("wd1", "spg") and args.beta:
        sys.exit(f"error: {args.algo} has no KL term (its loss ignores β); drop --beta or choose another --algo")
    if args.pretrain_no_answer is not None and not 0 <= args.pretrain_no_answer < 1:
        sys.exit(f"error: --pretrain_no_answer must be in [0, 1), got {args.pretrain_no_answer}")
    tiny = is_tiny(args.model)
    if args.algo == "pretrain" and not tiny:
        sys.exit("error: --algo pretrain trains the built-in tiny model only; hub models start from their instruct weights")
    table = TINY_DEFAULTS if tiny else HUB_DEFAULTS
    if not tiny and args.remasking == "entropy" and args.block_length is None:
        args.block_length = args.gen_length or table["gen_length"]  # Dream's order: the whole completion at once
    for k, v in table.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if tiny:
        if args.task not in TINY_TASK_LENGTHS:
            sys.exit(f"error: the tiny model has no compact format for task {args.task!r}; use one of {sorted(TINY_TASK_LENGTHS)} or a hub model")
        gen, steps = TINY_TASK_LENGTHS[args.task]
        args.gen_length = args.gen_length or gen
        args.diffusion_steps = args.diffusion_steps or steps
        args.block_length = args.block_length or args.gen_length
        args.eval_gen_length = args.eval_gen_length or args.gen_length
        args.eval_block_length = args.eval_block_length or args.block_length
        if args.model == "tiny" and args.algo != "pretrain":
            shipped = os.path.join(ROOT, "bases", f"tiny-{args.task}")
            args.init = args.init or (shipped if os.path.isfile(os.path.join(shipped, "model.safetensors"))
                                      else checkpoint_dir(tiny_base_run(args.task)))
    if args.algo in ("wd1", "spg"):
        args.beta = 0.0
    args.grad_ckpt = bool(args.grad_ckpt)
    args.dtype = args.dtype or default_dtype()
    args.out = args.out or f"runs/{args.task}-{os.path.basename(str(args.model).rstrip('/'))}-{args.algo}"
    if args.algo != "pretrain":
        G, B = args.group_size, args.rollout_batch
        if G < 2:
            sys.exit("error: --group_size must be at least 2 (advantages compare completions of one prompt)")
        if B % G:
            sys.exit(f"error: --rollout_batch {B} is not a multiple of --group_size {G}: a chunk must hold whole prompt groups")
        if (args.prompts_per_step * G) % B:
            sys.exit(f"error: prompts_per_step × group_size = {args.prompts_per_step * G} completions do not split into chunks of --rollout_batch {B}")
    return args


# ----------------------------------------------------------------------------------------------
# Distributed set-up: one path for 1 and N processes.

def default_dtype():
    """bf16 where it is fast (CUDA); fp32 on the CPU, where bf16 matmuls are emulated on most chips."""
    return "bf16" if torch.cuda.is_available() else "fp32"


def is_tiny(model):
    """`tiny`, or a checkpoint directory of the tiny character-vocabulary model (marked in its config.json)."""
    config = os.path.join(str(model), "config.json")
    if model == "tiny" or not os.path.isfile(config):
        return model == "tiny"
    with open(config) as f:
        return M.config_from_hub(json.load(f)).char_tokenizer


def check_world(args, world):
    """Every rank must run the same number of sharded forward passes, or FSDP waits forever."""
    if args.algo == "pretrain":
        units, what = args.pretrain_batch, "--pretrain_batch"
    else:
        units, what = args.prompts_per_step * args.group_size // args.rollout_batch, "the number of chunks (prompts_per_step × group_size / rollout_batch)"
    if units % world:
        sys.exit(f"error: {what} = {units} does not split over {world} processes; choose values so that it is a multiple of the process count")


def setup_distributed(dtype="fp32"):
    """Initialise torch.distributed from torchrun's environment (or run single-process).

    bf16 mixed precision is FSDP2's MixedPrecisionPolicy (see `shard`), so a single bf16 process
    runs FSDP2 too, in a process group of one: 1 and N processes then compute the same numbers."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        reason = f"CUDA available ({torch.cuda.device_count()} GPUs)"
    else:
        device, reason = torch.device("cpu"), "no CUDA device found"
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    elif dtype == "bf16":
        backend = "nccl" if device.type == "cuda" else "gloo"
        # an in-memory store: a group of one needs no rendezvous and no port
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                device_id=device if device.type == "cuda" else None)
        backend += " (one process: FSDP2 carries the bf16 mixed precision)"
    else:
        backend = "none (single process)"
    return rank, world, device, f"device {device} ({reason}); backend {backend}; world size {world}"


def log0(*a):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*a, flush=True)


def all_sum(values, device):
    """Sum a list of floats over ranks (every rank must call it)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def seed_for(*parts):
    """A 63-bit seed that depends only on its parts (run seed, step, chunk, pass, ...)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# ----------------------------------------------------------------------------------------------
# Models: the policy, the reference and FSDP2 sharding.

def resolve_model_path(name):
    if name == "tiny" or os.path.isdir(name):
        return name
    if name in HUB_NAMES:
        repo, local = HUB_NAMES[name]
        if os.path.isdir(local):
            return local
        sys.exit(f"error: --model {name} expects the hub checkpoint {repo} in ./{local} (no weights are downloaded at run time). "
                 f"Fetch it once, e.g. `huggingface-cli download {repo} --local-dir {local}`, or pass --model DIR.")
    sys.exit(f"error: --model {name!r} is neither 'tiny', one of {sorted(HUB_NAMES)}, nor an existing directory")


def shard(model, dtype):
    """FSDP2: shard every block, then the root. dtype "bf16": the weights are cast to bf16 for the
    forward and backward, gradients are reduced in fp32 and land in the (fp32) sharded trainable
    weights, so the optimizer updates fp32 weights with fp32 state."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if dtype == "bf16" else MixedPrecisionPolicy()
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
    path = args.init if (args.model == "tiny" and args.init) else resolve_model_path(args.model)
    where = device if world == 1 else "cpu"  # N processes: fully_shard moves each rank's shard to its device
    frozen = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    policy = M.load_model(path, device=where, dtype=frozen if args.lora_rank > 0 else torch.float32, seed=args.seed)
    policy.gradient_checkpointing = args.grad_ckpt
    ref = None
    if args.lora_rank > 0:
        M.add_lora(policy, args.lora_rank, args.lora_alpha, args.lora_dropout)  # adapters are fp32
    elif ALGOS.get(args.algo, Algo("", "", False)).uses_ref and args.beta > 0:
        ref = M.load_model(path, device=where, dtype=frozen, seed=args.seed)
        ref.requires_grad_(False)
    if dist.is_initialized():  # N processes, or bf16 on one (setup_distributed)
        shard(policy, args.dtype)
        if ref is not None:
            shard(ref, args.dtype)
    return policy, ref, path


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
    from torch.distributed.fsdp import FSDPModule
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
# Data: prompts to token ids, completions to text, rollouts (also used by eval.py).

def load_examples(task, args):
    train = task.load(args.data) if args.data else task.examples("train", args.train_size, args.seed)
    test = task.load(args.eval_data) if args.eval_data else task.examples("test", args.n_eval, args.seed)
    return train, test[: args.n_eval]


def prompt_style(tok):
    """The tiny character model reads compact prompts; hub models read the chat instructions."""
    return "tiny" if isinstance(tok, M.CharTokenizer) else "chat"


def encode_prompts(tok, task, examples, style, max_len):
    """Left-padded prompt ids (N, P) and their attention mask (N, P)."""
    rows = [tok.encode(tok.format_prompt(task.prompt(ex, style))) for ex in examples]
    too_long = [i for i, r in enumerate(rows) if len(r) > max_len]
    if too_long:
        raise ValueError(f"{len(too_long)} prompt(s) exceed --max_prompt_len {max_len} tokens (longest {max(len(rows[i]) for i in too_long)}); raise --max_prompt_len")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), tok.pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), P), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(r):] = True
    return ids, attn


def encode_completions(tok, texts, length):
    """Reference completions as a full canvas of `length` tokens, the tail filled with EOS."""
    out = torch.full((len(texts), length), tok.eos_id, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tok.encode(t)
        if len(ids) > length:
            raise ValueError(f"reference completion of {len(ids)} tokens does not fit --gen_length {length}: {t[:60]!r}")
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def decode_completion(tok, ids):
    """Completion text up to the first EOS (what the verifier sees)."""
    ids = ids.tolist()
    if tok.eos_id in ids:
        ids = ids[: ids.index(tok.eos_id)]
    return tok.decode(ids)


@torch.no_grad()
def rollout(model, tok, task, examples, *, style, gen_length, block_length, steps, temperature,
            remasking, max_prompt_len, seed, device, repeat=1, suppress_eos=False):
    """Generate `repeat` completions per example and score them with the task's verifier
    (`suppress_eos`: EOS is never sampled, so every completion fills the whole canvas).

    Returns prompt ids, attention mask, completion ids (N·repeat, L), texts and rewards (N·repeat,)."""
    examples = [ex for ex in examples for _ in range(repeat)]
    prompt_ids, attn = encode_prompts(tok, task, examples, style, max_prompt_len)
    prompt_ids, attn = prompt_ids.to(device), attn.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with gathered(model):
        canvas = S.generate(model, prompt_ids, gen_length=gen_length, steps=steps, block_length=block_length,
                            temperature=temperature, remasking=remasking, mask_id=tok.mask_id,
                            attention_mask=attn, generator=gen, eos_id=tok.eos_id if suppress_eos else None,
                            suppress_eos=suppress_eos)
    x0 = canvas[:, prompt_ids.shape[1]:]
    texts = [decode_completion(tok, row) for row in x0.cpu()]
    rewards = torch.tensor([task.score(t, ex, style) for t, ex in zip(texts, examples)], dtype=torch.float32, device=device)
    return prompt_ids, attn, x0, texts, rewards


def evaluate(model, tok, task, examples, args, device, rank=0, world=1, records=None, progress=None, suppress_eos=False):
    """Greedy held-out score with the training verifier, examples sharded over ranks (`suppress_eos`:
    the model must write a full-length answer).

    Returns the means over all ranks of the score and of every `task.details` metric; appends one
    record per example of this rank to `records` when a list is given."""
    style = prompt_style(tok)
    mine = list(range(rank, len(examples), world))
    n_batches = math.ceil(math.ceil(len(examples) / world) / args.rollout_batch)  # equal on all ranks
    totals, n = {}, 0
    model.eval()
    for i in range(0, n_batches * args.rollout_batch, args.rollout_batch):
        idx = mine[i: i + args.rollout_batch]
        # a rank out of examples still joins the sharded forward passes, with a discarded dummy
        batch = [examples[j] for j in idx] if idx else examples[:1]
        *_, texts, rewards = rollout(model, tok, task, batch, style=style, gen_length=args.eval_gen_length,
                                     block_length=args.eval_block_length, steps=eval_steps(args.eval_gen_length, style),
                                     temperature=0.0, remasking=args.remasking, max_prompt_len=args.max_prompt_len,
                                     seed=0, device=device, suppress_eos=suppress_eos)
        if progress and rank == 0:
            print(f"[eval] {progress}: batch {i // args.rollout_batch + 1}/{n_batches}", flush=True)
        for j, text, ex, r in zip(idx, texts, batch, rewards.tolist()):  # (empty for a dummy batch)
            metrics = {"score": r, **{k: float(v) for k, v in task.details(text, ex, style).items()}}
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
            if records is not None:
                records.append({"index": j, "completion": text, **metrics})
    model.train()
    keys = sorted(totals)
    sums = all_sum([totals.get(k, 0.0) for k in keys] + [n], device)
    return {k: s / max(sums[-1], 1) for k, s in zip(keys, sums[:-1])}


def eval_steps(gen_length, style):
    """d1 protocol: steps = gen_length / 2 for hub models; the tiny model reveals one token per step."""
    return gen_length if style == "tiny" else gen_length // 2


# ----------------------------------------------------------------------------------------------
# Scores and losses of one micro-batch and one draw.

def policy_scores(model, algo, batch, seed, draw, args, mask_id):
    """The score the algorithm needs for one draw: (B,) coupled-mask score, (B, L) one-pass log p, or SPG's bounds."""
    prompt_ids, attn, x0 = batch["prompt_ids"], batch["attn"], batch["x0"]
    # LoRA dropout draws the same masks for θ and old on the same seeds, so S_θ = S_old at θ = θ_old
    torch.manual_seed(seed_for(seed, draw, "dropout"))
    if algo.score == "one_pass":
        return L.one_pass_logprobs(model, prompt_ids, x0, mask_id=mask_id, prompt_mask_prob=args.prompt_mask_prob,
                                   seed=seed_for(seed, draw), attention_mask=attn)
    if algo.score == "spg":  # all num_t draws in one call: (ELBO (B,), EUBO (B,))
        block = args.block_length if args.spg_masking == "block" else None
        return L.spg_scores(model, prompt_ids, x0, batch["token_mask"].sum(-1), mask_id=mask_id, seed=seed,
                            num_t=args.spg_num_t, block_length=block, eubo_beta=args.spg_eubo_beta,
                            prompt_mask_prob=args.prompt_mask_prob, attention_mask=attn)
    masks = L.forward_process(seed, x0.shape[0], x0.shape[1], args.num_mc, x0.device)  # (num_mc, B, L)
    return L.denoiser_scores(model, prompt_ids, x0, masks[draw], mask_id=mask_id, estimator=algo.score, attention_mask=attn)


def algo_loss(name, s, s_old, s_ref, batch, args):
    """Dispatch one draw's scores to the algorithm's loss (loss.py)."""
    A, Lc = batch["adv"], batch["x0"].shape[1]
    if name in ("gdsd", "gdsd-tlc"):
        return L.gdsd_loss(s, s_old, s_ref, A, length=Lc, psi=args.psi, beta=args.beta)
    if name in ("gdsd-official", "gdsd-tlc-official"):
        return L.gdsd_official_loss(s, s_old, s_ref, A, length=Lc, psi=args.psi, beta=args.beta, eps=args.eps)
    if name == "espo":
        return L.espo_loss(s, s_old, s_ref, A, length=Lc, clip_eps=args.clip_eps, beta=args.beta)
    if name == "d1":  # d1 and wd1 score tokens up to the first EOS
        return L.d1_loss(s, s_old, s_ref, A, clip_eps=args.clip_eps, beta=args.beta, token_mask=batch["token_mask"])
    if name == "wd1":
        return L.wd1_loss((s * batch["token_mask"]).sum(-1), batch["rewards"], group_size=args.group_size)
    if name == "spg":  # s = (ELBO, EUBO) per completion
        return L.spg_loss(*s, A, batch["token_mask"].sum(-1), mix_weight=args.spg_mix_weight)
    raise ValueError(f"unknown algorithm {name!r}")


# ----------------------------------------------------------------------------------------------
# Checkpoints: hub-layout weights + JSON state + optimizer / RNG state, written atomically.

def checkpoint_dir(out):
    return os.path.join(out, "checkpoint")


def full_cpu_copy(policy, args):
    """A plain (unsharded) CPU copy of an FSDP-sharded policy, for writing; collective on all ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
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
    step / config / metrics. Gathered on all ranks, written on rank 0 to a temporary directory and
    renamed into place, so a crash mid-write never destroys the previous checkpoint.

    No RNG state is stored: every random draw of step s (prompts, rollouts, masks, dropout) comes
    from generators seeded by (seed, s, ...), so a resumed run redraws exactly what it would have."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    if dist.is_initialized():
        model_copy = full_cpu_copy(policy, args)
        optim_state = get_optimizer_state_dict(policy, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        model_copy, optim_state = policy, optimizer.state_dict()
    if rank == 0:
        final = checkpoint_dir(args.out)
        tmp, old = final + ".tmp", final + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        M.save_model(model_copy, tmp)
        if args.lora_rank > 0:
            save_file(M.lora_state_dict(model_copy), os.path.join(tmp, "lora.safetensors"))
        torch.save({"optimizer": optim_state}, os.path.join(tmp, "trainer.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"step": step, "config": vars(args), "metrics": metrics, "first_eval": first_eval}, f, indent=1)
        if os.path.isdir(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def restore_checkpoint(args, policy, optimizer, device):
    """Load weights (or adapters) and optimizer state of `out/checkpoint/`; return its state.json."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    ckpt = checkpoint_dir(args.out)
    for f in ("state.json", "trainer.pt"):
        if not os.path.isfile(os.path.join(ckpt, f)):
            sys.exit(f"error: cannot resume: {os.path.join(ckpt, f)} is missing (the run never wrote a complete checkpoint); start it again without --resume")
    if args.lora_rank > 0:
        weights = {k: v for k, v in load_file(os.path.join(ckpt, "lora.safetensors")).items()}
    else:
        weights = M.load_model(ckpt, device="cpu", dtype=torch.float32).state_dict()
    opts = StateDictOptions(full_state_dict=True, strict=args.lora_rank == 0)
    set_model_state_dict(policy, weights, options=opts)
    optim_state = torch.load(os.path.join(ckpt, "trainer.pt"), map_location="cpu", weights_only=False)["optimizer"]
    if dist.is_initialized():
        set_optimizer_state_dict(policy, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optim_state)
    return json.load(open(os.path.join(ckpt, "state.json")))


# ----------------------------------------------------------------------------------------------
# Logging: one fixed-format line per step and the same numbers as JSON lines.

LOG_FIELDS = [("reward", "reward {:.3f}"), ("reward_std", "std {:.3f}"), ("zero_std", "zero-std {:.2f}"),
              ("loss", "loss {:.3e}"), ("grad_norm", "gnorm {:.3f}"), ("kl", "kl {:.2e}"),
              ("clip_frac", "clip {:.2f}"), ("rollout_s", "rollout {:.2f}s"), ("update_s", "update {:.2f}s"),
              ("tokens_per_s", "{:.0f} tok/s")]


def log_step(args, step, metrics, rank):
    if rank != 0:
        return
    parts = [f"step {step:5d}"] + [fmt.format(metrics[k]) for k, fmt in LOG_FIELDS if k in metrics]
    if "eval" in metrics:
        parts.append(f"eval {metrics['eval']['score']:.3f}")
    print(" | ".join(parts), flush=True)
    with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")


def truncate_metrics(args, last_step):
    """On resume, drop metric lines of steps after the checkpoint (they will be redone)."""
    path = os.path.join(args.out, "metrics.jsonl")
    if os.path.isfile(path):
        lines = [l for l in open(path) if json.loads(l)["step"] <= last_step]
        with open(path, "w") as f:
            f.writelines(lines)


# ----------------------------------------------------------------------------------------------
# One RL round.

def rl_step(step, policy, ref, optimizer, tok, task, train, args, device, rank, world):
    algo, name = ALGOS[args.algo], args.algo
    G = args.group_size
    n_chunks = args.prompts_per_step * G // args.rollout_batch
    prompts_per_chunk = args.rollout_batch // G
    my_chunks = list(range(rank, n_chunks, world))
    mask_id = tok.mask_id
    use_ref = algo.uses_ref and args.beta > 0

    # 1. prompts of this step (the same draw on every rank; chunk c takes its slice)
    rng = random.Random(seed_for(args.seed, "prompts", step))
    picks = [train[rng.randrange(len(train))] for _ in range(args.prompts_per_step)]

    # 2. rollouts and rewards, G completions per prompt, chunk by chunk
    t0 = time.time()
    policy.eval()
    batches = []
    for c in my_chunks:
        examples = picks[c * prompts_per_chunk:(c + 1) * prompts_per_chunk]
        prompt_ids, attn, x0, texts, rewards = rollout(
            policy, tok, task, examples, style=prompt_style(tok), gen_length=args.gen_length,
            block_length=args.block_length, steps=args.diffusion_steps, temperature=args.temperature,
            remasking=args.remasking, max_prompt_len=args.max_prompt_len,
            seed=seed_for(args.seed, "rollout", step, c), device=device, repeat=G)
        # 3. advantages within each group of G
        if algo.advantage == "rloo":
            adv, zero_std = L.rloo_advantages(rewards, G)
        else:
            adv, zero_std = L.group_mean_advantages(rewards, G)
        batches.append(dict(chunk=c, prompt_ids=prompt_ids, attn=attn, x0=x0, rewards=rewards, adv=adv,
                            zero_std=float(zero_std), token_mask=L.eos_completion_mask(x0, tok.eos_id)))
    t_rollout = time.time() - t0

    # 4. old and reference scores, on the exact masks (and dropout) the μ inner passes will use
    t1 = time.time()
    policy.train()
    draws = 1 if algo.score in ("one_pass", "spg") else args.num_mc
    mask_seed = lambda j, b: seed_for(args.seed, "mask", step, j, b["chunk"])
    with torch.no_grad():
        for b in batches:
            b["old"] = [[policy_scores(policy, algo, b, mask_seed(j, b), k, args, mask_id) for k in range(draws)] for j in range(args.mu)]
            b["ref"] = [[None] * draws for _ in range(args.mu)]
            if use_ref:
                with reference_of(policy, ref) as ref_model:
                    b["ref"] = [[policy_scores(ref_model, algo, b, mask_seed(j, b), k, args, mask_id) for k in range(draws)] for j in range(args.mu)]

    # 5. μ optimizer passes: gradients summed over draws, averaged over chunks (and ranks)
    lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup else args.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    params = [p for p in policy.parameters() if p.requires_grad]
    sums, n_terms, grad_norms, skipped = {}, 0, [], 0
    for j in range(args.mu):
        for i, b in enumerate(batches):
            for k in range(draws):
                if dist.is_initialized():  # reduce gradients across ranks once, on the last backward
                    policy.set_requires_gradient_sync(i == len(batches) - 1 and k == draws - 1)
                s = policy_scores(policy, algo, b, mask_seed(j, b), k, args, mask_id)
                loss, metrics = algo_loss(name, s, b["old"][j][k], b["ref"][j][k], b, args)
                (loss / len(batches)).backward()
                for key, v in {"loss": loss.detach(), **metrics}.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
                n_terms += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if math.isfinite(grad_norm):
            optimizer.step()
        else:
            skipped += 1
        optimizer.zero_grad(set_to_none=True)
        grad_norms.append(grad_norm)
    t_update = time.time() - t1

    # 6. metrics, summed over ranks
    rewards = torch.cat([b["rewards"] for b in batches])
    group_std = rewards.view(-1, G).std(dim=1, unbiased=False)
    keys = sorted(sums)
    local = [rewards.sum().item(), group_std.sum().item(), sum(b["zero_std"] for b in batches), len(batches), rewards.numel()]
    total = all_sum(local + [sums[k] for k in keys] + [n_terms], device)
    r_sum, std_sum, zero_sum, n_b, n_r = total[:5]
    out = {"reward": r_sum / n_r, "reward_std": std_sum / (n_r / G), "zero_std": zero_sum / n_b}
    out.update({k: v / total[-1] for k, v in zip(keys, total[5:-1])})
    out["grad_norm"] = sum(grad_norms) / len(grad_norms)
    out["skipped_updates"] = skipped
    out["rollout_s"], out["update_s"] = t_rollout, t_update
    out["tokens_per_s"] = n_r * args.gen_length / max(t_rollout + t_update, 1e-9)
    out["lr"] = lr
    return out


# ----------------------------------------------------------------------------------------------
# Masked-diffusion pre-training of the tiny model (so RL starts from a partly competent base).

def pretrain_step(step, policy, optimizer, tok, task, train, args, device, rank, world):
    """One MDM step: −ELBO/L of reference completions under stratified coupled masks."""
    rng = random.Random(seed_for(args.seed, "pretrain", step))
    picks = [train[rng.randrange(len(train))] for _ in range(args.pretrain_batch)]
    no_answer = [rng.random() < args.pretrain_no_answer for _ in picks][rank::world]
    examples = picks[rank::world]
    style = prompt_style(tok)
    prompt_ids, attn = encode_prompts(tok, task, examples, style, args.max_prompt_len)
    references = ["" if empty else task.reference(ex, style) for ex, empty in zip(examples, no_answer)]
    x0 = encode_completions(tok, references, args.gen_length)  # "" = all EOS
    prompt_ids, attn, x0 = prompt_ids.to(device), attn.to(device), x0.to(device)
    # masks drawn for the whole global batch, so the run does not depend on the number of processes
    mask = L.forward_process(seed_for(args.seed, "pretrain-mask", step), args.pretrain_batch, x0.shape[1], 1, device)[0][rank::world]
    policy.train()
    for group in optimizer.param_groups:  # cosine decay to 10% keeps the end of pre-training stable
        group["lr"] = args.pretrain_lr * (0.55 + 0.45 * math.cos(math.pi * step / args.pretrain_steps))
    loss = -L.denoiser_scores(policy, prompt_ids, x0, mask, mask_id=tok.mask_id, estimator="elbo", attention_mask=attn).mean() / x0.shape[1]
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, n = all_sum([loss.item(), 1], device)
    return {"loss": loss_sum / n, "grad_norm": grad_norm, "skipped_updates": int(not math.isfinite(grad_norm))}


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    rank, world, device, why = setup_distributed(args.dtype)
    log0(f"[setup] {why}; dtype {args.dtype} (--dtype; default bf16 on CUDA, fp32 on CPU)")
    if args.model == "tiny" and args.algo != "pretrain" and not args.resume:
        ensure_tiny_base(args, rank, world, device)
    result = run(args, rank, world, device)
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def tiny_base_run(task):
    """Where RL on `tiny` pre-trains its base on the fly when bases/tiny-TASK is not shipped."""
    return f"runs/tiny-{task}-base"


def ensure_tiny_base(args, rank, world, device):
    """RL on `tiny` starts from a pre-trained base: pre-train it on the fly (resuming a crashed
    pre-training run) when the default base checkpoint is absent or unfinished."""
    base_run = tiny_base_run(args.task)
    if args.init != checkpoint_dir(base_run):
        if not os.path.isfile(os.path.join(args.init, "config.json")):
            sys.exit(f"error: --init {args.init} has no config.json; pass a checkpoint directory written by train.py, or omit --init to pre-train one")
        return
    state = os.path.join(checkpoint_dir(base_run), "state.json")
    done = os.path.isfile(state) and json.load(open(state))["step"] >= json.load(open(state))["config"]["pretrain_steps"]
    if done:
        return
    log0(f"[setup] no finished base checkpoint in {base_run}: pre-training the tiny model first (deterministic, once)")
    argv = ["--resume", base_run] if os.path.isfile(state) else ["--task", args.task, "--algo", "pretrain", "--seed", str(args.seed), "--out", base_run, "--dtype", args.dtype]
    run(parse_args(argv), rank, world, device)


def run(args, rank, world, device):
    """Train (RL or pre-training) with a resolved config; returns the final metrics."""
    check_world(args, world)
    torch.manual_seed(args.seed)
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
    log0("[config] " + json.dumps(vars(args), sort_keys=True))
    task = R.get_task(args.task)
    policy, ref, path = build_models(args, device, world)
    tok = M.load_tokenizer(path)
    train, test = load_examples(task, args)
    params = [p for p in policy.parameters() if p.requires_grad]
    lr = args.pretrain_lr if args.algo == "pretrain" else args.lr
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(args.adam_betas), weight_decay=args.weight_decay)
    start, first_eval = 0, None
    if args.resume:
        state = restore_checkpoint(args, policy, optimizer, device)
        start, first_eval, metrics = state["step"], state["first_eval"], state["metrics"]
        if rank == 0:
            truncate_metrics(args, start)
        log0(f"[resume] from step {start} of {checkpoint_dir(args.out)}")
    total = args.pretrain_steps if args.algo == "pretrain" else args.steps
    step_fn = pretrain_step if args.algo == "pretrain" else lambda *a: rl_step(a[0], a[1], ref, *a[2:])
    eval_every = args.eval_every or total
    if start == 0:
        first_eval = evaluate(policy, tok, task, test, args, device, rank, world)
        log0(f"[eval] step 0: {json.dumps(first_eval)}")
        metrics = {"eval": first_eval}
    bad = 0
    for step in range(start + 1, total + 1):
        torch.manual_seed(seed_for(args.seed, "torch", step, rank))  # dropout etc. reproducible on resume
        metrics = step_fn(step, policy, optimizer, tok, task, train, args, device, rank, world)
        bad = bad + 1 if metrics["skipped_updates"] else 0
        if step % eval_every == 0 or step == total:
            metrics["eval"] = evaluate(policy, tok, task, test, args, device, rank, world)
        log_step(args, step, metrics, rank)
        if bad >= args.max_bad_steps:
            save_checkpoint(args, policy, optimizer, step, metrics, first_eval, rank)
            sys.exit(f"error: {bad} steps in a row had a non-finite loss or gradient; stopping (last good weights saved in {checkpoint_dir(args.out)}). "
                     "Lower --lr or --psi, or check the data.")
        if step % args.save_every == 0 or step == total:
            save_checkpoint(args, policy, optimizer, step, metrics, first_eval, rank)
    if first_eval is not None and "eval" in metrics:
        log0(f"[result] held-out {args.task} score: start {first_eval['score']:.3f} -> end {metrics['eval']['score']:.3f} "
             f"({checkpoint_dir(args.out)})")
    return {"first_eval": first_eval, **metrics}


if __name__ == "__main__":
    main()
