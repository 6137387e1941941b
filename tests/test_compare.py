"""bench/compare.py: both budgets on two algorithms, the seconds budget measured from the first
algorithm's steps-budget runs and honoured by every run, finished runs reused, other settings refused."""
import importlib.util
import json
import os

import pytest

import eval as E
import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("compare", os.path.join(ROOT, "bench", "compare.py"))
C = importlib.util.module_from_spec(spec)
spec.loader.exec_module(C)

EXTRA = ["--prompts_per_step", "4", "--group_size", "4", "--rollout_batch", "8", "--mu", "1", "--n_eval", "8",
         "--train_size", "200"]


def test_compare_at_equal_steps_and_equal_seconds(tiny_base, tmp_path, monkeypatch):
    res = tmp_path / "results"
    argv = ["--algos", "gdsd", "d1", "--seeds", "0", "--budget", "steps", "seconds", "--steps", "2", "--eval_every", "1",
            "--init", tiny_base, "--name", "t", "--runs", str(tmp_path / "runs"), "--results", str(res), "--extra"] + EXTRA
    C.main(argv)
    by_steps = json.load(open(res / "compare-sudoku-t-steps.json"))
    by_seconds = json.load(open(res / "compare-sudoku-t-seconds.json"))
    assert [(s["algo"], s["steps"]) for s in by_steps["summaries"]] == [("gdsd", 2), ("d1", 2)]
    # the seconds budget is what gdsd spent on its 2 steps, measured in this invocation
    budget = by_seconds["seconds"]
    assert budget == pytest.approx(by_steps["summaries"][0]["seconds"])
    for run in by_seconds["runs"]:
        rows = run["rows"]
        spent = [r["train_s"] for r in rows]
        assert "eval" in rows[-1] and run["rows"][-1]["step"] == len(rows)
        assert T.out_of_time(spent[-1], len(rows), budget) or len(rows) == 8  # stopped by the budget, or at 4 × --steps
        assert not any(T.out_of_time(s, k, budget) for k, s in enumerate(spent[:-1], start=1))  # and not before
    md = open(res / "compare-sudoku-t-seconds.md").read()
    assert "| base (step 0) |" in md and "| d1 |" in md and "forced to answer" in md and "--budget steps seconds" in md
    assert os.path.isfile(res / "compare-sudoku-t-seconds.png") == (importlib.util.find_spec("matplotlib") is not None)

    # a second invocation reuses every finished run
    monkeypatch.setattr(C.T, "main", lambda argv: pytest.fail(f"trained again: {argv}"))
    C.main(argv)
    assert json.load(open(res / "compare-sudoku-t-seconds.json"))["summaries"] == by_seconds["summaries"]
    # ... and refuses to reuse a run made with other settings
    with pytest.raises(E.UserError, match="other settings.*--steps"):
        C.main([a if a != "2" else "3" for a in argv])


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be at least 1"), (["--seconds", "-5"], "--seconds must be positive"),
    (["--seeds", "0", "0"], "must not repeat"), (["--algos", "ppo"], "invalid choice"),
    (["--init", "nowhere"], "has no config.json"),
])
def test_bad_flags_are_clear_errors(flags, message, capsys):
    with pytest.raises(SystemExit):
        C.parse_args(flags)
    assert message in capsys.readouterr().err
