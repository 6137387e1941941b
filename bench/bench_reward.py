"""bench_reward.py — worst-case time of every verifier on 1 MB hostile strings.

Each task's training reward and evaluation accuracy (reward.py) scores a family of 1 MB strings built
to make a naive parser slow: unclosed tags repeated, long digit and whitespace runs, nested braces,
every pattern's prefix repeated. Prints, per verifier, the worst time and the string that caused it.
The code task's verifiers parse the text here and run a program only when the official format holds;
its row times a 1 MB text in that format separately (the sandbox's time limits bound it).

    python bench/bench_reward.py              # 1 MB strings
    python bench/bench_reward.py --mb 0.25    # smaller, faster
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reward as R  # noqa: E402

EOT = "<|eot_id|>"
UNITS = {  # name: (prefix, repeated unit, suffix)
    "unclosed <answer>": ("", "<answer>", ""),
    "closed <answer> pairs": ("", "<answer></answer>", ""),
    "<answer> then fences": ("<answer>", "```", ""),
    "fence then spaces": ("<answer>```", " ", "x"),
    "digits": ("", "1", ""),
    "digits then </answer>": ("", "1", " </answer>"),
    "digit and space": ("<answer>", "1 ", "</answer>"),
    "spaces then </answer>": ("</answer>", " ", ""),
    "1</answer> pairs": ("", "1</answer>", ""),
    "stop tokens": ("<answer>", EOT, ""),
    "\\boxed{ unclosed": ("", "\\boxed{", ""),
    "\\boxed{} pairs": ("", "\\boxed{}", ""),
    "\\boxed{ per line": ("", "\\boxed{x\n", ""),
    "braces after \\boxed": ("\\boxed", "}{", ""),
    "nested braces": ("\\boxed", "{", ""),
    "\\boxed space": ("", "\\boxed 1", ""),
    "\\box{ unclosed": ("<answer>", "\\box{", "</answer>"),
    "The answer is": ("", "The answer is ", ""),
    "####": ("", "#### ", ""),
    "minus and dots": ("<answer>", "-.", "</answer>"),
    "1. repeated": ("<answer>", "1.", "</answer>"),
    "reasoning tags": ("<reasoning>", "</reasoning>\n<answer>\n", ""),
    "answer lines": ("", "\n<answer>\n", ""),
    "open parens": ("<answer>", "(", "3*5+7</answer>"),
    "operators": ("<answer>3", "-", "5*7</answer>"),
    "=, digits": ("<answer>", "1=1", "</answer>"),
    "\\frac and \\sqrt": ("\\boxed{", "\\frac\\sqrt", "}"),
    "slashes": ("\\boxed{", "1/", "}"),
    "units": ("\\boxed{", "\\text{ ", "}"),
    "code fences": ("", "```python\n", ""),
    "non-ASCII letters": ("<answer>", "é", "</answer>"),
    "non-ASCII digits": ("<answer>", "٣x", "</answer>"),
    "digits and words": ("<answer>", "1x", "</answer>"),
}


def hostile(mb):
    n = int(mb * (1 << 20))
    for name, (prefix, unit, suffix) in UNITS.items():
        yield name, prefix + unit * max(1, (n - len(prefix) - len(suffix)) // len(unit)) + suffix


def verifiers():
    examples = {"sudoku": R.get_task("sudoku").examples("test", 1, 0)[0],
                "countdown": R.get_task("countdown").examples("test", 1, 0)[0],
                "gsm8k": {"answer": "72", "value": 72.0}, "gsm8k-xml": {"answer": "72", "value": 72.0},
                "math500": {"answer": "\\frac{1}{2}", "reward_answer": "\\frac{1}{2}"},
                "code": {"test_cases": ["assert f(1) == 2"]}}
    for name, ex in examples.items():
        task = R.get_task(name)
        for style in task.styles:
            yield f"{name} reward ({style})", lambda t, task=task, ex=ex, style=style: task.reward(t, ex, style)
            if name != "code":
                yield f"{name} accuracy ({style})", lambda t, task=task, ex=ex, style=style: task.accuracy(t, ex, style)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=1.0, help="size of each hostile string in MiB")
    p.add_argument("--repeats", type=int, default=3, help="runs per string; the best is reported")
    args = p.parse_args()
    strings = list(hostile(args.mb))
    print(f"{len(strings)} hostile strings of {args.mb:g} MiB each\n")
    print(f"{'verifier':28s} | {'worst ms':>8s} | {'median ms':>9s} | worst string")
    worst_all = 0.0
    for label, score in verifiers():
        times = []
        for name, text in strings:
            best = float("inf")
            for _ in range(args.repeats):  # the best of a few runs: the machine's other load is noise
                t0 = time.perf_counter()
                score(text)
                best = min(best, time.perf_counter() - t0)
            times.append((best, name))
        times.sort()
        worst_all = max(worst_all, times[-1][0])
        print(f"{label:28s} | {1e3 * times[-1][0]:8.1f} | {1e3 * times[len(times) // 2][0]:9.2f} | {times[-1][1]}")
    program = "def f(x):\n    return x + 1\n" + "y = 1\n" * int(args.mb * (1 << 20) / 6)
    t0 = time.perf_counter()
    r = R.get_task("code").reward(f"```python\n{program}```", {"test_cases": ["assert f(1) == 2"]}, "chat")
    print(f"\ncode, a {len(program) / (1 << 20):.1f} MiB program in the official format: reward {r:.2f} in "
          f"{time.perf_counter() - t0:.2f} s (parsed and run in the sandbox, under its time limits)")
    print(f"worst time of any parser: {1e3 * worst_all:.1f} ms")


if __name__ == "__main__":
    main()
