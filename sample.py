"""sample.py — the samplers of masked diffusion LLMs, batched and seeded: LLaDA's low-confidence (and
random) remasking, by semi-autoregressive blocks, and Dream's entropy order. GDSD (arXiv 2605.29398)
trains on rollouts of exactly these procedures.

Imports nothing from this project: copy it and use it with any denoiser, i.e. any callable
    model(input_ids (N, T) long, attention_mask=None | (N, T) 1 = real token, 0 = left padding,
          logits_mask=None | (N, T) bool) -> logits (N, T, V), or (n_selected, V) at logits_mask's
          True positions in row-major order.
Logits are ALIGNED: position i predicts token i. A Dream-style model (position i predicts token i+1)
needs a wrapper that shifts them: z[:, 0] = out[:, 0], z[:, i] = out[:, i - 1].
Optionally, for the KV caches (cache="prefix" | "dual"), model(..., past=dict, window=None | (lo, hi)):
window=None fills `past` with the keys/values of the whole canvas; window=(lo, hi) recomputes only
positions lo..hi-1 (and lo-1 for a shifted model) against the keys/values in `past` and returns the
logits at logits_mask[:, lo:hi]. model.py's Denoiser implements it; with a model whose forward takes
no `past`, every cache mode runs the exact procedure.

    gen = torch.Generator(device=prompt_ids.device).manual_seed(0)
    canvas = generate(model, prompt_ids, gen_length=256, steps=128, block_length=32, temperature=1.0,
                      mask_id=tok.mask_id, attention_mask=attn, generator=gen)   # (B, P + 256)

The procedure. The canvas is the prompt followed by L = gen_length mask tokens, decoded in blocks of
block_length, left to right, steps / num_blocks steps per block. A step runs the model once, proposes
a candidate x̂ for every still-masked position of the block, scores it (its confidence) and reveals
the k most confident; revealed tokens and the prompt never change.
    remasking       candidate x̂                               confidence             k per step
    low_confidence  argmax exp(z) / (-log u)^τ  (Gumbel-max)   softmax(z)[x̂]          linear_schedule
    random          same                                        r ~ U[0, 1)            linear_schedule
    entropy         a draw of top_p(softmax(z / τ))            -entropy of that dist. dream_schedule
τ = 0 takes x̂ = argmax z (no randomness for low_confidence and entropy).
cache and threshold (Fast-dLLM's KV caches and parallel decoding, see generate) trade exactness for
speed: they sample from another rollout policy than the one the denoiser defines.

Symbols: B rows, P prompt length, L completion length, T = P + L, V vocabulary size, m masked
positions left in the current block (the same in every row without a threshold), k tokens revealed
per row at a step.

Random numbers all come from `generator` (the global RNG when None), float64, drawn on its device, at
each step that runs: u (B·m, V) if τ > 0, then r (B·m,) if remasking == "random"; row b's j-th
masked position (left to right) takes row b·m + j. A plain per-row loop (tests/reference_sampler.py)
therefore reproduces every token, and a CPU generator gives the same numbers on every device.

Departures from the reference code (LLaDA's generate.py, Dream's generation_utils.py) are stated
where they are made, each marked "departure".
"""
import inspect
import math

import torch
import torch.nn.functional as F

REMASKING = ("low_confidence", "random", "entropy")
CACHE = ("none", "prefix", "dual")

# Dream's time grid t_i = linspace(1, eps, steps + 1); eps is its generation_utils default.
DREAM_EPS = 1e-3

# Dream adds this inside the log of its entropy, so zero probabilities contribute 0·log(1e-10) = 0.
ENTROPY_EPS = 1e-10


# ----------------------------------------------------------------------------------------------
# How many tokens each step reveals.

def linear_schedule(num_masked, steps):
    """LLaDA's schedule: k_i = floor(n / S) + [i < n mod S], i = 0..S-1 (Σ k_i = n).

    LLaDA's noise schedule is linear in time, so each of the S steps of a block should reveal the
    same expected number of tokens; the remainder goes to the earliest steps. Returns a list of S ints.
    """
    base, extra = divmod(num_masked, steps)
    return [base + (i < extra) for i in range(steps)]


