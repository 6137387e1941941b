"""The GPU-run rehearsal tools in bench/: hub-layout random checkpoints, the tensor-memory counter,
the memory plan against a measured round, and bench/gpu_check.sh --smoke (the CPU form of the one
command a maintainer runs on a lent GPU), so none of them rots between GPU runs.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import hub_checkpoint as H  # noqa: E402
import memory_plan as MP  # noqa: E402
import real_width  # noqa: E402
from memtrack import PeakMemory, state_bytes  # noqa: E402

PHASES = ("rollout", "scoring", "update")


@pytest.mark.parametrize("family, name", [("llada", "llada-8b"), ("dream", "dream-7b")])
def test_the_written_config_is_the_hubs_and_matches_model_py(family, name):
    # the real config.json values model.py's table was written from, read back by model.py's parser
    assert M.config_from_hub(H.hub_config(family)) == M.CONFIGS[name]
    cfg = M.config_from_hub(H.hub_config(family, 2))
    assert cfg == dataclasses.replace(M.CONFIGS[name], n_layers=2)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_written_checkpoint_is_sharded_with_an_index_and_loads(family, tmp_path):
    widths = real_width.SMOKE_WIDTHS[family]
    overrides = H.hub_overrides(family, **widths, vocab_size=512)
    H.write_checkpoint(tmp_path, family, 2, shard_gb=0.0005, seed=3, **overrides)  # 0.5 MB shards
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    stored = {}
    for shard in shards:
        with safe_open(tmp_path / shard, framework="pt") as f:
            for k in f.keys():
                assert index["weight_map"][k] == shard
                stored[k] = f.get_tensor(k)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    config = json.load(open(tmp_path / "config.json"))
    assert config == H.hub_config(family, 2, **overrides)
    # model.py reads the layout: every parameter is the stored tensor of its hub name
    model = M.load_model(str(tmp_path))
    names = M.hub_names(model.config)
    assert set(names.values()) == set(stored)
    for ours, theirs in names.items():
        assert torch.equal(model.get_parameter(ours), stored[theirs]), ours
    assert model.config.n_layers == 2 and model.config.d_model == widths["d_model"]


def test_peak_memory_counts_new_storages_not_views_and_follows_resizes():
    a = torch.zeros(1000, 250)  # 1 MB before the block: its bytes are the base
    with PeakMemory("cpu", base=state_bytes(a)) as m:
        b = a + 1               # +1 MB
        c = b.t()[:10]          # a view: nothing
        b.add_(1)               # in place: nothing
        d = torch.empty(0)
        d.untyped_storage().resize_(2_000_000)  # +2 MB by a resize, as FSDP2 re-allocates weights
        del b, c                # -1 MB
        e = a * 2               # +1 MB: the peak stays at 1 + 1 + 2
        d.untyped_storage().resize_(0)  # -2 MB
        assert m.current == 1_000_000
    assert m.base == 1_000_000 and m.peak == 4_000_000
    del e


def test_the_memory_plan_agrees_with_a_measured_round_within_15_percent(tmp_path):
    """A round at the real vocabulary is too slow for CI; the plan is checked here on a shrunken
    Dream layout (grouped KV heads, biases) on the CPU, as bench/real_width.py --smoke runs it."""
    out = tmp_path / "round.json"
    assert real_width.main(["--family", "dream", "--smoke", "--dir", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    measured = json.load(open(out))
    lines, ok = MP.check(measured)
    assert ok, "\n".join(lines)
    for phase in PHASES:  # every phase allocated something on top of the weights
        assert measured["phases"][phase]["peak_bytes"] > measured["phases"][phase]["base_bytes"]


def test_the_gpu_check_runs_in_smoke_mode_and_writes_its_table(tmp_path):
    out = tmp_path / "check.md"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert "skipped" not in table, table
    for model in ("llada-8b", "dream-7b"):
        for part in ("(a) sampler", "(b) round", "(c) scoring"):
            assert any(part in line and model in line for line in table.splitlines()), (part, model)
    result = json.load(open(tmp_path / "check.json"))["results"]
    for model in ("llada-8b", "dream-7b"):
        r = result[model]
        for key in (k for k in r if k.startswith("sampler_")):  # generate reproduces the reference loop
            assert r[key]["identical_rows"] == "4/4"
        for phase in PHASES:  # the plan's FSDP2 + bf16 terms against the measured round
            assert r["plan"][phase] == pytest.approx(r["round"][phase]["peak_bytes"], rel=MP.TOLERANCE), (model, phase)
