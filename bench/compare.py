"""GDSD against the baselines (d1, wd1, ESPO, SPG) on the tiny model, at equal steps or equal seconds
(a benchmark, not a test).

Every algorithm starts from the same pre-trained tiny base, sees the same prompts and rollout seeds at a
given step, and is scored on the same held-out split, greedily as it answers and forced to answer (EOS
never sampled: `eval.py --suppress_eos`), so that learning to answer and answering better show apart.
Two budgets:
    steps    every algorithm takes --steps RL steps;
    seconds  every algorithm trains until it has spent the same wall-clock seconds in rollouts and
             updates (train.py --time_budget; evaluations and checkpoints not counted): --seconds, by
             default the mean time the first algorithm took for --steps steps, measured in this
             invocation's steps-budget runs. An algorithm with cheaper updates takes more steps.
Writes under bench/results/, for each budget:
    compare-TASK-NAME-BUDGET.md    the table (mean ± half the range over seeds) and the command
    compare-TASK-NAME-BUDGET.json  every run's metrics per step
    compare-TASK-NAME-BUDGET.png   held-out scores and training reward (needs matplotlib)

Run (from the repository root; NAME is `demo` for the task's shipped base):
    python bench/compare.py --task sudoku --budget steps seconds --steps 20 --seeds 0 1
    python train.py --task sudoku --algo pretrain --pretrain_steps 150 --pretrain_no_answer 0 --out runs/tiny-sudoku-answering
    python bench/compare.py --task sudoku --budget steps seconds --steps 20 --seeds 0 1 \\
        --init runs/tiny-sudoku-answering/checkpoint --name answering
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval as E  # noqa: E402
import train as T  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ALGOS = ["gdsd", "gdsd-tlc", "gdsd-official", "d1", "wd1", "espo", "spg"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="sudoku", help="task (the tiny model knows sudoku and countdown)")
    p.add_argument("--algos", nargs="+", default=ALGOS, choices=sorted(T.ALGOS), metavar="ALGO",
                   help="algorithms to compare (the first one sets the default --seconds)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (rollouts, masks, prompt order, held-out draw)")
    p.add_argument("--budget", nargs="+", default=["steps"], choices=["steps", "seconds"],
                   help="equal RL steps, equal seconds of rollouts + updates, or both (one table each)")
    p.add_argument("--steps", type=int, default=20, help="RL steps per run of the steps budget")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds budget per run (default: the mean time the first algorithm took for --steps steps)")
    p.add_argument("--max_steps", type=int, default=None, help="seconds budget: a run stops here at the latest (default: 4 × --steps)")
    p.add_argument("--eval_every", type=int, default=5, help="held-out evaluation every N steps (and at the end)")
    p.add_argument("--init", default=None, help="base checkpoint every run starts from (default: the task's shipped tiny base)")
    p.add_argument("--name", default=None, help="the base's name in file names (default: demo, or the --init run's directory name)")
    p.add_argument("--runs", default="runs/compare", help="where the training runs are written (finished ones are reused)")
    p.add_argument("--results", default=RESULTS, help="where the tables, JSON and plots are written")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further train.py flags for every run (last on the line)")
    args = p.parse_args(argv)
    for flag in ("steps", "eval_every"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.seconds is not None and args.seconds <= 0:
        p.error(f"--seconds must be positive, got {args.seconds}")
    if len(set(args.seeds)) < len(args.seeds) or len(set(args.algos)) < len(args.algos):
        p.error("--seeds and --algos must not repeat a value")
    if args.init is not None and not os.path.isfile(os.path.join(args.init, "config.json")):
        p.error(f"--init {args.init} has no config.json; pass a checkpoint directory written by train.py")
    args.max_steps = args.max_steps or 4 * args.steps
    args.name = args.name or ("demo" if args.init is None else os.path.basename(os.path.dirname(os.path.abspath(args.init))))
    return args


# ----------------------------------------------------------------------------------------------
# Runs: one train.py run per (budget, algorithm, seed), reused when an earlier invocation finished it.

def train_flags(args, algo, seed, budget, seconds):
    out = os.path.join(args.runs, f"{args.task}-{args.name}", budget, f"{algo}-seed{seed}")
    flags = ["--task", args.task, "--algo", algo, "--seed", str(seed), "--eval_every", str(args.eval_every),
             "--save_every", str(args.eval_every), "--out", out]
    flags += ["--init", args.init] if args.init else []
    if budget == "steps":
        flags += ["--steps", str(args.steps)]
    else:
        flags += ["--steps", str(args.max_steps), "--time_budget", f"{seconds:.3f}"]
    return out, flags + args.extra


def finished(state):
    """Whether a run's checkpoint is its last: all its steps, or its seconds budget spent."""
    cfg = state["config"]
    return state["step"] >= cfg["steps"] or T.out_of_time(state["metrics"].get("train_s", 0.0), state["step"], cfg.get("time_budget"))


