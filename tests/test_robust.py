"""train.py loses nothing and hides nothing: a kill at any statement of a checkpoint save or of the
metrics rewrite leaves the newest complete checkpoint and the whole history; one process per run
directory; every bad flag, file or data input is one line naming the fix (exit status 2); NaN / inf
losses and rewards and exploding updates are skipped or undone, never saved as good; no global RNG
state is read or reseeded. Each case was first reproduced against the code before the fix.
"""
import argparse
import dataclasses
import json
import math
import os
import runpy
import shutil
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

import loss as L
import model as M
import train as T
from conftest import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "bases", "tiny-sudoku")
# One small RL round: 2 prompts × G=4 completions in one chunk, one optimizer pass.
TINY_RUN = ["--task", "sudoku", "--steps", "1", "--prompts_per_step", "2", "--group_size", "4", "--rollout_batch", "8",
            "--mu", "1", "--n_eval", "4", "--eval_every", "0", "--save_every", "1", "--train_size", "50", "--init", BASE]


# ----------------------------------------------------------------------------------------------
# Kills at every statement of the save and metrics paths

TRACED = {T.__file__, shutil.__file__, os.__file__}  # the rotation code and the file operations under it


def contents(root):
    """Every file under `root` with its bytes: what a later process would find there."""
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                found.append((os.path.relpath(os.path.join(dirpath, name), root), f.read()))
    return tuple(sorted(found)) + tuple(sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root)))


def states_during(fn, root, keep):
    """Run fn() and copy `root` to `keep`/i before every statement it executes in train.py, shutil
    and os, and after the last: each copy is what a kill -9 at that statement leaves on disk (the
    process's own buffers die with it; what it handed to the OS stays). Returns the distinct copies."""
    copies, seen = [], set()

    def snapshot():
        state = contents(root)
        if state not in seen:
            seen.add(state)
            copies.append(shutil.copytree(root, os.path.join(keep, str(len(copies)))))

    def line(frame, event, arg):
        if event == "line":
            snapshot()
        return line

    sys.settrace(lambda frame, event, arg: line if frame.f_code.co_filename in TRACED else None)  # (not traced inside)
    try:
        fn()
    finally:
        sys.settrace(None)
    snapshot()
    return copies


