"""GDSD against the ELBO-family baselines on equal budgets, on the tiny model (a benchmark, not a test).

Every algorithm starts from the same pre-trained tiny base, sees the same prompts and the same number
of rollouts per step (same seeds), runs the same number of steps and is evaluated on the same
held-out split. Writes under bench/results/:
    compare-TASK.md    the table (mean ± std over seeds) and the command that produced it
    compare-TASK.json  every run's metrics per step
    compare-TASK.png   held-out score and training reward against step (needs matplotlib)

Run (from the repository root):
    python bench/compare.py --task sudoku --steps 60 --seeds 0 1 2
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as E
import train as T  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="sudoku", help="task (the tiny model knows sudoku and countdown)")
    p.add_argument("--algos", nargs="+", default=["gdsd", "gdsd-tlc", "gdsd-official", "d1", "wd1", "espo"], help="algorithms to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (rollouts, masks, prompt order)")
    p.add_argument("--steps", type=int, default=60, help="RL steps per run (equal rollout budget)")
    p.add_argument("--eval_every", type=int, default=10, help="held-out evaluation every N steps")
    p.add_argument("--runs", default="runs/compare", help="where the training runs are written")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further train.py flags for every run")
    return p.parse_args(argv)


def run_one(args, algo, seed):
    """Train one algorithm for one seed (resuming if a previous invocation was interrupted)."""
    out = os.path.join(args.runs, args.task, f"{algo}-seed{seed}")
    state = os.path.join(T.checkpoint_dir(out), "state.json")
    if os.path.isfile(state) and json.load(open(state))["step"] >= args.steps:
        print(f"[compare] {out}: already finished, reusing it")
    elif os.path.isfile(state):
        T.main(["--resume", out])
    else:
        T.main(["--task", args.task, "--algo", algo, "--seed", str(seed), "--steps", str(args.steps),
                "--eval_every", str(args.eval_every), "--save_every", str(args.eval_every), "--out", out] + args.extra)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    first = json.load(open(state))["first_eval"]
    return {"algo": algo, "seed": seed, "rows": rows, "first_eval": first}


def summarise(run):
    rows = run["rows"]
    evals = [r["eval"]["accuracy"] for r in rows if r.get("eval")]
    last = rows[-5:]
    rollout = statistics.mean(r["rollout_s"] for r in rows)
    update = statistics.mean(r["update_s"] for r in rows)
    return {
        "base": run["first_eval"]["accuracy"], "final": evals[-1], "best": max(evals),
        "reward_end": statistics.mean(r["reward"] for r in last), "steps": rows[-1]["step"],
        "rollout_s": rollout, "update_s": update, "rollout_frac": rollout / (rollout + update),
    }


def mean_std(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def table(args, summaries, completions_per_step):
    cols = [("base", "base"), ("final", "held-out final"), ("best", "held-out best"), ("reward_end", "reward (last 5 steps)"),
            ("rollout_s", "rollout s/step"), ("update_s", "update s/step")]
    lines = ["| algo | steps | " + " | ".join(c[1] for c in cols) + " | completions/s | rollout share |",
             "|---|---|" + "---|" * (len(cols) + 2)]
    for algo in args.algos:
        runs = [s for s in summaries if s["algo"] == algo]
        cells = [str(runs[0]["steps"])]
        for key, _ in cols:
            m, sd = mean_std([r[key] for r in runs])
            cells.append(f"{m:.3f} ± {sd:.3f}" if len(runs) > 1 else f"{m:.3f}")
        per_step = statistics.mean(r["rollout_s"] + r["update_s"] for r in runs)
        cells.append(f"{completions_per_step / per_step:.1f}")
        cells.append(f"{statistics.mean(r['rollout_frac'] for r in runs):.2f}")
        lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(args, runs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[compare] matplotlib is not installed (pip install matplotlib): skipping the plot")
        return False
    fig, (ax_eval, ax_reward) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(args.algos, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for algo in args.algos:
        mine = [run for run in runs if run["algo"] == algo]
        # held-out: mean over seeds, with the seeds' range shaded
        steps = [0] + [r["step"] for r in mine[0]["rows"] if r.get("eval")]
        scores = [[run["first_eval"]["accuracy"]] + [r["eval"]["accuracy"] for r in run["rows"] if r.get("eval")] for run in mine]
        per_step = list(zip(*scores))
        ax_eval.plot(steps, [statistics.mean(v) for v in per_step], marker="o", ms=3, color=colors[algo], label=algo)
        if len(mine) > 1:
            ax_eval.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], color=colors[algo], alpha=0.12)
        # reward: mean over seeds, then a 5-step moving average (one step's 32 prompts are a noisy sample)
        rewards = [statistics.mean(v) for v in zip(*[[r["reward"] for r in run["rows"]] for run in mine])]
        smooth = [statistics.mean(rewards[max(0, i - 4): i + 1]) for i in range(len(rewards))]
        ax_reward.plot(range(1, len(smooth) + 1), smooth, color=colors[algo], label=algo)
    ax_eval.set(xlabel="RL step", ylabel="held-out score (greedy)", title=f"tiny model, {args.task}: held-out (mean over seeds, range shaded)")
    ax_reward.set(xlabel="RL step", ylabel="rollout reward (5-step moving average)", title="training reward")
    ax_eval.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    # the shared base: pre-trained once (deterministically) exactly as `python train.py` does
    T.ensure_tiny_base(T.parse_args(["--task", args.task]), 0, 1, E.setup_distributed()[2])
    runs = [run_one(args, algo, seed) for seed in args.seeds for algo in args.algos]
    summaries = [{"algo": r["algo"], "seed": r["seed"], **summarise(r)} for r in runs]
    cfg = T.parse_args(["--task", args.task] + args.extra)
    completions_per_step = cfg.prompts_per_step * cfg.group_size

    command = "python bench/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [f"# {args.task}: GDSD against the baselines on the tiny model", "",
          f"`{command}` — {len(args.seeds)} seed(s), {args.steps} steps of {completions_per_step} rollouts each, "
          f"held-out = {cfg.n_eval} test examples "
          f"(each seed draws its own from the test grids, hence a base per seed), greedy. Mean ± std over seeds.", "", table(args, summaries, completions_per_step)]
    stem = os.path.join(RESULTS, f"compare-{args.task}")
    if plot(args, runs, stem + ".png"):
        md += ["", f"![held-out score and reward](compare-{args.task}.png)"]
    open(stem + ".md", "w").write("\n".join(md) + "\n")
    json.dump({"command": command, "summaries": summaries, "runs": runs}, open(stem + ".json", "w"), indent=1)
    print("\n".join(md))


if __name__ == "__main__":
    main()
