"""train.py --dtype bf16 on the CPU: the mixed-precision path a GPU run takes (FSDP2's
MixedPrecisionPolicy: bf16 weights in the forward and backward, fp32 gradient reduction, fp32
trainable weights, optimizer state, scores and losses), with LoRA adapters, dropout and the
LoRA-off reference policy.

    * 2 processes (torchrun --standalone, gloo) reproduce 1 process;
    * on the same rollouts, the bf16 round's losses and gradient norms agree with the fp32 round's
      within the stated bf16 tolerance;
    * the checkpoint written from bf16 training is in the hub layout and dtype (bf16 weights with the
      adapters merged, torch_dtype "bfloat16") and loads back to the trained policy; the adapters are
      saved in fp32.

One RL round of the tiny model (2 prompts × G = 4, two chunks, μ = 2) per run; bf16 matmuls are
emulated on most CPUs (several times slower than fp32), hence the small round.
"""
import json
import os

import pytest
import torch
from safetensors import safe_open

import eval as E
import model as M
import train as T
from conftest import read_metrics
from test_train import assert_rows_close, comparable, run_cli

# 2 prompts × G = 4 in two chunks of 4 (one per process), 4 denoising steps, μ = 2 (the second pass
# sees a policy that differs from its LoRA-off reference), a 4-token held-out canvas (speed only).
ROUND = ["--task", "sudoku", "--algo", "gdsd", "--steps", "1", "--prompts_per_step", "2", "--group_size", "4",
         "--rollout_batch", "4", "--diffusion_steps", "4", "--mu", "2", "--n_eval", "4", "--eval_every", "0",
         "--eval_gen_length", "4", "--eval_block_length", "4", "--save_every", "1", "--train_size", "200", "--beta", "0.01", "--lr", "1e-3",
         "--lora_rank", "8", "--lora_alpha", "16", "--lora_dropout", "0.05"]

# The bf16 tolerance. bf16 keeps 8 significant bits (one rounding: 2^-9 ≈ 0.2% relative), and a
# forward pass through the tiny model's 4 blocks stacks a few roundings. Quantities at the scale of
# the scores (loss, mean score per token, gradient norm, the trained LoRA B matrices) agree with
# fp32 within BF16_RTOL (measured: 0.02-0.7%). Differences of two nearly equal scores (|S_θ - S_old|,
# the KL to the reference, ~1% of a score after one update) keep the scores' absolute error, so
# their relative error is ~100 times larger: within BF16_DIFF_RTOL (measured: 6-7%).
BF16_RTOL = 2e-2
BF16_DIFF_RTOL = 0.2


def run_in_process(argv, rollouts, record):
    """T.main on one thread (as the torchrun subprocesses run); records the rollouts it generates into
    `rollouts`, or (record=False) replays them, so two runs are scored on the same completions."""
    real = E.rollout

    def recorded(model, tok, task, examples, **kw):
        key = (kw["seed"], kw["temperature"], repr(examples))
        if record:
            rollouts[key] = real(model, tok, task, examples, **kw)
        return tuple(t.clone() if torch.is_tensor(t) else t for t in rollouts[key])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(E, "rollout", recorded)
            return T.main(argv)
    finally:
        torch.set_num_threads(threads)
        if torch.distributed.is_initialized():  # a failed bf16 run must not leave its group to later tests
            torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def bf16_round(tiny_base, tmp_path_factory):
    """One bf16 LoRA round on one process (FSDP2 over a group of one), with its rollouts and argv."""
    argv = ROUND + ["--init", tiny_base]
    out, rollouts = str(tmp_path_factory.mktemp("bf16") / "run"), {}
    run_in_process(argv + ["--dtype", "bf16", "--out", out], rollouts, record=True)
    return out, rollouts, argv


def adapters(out):
    path = os.path.join(T.checkpoint_dir(out), "lora.safetensors")
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_bf16_round_on_two_processes_matches_one_process(bf16_round, tmp_path):
    one, _, argv = bf16_round
    two = str(tmp_path / "two")
    log = run_cli(argv + ["--dtype", "bf16", "--out", two], 2)
    assert "world size 2" in log and "dtype bf16" in log
    rows_one, rows_two = read_metrics(one), read_metrics(two)
    assert rows_one[0]["kl"] > 0  # the LoRA-off reference differs from the policy after the first pass
    # the same bf16 forward passes on the same chunks; only the order of the fp32 gradient sums differs
    assert_rows_close(comparable(rows_two), comparable(rows_one), rtol=1e-4, atol=1e-6)
    a, b = adapters(one), adapters(two)
    assert a.keys() == b.keys() and all(t.dtype == torch.float32 for t in a.values())
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


def test_bf16_round_agrees_with_fp32_on_the_same_rollouts(bf16_round, tmp_path):
    one, rollouts, argv = bf16_round
    fp32 = str(tmp_path / "fp32")
    run_in_process(argv + ["--dtype", "fp32", "--out", fp32], rollouts, record=False)
    bf16_row, fp32_row = read_metrics(one)[0], read_metrics(fp32)[0]
    assert bf16_row["reward"] == fp32_row["reward"]  # the same completions (replayed)
    for k in ("loss", "score", "grad_norm"):
        assert bf16_row[k] == pytest.approx(fp32_row[k], rel=BF16_RTOL), k
    for k in ("abs_log_ratio", "kl"):
        assert fp32_row[k] > 0 and bf16_row[k] == pytest.approx(fp32_row[k], rel=BF16_DIFF_RTOL), k
    # the trained adapters: B starts at 0, so B is the whole update. Adam's first steps move each
    # weight by about ±lr whatever the gradient's size, so the few weights whose gradient is ~0 can
    # move either way in either dtype: compare the update as a whole (measured: cosine 0.9986).
    a, b = adapters(one), adapters(fp32)
    update_bf16, update_fp32 = (torch.cat([w[k].flatten() for k in sorted(w) if ".lora_B." in k]) for w in (a, b))
    assert torch.nn.functional.cosine_similarity(update_bf16, update_fp32, dim=0) > 0.99
    assert float(update_bf16.norm()) == pytest.approx(float(update_fp32.norm()), rel=BF16_RTOL)


def test_bf16_checkpoint_is_in_the_hub_layout_and_dtype(bf16_round, tiny_base):
    out, *_ = bf16_round
    ckpt = T.checkpoint_dir(out)
    config = json.load(open(os.path.join(ckpt, "config.json")))
    assert config["torch_dtype"] == "bfloat16" and config["model_type"] == "llada"
    with safe_open(os.path.join(ckpt, "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert {f.get_slice(k).get_dtype() for k in keys} == {"BF16"}
    loaded = M.load_model(ckpt)  # the stored dtype
    assert keys == set(M.hub_names(loaded.config).values())
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    # = the bf16 base with the fp32 adapters merged (W + (α/r)·B·A, rounded once to bf16)
    base = M.load_model(tiny_base, dtype=torch.bfloat16).state_dict()
    lora, scale = adapters(out), 16 / 8
    changed = 0
    for name, w in loaded.state_dict().items():
        owner = name.rsplit(".", 1)[0]
        if f"{owner}.lora_A.weight" in lora:
            delta = scale * (lora[f"{owner}.lora_B.weight"] @ lora[f"{owner}.lora_A.weight"])
            torch.testing.assert_close(w.float(), base[name].float() + delta, rtol=2 ** -8, atol=0)
            changed += int(not torch.equal(w, base[name]))
        else:
            assert torch.equal(w, base[name]), name
    assert changed == 7 * loaded.config.n_layers  # all seven projections of every block moved
