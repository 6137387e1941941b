"""sample.py — the samplers of masked diffusion LLMs: LLaDA's low-confidence (and random) remasking
and Dream's entropy order, batched over rows, reproducible from a torch.Generator.

Paper: GDSD (arXiv 2605.29398) trains on rollouts of exactly these procedures.
Imports nothing from this project: copy the file into another repository and use it with any
denoiser, i.e. any callable

    model(input_ids, attention_mask=None, logits_mask=None)
        input_ids (N, T) long; attention_mask (N, T), 1 = real token (left padding 0), or None;
        logits_mask None -> logits (N, T, V); logits_mask (N, T) bool -> logits (n_selected, V) of
        the selected positions in row-major order. Logits are ALIGNED: position i predicts token i,
        so the sampler never shifts (Dream's shift is undone by the model or by the wrapper below).

A Hugging Face style model plugs in with a 3-line wrapper (`shift=True` for Dream-style models,
whose position i predicts token i+1):

    def as_denoiser(hf_model, shift=False):
        def denoiser(ids, attention_mask=None, logits_mask=None):
            z = hf_model(ids, attention_mask=attention_mask).logits                # (N, T, V)
            z = torch.cat([z[:, :1], z[:, :-1]], dim=1) if shift else z            # aligned
            return z if logits_mask is None else z[logits_mask]                    # (n, V)
        return denoiser

How to use (call model.eval() first if it has dropout):

    gen = torch.Generator(device=prompt_ids.device).manual_seed(0)
    canvas = generate(model, prompt_ids, gen_length=256, steps=128, block_length=32, temperature=1.0,
                      mask_id=tok.mask_id, attention_mask=attn, generator=gen)   # (B, P + 256)
    completions = canvas[:, prompt_ids.shape[1]:]

The procedure (one canvas per row: the prompt, then gen_length mask tokens)
    The completion is cut into blocks of block_length, decoded left to right; steps // num_blocks
    denoising steps per block. Each step runs the model once, proposes a candidate token x̂ for
    every still-masked position of the current block, scores it (its confidence) and reveals the
    k most confident, k from the step's schedule. Revealed tokens and the prompt never change.
      remasking       candidate x̂                              confidence             schedule k
      low_confidence  argmax exp(z) / (-log u)^τ  (Gumbel-max)  softmax(z)[x̂]          even split
      random          same                                       r ~ U[0, 1)            even split
      entropy         sample of top_p(softmax(z / τ))           -entropy of that dist.  Dream's
    τ = 0 takes x̂ = argmax z (no randomness at all for low_confidence and entropy).

Random numbers. Every draw comes from `generator` (the global RNG when None), in float64, on the
generator's device (then moved to the logits' device), in this order at each step that runs:
    u (B, m, V) float64 uniforms   if τ > 0          (the Gumbel / categorical draw)
    r (B, m)    float64 uniforms   if remasking == "random"
where m is the number of still-masked positions of the current block (equal in every row: all rows
follow the same schedule) and u[b, j] belongs to the j-th masked position of row b, left to right.
So a seeded batch is reproducible, rows draw different numbers, and a plain per-row loop
(tests/reference_sampler.py) reproduces every token. A CPU generator gives the same numbers on
every device; a generator on the model's device avoids copying u every step.

Departures from the reference code (LLaDA generate.py; Dream generation_utils.py), each repeated
where it is made:
 1. [generate] Only the current block's masked positions are candidates and the LM head runs only
    there (logits_mask); the references compute the whole canvas's logits and put -inf outside.
    The tokens revealed are the same. (The LLaDA code would also treat a mask token inside the
    prompt as a candidate; here the prompt is never changed.)
 2. [generate] Random numbers are drawn for the candidate positions only, in the fixed order above;
    the references draw noise for the whole canvas (and Dream samples through torch.multinomial).
    Same distributions, different streams: a seed does not reproduce the references' samples.
 3. [top_k_positions] Ties in confidence go to the leftmost position; torch.topk, used by both
    references, leaves the order of ties unspecified.
 4. [candidate_confidence] The softmax of the confidence is computed in float64 (LLaDA's first
    release; its current code uses the model's dtype, where bf16 ties are common).
 5. [entropy_candidates] Dream's categorical draw is a float64 Gumbel-max over the tempered, top-p
    filtered logits (the same distribution as its torch.multinomial draw); entropy in float64.
    Dream's alg_temp (random position order) and top_k are not implemented.
 6. [generate] A step whose schedule reveals nothing (Dream's schedule has such steps; LLaDA's when
    steps per block > block_length) is skipped: no forward pass, no random draw. The references run
    the model and discard its output.
 7. [generate] With remasking="entropy" and block_length < gen_length, Dream's schedule and order
    are applied block by block (a semi-autoregressive extension); block_length == gen_length is
    Dream's procedure.
 8. [generate] defer_eos implements what LLaDA's confidence_eos_eot_inf describes (EOS / EoT
    candidates are revealed last); its code as written changes the EoT logit instead, and, at τ = 0
    only, the EOS logit too (its noise helper returns the logits tensor itself there).
 9. [generate] The mask token is never a candidate: its logit is set to -inf before sampling and
    before the confidence. In the references a sampled mask token leaves its position masked after
    the step that chose it, and a mask can then survive the last step.
"""
import math