def dream_schedule(num_masked, steps, eps=DREAM_EPS):
    """Dream's schedule: with t = linspace(1, eps, S + 1) and n_i positions still masked before
    step i, k_i = floor(n_i · (1 - t_{i+1} / t_i)) for i < S-1 and k_{S-1} = n_{S-1} (the rest).

    Computed in float32 on the CPU, the arithmetic of Dream's code, so the integer counts agree with
    it (its first steps often reveal nothing: e.g. n = 32, S = 32 gives k_0 = 0). Returns S ints.
    """
    t = torch.linspace(1, eps, steps + 1, dtype=torch.float32)  # (S+1,)
    left, counts = num_masked, []
    for i in range(steps):
        if i == steps - 1:
            k = left
        else:
            k = int(torch.tensor(float(left), dtype=torch.float32) * (1 - t[i + 1] / t[i]))
        counts.append(k)
        left -= k
    return counts


# ----------------------------------------------------------------------------------------------
# Candidate tokens and their confidence. logits (..., V) -> (...), one entry per masked position.

def gumbel_argmax(logits, u, temperature):
    """x̂ = argmax_v exp(z_v) / (-log u_v)^τ: a sample of softmax(z / τ) (LLaDA's Gumbel-max).

    Equivalent to argmax z_v/τ + g_v with Gumbel noise g = -log(-log u). In float64, as LLaDA
    (arXiv:2409.02908: low-precision Gumbel-max truncates the noise and lowers the effective
    temperature). float64 exp overflows only for logits above 709. u (..., V) uniforms in [0, 1).
    """
    noise = torch.log(u).neg_()  # (..., V) -log u
    if temperature != 1:
        noise.pow_(temperature)  # skipped at τ = 1, where x^1 = x exactly
    # in place on fresh float64 copies: large vocabularies make every temporary costly
    z = logits.to(torch.float64, copy=True)  # (..., V)
    return torch.argmax(z.exp_().div_(noise), dim=-1)


def top_p_filter(logits, top_p):
    """Nucleus filter: keep a token iff the probability of the tokens ranked strictly above it is
    at most top_p (so the top token always stays); the others get -inf.

    Ranks by a stable descending sort, so equal logits are ranked by vocabulary index.
    """
    z_sorted, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (..., V)
    upto = F.softmax(z_sorted, dim=-1).cumsum(-1)  # (..., V) mass of ranks 0..j
    drop_sorted = torch.zeros_like(upto, dtype=torch.bool)
    drop_sorted[..., 1:] = upto[..., :-1] > top_p  # the mass strictly above rank j exceeds top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def neg_entropy(logits):
    """Σ_v p_v · log(p_v + 1e-10) with p = softmax(z): Dream's confidence (higher = more certain).

    The 1e-10 is Dream's; it keeps filtered (p = 0) tokens at 0. logits float64.
    """
    p = F.softmax(logits, dim=-1)  # (..., V)
    return (p * torch.log(p + ENTROPY_EPS)).sum(-1)


def candidate_confidence(logits, x_hat):
    """softmax(z)[x̂], LLaDA's confidence.

    Departure: always in float64 (LLaDA's first release; its current code uses the model's dtype,
    where bf16 ties are common).
    """
    p = F.softmax(logits, dim=-1, dtype=torch.float64)  # (..., V) upcast inside, no extra copy
    return p.gather(-1, x_hat.unsqueeze(-1)).squeeze(-1)


def entropy_candidates(logits, temperature, top_p, u):
    """Dream's entropy algorithm at one step: z' = top_p(z / τ); x̂ ~ softmax(z') (argmax z' at
    τ = 0); confidence = neg_entropy(z'). Returns (x̂, confidence). u (..., V), None at τ = 0.

    Departure: the draw is the float64 Gumbel-max argmax(z' - log(-log u)), the same categorical
    distribution as Dream's torch.multinomial draw but another random stream. Dream's alg_temp
    (random position order) and top_k are not implemented.
    """
    z = logits.to(torch.float64, copy=True)  # (..., V)
    if temperature > 0:
        z.div_(temperature)
    if top_p is not None and top_p < 1:
        z = top_p_filter(z, top_p)
    if temperature > 0:
        gumbel = torch.log(u).neg_().log_().neg_()  # (..., V) g = -log(-log u)
        x_hat = torch.argmax(gumbel.add_(z), dim=-1)
    else:
        x_hat = torch.argmax(z, dim=-1)
    return x_hat, neg_entropy(z)


