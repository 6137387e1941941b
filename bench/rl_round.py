"""rl_round.py — one RL round of train.py's `rl_step`, phase by phase, timed and measured, on any
checkpoint in a hub layout (the random real-width ones of bench/hub_checkpoint.py included).

The phases, in rl_step's order and with its functions (train.py's build_models, gathered,
teacher_scores, optimizer_passes; sample.generate; loss.py):
    rollout   G completions of one prompt (sample.generate with the FSDP weights gathered once)
    scoring   old (and reference, β > 0) scores on the mask seeds of all μ passes, no gradient
    update    μ passes: current scores, the loss, backward, gradient clip, AdamW step
Each phase reports seconds and peak memory (bench/memtrack.py: CUDA's allocator peak, or on the CPU
the tensors counted op by op). The prompt is random ordinary tokens (no tokenizer needed) and the
reward a fixed function of the completion's tokens, so the advantages are not all zero.

Used by bench/real_width.py (CPU, reduced depth) and bench/gpu_check.py (GPU, full depth).
"""
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import loss as L  # noqa: E402
import model as M  # noqa: E402
import sample as S  # noqa: E402
import train as T  # noqa: E402
from memtrack import PeakMemory, state_bytes  # noqa: E402

PHASES = ("rollout", "scoring", "update")


def round_args(model_dir, **flags):
    """train.py's resolved configuration for a hub-layout checkpoint (its defaults: the official
    recipe), with `flags` overriding any of them: round_args(d, mu=1, diffusion_steps=8)."""
    flags.setdefault("group_size", T.HUB_DEFAULTS["group_size"])
    flags["rollout_batch"] = flags["group_size"]  # one chunk: one prompt and its G completions
    argv = ["--model", model_dir, "--prompts_per_step", "1"]
    for k, v in flags.items():
        argv += [f"--{k}", str(int(v) if isinstance(v, bool) else v)]
    return T.parse_args(argv)


def synthetic_prompt(config, length, seed=0):
    """(1, length) ids drawn from the ordinary tokens below every special id of the model."""
    top = min(config.mask_id, config.eos_id, config.pad_id)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, top, (1, length), generator=g)


def synthetic_rewards(x0):
    """A reward per completion that varies with its tokens: the fraction of even token ids."""
    return (x0 % 2 == 0).float().mean(-1)  # (B,)


@contextlib.contextmanager
def _phase(name, device, base, out):
    """Seconds and peak memory of one phase into out[name]."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with PeakMemory(device, base=base) as mem:
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    out[name] = {"seconds": time.perf_counter() - t0, "peak_bytes": mem.peak, "base_bytes": mem.base}


def rl_round(policy, ref, optimizer, args, prompt, device, seed=0):
    """One round of rl_step on one chunk (the prompt repeated G times); returns
    {phase: {"seconds", "peak_bytes", "base_bytes"}} and "metrics" (loss, reward, grad norm)."""
    algo, G, cfg = T.ALGOS[args.algo], args.group_size, policy.config
    prompt_ids = prompt.to(device).repeat(G, 1)  # (G, P)
    attn = torch.ones_like(prompt_ids, dtype=torch.bool)  # train.py always passes a prompt mask
    out = {}

    # 1. rollouts, the weights gathered once for the whole denoising loop (as train.rollout does)
    policy.eval()
    with _phase("rollout", device, state_bytes(policy, ref, optimizer), out):
        gen = torch.Generator(device=device).manual_seed(seed)
        with T.gathered(policy):
            canvas = S.generate(policy, prompt_ids, gen_length=args.gen_length, steps=args.diffusion_steps,
                                block_length=args.block_length, temperature=args.temperature,
                                remasking=args.remasking, mask_id=cfg.mask_id, attention_mask=attn, generator=gen)
        x0 = canvas[:, prompt_ids.shape[1]:]  # (G, L)
    rewards = synthetic_rewards(x0)
    adv, zero_std = algo.advantages(rewards, G)
    chunk = T.Chunk(0, prompt_ids, attn, x0, L.eos_completion_mask(x0, cfg.eos_id), rewards, adv, float(zero_std))

    # 2. old and reference scores of every pass and draw (train.teacher_scores)
    with _phase("scoring", device, state_bytes(policy, ref, optimizer, vars(chunk)), out):
        T.teacher_scores(0, policy, ref, algo, [chunk], args, cfg.mask_id)

    # 3. μ optimizer passes (train.optimizer_passes)
    with _phase("update", device, state_bytes(policy, ref, optimizer, vars(chunk)), out):
        passes = T.optimizer_passes(0, policy, optimizer, algo, [chunk], args, device, cfg.mask_id)
    out["metrics"] = {"loss": passes["sums"]["loss"] / passes["sums"]["terms"], "reward": float(rewards.mean()),
                      "grad_norm": passes["grad_norm"], "zero_std": float(zero_std)}
    return out


def build(args, device):
    """train.py's policy, reference and optimizer for `args` (its build_models and AdamW settings)."""
    policy, ref, _ = T.build_models(args, device, world=1)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=tuple(args.adam_betas), weight_decay=args.weight_decay)
    return policy, ref, optimizer


def random_loader(device_for_init):
    """A stand-in for model.load_model that builds the checkpoint's architecture from its config.json
    alone, with random N(0, 0.02) weights made directly on the device (no weight files, no host copy):
    how gpu_check gets a full-size 8B model in seconds. Patch it in with
    `mock.patch.object(M, "load_model", random_loader(...))` around train.build_models."""
    def load(path, device=None, dtype=None, seed=0):
        with open(os.path.join(path, "config.json")) as f:
            cfg = M.config_from_hub(json.load(f), source_dir=os.path.abspath(path))
        with torch.device("meta"):
            model = M.Denoiser(cfg).to(dtype or torch.bfloat16)  # shapes only, in the final dtype
        return M.init_weights(model.to_empty(device=device or device_for_init), seed)
    return load
