"""eval.py — held-out accuracy of a checkpoint, with the official evaluation parser; and the rollout
code train.py shares (prompts -> sampler -> completion texts -> scores).

Each completion is scored once by `task.grade` (reward.py): the evaluation accuracy, which is what
the published tables report (the official repository's eval parsers; the headline here), and the
training reward beside it. The d1-family protocol, so numbers compare with those tables: greedy
decoding, low-confidence remasking, block 32, steps = gen_length / 2, gen lengths 128 / 256 / 512 for
hub models (the tiny model: its task's compact length, one token per step); from a test file, the
seeded subset of 256 examples those repositories draw (numpy RandomState(42)).

Run:
    python eval.py --task sudoku --model runs/sudoku-tiny-gdsd/checkpoint
    python eval.py --task sudoku --model checkpoints/LLaDA-8B-Instruct --data ../shared/data/sudoku_4x4_test.csv
    torchrun --nproc_per_node=8 eval.py --task countdown --model DIR --data countdown_cd3_test.jsonl

Prints one table (task × gen length) and writes a JSON with the numbers, the config and every
completion. Under torchrun the test set is sharded over ranks (each rank holds the whole model).
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError

import model as M
import reward as R
import sample as S

# Hub checkpoints the short names point at; they must be downloaded to a local directory first.
HUB_NAMES = {
    "llada": ("GSAI-ML/LLaDA-8B-Instruct", "checkpoints/LLaDA-8B-Instruct"),
    "dream": ("Dream-org/Dream-v0-Instruct-7B", "checkpoints/Dream-v0-Instruct-7B"),
}
# Canvas lengths of the tiny model's compact answers (gen_length, diffusion steps).
TINY_TASK_LENGTHS = {"sudoku": (16, 16), "countdown": (16, 16)}
OFFICIAL_SUBSET_SEED = 42  # the d1-family eval scripts seed numpy with 42, then draw the test subset


# ----------------------------------------------------------------------------------------------
# User errors: a flag, a file or the data the user can fix is one line and exit status 2; anything
# else is a bug and keeps its traceback.

class UserError(Exception):
    """A problem with the command line, a file or the data, stated with what to do about it."""


def cli(main, argv=None):
    """Run a script's `main(argv)`, printing a UserError as one `error: ...` line (exit status 2)."""
    try:
        return main(argv)
    except UserError as e:
        print("error: " + " ".join(str(e).split("\n")), file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@contextlib.contextmanager
def reading(what, fix="", also=()):
    """The errors of reading a user's file (absent, truncated, damaged, not UTF-8, not JSON, not
    safetensors; `also`: further exception types of the reader) become a UserError naming it."""
    try:
        yield
    except (OSError, ValueError, EOFError, SafetensorError) + tuple(also) as e:
        reason = str(e).strip().split("\n")[0] or type(e).__name__
        raise UserError(f"cannot read {what}: {reason}" + (f"; {fix}" if fix else "")) from e


# ----------------------------------------------------------------------------------------------
# Processes and models: one code path for 1 and N processes (also train.py's).

def setup_distributed(dtype="fp32"):
    """Initialise torch.distributed from torchrun's environment (or run single-process).

    train.py's bf16 mixed precision is FSDP2's MixedPrecisionPolicy, so a single bf16 process runs
    FSDP2 too, in a process group of one: 1 and N processes then compute the same numbers."""
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


def resolve_model_path(name):
    if name == "tiny" or os.path.isdir(name):
        return name
    if name in HUB_NAMES:
        repo, local = HUB_NAMES[name]
        if os.path.isdir(local):
            return local
        raise UserError(f"--model {name} expects the hub checkpoint {repo} in ./{local} (no weights are downloaded "
                        f"at run time). Fetch it once, e.g. `huggingface-cli download {repo} --local-dir {local}`, "
                        "or pass --model DIR.")
    raise UserError(f"--model {name!r} is neither 'tiny', one of {sorted(HUB_NAMES)}, nor an existing directory")


# ----------------------------------------------------------------------------------------------
# Rollouts: prompts to token ids, the sampler, completions to the two texts the scorers read.

def prompt_style(tok):
    """The tiny character model reads compact prompts; hub models read the chat instructions."""
    return "tiny" if isinstance(tok, M.CharTokenizer) else "chat"


def encode_prompts(tok, task, examples, style, max_len):
    """Left-padded prompt ids (N, P) and their attention mask (N, P)."""
    rows = [tok.encode(tok.format_prompt(task.prompt(ex, style))) for ex in examples]
    too_long = [i for i, r in enumerate(rows) if len(r) > max_len]
    if too_long:
        longest = max(len(rows[i]) for i in too_long)
        raise ValueError(f"{len(too_long)} prompt(s) exceed --max_prompt_len {max_len} tokens (longest {longest}); "
                         "raise --max_prompt_len")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), tok.pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), P), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(r):] = True
    return ids, attn