def top_k_positions(confidence, k):
    """Indices (B, k) of the k most confident entries of each row of confidence (B, n).

    Departure: ties go to the lower index (a stable descending sort); torch.topk, used by both
    references, leaves the order of ties unspecified.
    """
    return torch.sort(confidence, dim=-1, descending=True, stable=True).indices[:, :k]


def reveal_most_confident(block, x_hat, confidence, k):
    """block (B, n) with x_hat written at the k most confident positions of each row; k is an int or,
    under a threshold, a (B,) tensor of per-row counts."""
    if isinstance(k, int):
        pick = top_k_positions(confidence, k)  # (B, k)
        return block.scatter(1, pick, x_hat.gather(1, pick))
    pick = top_k_positions(confidence, int(k.max()))  # (B, k_max)
    chosen = torch.arange(pick.shape[1], device=k.device) < k[:, None]  # (B, k_max) each row's first k
    take = torch.zeros_like(block, dtype=torch.bool).scatter(1, pick, chosen)  # (B, n)
    return torch.where(take, x_hat, block)


def _uniform(shape, generator, device):
    """float64 uniforms in [0, 1) from `generator` (global RNG if None), drawn on its device."""
    where = device if generator is None else generator.device
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=where).to(device)


def candidates(logits, remasking, temperature, top_p, generator):
    """(x̂, confidence) of every masked position, logits (n, V) in the draw order of the header."""
    u = _uniform(logits.shape, generator, logits.device) if temperature > 0 else None  # (n, V)
    if remasking == "entropy":
        return entropy_candidates(logits, temperature, top_p, u)
    x_hat = gumbel_argmax(logits, u, temperature) if temperature > 0 else logits.argmax(-1)  # (n,)
    if remasking == "low_confidence":
        return x_hat, candidate_confidence(logits, x_hat)
    return x_hat, _uniform(x_hat.shape, generator, logits.device)  # "random": the order is noise


# ----------------------------------------------------------------------------------------------
# The sampler.

def _num_blocks(gen_length, steps, block_length):
    """L / block_length, after checking that the blocks tile the completion and share the steps."""
    for name, v in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}; "
                         f"use a block_length that divides it (block_length = gen_length: one block)")
    n = gen_length // block_length
    if steps < n:
        raise ValueError(f"steps {steps} < number of blocks {n} (gen_length {gen_length} / block_length "
                         f"{block_length}): every block needs at least one step; raise steps or block_length")
    if steps % n:
        raise ValueError(f"steps {steps} is not divisible by the number of blocks {n}: every block gets the "
                         f"same number of steps; use steps = {steps // n * n} or {(steps // n + 1) * n}")
    return n


def _takes_past(model):
    """Whether the denoiser implements the KV-cache arguments of the calling convention."""
    try:
        return "past" in inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):  # a callable without a signature (a builtin): no cache
        return False


def _selected_logits(model, x, attn, logits_mask, n, token_ids, **cache):
    """The model's logits (n, V) at logits_mask, held to the calling convention."""
    logits = model(x, attention_mask=attn, logits_mask=logits_mask, **cache)
    if logits.dim() == 3 and logits.shape[:2] == x.shape:
        logits = logits[logits_mask]  # a denoiser that ignores logits_mask: its full LM head ran
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"the denoiser returned logits of shape {tuple(logits.shape)} for a logits_mask "
                         f"selecting {n} positions; it must return (n_selected, V) (or (N, T, V)), "
                         "see the calling convention at the top of sample.py")
    for name, v in token_ids.items():
        if v >= logits.shape[-1]:
            raise ValueError(f"{name} {v} is outside the model's vocabulary of {logits.shape[-1]} tokens "
                             f"(the logits' last dimension); pass the id of the checkpoint's tokenizer")
    return logits


