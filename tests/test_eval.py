"""eval.py: reproduces the held-out score train.py logged for the same checkpoint, reads the official
test files, writes its JSON, and gives the same numbers sharded over 2 processes."""
import json
import os
import subprocess
import sys

import pytest

import eval as E
from conftest import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def test_eval_reproduces_the_score_train_logged(tiny_base, tmp_path):
    logged = read_metrics(os.path.dirname(tiny_base))[-1]["eval"]  # train.py's final held-out eval
    out = str(tmp_path / "eval.json")
    results = E.main(["--task", "sudoku", "--model", tiny_base, "--n_eval", "8", "--out", out])
    (gen_length, r), = results.items()
    assert gen_length == 16
    assert r["metrics"] == pytest.approx({k: v for k, v in logged.items() if not k.startswith("forced_")}, abs=1e-6)
    saved = json.load(open(out))
    assert saved["n_examples"] == 8 and len(saved["results"]["16"]["completions"]) == 8
    assert [c["index"] for c in saved["results"]["16"]["completions"]] == list(range(8))
    completions = saved["results"]["16"]["completions"]
    correct, total = sum(c["correct"] for c in completions), sum(c["total"] for c in completions)
    assert correct / total == pytest.approx(r["metrics"]["accuracy"])  # cells summed before dividing
    assert sum(c["reward"] for c in completions) / 8 == pytest.approx(r["metrics"]["reward"])


@pytest.mark.skipif(not os.path.isdir(DATA), reason="the shared data directory ../shared/data is absent")
def test_eval_reads_the_official_sudoku_file_and_shards_over_two_processes(tiny_base, tmp_path):
    common = ["eval.py", "--task", "sudoku", "--model", tiny_base, "--data", os.path.join(DATA, "sudoku_4x4_test.csv"),
              "--n_eval", "12", "--batch_size", "4", "--first"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    outs = {}
    for nproc in (1, 2):
        out = str(tmp_path / f"eval{nproc}.json")
        launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if nproc == 2 else [])
        proc = subprocess.run(launcher + common + ["--out", out], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        outs[nproc] = json.load(open(out))["results"]["16"]
    assert len(outs[2]["completions"]) == 12
    assert outs[2]["completions"] == outs[1]["completions"]  # same completions, in test-file order
    assert outs[2]["metrics"] == pytest.approx(outs[1]["metrics"])


@pytest.mark.parametrize("flags, message", [
    (["--task", "chess"], "unknown task 'chess'"), (["--n_eval", "-1"], "--n_eval must be at least 1"),
    (["--batch_size", "0"], "--batch_size must be at least 1"), (["--gen_lengths", "16", "0"], "--gen_lengths must be positive"),
])
def test_bad_flags_are_clear_errors(flags, message, capsys):
    with pytest.raises(SystemExit):
        E.parse_args(flags)
    assert message in capsys.readouterr().err


def test_a_test_file_is_subsampled_as_the_d1_family_scripts_do():
    import numpy as np
    rows = list(range(500))
    picked = E.select_examples(rows, 256, seeded=True)
    np.random.seed(42)  # what their eval scripts do at start, before drawing the subset
    assert picked == list(np.random.choice(500, 256, replace=False))
    assert E.select_examples(rows, 5, seeded=False) == [0, 1, 2, 3, 4]
    assert E.select_examples(rows[:10], 256, seeded=True) == rows[:10]


def test_suppress_eos_makes_the_shipped_base_answer_every_puzzle(tmp_path):
    """The demo's base leaves many puzzles unanswered (an all-EOS completion); with EOS never
    sampled every completion is a full 16-digit grid, scored the same way."""
    base = os.path.join(ROOT, "bases", "tiny-sudoku")
    completions = {}
    for flag in ([], ["--suppress_eos"]):
        out = str(tmp_path / f"eval{len(flag)}.json")
        E.main(["--task", "sudoku", "--model", base, "--n_eval", "64", "--out", out] + flag)
        completions[bool(flag)] = json.load(open(out))["results"]["16"]["completions"]
    assert sum(c["completion"] == "" for c in completions[False]) >= 16  # the base answers nothing on many
    forced = completions[True]
    assert all(len(c["completion"]) == 16 and set(c["completion"]) <= set("1234") for c in forced)
    assert all(c["reward"] == c["correct"] / c["total"] and c["answered"] == 1.0 for c in forced)