def completion_texts(tok, x0):
    """(text, raw) per completion, as the official code decodes them: the training reward reads the
    whole canvas with special tokens dropped, the evaluation parser the whole canvas with them (LLaDA's
    <|eot_id|>, <|endoftext|> among them). The tiny model's answer is its canvas up to the first EOS."""
    if isinstance(tok, M.CharTokenizer):
        texts = []
        for row in x0.tolist():
            row = row[: row.index(tok.eos_id)] if tok.eos_id in row else row
            texts.append(tok.decode(row))
        return texts, texts
    ids = x0.tolist()
    return tok.hf.batch_decode(ids, skip_special_tokens=True), tok.hf.batch_decode(ids, skip_special_tokens=False)


@torch.no_grad()
def rollout(model, tok, task, examples, *, style, gen_length, block_length, steps, temperature,
            remasking, max_prompt_len, seed, device, repeat=1, suppress_eos=False, cache="none", threshold=None,
            top_p=None):
    """`repeat` completions per example from the sampler (`suppress_eos`: EOS is never sampled, so
    every completion fills the whole canvas; `cache`, `threshold`: sample.generate's faster
    approximations of the exact sampler; `top_p`: Dream's nucleus filter).

    Returns prompt ids, attention mask, completion ids (N·repeat, L), and the two texts of each
    completion (`completion_texts`)."""
    examples = [ex for ex in examples for _ in range(repeat)]
    prompt_ids, attn = encode_prompts(tok, task, examples, style, max_prompt_len)
    prompt_ids, attn = prompt_ids.to(device), attn.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    canvas = S.generate(model, prompt_ids, gen_length=gen_length, steps=steps, block_length=block_length,
                        temperature=temperature, remasking=remasking, mask_id=tok.mask_id,
                        attention_mask=attn, generator=gen, eos_id=tok.eos_id if suppress_eos else None,
                        suppress_eos=suppress_eos, cache=cache, threshold=threshold, top_p=top_p)
    x0 = canvas[:, prompt_ids.shape[1]:]
    texts, raws = completion_texts(tok, x0.cpu())
    return prompt_ids, attn, x0, texts, raws


def eval_steps(gen_length, style):
    """d1 protocol: steps = gen_length / 2 for hub models; the tiny model reveals one token per step."""
    return gen_length if style == "tiny" else gen_length // 2


def evaluate(model, tok, task, examples, *, gen_length, block_length, batch_size, max_prompt_len, device,
             remasking="low_confidence", rank=0, world=1, suppress_eos=False, records=None, progress=None,
             cache="none", threshold=None):
    """Greedy held-out scores, examples sharded over ranks (`suppress_eos`: the model must write a
    full-length answer).

    Returns, over all ranks: "accuracy" (the official eval parser's correct / total, summed before
    dividing: cell accuracy for sudoku), "reward" (the training reward's mean), "answered" (the
    share the parser found an answer in) and the mean of every other number `task.grade` gives.
    Appends one record per example of this rank to `records` when a list is given."""
    style = prompt_style(tok)
    mine = list(range(rank, len(examples), world))
    n_batches = math.ceil(math.ceil(len(examples) / world) / batch_size)  # equal on all ranks
    totals, n = {}, 0
    model.eval()
    for i in range(0, n_batches * batch_size, batch_size):
        idx = mine[i: i + batch_size]
        # a rank out of examples still joins the sharded forward passes, with a discarded dummy
        batch = [examples[j] for j in idx] if idx else examples[:1]
        *_, texts, raws = rollout(model, tok, task, batch, style=style, gen_length=gen_length,
                                  block_length=block_length, steps=eval_steps(gen_length, style), temperature=0.0,
                                  remasking=remasking, max_prompt_len=max_prompt_len, seed=0, device=device,
                                  suppress_eos=suppress_eos, cache=cache, threshold=threshold)
        if progress and rank == 0:
            print(f"[eval] {progress}: batch {i // batch_size + 1}/{n_batches}", flush=True)
        for j, text, raw, ex in zip(idx, texts, raws, batch):  # (empty for a dummy batch)
            grade = {k: float(v) for k, v in task.grade(text, raw, ex, style).items()}
            for k, v in grade.items():
                totals[k] = totals.get(k, 0.0) + v
            n += 1
            if records is not None:
                records.append({"index": j, "completion": raw, **grade})
    model.train()
    keys = sorted(totals)
    sums = dict(zip(keys + ["n"], all_sum([totals[k] for k in keys] + [n], device)))
    out = {k: sums[k] / max(sums["n"], 1) for k in keys if k not in ("correct", "total")}
    out["accuracy"] = sums.get("correct", 0.0) / max(sums.get("total", 0.0), 1)
    return out


