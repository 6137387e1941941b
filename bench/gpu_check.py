"""gpu_check.py — the questions a first GPU run must answer, in one command and one table
(run it through bench/gpu_check.sh). On one GPU, with random weights made on the device (no
download, no network):

  (a) rollout throughput of sample.generate at the official settings (6 × [200-token prompt + 256],
      block 32, τ = 1, 64 and 128 steps) against a plain full-canvas transcription of LLaDA's
      reference sampler on the same model: completion tokens/s, their ratio, and whether the two
      produced the same tokens (they share the random-number design, so they should up to bf16
      rounding of logits computed over different row sets);
  (b) one RL round of train.py's code (bench/rl_round.py) with LoRA r 128 on all seven projections
      and activation checkpointing (the official recipe: 64 steps, μ = 8): seconds and peak memory
      per phase;
  (c) scoring memory at the model's vocabulary: loss.denoiser_scores (head at the scored positions,
      row-chunked log-softmax) against full logits + log_softmax, without and with gradient;
  (d) (a) and (b) again for Dream-7B's shape (grouped KV heads, biases, 152k vocabulary);
  (e) the memory plan's prediction (bench/memory_plan.py) beside every measured round.

Everything that does not fit (or fails) is skipped with the reason in its row; the table goes to
stdout and to --out (markdown) with a JSON beside it. Without a GPU the check says so and runs the
smoke configuration on the CPU.

    bash bench/gpu_check.sh                      # one H100 / H200: about 5 minutes
    bash bench/gpu_check.sh --smoke              # CPU, shrunken widths, under a minute (CI)
    bash bench/gpu_check.sh --only llada         # one model
"""
import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from unittest import mock

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import eval as E  # noqa: E402
import hub_checkpoint as H  # noqa: E402
import loss as L  # noqa: E402
import memory_plan as MP  # noqa: E402
import model as M  # noqa: E402
import rl_round as R  # noqa: E402
import sample as S  # noqa: E402
import train as T  # noqa: E402
from memtrack import PeakMemory  # noqa: E402

GiB = 2 ** 30


def size(nbytes):
    """Bytes as GiB, or MiB below 1 GiB (the smoke run's tensors are small)."""
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB else f"{nbytes / 2 ** 20:.1f} MiB"


@dataclasses.dataclass
class Setting:
    """Shapes of the check: the official recipe on a GPU, shrunken for --smoke."""
    layers: int = None            # None: the hub model's depth
    widths: dict = None           # ModelConfig overrides (smoke)
    vocab: int = None
    prompt_len: int = 200
    gen_length: int = 256
    block_length: int = 32
    group_size: int = 6
    sample_steps: tuple = (64, 128)
    round_steps: int = 64
    mu: int = 8
    lora_rank: int = 128


SMOKE = {"llada": Setting(layers=2, widths=dict(d_model=128, mlp_hidden=384, n_heads=4, n_kv_heads=4), vocab=2048,
                          prompt_len=16, gen_length=32, block_length=16, group_size=4, sample_steps=(4,),
                          round_steps=2, mu=1, lora_rank=8),
         "dream": Setting(layers=2, widths=dict(d_model=112, mlp_hidden=592, n_heads=7, n_kv_heads=1), vocab=2048,
                          prompt_len=16, gen_length=32, block_length=16, group_size=4, sample_steps=(4,),
                          round_steps=2, mu=1, lora_rank=8)}


# ----------------------------------------------------------------------------------------------
# (a) The reference sampler's cost profile, on any device.