def run_one(args, algo, seed, budget, seconds=None):
    """Train one algorithm for one seed under one budget (continuing or reusing an earlier invocation's
    run of the same configuration); returns its metrics rows and base evaluation."""
    out, flags = train_flags(args, algo, seed, budget, seconds)
    ckpt = T.newest_checkpoint(out) if os.path.isdir(out) else None
    if ckpt is not None:
        state = T.read_state(ckpt)
        wanted = json.loads(json.dumps(vars(T.parse_args(flags))))  # (tuples as the saved JSON lists)
        differ = [k for k, v in wanted.items() if k not in ("resume", "overwrite", "out") and state["config"].get(k) != v]
        if differ:
            raise E.UserError(f"{out} holds a run made with other settings ({', '.join('--' + k for k in differ)}); "
                              "delete it or pass another --runs")
        if finished(state):
            print(f"[compare] {out}: finished, reusing it", flush=True)
        else:
            T.main(["--resume", out])
    else:
        T.main(flags + ["--overwrite"])  # (a run killed before its first checkpoint left only metrics)
    state = T.read_state(T.checkpoint_dir(out))
    rows = [json.loads(line) for _, line in T.metric_lines(os.path.join(out, "metrics.jsonl"))]
    return {"algo": algo, "seed": seed, "budget": budget, "out": out, "rows": rows, "first_eval": state["first_eval"]}


# ----------------------------------------------------------------------------------------------
# Summaries, the table and the plot.

def summarise(run):
    rows, base = run["rows"], run["first_eval"]
    final = [r for r in rows if r.get("eval")][-1]["eval"]
    return {
        "base": base["accuracy"], "base_forced": base["forced_accuracy"], "base_answered": base["answered"],
        "final": final["accuracy"], "final_forced": final["forced_accuracy"], "final_answered": final["answered"],
        "best": max(r["eval"]["accuracy"] for r in rows if r.get("eval")),
        "reward_end": statistics.mean(r["reward"] for r in rows[-5:]),
        "steps": rows[-1]["step"], "seconds": rows[-1]["train_s"],
        "rollout_s": statistics.mean(r["rollout_s"] for r in rows), "update_s": statistics.mean(r["update_s"] for r in rows),
    }


def mean_spread(values, digits=3):
    """`mean ± half the range`: with 2 seeds each seed lies at one end of it."""
    m, half = statistics.mean(values), (max(values) - min(values)) / 2
    return f"{m:.{digits}f}" if half == 0 else f"{m:.{digits}f} ± {half:.{digits}f}"


COLUMNS = [("steps", "steps", 1), ("seconds", "seconds", 1), ("final", "held-out", 3), ("final_forced", "forced to answer", 3),
           ("final_answered", "answered", 2), ("best", "held-out best", 3), ("reward_end", "reward (last 5 steps)", 3),
           ("rollout_s", "rollout s/step", 2), ("update_s", "update s/step", 2)]