@pytest.fixture
def no_fsync(monkeypatch):
    """A kill -9 loses nothing the OS holds (fsync guards against power cuts only): skip the slow disk flush."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def small_model(seed):
    cfg = dataclasses.replace(M.CONFIGS["tiny"], d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, mlp_hidden=32)
    return M.init_weights(M.Denoiser(cfg), seed)


def trained(seed):
    """A small model and an AdamW whose state is not empty (one step taken)."""
    model = small_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum((p ** 2).sum() for p in model.parameters()).backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def run_args(out):
    return argparse.Namespace(out=str(out), lora_rank=0, resume=True)


def layout(out):
    """(name, complete) of every entry of a run directory."""
    return sorted((name, T.is_complete(os.path.join(out, name))) for name in os.listdir(out))


def test_a_kill_at_any_statement_of_a_save_or_of_its_recovery_leaves_the_newest_complete_checkpoint(tmp_path, no_fsync):
    """Before: a kill in the rotation left a half-deleted checkpoint.old (every later save failed with
    'Directory not empty'), or checkpoint.old + checkpoint.tmp and no checkpoint/ ('never wrote a
    complete checkpoint')."""
    models = {s: trained(s) for s in (1, 2, 3)}  # what is saved at steps 1, 2, 3
    saved = {}
    for s in models:
        T.save_checkpoint(run_args(tmp_path / f"clean{s}"), *models[s], s, {"loss": float(s)}, None, 0)
        saved[s] = load_file(os.path.join(T.checkpoint_dir(tmp_path / f"clean{s}"), "model.safetensors"))

    def save(out, step):
        return lambda: T.save_checkpoint(run_args(out), *models[step], step, {"loss": float(step)}, None, 0)

    def check_settled(out, step):
        """Only OUT/checkpoint is left; it holds `step`, every file matches its recorded sha256."""
        assert sorted(os.listdir(out)) == ["checkpoint"]
        ckpt = T.checkpoint_dir(out)
        state = T.read_state(ckpt)
        assert state["step"] == step and state["sha256"].keys() == set(os.listdir(ckpt)) - {"state.json", T.MARKER}
        assert all(T.sha256_of(os.path.join(ckpt, f)) == h for f, h in state["sha256"].items())
        weights = load_file(os.path.join(ckpt, "model.safetensors"))
        assert all(torch.equal(weights[k], saved[step][k]) for k in saved[step])

    def copy(src, name):
        shutil.rmtree(tmp_path / name, ignore_errors=True)
        return shutil.copytree(src, tmp_path / name)

    # the step-2 save over a step-1 checkpoint, then over a leftover of each of its own states
    run = copy(tmp_path / "clean1", "run")
    states = states_during(save(run, 2), run, tmp_path / "states")
    layouts = [set(layout(s)) for s in states]
    assert {("checkpoint.old", True), ("checkpoint.tmp", True)} in layouts  # between the two renames
    assert {("checkpoint", True), ("checkpoint.old", False)} in layouts  # the previous one half deleted
    assert layouts[0] == {("checkpoint", True)} == layouts[-1]
    found = set()
    for i, state in enumerate(states):
        step = T.read_state(T.newest_checkpoint(state))["step"]
        found.add(step)
        out = copy(state, "resumed")
        recovery = states_during(lambda: T.finish_rotation(out), out, tmp_path / f"recovery{i}")  # what resume does first
        check_settled(out, step)
        for killed in recovery:  # a kill inside the recovery too: the next resume finishes it
            T.finish_rotation(killed)
            check_settled(killed, step)
        out = copy(state, "next")  # and the next save copes with any leftover by itself
        save(out, 3)()
        check_settled(out, 3)
    assert found == {1, 2}  # kills before and after the new checkpoint was complete


def write_rows(path, steps, tail=""):
    with open(path, "w") as f:
        f.writelines(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in steps)
        f.write(tail)


def test_a_kill_at_any_statement_of_the_metrics_rewrite_keeps_the_history(tmp_path, no_fsync):
    """Before: truncate_metrics reopened metrics.jsonl with mode 'w'; a kill there erased the history."""
    out = tmp_path / "run"
    out.mkdir()
    write_rows(out / "metrics.jsonl", [1, 2, 3, 4])
    states = states_during(lambda: T.truncate_metrics(argparse.Namespace(out=str(out)), 2), out, tmp_path / "states")
    assert len(states) >= 3  # before, the temporary file written, after the rename
    for state in states:
        assert [r["step"] for r in read_metrics(state)] in ([1, 2, 3, 4], [1, 2])
        T.truncate_metrics(argparse.Namespace(out=str(state)), 2)  # the next resume
        assert [r["step"] for r in read_metrics(state)] == [1, 2]


def test_resume_drops_a_metrics_line_cut_by_a_kill_and_names_a_damaged_one(tmp_path):
    """Before: both made every resume crash with a raw JSONDecodeError."""
    args = argparse.Namespace(out=str(tmp_path))
    write_rows(tmp_path / "metrics.jsonl", [1, 2, 3], tail='{"step": 4, "rew')  # the append a kill cut short
    T.truncate_metrics(args, 3)
    assert [r["step"] for r in read_metrics(args.out)] == [1, 2, 3]
    write_rows(tmp_path / "metrics.jsonl", [1, 2, 3])
    lines = open(tmp_path / "metrics.jsonl").readlines()
    open(tmp_path / "metrics.jsonl", "w").writelines([lines[0], lines[1][:9] + "\n", lines[2]])
    with pytest.raises(T.UserError, match=r"metrics.jsonl, line 2: not a metrics row .* repair or delete that line"):
        T.truncate_metrics(args, 3)


class Killed(BaseException):
    """A simulated kill -9 (not an Exception: nothing on the way handles it)."""


def test_a_killed_run_resumes_from_a_checkpoint_left_between_the_two_renames(tiny_base, tmp_path, monkeypatch):
    """Before: no checkpoint/, so 'the run never wrote a complete checkpoint; start it again'."""
    out = str(tmp_path / "run")
    real = os.replace

    def killed_before_the_second_rename(src, dst):
        if str(src).endswith("checkpoint.tmp") and os.path.isdir(str(dst) + ".old"):
            raise Killed
        return real(src, dst)

    argv = TINY_RUN[:-2] + ["--init", tiny_base, "--steps", "3"]
    monkeypatch.setattr(os, "replace", killed_before_the_second_rename)
    with pytest.raises(Killed):
        T.main(argv + ["--out", out])
    monkeypatch.setattr(os, "replace", real)
    assert layout(out) == [(T.LOCK_FILE, False), ("checkpoint.old", True), ("checkpoint.tmp", True), ("metrics.jsonl", False)]
    T.main(["--resume", out])
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert T.read_state(T.checkpoint_dir(out))["step"] == 3


# ----------------------------------------------------------------------------------------------
# The run directory: one writer, no silent appending

def test_a_fresh_start_refuses_a_directory_holding_a_run_unless_overwrite(tmp_path):
    """Before: the new run appended to the old metrics (steps 1, 1, 2, 3, ...)."""
    out = tmp_path / "run"
    out.mkdir()
    write_rows(out / "metrics.jsonl", [1, 2])
    (out / "checkpoint.old").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(T.UserError, match=r"already holds a run \(metrics.jsonl, checkpoint.old\); continue it with --resume"):
        T.main(TINY_RUN + ["--out", str(out)])
    args = T.parse_args(TINY_RUN + ["--out", str(out), "--overwrite"])
    with T.run_directory(args, 0):
        assert sorted(os.listdir(out)) == [T.LOCK_FILE, "notes.txt"]  # the run's files only


def test_a_second_process_on_one_run_directory_is_refused(tmp_path):
    """Before: no lock; two runs interleaved their metrics and the last saver owned the checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('locked', flush=True); sys.stdin.read()", str(out / T.LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(T.UserError, match="another process is running in .*; wait for it to end, or choose another --out"):
            T.main(TINY_RUN + ["--out", str(out)])
        assert os.listdir(out) == [T.LOCK_FILE]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    with T.run_directory(T.parse_args(TINY_RUN + ["--out", str(out)]), 0):  # free again once it exits
        pass


# ----------------------------------------------------------------------------------------------
# Bad inputs: one line each

@pytest.fixture(scope="module")
def rl_run(tiny_base, tmp_path_factory):
    """A finished 1-step RL run (checkpoint at step 1) to resume from."""
    out = str(tmp_path_factory.mktemp("rl") / "run")
    T.main(TINY_RUN[:-2] + ["--init", tiny_base, "--out", out])
    return out


class Inputs:
    """Makes the damaged files of one case under tmp_path."""

    def __init__(self, tmp_path, rl_run):
        self.tmp, self.rl_run = tmp_path, rl_run

    def out(self):
        return ["--out", str(self.tmp / "out")]

    def model(self, edit):
        d = str(self.tmp / "model")
        shutil.copytree(BASE, d)
        edit(d)
        return d

    def run(self, edit=lambda d: None):
        d = str(self.tmp / "run")
        shutil.copytree(self.rl_run, d)
        edit(T.checkpoint_dir(d))
        return d

    def file(self, content):
        path = self.tmp / "data"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)


def cut(d, keep=None):
    data = open(os.path.join(d, "model.safetensors"), "rb").read()
    open(os.path.join(d, "model.safetensors"), "wb").write(data[: len(data) // 2 if keep is None else keep])


def flip_bit(d, name="model.safetensors"):
    data = bytearray(open(os.path.join(d, name), "rb").read())
    data[len(data) // 2] ^= 0x40
    open(os.path.join(d, name), "wb").write(bytes(data))


def nan_weight(d):
    tensors = load_file(os.path.join(d, "model.safetensors"))
    tensors[sorted(tensors)[0]].view(-1)[0] = float("nan")
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})


def config(**fields):
    def edit(d):
        c = json.load(open(os.path.join(d, "config.json")))
        open(os.path.join(d, "config.json"), "w").write(json.dumps({**c, **fields}))
    return edit


def text(name, content):
    return lambda d: open(os.path.join(d, name), "w").write(content)


RL = TINY_RUN[:-2]  # without --init
# (what was tried, argv made from Inputs, the message it now gets). Before the fix: 22 of these ran
# on silently (a negative gradient clip trained by gradient ascent), the others ended in a raw
# traceback from torch, safetensors, json or argparse internals.
BAD_INPUTS = [
    ("negative gradient clip", lambda i: TINY_RUN + ["--grad_clip", "-1"], "--grad_clip -1.0 is out of range: it must be > 0"),
    ("zero gradient clip", lambda i: TINY_RUN + ["--grad_clip", "0"], "--grad_clip 0.0 is out of range"),
    ("NaN gradient clip", lambda i: TINY_RUN + ["--grad_clip", "nan"], "--grad_clip nan is out of range"),
    ("negative warm-up", lambda i: TINY_RUN + ["--warmup", "-5"], "--warmup -5 is out of range: it must be >= 0"),
    ("no mask draw", lambda i: TINY_RUN + ["--num_mc", "0"], "--num_mc 0 is out of range: it must be >= 1"),
    ("zero steps", lambda i: TINY_RUN + ["--steps", "0"], "--steps 0 is out of range: it must be >= 1"),
    ("zero gen length (was replaced by the default)", lambda i: TINY_RUN + ["--gen_length", "0"], "--gen_length 0 is out of range"),
    ("zero diffusion steps (was replaced by the default)", lambda i: TINY_RUN + ["--diffusion_steps", "0"], "--diffusion_steps 0 is out of range"),
    ("blocks that do not tile the canvas", lambda i: TINY_RUN + ["--gen_length", "12", "--block_length", "8"], "--gen_length 12 is not a multiple of --block_length 8"),
    ("steps that do not split over the blocks", lambda i: TINY_RUN + ["--block_length", "4", "--diffusion_steps", "6"], "--diffusion_steps 6 is not a multiple of the number of blocks"),
    ("negative LoRA rank (was full fine-tuning)", lambda i: TINY_RUN + ["--lora_rank", "-4"], "--lora_rank -4 is out of range"),
    ("LoRA rank without alpha on tiny", lambda i: TINY_RUN + ["--lora_rank", "4"], "--lora_rank needs --lora_alpha"),
    ("LoRA dropout 1.5", lambda i: TINY_RUN + ["--lora_rank", "4", "--lora_alpha", "8", "--lora_dropout", "1.5"], "--lora_dropout 1.5 is out of range: it must be in [0, 1)"),
    ("LoRA alpha without LoRA", lambda i: TINY_RUN + ["--lora_alpha", "16"], "--lora_alpha is not read by this run: it shapes LoRA adapters and --lora_rank is 0"),
    ("negative eval period", lambda i: TINY_RUN + ["--eval_every", "-1"], "--eval_every -1 is out of range"),
    ("zero save period", lambda i: TINY_RUN + ["--save_every", "0"], "--save_every 0 is out of range"),
    ("negative clip range", lambda i: TINY_RUN + ["--algo", "d1", "--clip_eps", "-1"], "--clip_eps -1.0 is out of range: it must be in (0, 1)"),
    ("10^8 generated eval examples (hung)", lambda i: TINY_RUN + ["--n_eval", "100000000"], "asks the sudoku generator for more than 1000000 examples"),
    ("empty generated training split", lambda i: TINY_RUN + ["--train_size", "0"], "--train_size 0 is out of range"),
    ("learning rate 1e38 (overflowed in AdamW)", lambda i: TINY_RUN + ["--lr", "1e38"], "--lr 1e+38 is out of range: it must be in (0, 1]"),
    ("β outside [0, 1]", lambda i: TINY_RUN + ["--beta", "2"], "--beta 2.0 is out of range: it must be in [0, 1]"),
    ("negative seed", lambda i: TINY_RUN + ["--seed", "-1"], "--seed -1 is out of range"),
    ("--psi with d1 (ignored)", lambda i: TINY_RUN + ["--algo", "d1", "--psi", "2"], "--psi is not read by this run: --algo d1 does not use it (only gdsd, gdsd-tlc, gdsd-official, gdsd-tlc-official do)"),
    ("--eps with gdsd (ignored)", lambda i: TINY_RUN + ["--eps", "1e-3"], "--eps is not read by this run: --algo gdsd does not use it"),
    ("--clip_eps with gdsd (ignored)", lambda i: TINY_RUN + ["--clip_eps", "0.3"], "--clip_eps is not read by this run: --algo gdsd does not use it (only espo, d1 do)"),
    ("--num_mc with d1 (ignored)", lambda i: TINY_RUN + ["--algo", "d1", "--num_mc", "2"], "--num_mc is not read by this run: --algo d1 does not use it"),
    ("--prompt_mask_prob with gdsd (ignored)", lambda i: TINY_RUN + ["--prompt_mask_prob", "0.3"], "--prompt_mask_prob is not read by this run: --algo gdsd does not use it (only d1, wd1, spg do)"),
    ("--beta 0 with wd1 (ignored)", lambda i: TINY_RUN + ["--algo", "wd1", "--beta", "0"], "--beta is not read by this run: --algo wd1 does not use it"),
    ("--steps with pretrain (ignored)", lambda i: ["--algo", "pretrain", "--steps", "5"], "--steps is not read by this run: --algo pretrain reads the --pretrain_* flags, not the RL ones (its length is --pretrain_steps)"),
    ("--pretrain_steps for RL from the shipped base (ignored)", lambda i: ["--pretrain_steps", "5"], "--pretrain_steps is not read by this run: this RL run starts from"),
    ("--init with a checkpoint as --model (ignored)", lambda i: ["--model", BASE, "--init", BASE], "--init is not read by this run: RL on --model"),
    ("--out is a file", lambda i: TINY_RUN + ["--out", i.file("x")], "is a file, not a run directory"),
    ("missing --data file", lambda i: TINY_RUN + ["--data", str(i.tmp / "no.csv")], "--data " + "{tmp}/no.csv is not a file"),
    ("--resume with another flag (ignored)", lambda i: ["--resume", i.rl_run, "--lr", "1e-3"], "--resume continues {rl_run} with the configuration saved in its checkpoint and takes no flag but --steps (got --lr)"),
    ("--resume with --steps not beyond its checkpoint", lambda i: ["--resume", i.rl_run, "--steps", "1"], "--steps 1 does not extend {rl_run}: its checkpoint is at step 1"),
    ("--resume of a finished run without --steps", lambda i: ["--resume", i.rl_run], "{rl_run} has finished (1 of 1 steps); to continue it, pass --steps N with N > 1"),
    ("--resume of a directory without a checkpoint", lambda i: ["--resume", str(i.tmp)], "cannot resume {tmp}: it holds no complete checkpoint"),
    # files read at start
    ("truncated model.safetensors", lambda i: RL + ["--init", i.model(cut)] + i.out(), "cannot read the weights in {tmp}/model: Error while deserializing header"),
    ("zero-byte model.safetensors", lambda i: RL + ["--init", i.model(lambda d: cut(d, 0))] + i.out(), "cannot read the weights in {tmp}/model: Error while deserializing header: header too small"),
    ("NaN in the weights", lambda i: RL + ["--init", i.model(nan_weight)] + i.out(), "the weights in {tmp}/model hold NaN or inf values (1 tensor(s)"),
    ("malformed config.json", lambda i: RL + ["--init", i.model(text("config.json", '{"d_model": 12'))] + i.out(), "cannot read {tmp}/model/config.json: Expecting"),
    ("config.json is a list", lambda i: RL + ["--init", i.model(text("config.json", "[1]"))] + i.out(), "it holds a JSON list, not an object of model settings"),
    ("a string where config.json needs a number", lambda i: RL + ["--init", i.model(config(n_layers="4"))] + i.out(), "config.json: n_layers = '4' is not of type int"),
    ("a null size in config.json", lambda i: RL + ["--init", i.model(config(d_model=None))] + i.out(), "a field is missing or of the wrong type"),
    ("mask_token_id of a tiny config.json (was ignored)", lambda i: RL + ["--init", i.model(config(mask_token_id=5))] + i.out(), "gives mask / eos token ids 5 / 1, but its tokenizer uses 2 / 1"),
    ("non-UTF-8 --data", lambda i: TINY_RUN + ["--data", i.file(b"Puzzle,Solution\n\xe9\n")] + i.out(), "cannot read --data {tmp}/data: {tmp}/data: not UTF-8 text (byte 16); save the file as UTF-8"),
    ("--data with no example (was 'empty range for randrange()')", lambda i: TINY_RUN + ["--data", i.file("Puzzle,Solution\n")] + i.out(), "{tmp}/data: no puzzles after the header"),
    ("malformed --data row", lambda i: TINY_RUN + ["--data", i.file("Puzzle,Solution\n12,34\n")] + i.out(), "cannot read --data {tmp}/data: {tmp}/data, line 2: expected two 16-digit strings"),
    # files read on resume
    ("malformed state.json", lambda i: ["--resume", i.run(text("state.json", '{"step": 1, "conf')), "--steps", "2"], "cannot read {tmp}/run/checkpoint/state.json: Unterminated string"),
    ("state.json without its config", lambda i: ["--resume", i.run(text("state.json", '{"step": 1}')), "--steps", "2"], "state.json lacks its step or config"),
    ("flipped bit in the saved weights (undetected)", lambda i: ["--resume", i.run(flip_bit), "--steps", "2"], "{tmp}/run/checkpoint/model.safetensors is not the file that was saved (its sha256 differs"),
    ("truncated optimizer state (was a raw EOFError)", lambda i: ["--resume", i.run(lambda d: open(os.path.join(d, "trainer.pt"), "r+b").truncate(100)), "--steps", "2"], "trainer.pt is not the file that was saved"),
    ("deleted optimizer state", lambda i: ["--resume", i.run(lambda d: os.remove(os.path.join(d, "trainer.pt"))), "--steps", "2"], "trainer.pt is missing: it was changed or damaged after the save"),
]


@pytest.mark.parametrize("what, make, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_every_bad_input_is_one_line_naming_the_fix(what, make, message, tmp_path, rl_run):
    argv = make(Inputs(tmp_path, rl_run))
    with pytest.raises(T.UserError) as e:
        T.main(argv)
    assert message.format(tmp=tmp_path, rl_run=rl_run) in str(e.value)
    assert "\n" not in str(e.value)


def test_the_command_line_prints_a_user_error_as_one_line_with_exit_status_2(tmp_path, monkeypatch, capsys):
    """`python train.py ...` (its __main__ block, run in this process: a new interpreter pays seconds of imports)."""
    monkeypatch.setattr(sys, "argv", ["train.py", "--grad_clip", "-1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, "train.py"), run_name="__main__")
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == ["error: --grad_clip -1.0 is out of range: it must be > 0 (a bound on the "
                                                    "gradient norm; a negative one reverses the gradient)"]


def test_cli_turns_only_user_errors_into_one_line_and_a_bug_keeps_its_traceback(capsys):
    def fails(argv):
        raise T.UserError("two\nlines")
    with pytest.raises(SystemExit) as e:
        T.cli(fails)
    assert e.value.code == 2 and capsys.readouterr().err == "error: two lines\n"

    def bug(argv):
        return {}["missing"]
    with pytest.raises(KeyError):
        T.cli(bug)


# ----------------------------------------------------------------------------------------------
# Flags that were accepted and ignored: now read or refused

def test_each_objective_flag_is_allowed_exactly_for_the_algorithms_whose_loss_reads_it():
    """The table behind the refusals, checked against the dispatch: a flag changes an algorithm's
    loss if and only if that algorithm accepts it."""
    torch.manual_seed(0)
    B, Lc, G = 8, 6, 4
    s, s_old, s_ref = (torch.randn(B) * 3 for _ in range(3))
    tok_s, tok_old, tok_ref = (torch.randn(B, Lc) for _ in range(3))
    batch = types.SimpleNamespace(adv=torch.randn(B), x0=torch.zeros(B, Lc, dtype=torch.long), rewards=torch.rand(B),
                                  token_mask=torch.ones(B, Lc), length=Lc)
    base = dict(psi=1.0, beta=0.1, eps=0.3, clip_eps=0.1, group_size=G, spg_mix_weight=0.5)
    changed = dict(psi=2.0, beta=0.3, eps=0.5, clip_eps=0.4, spg_mix_weight=0.9)
    for name, algo in T.ALGOS.items():
        args = T.parse_args(["--algo", name])
        one_pass = algo.score == "one_pass"
        scores = {"one_pass": (tok_s, tok_old, tok_ref), "spg": ((s, s_ref), None, None)}.get(algo.score, (s, s_old, s_ref))
        for flag, value in changed.items():
            a, b = argparse.Namespace(**base), argparse.Namespace(**dict(base, **{flag: value}))
            differs = not torch.equal(algo.loss(*scores, batch, a)[0], algo.loss(*scores, batch, b)[0])
            assert differs == (getattr(args, flag) is not None), (name, flag)
        single_call = algo.score in ("one_pass", "spg")  # their estimators draw their own masks
        assert (args.num_mc is None) == single_call and (args.prompt_mask_prob is None) != single_call


def test_the_tiny_base_pre_trained_on_the_fly_honours_the_pretrain_flags_and_refuses_a_different_one(tmp_path, monkeypatch):
    """Before: it was pre-trained from task / algo / seed / out only, whatever the flags said."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(T, "ROOT", str(tmp_path))  # no shipped base: pre-train on the fly
    runs = []
    monkeypatch.setattr(T, "run", lambda args, *a: runs.append(args))
    flags = ["--task", "sudoku", "--pretrain_steps", "7", "--pretrain_lr", "0.002", "--pretrain_batch", "16",
             "--pretrain_no_answer", "0.1", "--train_size", "300", "--seed", "5"]
    args = T.parse_args(flags)
    T.ensure_tiny_base(args, 0, 1, torch.device("cpu"))
    (base,) = runs
    assert base.out == T.tiny_base_run("sudoku") and base.algo == "pretrain" and base.seed == 0
    assert (base.pretrain_steps, base.pretrain_lr, base.pretrain_batch, base.pretrain_no_answer, base.train_size) == (7, 0.002, 16, 0.1, 300)

    ckpt = T.checkpoint_dir(T.tiny_base_run("sudoku"))  # a finished base made with other values
    os.makedirs(ckpt)
    json.dump({"step": 600, "config": vars(T.parse_args(["--task", "sudoku", "--algo", "pretrain"]))}, open(os.path.join(ckpt, "state.json"), "w"))
    open(os.path.join(ckpt, T.MARKER), "w").close()
    with pytest.raises(T.UserError, match=r"holds a base pre-trained with --train_size 20000, --pretrain_steps 600, .* not this run's "
                                          r"--train_size 300, --pretrain_steps 7"):
        T.ensure_tiny_base(args, 0, 1, torch.device("cpu"))
    T.ensure_tiny_base(T.parse_args(["--task", "sudoku"]), 0, 1, torch.device("cpu"))  # the defaults reuse it
    assert len(runs) == 1


# ----------------------------------------------------------------------------------------------
# The non-finite guard

def test_an_update_that_explodes_the_weights_is_undone_with_its_optimizer_state():
    model, opt = trained(0)
    params = list(model.parameters())
    weights, state = [p.detach().clone() for p in params], {k: v.clone() for k, v in opt.state[params[0]].items()}
    for p in params:
        p.grad = torch.ones_like(p)
    for group in opt.param_groups:
        group["lr"] = 1.0  # Adam moves every weight by ~1: the norm grows far beyond 2×
    assert not T.guarded_step(opt, params, grad_norm=1.0)
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    assert all(torch.equal(opt.state[params[0]][k], v) for k, v in state.items())
    assert not T.guarded_step(opt, params, grad_norm=math.inf)  # a non-finite gradient: no step at all
    assert all(torch.equal(p, w) for p, w in zip(params, weights))
    for group in opt.param_groups:
        group["lr"] = 1e-3
    assert T.guarded_step(opt, params, grad_norm=1.0)
    assert not torch.equal(params[0], weights[0]) and opt.state[params[0]]["step"] == state["step"] + 1


def weights_of(path):
    return M.load_model(path).state_dict()


def test_nan_losses_and_rewards_are_counted_skipped_and_logged_as_strict_json(tmp_path, monkeypatch, capsys):
    """Before: a NaN loss with a finite gradient trained on, and metrics held bare NaN tokens."""
    real_loss, real_score = T.ALGOS["gdsd"].loss, T.R.Sudoku._reward

    def nan_loss_at_step_1(*a):
        loss, metrics = real_loss(*a)
        return (loss + torch.tensor(math.nan) if len(calls) == 1 else loss), metrics  # the gradient stays finite

    def one_nan_reward_at_step_2(self, text, ex, style):
        rewards.append(1)
        return math.nan if len(calls) == 2 and len(rewards) == 1 else real_score(self, text, ex, style)

    calls, rewards, real_step = [], [], T.rl_step
    monkeypatch.setattr(T, "rl_step", lambda step, *a: (calls.append(step), rewards.clear(), real_step(step, *a))[2])
    monkeypatch.setitem(T.ALGOS, "gdsd", dataclasses.replace(T.ALGOS["gdsd"], loss=nan_loss_at_step_1))
    monkeypatch.setattr(T.R.Sudoku, "_reward", one_nan_reward_at_step_2)
    out = str(tmp_path / "run")
    T.main(TINY_RUN + ["--steps", "2", "--out", out])
    text = open(os.path.join(out, "metrics.jsonl")).read()
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON number {c}")) for line in text.splitlines()]
    assert [(r["skipped_updates"], r["nonfinite_losses"], r["nonfinite_rewards"]) for r in rows] == [(1, 1, 0), (1, 1, 1)]
    assert rows[0]["loss"] is None and rows[1]["reward"] is None
    assert capsys.readouterr().out.count("| skipped 1 |") == 2
    before, after = weights_of(BASE), weights_of(T.checkpoint_dir(out))
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was trained on


def test_an_exploding_learning_rate_stops_with_the_last_good_weights_saved(tmp_path):
    """Before: '--lr 1e10' stopped with 'last good weights saved' over weights of size 1e10."""
    out = str(tmp_path / "run")
    with pytest.raises(T.UserError, match=r"2 steps in a row skipped updates .* last good weights saved in"):
        T.main(TINY_RUN + ["--steps", "3", "--lr", "1", "--max_bad_steps", "2", "--out", out])
    assert [r["skipped_updates"] for r in read_metrics(out)] == [1, 1]
    before, after = weights_of(BASE), weights_of(T.checkpoint_dir(out))
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------
# No global RNG state

def lora_batch(B=4, P=5, Lc=6):
    g = torch.Generator().manual_seed(0)
    return types.SimpleNamespace(prompt_ids=torch.randint(3, 90, (B, P), generator=g),
                                 attn=torch.ones(B, P, dtype=torch.bool), x0=torch.randint(3, 90, (B, Lc), generator=g))


def test_policy_scores_take_masks_and_dropout_from_their_seed_and_leave_the_global_rng_alone(monkeypatch):
    """Before: policy_scores reseeded the global torch RNG before every forward and drew all num_mc
    mask draws to use one."""
    model = M.load_model("tiny")
    M.add_lora(model, 4, 8.0, dropout=0.5)
    for p in model.parameters():  # non-zero adapters, so dropout changes the scores
        p.data.add_(0.01)
    model.train()
    batch, algo = lora_batch(), T.ALGOS["gdsd"]
    masks = []
    real = L.denoiser_scores
    monkeypatch.setattr(L, "denoiser_scores", lambda m, p, x0, mask, **k: masks.append(mask) or real(m, p, x0, mask, **k))
    torch.manual_seed(123)
    rng = torch.random.get_rng_state()
    args = argparse.Namespace(num_mc=3, score_chunk=None)
    a = T.policy_scores(model, algo, batch, 42, 2, args, mask_id=2)
    assert torch.equal(torch.random.get_rng_state(), rng)  # neither drawn from nor reseeded
    torch.manual_seed(7)  # another global state changes nothing
    b = T.policy_scores(model, algo, batch, 42, 2, argparse.Namespace(num_mc=5, score_chunk=None), mask_id=2)
    c = T.policy_scores(model, algo, batch, 43, 2, args, mask_id=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(masks[0], L.forward_process(42, 4, 6, 3)[2]) and torch.equal(masks[1], masks[0])  # draw 2 of the seed
    with T.seeded_rng(T.seed_for(42, 2, "dropout"), torch.device("cpu")):
        assert torch.equal(real(model, batch.prompt_ids, batch.x0, masks[0], mask_id=2, estimator="logprob",
                                attention_mask=batch.attn), a)
    model.eval()
    assert not torch.equal(T.policy_scores(model, algo, batch, 42, 2, args, mask_id=2), a)  # dropout was on


def test_a_run_with_lora_dropout_neither_draws_from_nor_reseeds_the_global_rng(tmp_path):
    """Before: run() and policy_scores called torch.manual_seed (the per-step one was dead code)."""
    torch.manual_seed(123)
    rng = torch.random.get_rng_state()
    T.main(TINY_RUN + ["--lora_rank", "4", "--lora_alpha", "8", "--lora_dropout", "0.1", "--beta", "0.01", "--out", str(tmp_path / "run")])
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert read_metrics(str(tmp_path / "run"))[0]["skipped_updates"] == 0