@torch.no_grad()
def full_canvas_reference(model, prompt, *, gen_length, steps, block_length, temperature, mask_id, generator):
    """LLaDA's reference sampler (low-confidence remasking) as its generate.py runs it: the logits of
    the whole canvas every step, float64 Gumbel noise and softmax over the whole canvas, -inf
    confidence outside the current block, a per-row top-k loop. The same transcription as
    tests/reference_sampler.py's llada_reference, written for tensors on any device; the uniforms of
    the open positions are drawn as sample.py draws them (the rest of the canvas gets a constant),
    so a seeded run can be compared with sample.generate token for token."""
    B, P = prompt.shape
    device = prompt.device
    x = torch.cat([prompt, prompt.new_full((B, gen_length), mask_id)], dim=1)  # (B, T)
    attn = torch.ones_like(x, dtype=torch.bool)
    per_block = steps // (gen_length // block_length)
    for start in range(P, P + gen_length, block_length):
        end = start + block_length
        counts = S.linear_schedule(block_length, per_block)  # every row has the whole block masked
        for k in counts:
            mask_index = x == mask_id  # (B, T)
            logits = model(x, attention_mask=attn).clone()  # (B, T, V): the whole canvas
            logits[:, :, mask_id] = float("-inf")
            if k == 0:
                continue
            open_now = torch.zeros_like(mask_index)
            open_now[:, start:end] = mask_index[:, start:end]
            m, V = int(open_now[0].sum()), logits.shape[-1]
            if temperature > 0:
                u = torch.rand((B, m, V), dtype=torch.float64, generator=generator, device=generator.device).to(device)
                noise = torch.full((B, x.shape[1], V), 0.5, dtype=torch.float64, device=device)  # (B, T, V)
                noise[open_now] = u.view(-1, V)  # row-major: row b's j-th open position takes u[b, j]
                x0 = torch.argmax(logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature, dim=-1)
            else:
                x0 = logits.argmax(-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)  # (B, T, V)
            confidence = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)  # (B, T)
            confidence[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, confidence, float("-inf"))
            for b in range(B):  # the reference's per-row top-k; a stable sort sends ties to the left
                candidates = torch.nonzero(open_now[b]).squeeze(1)
                order = torch.sort(confidence[b, candidates], descending=True, stable=True).indices[:k]
                x[b, candidates[order]] = x0[b, candidates[order]]
    return x


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(policy, cfg, s, device, steps):
    """Completion tokens/s of sample.generate and of the full-canvas reference on the same prompts."""
    prompt = R.synthetic_prompt(cfg, s.prompt_len).to(device).repeat(s.group_size, 1)
    attn = torch.ones_like(prompt, dtype=torch.bool)
    out = {}
    policy.eval()
    with T.gathered(policy):
        with torch.no_grad():  # warm-up: the first CUDA calls pay for kernel selection, not the sampler
            policy(torch.cat([prompt, prompt[:, :s.gen_length]], 1), attention_mask=None)
        for name in ("generate", "reference"):
            gen = torch.Generator(device=device).manual_seed(0)
            sync(device)
            t = time.perf_counter()
            with PeakMemory(device) as mem:
                if name == "generate":
                    canvas = S.generate(policy, prompt, gen_length=s.gen_length, steps=steps, block_length=s.block_length,
                                        temperature=1.0, mask_id=cfg.mask_id, attention_mask=attn, generator=gen)
                else:
                    canvas = full_canvas_reference(policy, prompt, gen_length=s.gen_length, steps=steps,
                                                   block_length=s.block_length, temperature=1.0, mask_id=cfg.mask_id,
                                                   generator=gen)
                sync(device)
            seconds = time.perf_counter() - t
            out[name] = {"seconds": seconds, "tokens_per_s": s.group_size * s.gen_length / seconds,
                         "peak_bytes": mem.peak, "canvas": canvas}
    same = (out["generate"]["canvas"] == out["reference"]["canvas"]).all(dim=1)
    for v in out.values():
        del v["canvas"]
    out["ratio"] = out["generate"]["tokens_per_s"] / out["reference"]["tokens_per_s"]
    out["identical_rows"] = f"{int(same.sum())}/{len(same)}"
    return out


# ----------------------------------------------------------------------------------------------
# (c) Scoring memory: the head at the scored positions against full logits.

