"""eval.py — held-out accuracy of a checkpoint, scored by the same verifier training uses.

The d1-family protocol, so numbers compare with published tables: greedy decoding,
low-confidence remasking, block 32, steps = gen_length / 2, gen lengths 128 / 256 / 512 for hub
models (the tiny model: its task's compact length, one token per step).

Run:
    python eval.py --task sudoku --model runs/sudoku-tiny-gdsd/checkpoint
    python eval.py --task sudoku --model checkpoints/LLaDA-8B-Instruct --data ../shared/data/sudoku_4x4_test.csv
    torchrun --nproc_per_node=8 eval.py --task countdown --model DIR --data countdown_cd3_test.jsonl

Prints one table (task × gen length) and writes a JSON with the numbers, the config and every
completion. Under torchrun the test set is sharded over ranks (each rank holds the whole model).
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist

import model as M
import reward as R
import train as T


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="sudoku", help=f"task name, one of {sorted(R.TASKS)}")
    p.add_argument("--model", default="tiny", help="'tiny', 'llada', 'dream', or a checkpoint directory in the hub layout")
    p.add_argument("--data", default=None, help="test file in the task's official format (default: the generator's test split)")
    p.add_argument("--n_eval", type=int, default=256, help="number of test examples (the first N of the file or split)")
    p.add_argument("--gen_lengths", type=int, nargs="+", default=None, help="completion lengths (default: 128 256 512; tiny: the task's length)")
    p.add_argument("--block_length", type=int, default=32, help="block length (capped at the gen length)")
    p.add_argument("--batch_size", type=int, default=64, help="prompts decoded together per rank")
    p.add_argument("--max_prompt_len", type=int, default=400, help="longer prompts are an error")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated test split")
    p.add_argument("--suppress_eos", action="store_true", help="never sample EOS (LLaDA's logits_eos_inf): scores the model forced to give a full-length answer")
    p.add_argument("--out", default=None, help="JSON file for numbers, config and completions (default: next to the checkpoint, or eval-TASK.json)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device, why = T.setup_distributed()
    T.log0(f"[setup] {why}")
    if args.task not in R.TASKS:
        raise SystemExit(f"error: unknown task {args.task!r}; known tasks: {sorted(R.TASKS)}")
    task = R.get_task(args.task)
    path = T.resolve_model_path(args.model)
    model = M.load_model(path, device=device, dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
    tok = M.load_tokenizer(path)
    style = T.prompt_style(tok)
    examples = (task.load(args.data) if args.data else task.examples("test", args.n_eval, args.seed))[: args.n_eval]
    lengths = args.gen_lengths or ([T.TINY_TASK_LENGTHS[args.task][0]] if style == "tiny" else [128, 256, 512])

    results = {}
    for gen_length in lengths:
        t0 = time.time()
        cfg = argparse.Namespace(eval_gen_length=gen_length, eval_block_length=min(args.block_length, gen_length),
                                 rollout_batch=args.batch_size, remasking="low_confidence", max_prompt_len=args.max_prompt_len)
        records = []
        summary = T.evaluate(model, tok, task, examples, cfg, device, rank, world, records=records, progress=f"gen {gen_length}",
                             suppress_eos=args.suppress_eos)
        if dist.is_initialized():  # collect every rank's completions on rank 0
            parts = [None] * world if rank == 0 else None
            dist.gather_object(records, parts, dst=0)
            records = [r for part in parts for r in part] if rank == 0 else []
        records.sort(key=lambda r: r["index"])
        results[gen_length] = {"metrics": summary, "seconds": time.time() - t0, "completions": records}

    if rank == 0:
        print_table(args.task, results)
        out = args.out or (os.path.join(path, f"eval-{args.task}.json") if os.path.isdir(path) else f"eval-{args.task}.json")
        with open(out, "w") as f:
            json.dump({"config": vars(args), "n_examples": len(examples), "results": results}, f, indent=1)
        print(f"[eval] wrote {out}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


def print_table(task, results):
    keys = sorted({k for r in results.values() for k in r["metrics"]})
    print(f"\n{task}: " + " | ".join(["gen len"] + keys + ["seconds"]))
    for gen_length, r in results.items():
        print(f"{task}: " + " | ".join([f"{gen_length:7d}"] + [f"{r['metrics'][k]:.4f}" for k in keys] + [f"{r['seconds']:.1f}"]))


if __name__ == "__main__":
    main()