@torch.no_grad()
def generate(model, prompt_ids, *, gen_length, steps, block_length, mask_id, temperature=0.0,
             remasking="low_confidence", attention_mask=None, generator=None, top_p=None,
             eos_id=None, suppress_eos=False, cache="none", threshold=None):
    """Fill gen_length masked positions after each prompt; returns the canvas (B, P + gen_length) long.

    model          a denoiser (calling convention at the top of the file); called once per step
    prompt_ids     (B, P) long; left-padded when rows differ in length (never modified)
    gen_length     completion length L: every one of the L positions is filled
    steps          denoising steps in total, a multiple of num_blocks = L / block_length (as in LLaDA)
    block_length   semi-autoregressive block length (= gen_length: one block, Dream's setting)
    mask_id        the mask token id
    temperature    τ >= 0; 0 = greedy (deterministic)
    remasking      "low_confidence" | "random" (LLaDA) | "entropy" (Dream), see the header
    attention_mask (B, P) 1 = real prompt token, 0 = left padding; None = no padding
    generator      torch.Generator for every random draw (on the model's device or the CPU); None =
                   the global RNG. The draw order is in the header.
    top_p          nucleus mass for remasking="entropy" (None or 1 = no filter)
    eos_id, suppress_eos  EOS logits set to -inf: EOS is never sampled (LLaDA's logits_eos_inf)
    cache          "none": the exact procedure. "prefix" | "dual" (Fast-dLLM's KV caches; a model
                   without `past` runs the exact procedure): each block's first step runs the whole
                   canvas and keeps every layer's keys/values; its later steps recompute only the block
                   and all positions after it ("prefix") or only the block ("dual"), attending to the
                   cached keys/values of the rest. Attention is bidirectional, so those go stale as
                   tokens are revealed: an approximation of the exact sampler, exact at each block's
                   first step.
    threshold      None, or a probability in (0, 1] (remasking="low_confidence"): each step also
                   reveals every candidate whose confidence is at least threshold, and a block ends when
                   it has no mask left (Fast-dLLM's parallel decoding). Departure from Fast-dLLM: it
                   reveals at least one token per step and ignores `steps`; here the schedule's k (at
                   least 1) is the floor, so `steps` bounds the forward passes. steps = gen_length is its
                   rule. Rows then differ in their counts; candidates are drawn for each row's masked
                   positions, row-major as in the header.
    """
    if not (isinstance(prompt_ids, torch.Tensor) and prompt_ids.dim() == 2 and prompt_ids.dtype == torch.long):
        got = (f"{tuple(prompt_ids.shape)} of dtype {prompt_ids.dtype}" if isinstance(prompt_ids, torch.Tensor)
               else type(prompt_ids).__name__)
        raise ValueError(f"prompt_ids must be a (B, P) torch.long tensor, got {got}")
    if attention_mask is not None and attention_mask.shape != prompt_ids.shape:
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt_ids.shape)}, got "
                         f"{tuple(attention_mask.shape)}; the completion positions are added by generate")
    num_blocks = _num_blocks(gen_length, steps, block_length)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a token id (int >= 0), got {mask_id!r}")
    if top_p is not None and not (remasking == "entropy" and isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p belongs to Dream's sampler (remasking='entropy') and top_p must be in (0, 1]; got "
                         f"top_p={top_p!r} with remasking={remasking!r} (LLaDA's samples the full distribution)")
    if suppress_eos and eos_id is None:
        raise ValueError("suppress_eos needs eos_id (the end-of-sequence token id)")
    if eos_id is not None and not suppress_eos:
        raise ValueError("eos_id alone changes nothing: pass suppress_eos=True (EOS is never sampled) or drop eos_id")
    if cache not in CACHE:
        raise ValueError(f"cache must be one of {CACHE}, got {cache!r}")
    if threshold is not None and not (remasking == "low_confidence" and isinstance(threshold, (int, float))
                                      and 0 < threshold <= 1):
        raise ValueError(f"threshold compares LLaDA's confidence softmax(z)[x̂] (remasking='low_confidence'): "
                         f"threshold must be a probability in (0, 1]; got threshold={threshold!r} with "
                         f"remasking={remasking!r}")
    if generator is not None and generator.device.type not in (prompt_ids.device.type, "cpu"):
        raise ValueError(f"generator is on {generator.device} but the prompt on {prompt_ids.device}: "
                         f"use a generator on the model's device or on the CPU")

    B, P = prompt_ids.shape
    T, device = P + gen_length, prompt_ids.device
    x = torch.cat([prompt_ids, prompt_ids.new_full((B, gen_length), mask_id)], dim=1)  # (B, T) a new tensor
    attn = None
    if attention_mask is not None:
        # the completion positions are real tokens (masks the model must fill), so always attended
        attn = torch.cat([attention_mask.to(device=device, dtype=torch.bool),
                          torch.ones(B, gen_length, dtype=torch.bool, device=device)], dim=1)  # (B, T)
    # Departure: with remasking="entropy" and block_length < gen_length, Dream's schedule and order
    # run block by block (a semi-autoregressive extension); block_length = gen_length is Dream's own.
    schedule = (dream_schedule if remasking == "entropy" else linear_schedule)(block_length, steps // num_blocks)
    # Departure: the mask token is never a candidate (its logit is -inf before sampling and before the
    # confidence). In the references a sampled mask token leaves its position masked after the step
    # that chose it, and a mask can then survive the last step.
    banned = torch.tensor([mask_id] + ([eos_id] if suppress_eos else []), dtype=torch.long, device=device)
    token_ids = {"mask_id": mask_id, **({"eos_id": eos_id} if suppress_eos else {})}
    cached = cache != "none" and _takes_past(model)
    past = {}  # the model's keys/values, refilled at each block's first step

    for lo in range(P, T, block_length):
        hi = lo + block_length
        refresh = True
        for k in schedule:
            masked = x[:, lo:hi] == mask_id  # (B, block_length)
            if threshold is not None:
                if not masked.any():
                    break  # the threshold completed the block early
                k = max(k, 1)
            elif k == 0:
                # Departure: a step that reveals nothing (Dream's schedule has such steps; LLaDA's when
                # steps per block > block_length) runs no forward pass and draws nothing; the references
                # run the model and discard its output.
                continue
            # Departure: only the current block's masked positions are candidates, and the LM head
            # runs only there; the references compute the whole canvas's logits, put -inf outside and
            # draw noise for every position. Same tokens revealed, another random stream. (The LLaDA
            # code would also treat a mask token inside the prompt as a candidate; the prompt never changes here.)
            logits_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
            logits_mask[:, lo:hi] = masked  # (B, T)
            if not cached:
                cache_args = {}
            elif refresh:
                cache_args, refresh = {"past": past}, False  # the whole canvas; keys/values kept
            else:
                cache_args = {"past": past, "window": (lo, hi if cache == "dual" else T)}
            logits = _selected_logits(model, x, attn, logits_mask, int(masked.sum()), token_ids, **cache_args)  # (n, V)
            x_hat, confidence = candidates(logits.index_fill(-1, banned, float("-inf")), remasking,
                                           temperature, top_p, generator)  # (n,), (n,)
            # back to block columns, row-major as selected; revealed positions can never be picked
            x_hat = x[:, lo:hi].masked_scatter(masked, x_hat)  # (B, block_length)
            confidence = torch.full(masked.shape, float("-inf"), dtype=torch.float64, device=device).masked_scatter(
                masked, confidence.to(torch.float64))  # (B, block_length)
            if threshold is not None:  # per row: every candidate at least that confident, at least k
                above = (confidence >= threshold).sum(1)  # (B,)
                k = torch.minimum(above.clamp(min=k), masked.sum(1))  # (B,) never more than is left
            block = reveal_most_confident(x[:, lo:hi], x_hat, confidence, k)  # (B, block_length)
            # out of place: a model that kept a reference to x must not see it change
            x = torch.cat([x[:, :lo], block, x[:, hi:]], dim=1)  # (B, T)
    return x