def naive_scores(model, prompt_ids, x0, mask, mask_id):
    """Full logits of the coupled pair, log_softmax over the completion slice, gathered: the plain
    way the official trainer scores, for its memory."""
    P, (B, Lc) = prompt_ids.shape[1], x0.shape
    masks = torch.stack([mask, ~mask])  # (2, B, L)
    x_t = torch.cat([prompt_ids.expand(2, B, P), x0.expand(2, B, Lc).masked_fill(masks, mask_id)], -1).view(2 * B, P + Lc)
    logits = model(x_t)[:, P:]  # (2B, L, V)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, x0.repeat(2, 1)[..., None])[..., 0]  # (2B, L)
    return 0.5 * (logp.view(2, B, Lc) * masks).sum((0, 2))  # (B,)


def scoring_memory(policy, cfg, s, device):
    """Peak bytes of scoring G completions (one draw) both ways, without and with gradient."""
    g = torch.Generator().manual_seed(0)
    prompt = R.synthetic_prompt(cfg, s.prompt_len).to(device).repeat(s.group_size, 1)
    x0 = torch.randint(0, cfg.eos_id, (s.group_size, s.gen_length), generator=g).to(device)
    mask = L.forward_process(0, s.group_size, s.gen_length, 1, device)[0]
    out = {}
    policy.train()
    for grad in (False, True):
        for name in ("gathered", "full_logits"):
            with torch.set_grad_enabled(grad), PeakMemory(device) as mem:
                if name == "gathered":
                    scores = L.denoiser_scores(policy, prompt, x0, mask, mask_id=cfg.mask_id, estimator="logprob")
                else:
                    scores = naive_scores(policy, prompt, x0, mask, cfg.mask_id)
                if grad:
                    scores.sum().backward()
                sync(device)
            policy.zero_grad(set_to_none=True)
            out[f"{name}_{'grad' if grad else 'no_grad'}"] = mem.peak - mem.base
    return out


# ----------------------------------------------------------------------------------------------
# One model: build, (a), (b), (c), plan.

def build(family, s, device, dtype, workdir):
    """train.py's build_models on a config-only directory: random weights made on the device."""
    directory = os.path.join(workdir, family)
    overrides = H.hub_overrides(family, **(s.widths or {}), **({"vocab_size": s.vocab} if s.vocab else {}))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(H.hub_config(family, s.layers, **overrides), f)
    args = R.round_args(directory, dtype=dtype, gen_length=s.gen_length, block_length=s.block_length,
                        group_size=s.group_size, diffusion_steps=s.round_steps, mu=s.mu, lora_rank=s.lora_rank)
    with mock.patch.object(M, "load_model", R.random_loader(device)):
        policy, ref, optimizer = R.build(args, device)
    return policy, ref, optimizer, args


def plan_of(family, s, args, device):
    """The memory plan of the round (b) measures: one process, its first round."""
    return MP.Plan(family=family, n_layers=s.layers, gpus=1, dtype=args.dtype, lora_rank=args.lora_rank,
                   lora_dropout=args.lora_dropout, grad_ckpt=bool(args.grad_ckpt), rollout_batch=s.group_size,
                   prompt_len=s.prompt_len, gen_length=s.gen_length, block_length=s.block_length,
                   reference=args.beta > 0, mu=args.mu, first_round=True, foreach=device.type == "cuda", vocab_size=s.vocab,
                   widths=s.widths)


DEADLINE = [float("inf")]  # time.time() after which no new part starts (--budget_s)