def select_examples(examples, n, seeded):
    """The first `n` examples, or (`seeded`, for a test file) the subset the d1-family eval scripts
    draw: numpy's legacy RandomState(42).choice(len, n, replace=False), in that order."""
    if n >= len(examples):
        return list(examples)
    if not seeded:
        return examples[:n]
    return [examples[i] for i in np.random.RandomState(OFFICIAL_SUBSET_SEED).choice(len(examples), n, replace=False)]


# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="sudoku", help=f"task name, one of {sorted(R.TASKS)}")
    p.add_argument("--model", default="tiny",
                   help="'tiny', 'llada', 'dream', or a checkpoint directory in the hub layout")
    p.add_argument("--data", default=None,
                   help="test file in the task's official format (default: the generator's test split)")
    p.add_argument("--n_eval", type=int, default=256,
                   help="number of test examples (from a file: the seeded subset, see --first)")
    p.add_argument("--first", action="store_true",
                   help="take the first N examples of --data instead of the d1-family seeded subset")
    p.add_argument("--gen_lengths", type=int, nargs="+", default=None,
                   help="completion lengths (default: 128 256 512; tiny: the task's length)")
    p.add_argument("--block_length", type=int, default=32, help="block length (capped at the gen length)")
    p.add_argument("--batch_size", type=int, default=64, help="prompts decoded together per rank")
    p.add_argument("--max_prompt_len", type=int, default=400, help="longer prompts are an error")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated test split")
    p.add_argument("--cache", default="none", choices=["none", "prefix", "dual"],
                   help="KV cache of the sampler: none = the exact sampler; prefix / dual = faster approximations "
                        "(Fast-dLLM)")
    p.add_argument("--threshold", type=float, default=None,
                   help="also reveal every candidate whose confidence reaches this probability (an approximation; "
                        "default off)")
    p.add_argument("--suppress_eos", action="store_true",
                   help="never sample EOS (LLaDA's logits_eos_inf): scores the model forced to give a full-length "
                        "answer")
    p.add_argument("--out", default=None,
                   help="JSON file for numbers, config and completions (default: next to the checkpoint, or "
                        "eval-TASK.json)")
    args = p.parse_args(argv)
    if args.task not in R.TASKS:
        p.error(f"unknown task {args.task!r}; known tasks: {sorted(R.TASKS)}")
    for flag in ("n_eval", "block_length", "batch_size", "max_prompt_len"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.threshold is not None and not 0 < args.threshold <= 1:
        p.error(f"--threshold must be a probability in (0, 1], got {args.threshold}")
    if args.gen_lengths and min(args.gen_lengths) < 1:
        p.error(f"--gen_lengths must be positive, got {args.gen_lengths}")
    return args


def main(argv=None):
    args = parse_args(argv)
    rank, world, device, why = setup_distributed()
    log0(f"[setup] {why}")
    task = R.get_task(args.task)
    path = resolve_model_path(args.model)
    model = M.load_model(path, device=device, dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
    tok = M.load_tokenizer(path)
    style = prompt_style(tok)
    if args.data:
        examples = select_examples(task.load(args.data), args.n_eval, seeded=not args.first)
    else:
        examples = task.examples("test", args.n_eval, args.seed)
    lengths = args.gen_lengths or ([TINY_TASK_LENGTHS[args.task][0]] if style == "tiny" else [128, 256, 512])

    results = {}
    for gen_length in lengths:
        t0 = time.time()
        records = []
        summary = evaluate(model, tok, task, examples, gen_length=gen_length,
                           block_length=min(args.block_length, gen_length),
                           batch_size=args.batch_size, max_prompt_len=args.max_prompt_len, device=device, rank=rank,
                           world=world, suppress_eos=args.suppress_eos, records=records, progress=f"gen {gen_length}",
                           cache=args.cache, threshold=args.threshold)
        if dist.is_initialized():  # collect every rank's completions on rank 0
            parts = [None] * world if rank == 0 else None
            dist.gather_object(records, parts, dst=0)
            records = [r for part in parts for r in part] if rank == 0 else []
        records.sort(key=lambda r: r["index"])
        results[gen_length] = {"metrics": summary, "seconds": time.time() - t0, "completions": records}

    if rank == 0:
        print_table(args.task, results)
        name = f"eval-{args.task}.json"
        out = args.out or (os.path.join(path, name) if os.path.isdir(path) else name)
        with open(out, "w") as f:
            json.dump({"config": vars(args), "n_examples": len(examples), "results": results}, f, indent=1)
        print(f"[eval] wrote {out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


def print_table(task, results):
    first = ["accuracy", "reward", "answered"]
    keys = first + sorted({k for r in results.values() for k in r["metrics"]} - set(first))
    print(f"\n{task}: " + " | ".join(["gen len"] + keys + ["seconds"]))
    for gen_length, r in results.items():
        cells = [f"{gen_length:7d}"] + [f"{r['metrics'][k]:.4f}" for k in keys] + [f"{r['seconds']:.1f}"]
        print(f"{task}: " + " | ".join(cells))


if __name__ == "__main__":
    cli(main)