import torch
import torch.nn.functional as F

REMASKING = ("low_confidence", "random", "entropy")

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
# Candidate tokens and their confidence.

def gumbel_argmax(logits, u, temperature):
    """x̂ = argmax_v exp(z_v) / (-log u_v)^τ: a sample of softmax(z / τ) (LLaDA's Gumbel-max).

    Equivalent to argmax z_v/τ + g_v with Gumbel noise g = -log(-log u). In float64, as LLaDA
    (arXiv:2409.02908: low-precision Gumbel-max truncates the noise and lowers the effective
    temperature). float64 exp overflows only for logits above 709.
    logits (..., V), u (..., V) uniforms in [0, 1) -> (...) long.
    """
    noise = torch.log(u).neg_()  # (..., V) -log u
    if temperature != 1:
        noise.pow_(temperature)  # skipped at τ = 1, where x^1 = x exactly
    # in place on fresh float64 copies: large vocabularies make every temporary costly
    z = logits.to(torch.float64, copy=True)  # (..., V)
    return torch.argmax(z.exp_().div_(noise), dim=-1)


def top_p_filter(logits, top_p):
    """Nucleus filter: keep a token iff the probability of the tokens ranked strictly above it is
    at most top_p (so the top token always stays); the others get -inf. logits (..., V).

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

    logits (..., V) float64 -> (...). The 1e-10 is Dream's; it keeps filtered (p = 0) tokens at 0.
    """
    p = F.softmax(logits, dim=-1)  # (..., V)
    return (p * torch.log(p + ENTROPY_EPS)).sum(-1)


def candidate_confidence(logits, x_hat):
    """softmax(z)[x̂], LLaDA's confidence, in float64. logits (..., V), x_hat (...) -> (...)."""
    p = F.softmax(logits, dim=-1, dtype=torch.float64)  # (..., V) upcast inside, no extra copy
    return p.gather(-1, x_hat.unsqueeze(-1)).squeeze(-1)


