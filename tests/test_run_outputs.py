"""What a run reports beside its checkpoint: the held-out score forced to answer, RUN/curves.png, the
W&B log, and the stop of --time_budget (the rule bench/compare.py's equal-seconds budget relies on)."""
import json
import os
import sys
import types

import pytest

import eval as E
import train as T
from conftest import read_metrics

# A small RL round on the shared tiny base: 4 prompts × G=4 completions, μ=1, 8 held-out puzzles.
SMALL = ["--task", "sudoku", "--prompts_per_step", "4", "--group_size", "4", "--rollout_batch", "8", "--mu", "1",
         "--n_eval", "8", "--train_size", "200"]


def test_train_logs_the_forced_answer_score_that_eval_suppress_eos_gives(tiny_base, tmp_path):
    out = str(tmp_path / "run")
    T.main(SMALL + ["--init", tiny_base, "--steps", "1", "--out", out])
    logged = read_metrics(out)[-1]["eval"]
    forced = {k[len("forced_"):]: v for k, v in logged.items() if k.startswith("forced_")}
    assert set(forced) == {k for k in logged if not k.startswith("forced_")}  # every number, twice
    ckpt = T.checkpoint_dir(out)
    for flags, expected in (([], {k: v for k, v in logged.items() if not k.startswith("forced_")}), (["--suppress_eos"], forced)):
        (r,) = E.main(["--task", "sudoku", "--model", ckpt, "--n_eval", "8", "--out", str(tmp_path / "e.json")] + flags).values()
        assert r["metrics"] == pytest.approx(expected, abs=1e-6)
    assert forced["answered"] == 1.0  # a full-length grid is always an answer


def test_eval_forced_0_skips_the_second_evaluation(tiny_base, tmp_path):
    out = str(tmp_path / "run")
    T.main(SMALL + ["--init", tiny_base, "--steps", "1", "--out", out, "--eval_forced", "0"])
    assert not any(k.startswith("forced_") for k in read_metrics(out)[-1]["eval"])


def test_a_run_writes_its_curves_at_each_evaluation(tiny_base, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "run")
    plotted = []
    plot = T.plot_curves
    monkeypatch.setattr(T, "plot_curves", lambda o, first: plotted.append(len(read_metrics(o))) or plot(o, first))
    T.main(SMALL + ["--init", tiny_base, "--steps", "3", "--eval_every", "2", "--beta", "0.01", "--out", out])
    assert plotted == [2, 3]  # after the rows of steps 2 and 3 (the evaluations) were written
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not os.path.exists(os.path.join(out, "curves.png.tmp"))


def test_without_matplotlib_a_run_says_once_how_to_get_the_plot(tiny_base, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = str(tmp_path / "run")
    T.main(SMALL + ["--init", tiny_base, "--steps", "2", "--eval_every", "1", "--out", out])
    assert capsys.readouterr().out.count("pip install matplotlib") == 1
    assert not os.path.exists(os.path.join(out, "curves.png")) and len(read_metrics(out)) == 2


class FakeWandb(types.ModuleType):
    """Records what train.py hands to wandb.init / run.log / run.finish."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self
        return types.SimpleNamespace(log=lambda d, step: fake.logged.append((step, d)),
                                     finish=lambda: setattr(fake, "finished", fake.finished + 1))


def test_wandb_gets_every_logged_metric_and_a_resumed_run_continues_the_same_wandb_run(tiny_base, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = str(tmp_path / "run")
    T.main(SMALL + ["--init", tiny_base, "--steps", "2", "--eval_every", "2", "--save_every", "1", "--out", out,
                    "--wandb", "gdsd-tests"])
    (init,) = fake.inits
    assert init["project"] == "gdsd-tests" and init["config"]["algo"] == "gdsd" and init["resume"] == "allow"
    rows = read_metrics(out)
    assert [step for step, _ in fake.logged] == [0, 1, 2] and fake.finished == 1
    assert fake.logged[0][1] == {f"eval/{k}": v for k, v in json.load(open(os.path.join(out, "checkpoint", "state.json")))["first_eval"].items()}
    for row, (step, logged) in zip(rows, fake.logged[1:]):
        assert step == row.pop("step") and logged == T.flat_metrics(row)
        assert logged["loss"] == row["loss"] and ("eval/forced_accuracy" in logged) == ("eval" in row)
    T.main(["--resume", out, "--steps", "3"])
    assert fake.inits[1]["id"] == init["id"]  # the same W&B run, continued
    assert [step for step, _ in fake.logged[3:]] == [3]


def test_wandb_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(E.UserError, match="pip install wandb"):
        T.parse_args(["--wandb", "my-project"])


@pytest.mark.parametrize("spent, done, budget, stops", [
    (0.0, 0, 10.0, False),     # nothing done yet
    (8.0, 4, 10.0, False),     # the next 2 s step ends at the budget: take it
    (8.5, 4, 10.0, False),     # ... 0.5 s past it, less than half a step
    (9.0, 4, 10.0, True),      # ... 1 s past it, half a step: stop
    (12.0, 4, 10.0, True),     # over already
    (99.0, 4, None, False),    # no budget
])
def test_a_time_budget_stops_when_the_next_step_would_end_over_half_a_step_past_it(spent, done, budget, stops):
    assert T.out_of_time(spent, done, budget) is stops


def test_a_time_budget_ends_the_run_with_an_evaluation_and_a_checkpoint_and_a_resume_is_refused(tiny_base, tmp_path, capsys):
    out = str(tmp_path / "run")
    T.main(SMALL + ["--init", tiny_base, "--steps", "50", "--eval_every", "10", "--save_every", "10",
                    "--time_budget", "1e-6", "--out", out])
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1] and "eval" in rows[0]  # every step takes more than a microsecond
    assert rows[0]["train_s"] == pytest.approx(rows[0]["rollout_s"] + rows[0]["update_s"])
    assert json.load(open(os.path.join(T.checkpoint_dir(out), "state.json")))["step"] == 1
    assert "stopping after step 1 of 50" in capsys.readouterr().out
    with pytest.raises(E.UserError, match="has spent its --time_budget"):
        T.parse_args(["--resume", out, "--steps", "60"])


def test_seconds_accumulate_over_a_resume(tiny_base, tmp_path):
    out = str(tmp_path / "run")
    T.main(SMALL + ["--init", tiny_base, "--steps", "2", "--eval_every", "0", "--save_every", "1", "--out", out])
    T.main(["--resume", out, "--steps", "3"])
    rows = read_metrics(out)
    assert rows[-1]["train_s"] == pytest.approx(sum(r["rollout_s"] + r["update_s"] for r in rows))


def test_the_time_budget_is_an_rl_flag(tmp_path):
    with pytest.raises(E.UserError, match="--time_budget is not read"):
        T.parse_args(["--algo", "pretrain", "--time_budget", "60", "--out", str(tmp_path / "p")])
