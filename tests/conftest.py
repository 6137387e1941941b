"""Shared fixtures: a briefly pre-trained tiny sudoku model, reused by the train and eval tests."""
import json
import os

import pytest


def read_metrics(out):
    """The per-step JSON lines train.py writes."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """Checkpoint directory of the tiny model after 60 MDM pre-training steps on sudoku: it writes
    digits in the right places without solving the puzzles, so rollout rewards vary."""
    import train as T
    out = str(tmp_path_factory.mktemp("base"))
    T.main(["--algo", "pretrain", "--task", "sudoku", "--pretrain_steps", "60", "--pretrain_batch", "32", "--pretrain_no_answer", "0",
            "--n_eval", "8", "--eval_every", "0", "--save_every", "60", "--train_size", "200", "--out", out])
    return T.checkpoint_dir(out)