def table(algos, summaries):
    lines = ["| | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    base = {"final": "base", "final_forced": "base_forced", "final_answered": "base_answered"}
    cells = [mean_spread([s[base[key]] for s in summaries], d) if key in base else "" for key, _, d in COLUMNS]
    lines.append("| base (step 0) | " + " | ".join(cells) + " |")
    for algo in algos:
        mine = [s for s in summaries if s["algo"] == algo]
        lines.append(f"| {algo} | " + " | ".join(mean_spread([s[key] for s in mine], d) for key, _, d in COLUMNS) + " |")
    return "\n".join(lines)


def eval_points(run, x_key):
    """(x, accuracy, forced accuracy) of every held-out evaluation of a run, the base's at x = 0."""
    base = run["first_eval"]
    points = [(0.0, base["accuracy"], base["forced_accuracy"])]
    for r in run["rows"]:
        if r.get("eval"):
            points.append((r["step"] if x_key == "step" else r["train_s"], r["eval"]["accuracy"], r["eval"]["forced_accuracy"]))
    return points


def plot(algos, runs, budget, title, path):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("[compare] matplotlib is not installed (pip install matplotlib): no plot", flush=True)
        return False
    x_key, x_label = ("step", "RL step") if budget == "steps" else ("train_s", "seconds of rollouts + updates")
    fig = Figure(figsize=(16, 4.5))
    ax_eval, ax_forced, ax_reward = fig.subplots(1, 3)
    colors = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    for i, algo in enumerate(algos):
        # every seed its own line (under the seconds budget seeds take different steps), one colour per algorithm
        for j, run in enumerate(r for r in runs if r["algo"] == algo):
            x, acc, forced = zip(*eval_points(run, x_key))
            label = algo if j == 0 else None
            ax_eval.plot(x, acc, styles[j % 4], marker="o", ms=2.5, color=colors[i % 10], label=label)
            ax_forced.plot(x, forced, styles[j % 4], marker="o", ms=2.5, color=colors[i % 10], label=label)
            # reward: a 5-step moving average (one step's prompts are a noisy sample)
            rewards = [r["reward"] for r in run["rows"]]
            smooth = [statistics.mean(rewards[max(0, k - 4): k + 1]) for k in range(len(rewards))]
            ax_reward.plot([r[x_key] for r in run["rows"]], smooth, styles[j % 4], marker=".", ms=2, color=colors[i % 10], label=label)
    ax_eval.set(xlabel=x_label, ylabel="held-out accuracy (greedy)", title="held-out, as it answers")
    ax_forced.set(xlabel=x_label, ylabel="held-out accuracy, EOS never sampled", title="held-out, forced to answer")
    ax_reward.set(xlabel=x_label, ylabel="rollout reward (5-step moving average)", title="training reward")
    for ax in (ax_eval, ax_forced, ax_reward):
        ax.grid(alpha=0.3)
    ax_eval.legend(fontsize=8)
    fig.suptitle(title + " (one line per seed: solid, dashed, ...)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def report(args, budget, runs, seconds, command):
    """Write compare-TASK-NAME-BUDGET.{md,json,png}; returns the markdown."""
    summaries = [{"algo": r["algo"], "seed": r["seed"], **summarise(r)} for r in runs]
    cfg = T.parse_args(["--task", args.task] + (["--init", args.init] if args.init else []) + args.extra)
    per_step = cfg.prompts_per_step * cfg.group_size
    what = (f"{args.steps} steps" if budget == "steps" else
            f"{seconds:.0f} s of rollouts + updates each (evaluations not counted; the mean time {args.algos[0]} took "
            f"for {args.steps} steps, unless --seconds), at most {args.max_steps} steps")
    stem = f"compare-{args.task}-{args.name}-{budget}"
    md = [f"# {args.task}, from the {args.name} base ({os.path.relpath(cfg.init)}): equal {budget}", "",
          f"`{command}`", "",
          f"{len(args.seeds)} seed(s) ({' '.join(map(str, args.seeds))}), {what}; {per_step} rollouts per step "
          f"({cfg.prompts_per_step} prompts × G = {cfg.group_size}); held-out = {cfg.n_eval} test examples, greedy, "
          "drawn per seed (hence a base per seed); \"forced to answer\" = the same with EOS never sampled, "
          "\"answered\" = the share the parser found an answer in. Final evaluation; mean ± half the range over seeds "
          "(every seed lies within it).", "", table(args.algos, summaries)]
    if plot(args.algos, runs, budget, f"tiny model, {args.task}, {args.name} base, equal {budget}", os.path.join(args.results, stem + ".png")):
        md += ["", f"![held-out scores and training reward]({stem}.png)"]
    with open(os.path.join(args.results, stem + ".md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(args.results, stem + ".json"), "w") as f:
        json.dump({"command": command, "budget": budget, "seconds": seconds, "summaries": summaries, "runs": runs}, f, indent=1)
    return "\n".join(md)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.results, exist_ok=True)
    command = "python bench/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.init is None:  # the shared base: pre-trained once (deterministically) exactly as `python train.py` does
        T.ensure_tiny_base(T.parse_args(["--task", args.task]), 0, 1, E.setup_distributed()[2])
    seconds = args.seconds
    if "seconds" in args.budget and seconds is None:  # measured here: the first algorithm's time for --steps steps
        first = [run_one(args, args.algos[0], seed, "steps") for seed in args.seeds]
        seconds = statistics.mean(r["rows"][-1]["train_s"] for r in first)
        print(f"[compare] seconds budget: {seconds:.1f} s, the mean time {args.algos[0]} took for {args.steps} steps", flush=True)
    for budget in args.budget:
        runs = [run_one(args, algo, seed, budget, seconds) for seed in args.seeds for algo in args.algos]
        print(report(args, budget, runs, seconds, command), flush=True)


if __name__ == "__main__":
    E.cli(main)