def entropy_candidates(logits, temperature, top_p, u):
    """Dream's entropy algorithm at one step: z' = top_p(z / τ); x̂ ~ softmax(z') (argmax z' at
    τ = 0); confidence = neg_entropy(z'). Returns (x̂, confidence), both (...).

    The draw is the float64 Gumbel-max argmax(z' - log(-log u)) (departure 5), the same categorical
    distribution as Dream's torch.multinomial draw. logits (..., V), u (..., V) or None at τ = 0.
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
    """Indices of the k most confident entries of each row, ties to the lower index (departure 3).

    confidence (B, m) -> (B, k) long. A stable descending sort keeps equal values in index order.
    """
    return torch.sort(confidence, dim=-1, descending=True, stable=True).indices[:, :k]


# ----------------------------------------------------------------------------------------------
# Argument checks.

def _check_args(prompt_ids, attention_mask, gen_length, steps, block_length, temperature, remasking,
                mask_id, generator, top_p, eos_id, eot_id, suppress_eos, defer_eos):
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.dtype != torch.long:
        got = tuple(prompt_ids.shape) if isinstance(prompt_ids, torch.Tensor) else type(prompt_ids).__name__
        raise ValueError(f"prompt_ids must be a (B, P) torch.long tensor, got {got}"
                         + (f" of dtype {prompt_ids.dtype}" if isinstance(prompt_ids, torch.Tensor) else ""))
    if prompt_ids.shape[0] == 0:
        raise ValueError("prompt_ids has no rows (B = 0)")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(prompt_ids.shape):
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(prompt_ids.shape)}, got "
                         f"{tuple(attention_mask.shape)}; the completion positions are added by generate")
    for name, v in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}; "
                         f"use a block_length that divides it (block_length = gen_length: one block)")
    num_blocks = gen_length // block_length
    if steps < num_blocks:
        raise ValueError(f"steps {steps} < number of blocks {num_blocks} (gen_length {gen_length} / "
                         f"block_length {block_length}): every block needs at least one step; "
                         f"raise steps or block_length")
    if steps % num_blocks:
        lo, hi = steps // num_blocks * num_blocks, (steps // num_blocks + 1) * num_blocks
        raise ValueError(f"steps {steps} is not divisible by the number of blocks {num_blocks}: every "
                         f"block gets the same number of steps; use steps = {lo} or {hi}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a token id (int >= 0), got {mask_id!r}")
    if top_p is not None:
        if remasking != "entropy":
            raise ValueError(f"top_p belongs to Dream's sampler (remasking='entropy'); LLaDA's "
                             f"remasking={remasking!r} samples the full distribution: drop top_p")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if generator is not None and generator.device.type != prompt_ids.device.type and generator.device.type != "cpu":
        raise ValueError(f"generator is on {generator.device} but the prompt on {prompt_ids.device}: "
                         f"use a generator on the model's device or on the CPU")
    for name, v in (("eos_id", eos_id), ("eot_id", eot_id)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"{name} must be a token id (int >= 0) or None, got {v!r}")
    if (suppress_eos or defer_eos) and eos_id is None:
        raise ValueError("suppress_eos / defer_eos need eos_id (the end-of-sequence token id)")
    if eot_id is not None and not defer_eos:
        raise ValueError("eot_id is only used by defer_eos=True; pass defer_eos=True or drop eot_id")
    if eos_id is not None and not (suppress_eos or defer_eos):
        raise ValueError("eos_id alone changes nothing: pass suppress_eos=True (EOS is never sampled) "
                         "or defer_eos=True (EOS candidates are revealed last), or drop eos_id")


def _block_logits(model, x, attention_mask, logits_mask, batch, m):
    """Logits (B, m, V) at the m selected positions of every row, row-major, per the convention."""
    logits = model(x, attention_mask=attention_mask, logits_mask=logits_mask)
    if logits.dim() == 3 and logits.shape[:2] == x.shape:
        # a denoiser that ignores logits_mask still works, at the cost of its full LM head
        logits = logits[logits_mask]  # (B·m, V)
    if logits.dim() != 2 or logits.shape[0] != batch * m:
        raise ValueError(f"the denoiser returned logits of shape {tuple(logits.shape)} for a logits_mask "
                         f"selecting {batch * m} positions; it must return (n_selected, V) (or (N, T, V)), "
                         "see the calling convention at the top of sample.py")
    return logits.view(batch, m, -1)  # (B, m, V)


def _first_call(model, x, attention_mask, logits_mask, batch, m, mask_id):
    """The first model call: an embedding lookup failing on the canvas most often means mask_id
    is not a token of this model, so that is what the error says."""
    try:
        return _block_logits(model, x, attention_mask, logits_mask, batch, m)
    except IndexError as e:
        raise ValueError(f"the model raised IndexError on the first canvas ({e}); is mask_id {mask_id} "
                         f"(and every prompt id) inside its vocabulary? Pass the checkpoint's mask id") from e


def _check_vocab(vocab_size, mask_id, eos_id, eot_id):
    for name, v in (("mask_id", mask_id), ("eos_id", eos_id), ("eot_id", eot_id)):
        if v is not None and v >= vocab_size:
            raise ValueError(f"{name} {v} is outside the model's vocabulary of {vocab_size} tokens "
                             f"(the logits' last dimension); pass the id of the checkpoint's tokenizer")


def _uniform(shape, generator, device):
    """float64 uniforms in [0, 1) from `generator` (global RNG if None), drawn on its device."""
    where = device if generator is None else generator.device
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=where).to(device)


# ----------------------------------------------------------------------------------------------
# The sampler.

@torch.no_grad()
def generate(model, prompt_ids, *, gen_length, steps, block_length, temperature=0.0,
             remasking="low_confidence", mask_id, attention_mask=None, generator=None, top_p=None,
             eos_id=None, eot_id=None, suppress_eos=False, defer_eos=False):
    """Fill gen_length masked positions after each prompt; returns the canvas (B, P + gen_length) long.

    model          a denoiser (calling convention at the top of the file); called once per step
    prompt_ids     (B, P) long; left-padded when rows differ in length (never modified)
    gen_length     completion length L: every one of the L positions is filled
    steps          denoising steps in total; must be a multiple of num_blocks = L / block_length,
                   each block gets steps / num_blocks (an error otherwise, as in LLaDA's code)
    block_length   semi-autoregressive block length (= gen_length: one block, Dream's setting)
    temperature    τ >= 0; 0 = greedy (deterministic)
    remasking      "low_confidence" | "random" (LLaDA) | "entropy" (Dream), see the module docstring
    mask_id        the mask token id (checked against the logits' vocabulary size on the first call)
    attention_mask (B, P) 1 = real prompt token, 0 = left padding; None = no padding
    generator      torch.Generator for every random draw (on the model's device or the CPU); None =
                   the global RNG. The draw order is in the module docstring.
    top_p          nucleus mass for remasking="entropy" (None or 1 = no filter)
    eos_id, eot_id end-of-sequence / end-of-turn ids, used only by the two switches:
    suppress_eos   EOS logits set to -inf: EOS is never sampled (LLaDA's logits_eos_inf)
    defer_eos      a position whose candidate is EOS (or EoT) gets confidence -inf, so it is revealed
                   only when a step cannot fill its quota otherwise (LLaDA's confidence_eos_eot_inf,
                   as it describes itself; departure 8)

    Per step: logits only at the current block's masked positions (logits_mask; departure 1), one
    candidate and confidence per such position, the top-k per row revealed (k from
    linear_schedule, or dream_schedule for "entropy"; steps with k = 0 are skipped, departure 6).
    Every row reveals the same number of tokens per step, so the selection is one batched sort.
    """
    _check_args(prompt_ids, attention_mask, gen_length, steps, block_length, temperature, remasking,
                mask_id, generator, top_p, eos_id, eot_id, suppress_eos, defer_eos)
    B, P = prompt_ids.shape
    T, device = P + gen_length, prompt_ids.device
    x = torch.cat([prompt_ids, prompt_ids.new_full((B, gen_length), mask_id)], dim=1)  # (B, T) a new tensor
    attn = None
    if attention_mask is not None:
        # the completion positions are real tokens (masks the model must fill), so always attended
        attn = torch.cat([attention_mask.to(device=device, dtype=torch.bool),
                          torch.ones(B, gen_length, dtype=torch.bool, device=device)], dim=1)  # (B, T)
    num_blocks = gen_length // block_length
    schedule = (dream_schedule if remasking == "entropy" else linear_schedule)(block_length, steps // num_blocks)
    deferred = [i for i in (eos_id, eot_id) if i is not None] if defer_eos else []
    deferred = torch.tensor(deferred, dtype=torch.long, device=device)
    banned = torch.tensor([mask_id] + ([eos_id] if suppress_eos else []), dtype=torch.long, device=device)
    checked = False

    for block in range(num_blocks):
        lo, hi = P + block * block_length, P + (block + 1) * block_length
        m = block_length  # masked positions left in this block, the same in every row
        for k in schedule:
            if k == 0:
                continue  # departure 6: nothing to reveal, so no forward pass and no draw
            masked = x[:, lo:hi] == mask_id  # (B, block_length)
            logits_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
            logits_mask[:, lo:hi] = masked  # (B, T) only where a token can be revealed
            if checked:
                logits = _block_logits(model, x, attn, logits_mask, B, m)  # (B, m, V)
            else:
                logits = _first_call(model, x, attn, logits_mask, B, m, mask_id)
                _check_vocab(logits.shape[-1], mask_id, eos_id, eot_id)
                checked = True
            # row-major nonzero lists each row's masked columns left to right, the logits' order
            cols = masked.nonzero()[:, 1].view(B, m) + lo  # (B, m) canvas positions
            # the mask token is never a candidate (departure 9); EOS neither under suppress_eos
            logits = logits.index_fill(-1, banned, float("-inf"))  # (B, m, V) a copy
            u = _uniform((B, m, logits.shape[-1]), generator, device) if temperature > 0 else None  # (B, m, V)

            if remasking == "entropy":
                x_hat, confidence = entropy_candidates(logits, temperature, top_p, u)  # (B, m), (B, m)
            else:
                x_hat = gumbel_argmax(logits, u, temperature) if temperature > 0 else logits.argmax(-1)  # (B, m)
                if remasking == "low_confidence":
                    confidence = candidate_confidence(logits, x_hat)  # (B, m)
                else:
                    confidence = _uniform((B, m), generator, device)  # (B, m)
            if deferred.numel():
                confidence = confidence.masked_fill(torch.isin(x_hat, deferred), float("-inf"))

            pick = top_k_positions(confidence, k)  # (B, k) indices into the m candidates
            # out of place: a model that kept a reference to x must not see it change
            x = x.scatter(1, cols.gather(1, pick), x_hat.gather(1, pick))  # (B, T)
            m -= k
    return x