def attempt(rows, label, fn):
    """Run one part; on failure (out of memory included) record why and go on."""
    if time.time() > DEADLINE[0]:
        rows.append(("skipped", label, "time budget (--budget_s) spent"))
        return None
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the check must reach its table whatever breaks
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        reason = "out of memory" if oom else f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(("skipped", label, reason))
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def check_model(family, s, device, dtype, workdir, rows, results):
    name = MP.MODELS[family]
    built = attempt(rows, f"{name}: build", lambda: build(family, s, device, dtype, workdir))
    if built is None:
        return
    policy, ref, optimizer, args = built
    cfg = policy.config
    rows.append(("model", name, f"{cfg.n_layers} layers, d {cfg.d_model}, V {cfg.vocab_size}, "
                 f"{sum(p.numel() for p in policy.parameters()) / 1e9:.2f}B parameters, {dtype}, "
                 f"LoRA r {args.lora_rank}, activation checkpointing {'on' if args.grad_ckpt else 'off'}"))
    res = results.setdefault(name, {})
    for steps in s.sample_steps:  # (a) / (d)
        r = attempt(rows, f"{name}: sampler, {steps} steps", lambda: throughput(policy, cfg, s, device, steps))
        if r:
            res[f"sampler_{steps}"] = r
            rows.append(("(a) sampler", f"{name}, {steps} steps",
                         f"generate {r['generate']['tokens_per_s']:.1f} tok/s, reference {r['reference']['tokens_per_s']:.1f} tok/s, "
                         f"ratio {r['ratio']:.2f}; identical rows {r['identical_rows']}; peak "
                         f"{size(r['generate']['peak_bytes'])} / {size(r['reference']['peak_bytes'])}"))
    prompt = R.synthetic_prompt(cfg, s.prompt_len)
    r = attempt(rows, f"{name}: RL round", lambda: R.rl_round(policy, ref, optimizer, args, prompt, device))  # (b) / (d)
    if r:
        res["round"] = r
        plan = attempt(rows, f"{name}: plan", lambda: MP.plan_round(plan_of(family, s, args, device)))  # (e)
        for phase in R.PHASES:
            m = r[phase]["peak_bytes"]
            text = f"{r[phase]['seconds']:.2f} s, peak {size(m)}"
            if plan:
                p = plan[phase]["total"]
                text += f"; plan {size(p)} (plan / measured {p / m:.2f})"
            rows.append(("(b) round", f"{name}, {phase}", text))
        if plan:
            res["plan"] = {k: v["total"] for k, v in plan.items()}
        rows.append(("(b) round", f"{name}, metrics", json.dumps({k: round(v, 4) for k, v in r["metrics"].items()})))
    r = attempt(rows, f"{name}: scoring memory", lambda: scoring_memory(policy, cfg, s, device))  # (c)
    if r:
        res["scoring_memory"] = r
        rows.append(("(c) scoring", name, ", ".join(f"{k} {size(v)}" for k, v in r.items()) +
                     f"; full / gathered: {r['full_logits_no_grad'] / max(r['gathered_no_grad'], 1):.1f}x (no grad), "
                     f"{r['full_logits_grad'] / max(r['gathered_grad'], 1):.1f}x (grad)"))
    del policy, ref, optimizer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, shrunken widths and lengths: the code paths in under a minute")
    p.add_argument("--only", choices=sorted(MP.MODELS), nargs="+", default=["llada", "dream"], help="models to check")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="train.py --dtype of the check")
    p.add_argument("--out", default=None, help="markdown table (default bench/results/gpu_check[-smoke].md; JSON beside it)")
    p.add_argument("--budget_s", type=float, default=420, help="start no new part after this many seconds")
    a = p.parse_args(argv)
    started = time.time()
    DEADLINE[0] = started + a.budget_s
    rows = []
    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        rows.append(("note", "device", "no CUDA device: ran the smoke configuration on the CPU instead"))
        a.smoke = True
    device = torch.device("cuda", 0) if cuda and not a.smoke else torch.device("cpu")
    rank, world, _, why = E.setup_distributed(a.dtype)  # bf16: FSDP2 over a group of one, as train.py
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu"
    rows.append(("setup", "device", f"{device} ({where}); {why}; torch {torch.__version__}"))
    results = {"device": str(device), "name": where, "dtype": a.dtype, "smoke": a.smoke}
    with tempfile.TemporaryDirectory() as workdir:
        for family in a.only:
            s = SMOKE[family] if a.smoke else Setting()
            check_model(family, s, device, a.dtype, workdir, rows, results)
    rows.append(("setup", "wall clock", f"{time.time() - started:.0f} s"))
    table = ["| part | what | result |", "|---|---|---|"] + [f"| {a_} | {b} | {c} |" for a_, b, c in rows]
    print("\n".join(table))
    out = a.out or os.path.join(HERE, "results", "gpu_check-smoke.md" if a.smoke else "gpu_check.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(table) + "\n")
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({"rows": rows, "results": results}, f, indent=1, default=float)
    print(f"written {out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
