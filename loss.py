"""loss.py — GDSD and its baselines (diffu-GRPO / d1, wd1, ESPO, SPG) as plain functions of tensors.

Paper: GDSD, "Reinforcement Learning as Guided Denoiser Self-Distillation for Diffusion Language
Models" (arXiv 2605.29398). The sections follow the steps of the README's "GDSD in one screen"
(steps 1 and 8, rollouts and the μ optimizer passes, live in sample.py and train.py), then the
baselines, then the memory-saving machinery. One function per equation, stated in its docstring.

Imports nothing from this project: copy the file and use it with any denoiser, i.e. any callable

    model(input_ids, attention_mask=None, logits_mask=None)
        input_ids (N, T) long; attention_mask (N, T), 1 = real token, or None (bidirectional);
        logits_mask None -> logits (N, T, V); logits_mask (N, T) bool -> logits (n_selected, V) of
        the selected positions in row-major order. Logits are ALIGNED: position i predicts token i.

A Hugging Face style model plugs in with a 3-line wrapper (Dream-style models predict token i+1 at
position i; `shift=True` undoes it):

    def as_denoiser(hf_model, shift=False):
        def denoiser(ids, attention_mask=None, logits_mask=None):
            z = hf_model(ids, attention_mask=attention_mask).logits                # (N, T, V)
            z = torch.cat([z[:, :1], z[:, :-1]], dim=1) if shift else z            # aligned
            return z if logits_mask is None else z[logits_mask]                    # (n, V)
        return denoiser

One rollout round (B completions x0 (B, L) of prompts c (B, P); G per prompt):

    adv, zero_std = rloo_advantages(rewards, G)                                  # (B,)
    masks = forward_process(seed, B, L, num_mc)                                  # (num_mc, B, L)
    with torch.no_grad():                                                        # same masks for all
        s_old = denoiser_scores(old, c, x0, masks[k], mask_id=m, estimator="logprob")
        s_ref = denoiser_scores(ref, c, x0, masks[k], mask_id=m, estimator="logprob")
    s = denoiser_scores(policy, c, x0, masks[k], mask_id=m, estimator="logprob")  # (B,)
    loss, metrics = gdsd_loss(s, s_old, s_ref, adv, length=L, psi=1.0, beta=1e-3)
    loss.backward()                                          # one draw; the trainer sums the draws

Masked-diffusion pre-training is loss = -denoiser_scores(..., estimator="elbo").mean() / L: with
forward_process masks the "elbo" score is an unbiased estimate of the MDM ELBO of log p(x0 | c).

Symbols
    L     canvas (completion) length; every /L divides by it, not by the number of masked tokens
    t     mask ratio of one draw, t = n / (L + 1) for n masked completion positions
    ψ     psi, guidance scale: how strongly the advantage tilts the self-teacher
    β     beta, reference weight: teacher = (1-β)·old + β·ref (also the KL weight of the baselines)
    ε     eps / clip_eps: GDSD official clamp width on the summed log-ratio; PPO clip of the baselines
    A     advantage, one scalar per completion (RLOO within its group, no std scaling)
    G     completions per prompt (group size)
    μ     optimizer passes per rollout round (step 8, train.py; each uses fresh mask seeds)
    S     denoiser score of a completion (step 5); S_θ, S_old, S_ref under the current, rollout and
          reference policies, always on identical masks

Every departure from the paper or from the official code is stated once, where it is made, in a
paragraph that starts with "Departure" (in rloo_advantages, stratified_counts, forward_process,
denoiser_scores, gdsd_teacher, gdsd_loss, gdsd_official_loss, d1_loss, wd1_loss, espo_loss,
spg_forward_process, spg_eubo, target_scores).
"""
import math
import numbers

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

ESTIMATORS = ("logprob", "centered", "elbo")


# ----------------------------------------------------------------------------------------------
# Step 2. Advantages.

def _grouped_rewards(rewards, group_size):
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (advantages compare completions of one prompt), got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"group_size {group_size} does not divide the batch of {rewards.numel()} rewards; "
                         "keep the G completions of each prompt together and the batch a multiple of G")
    return rewards.float().view(-1, group_size)  # (B/G, G)


def _zero_flat_groups(adv, r):
    """A = 0 exactly in groups whose rewards are all equal (std < 1e-6); returns (A (B,), their fraction)."""
    flat = r.std(-1, unbiased=False) < 1e-6  # (B/G,)
    return adv.masked_fill(flat.unsqueeze(-1), 0.0).view(-1), float(flat.float().mean())


def rloo_advantages(rewards, group_size):
    """Leave-one-out advantages within groups of G consecutive completions, no std scaling:

        A_i = r_i - (1/(G-1)) · Σ_{j≠i} r_j

    Returns (A (B,) float32, zero_std_fraction: float), the fraction of groups whose rewards are all
    equal. Departure: those groups get A = 0 exactly, not float-rounding noise (std < 1e-6 is the
    official threshold); the fraction is per group.
    """
    r = _grouped_rewards(rewards, group_size)  # (B/G, G)
    adv = r - (r.sum(-1, keepdim=True) - r) / (group_size - 1)  # (B/G, G)
    return _zero_flat_groups(adv, r)


def group_mean_advantages(rewards, group_size):
    """d1's and SPG's advantages A_i = r_i - mean_group(r), no std scaling; returns (A (B,),
    zero_std_fraction), flat groups exactly 0 as in rloo_advantages."""
    r = _grouped_rewards(rewards, group_size)  # (B/G, G)
    return _zero_flat_groups(r - r.mean(-1, keepdim=True), r)


# ----------------------------------------------------------------------------------------------
# Step 3. The guided self-teacher.

def gdsd_teacher(s_old, s_ref, beta):
    """Score of the advantage-tilted self-teacher without its tilt, detached:

        T = (1-β)·S_old + β·S_ref

    The KL-regularised objective max_π E[ψA] - (1-β)·KL(π‖π_old) - β·KL(π‖π_ref) has the optimum
    π* ∝ π_old^(1-β) · π_ref^β · exp(ψA); masking does not depend on the model, so every denoiser
    posterior is tilted alike, log p* = (1-β)·log p_old + β·log p_ref + ψA - log Z(x_t), and the
    regression of step 6 on that tilt never needs Z. s_ref may be None when β = 0.
    Departure: the project page writes the KL weights as 1 and β; the weights (1-β, β) are those of
    the stated optimum (the two agree to first order in β).
    """
    if beta == 0:
        return s_old.detach()
    return ((1 - beta) * s_old + beta * s_ref).detach()


# ----------------------------------------------------------------------------------------------
# Step 4. The forward (masking) process.

def stratified_counts(offset, batch_size, completion_len):
    """Mask counts of one draw: n_b = round(k + b·(L+1)/B) mod (L+1), b = 0..B-1. Returns (B,) long.

    One offset k in 0..L shifts an evenly spaced grid over 0..L, so a micro-batch covers all mask
    ratios and each n_b alone is uniform on 0..L when k is.
    Departure: halves round up, in exact integer arithmetic. The official code rounds a float
    linspace with torch.round (half to even); on ties (e.g. B = 6, L = 256: 3·257/6 = 128.5) some
    counts then never occur and others twice as often (row 3 takes only 129 of the 257 counts), which
    biases the 1/t-weighted ELBO.
    """
    B, L = batch_size, completion_len
    b = torch.arange(B)
    spread = (2 * b * (L + 1) + B) // (2 * B)  # round-half-up of b(L+1)/B without floats
    return (offset + spread) % (L + 1)


def forward_process(seed, batch_size, completion_len, num_mc=1, device=None):
    """Masks of `num_mc` independent draws of the forward process, a pure function of `seed`.

    Each draw: offset k ~ U{0..L}; counts n_b = stratified_counts(k, B, L); completion b masks n_b
    uniformly random positions (the set M_b); the complementary pass scores M_b^c = ~mask.
    Returns masks (num_mc, B, L) bool, True = masked; the prompt is never masked. Draw j does not
    depend on num_mc: forward_process(s, B, L, n)[j] is the same for any n > j.
    Departure: randomness comes from a dedicated CPU torch.Generator, so the global RNG is untouched
    and a seed gives the same masks on every device. The official GDSD, ESPO, SPG, d1 and wd1 code
    reseed the global RNGs (set_seed) in every scoring call, which also resets dropout and sampling.
    """
    if batch_size < 1 or completion_len < 1 or num_mc < 1:
        raise ValueError(f"forward_process needs batch_size, completion_len and num_mc >= 1, got "
                         f"{batch_size}, {completion_len}, {num_mc}")
    B, L = batch_size, completion_len
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    masks = []
    for _ in range(num_mc):
        k = int(torch.randint(0, L + 1, (), generator=gen))
        counts = stratified_counts(k, B, L)  # (B,)
        # a uniform random order of the L positions per row; its first n_b entries are masked
        order = torch.rand(B, L, generator=gen).argsort(dim=-1)  # (B, L)
        first_n = torch.arange(L).unsqueeze(0) < counts.unsqueeze(1)  # (B, L)
        masks.append(torch.zeros(B, L, dtype=torch.bool).scatter_(1, order, first_n))
    return torch.stack(masks).to(device)  # (num_mc, B, L)


# ----------------------------------------------------------------------------------------------
# Step 5. Denoiser scores.

def masked_token_scores(model, prompt_ids, x0, masks, *, mask_id, estimator="logprob", scored=None,
                        prompt_masks=None, attention_mask=None):
    """Per-token score φ of the clean token at the masked positions of K noisy copies, (K, B, L) float32:

        x_t^k = x0 with masks[k] (K, B, L) (and the prompt with prompt_masks[k] (K, B, P)) set to mask_id
        φ_ki  = log_softmax(z_θ(x_t^k)_i)[x0_i]              "logprob" / "elbo"
        φ_ki  = z_θ(x_t^k)_i[x0_i] - mean_v z_θ(x_t^k)_i[v]   "centered" (no normaliser at all)

    φ is computed at the `scored` positions (default: all of `masks`; a subset of them) and is 0
    elsewhere. One model call on the K·B stacked sequences; logits_mask runs the head at the scored
    positions only, so a 126k–152k vocabulary never yields a (K·B, P+L, V) tensor. φ comes from
    target_scores (the memory section), which equals -F.cross_entropy(z.float(), x0, reduction="none").
    attention_mask: (B, P) for the prompt (left padding = 0) or (B, P+L), or None.
    """
    K, B, L = masks.shape
    P = prompt_ids.shape[1]
    scored = masks if scored is None else scored
    prompts = prompt_ids.expand(K, B, P)
    if prompt_masks is not None:
        prompts = prompts.masked_fill(prompt_masks, mask_id)
    x_t = x0.expand(K, B, L).masked_fill(masks, mask_id)  # (K, B, L)
    input_ids = torch.cat([prompts, x_t], -1).view(K * B, P + L)  # (K·B, P+L)
    logits_mask = F.pad(scored, (P, 0), value=False).view(K * B, P + L)  # the prompt is never scored
    attn = _full_attention_mask(attention_mask, B, P, L, copies=K)
    logits = _call_denoiser(model, input_ids, attn, logits_mask)  # (n_scored, V), row-major over (K, B, L)
    phi = target_scores(logits, x0.expand(K, B, L)[scored], estimator)  # (n_scored,) float32
    return torch.zeros(K, B, L, device=phi.device).masked_scatter(scored, phi)  # (K, B, L)


def denoiser_scores(model, prompt_ids, x0, mask, *, mask_id, estimator, attention_mask=None,
                    completions_per_call=None):
    """Denoiser score of each completion for ONE draw, (B,) float32:

        S(x0) = ½ · [ Σ_{i∈M} w_M · φ_i(x_t^M) + Σ_{i∈M^c} w_Mc · φ_i(x_t^{M^c}) ]

    x_t^M is x0 with the positions of `mask` (B, L) replaced by `mask_id`, x_t^{M^c} the
    complementary pass (so each completion position is scored exactly once across the pair); the
    prompt (B, P) is never masked. φ (masked_token_scores) and the weights per `estimator`:
        "logprob"   φ = log_softmax(z_i)[x0_i],    w = 1, 1                     (GDSD)
        "centered"  φ = z_i[x0_i] - mean_v z_i[v], w = 1, 1                     (GDSD-TLC, paper)
        "elbo"      φ = log_softmax(z_i)[x0_i],    w = 1/t, 1/(L/(L+1) - t)     (ESPO; official "TLC")
    with t = n/(L+1), n = |M| of the row. With "elbo" both halves are unbiased estimates of the
    masked-diffusion ELBO when n is uniform on 0..L and M uniform given n (forward_process).
    Departure: "centered" is the paper's token logits centralisation (TLC); the official "TLC"
    trainer subtracts a detached vocabulary mean and then applies cross-entropy (a no-op under
    softmax) with ELBO weights, which is "elbo" here.
    Departure: the weights are (L+1)/n and (L+1)/(L-n) from integer counts, for any mask (not only
    forward_process's), and only where positions exist, so the 0·inf of an empty half never arises.

    completions_per_call: None scores all B completions in one call on 2B sequences (fastest); an
    int c scores c completions per call, checkpointed under autograd (see the memory section).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; use one of {ESTIMATORS}")
    _check_completions(prompt_ids, x0, mask_id)
    B, L = x0.shape
    if mask.dtype != torch.bool or mask.shape != (B, L):
        raise ValueError(f"mask must be a (B, L) = {(B, L)} bool tensor of one draw (pass masks[k] of "
                         f"forward_process), got {mask.dtype} {tuple(mask.shape)}")
    if completions_per_call is not None and completions_per_call < B:
        return _scores_in_checkpointed_chunks(model, prompt_ids, x0, mask, attention_mask, completions_per_call,
                                              mask_id=mask_id, estimator=estimator)
    mask = mask.to(x0.device)
    phi = masked_token_scores(model, prompt_ids, x0, torch.stack([mask, ~mask]), mask_id=mask_id,
                              estimator=estimator, attention_mask=attention_mask)  # (2, B, L)
    phi = phi[0] + phi[1]  # (B, L): φ_i under whichever pass masked i (the other half is 0)
    if estimator == "elbo":
        n = mask.sum(-1, keepdim=True)  # (B, 1) |M|
        # 1/t = (L+1)/n on M, 1/(L/(L+1) - t) = (L+1)/(L-n) on M^c; clamps only touch empty halves
        w = torch.where(mask, (L + 1) / n.clamp(min=1), (L + 1) / (L - n).clamp(min=1))  # (B, L)
        phi = phi * w
    return 0.5 * phi.sum(-1)  # (B,)


def _full_attention_mask(attention_mask, batch_size, prompt_len, completion_len, copies):
    """(copies·B, P+L) attention mask from a prompt mask (B, P) or a full one (B, P+L), or None."""
    if attention_mask is None:
        return None
    B, P, L = batch_size, prompt_len, completion_len
    if attention_mask.shape == (B, P):
        # completion slots are always real tokens (the sampler fills all L of them)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, L)], dim=1)  # (B, P+L)
    elif attention_mask.shape != (B, P + L):
        raise ValueError(f"attention_mask must be (B, P) = {(B, P)} for the prompt or (B, P+L) = "
                         f"{(B, P + L)} for the whole sequence, got {tuple(attention_mask.shape)}")
    return attention_mask.repeat(copies, 1)


def _call_denoiser(model, input_ids, attention_mask, logits_mask):
    """Logits (n_selected, V) of the selected positions, row-major, per the calling convention."""
    logits = model(input_ids, attention_mask=attention_mask, logits_mask=logits_mask)
    n = int(logits_mask.sum())
    if logits.dim() == 3 and logits.shape[:2] == input_ids.shape:
        # a denoiser that ignores logits_mask still works, at the memory cost of full logits
        logits = logits[logits_mask]  # (n, V)
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"the denoiser returned logits of shape {tuple(logits.shape)} for a logits_mask "
                         f"selecting {n} positions; it must return (n_selected, V) (or (N, T, V)), "
                         "see the calling convention at the top of loss.py")
    return logits


def _check_completions(prompt_ids, x0, mask_id):
    if prompt_ids.dim() != 2 or x0.dim() != 2 or prompt_ids.shape[0] != x0.shape[0] or x0.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (B, P) and x0 (B, L) with the same B and L >= 1, got "
                         f"{tuple(prompt_ids.shape)} and {tuple(x0.shape)}")
    if bool((x0 == mask_id).any()):
        raise ValueError(f"x0 contains the mask token {mask_id}: completions must be fully denoised "
                         "(the sampler fills all L slots) before they can be scored")


# ----------------------------------------------------------------------------------------------
# Step 6. The GDSD loss.

def gdsd_loss(s_theta, s_old, s_ref, adv, *, length, psi, beta):
    """GDSD matching loss of one draw, mean over the B completions:

        ℓ = mean_b ( (S_θ - T)/L - ψ·A )²,     T = gdsd_teacher(S_old, S_ref, β) (no gradient)

    GDSD uses "logprob" scores, GDSD-TLC "centered" scores (all on identical masks). The trainer
    sums draws. At θ = θ_old and β = 0 the gradient is -(2ψ/L)·mean_b A_b ∇S_θ,b: a per-token
    normalised policy gradient; away from it the square stops pushing once the teacher is matched.
    Departure (a reconstruction): the paper's normalisation was not retrievable; the
    sequence-level square with /L (canvas length) and ψA follows the official code.
    Metrics: kl = mean ½(S_θ - S_ref)²/L (when s_ref is given), abs_log_ratio = mean |S_θ - S_old|/L,
    score = mean S_θ/L.
    """
    _check_scores(s_theta, s_old, s_ref, adv, beta, length)
    teacher = gdsd_teacher(s_old, s_ref, beta)  # (B,)
    residual = (s_theta - teacher) / length - psi * adv  # (B,)
    return residual.pow(2).mean(), _score_metrics(s_theta, s_old, s_ref, length)


def _check_scores(s_theta, s_old, s_ref, adv, beta, length):
    """Sequence scores of one draw: s_theta, s_old, adv (B,); s_ref (B,) or None when beta = 0."""
    if not (isinstance(length, numbers.Integral) and length >= 1):
        raise ValueError(f"length must be the canvas length L (a positive int), got {length!r}")
    if s_theta.dim() != 1:
        raise ValueError(f"s_theta must be (B,) scores of one draw, got shape {tuple(s_theta.shape)}")
    if s_ref is None and beta != 0:
        raise ValueError(f"s_ref is None; a reference score is needed whenever beta != 0 (beta = {beta})")
    for name, v in (("s_old", s_old), ("s_ref", s_ref), ("adv", adv)):
        if v is not None and v.shape != s_theta.shape:
            raise ValueError(f"{name} has shape {tuple(v.shape)}, expected {tuple(s_theta.shape)} like s_theta "
                             "(one value per completion of this draw, in the same order)")


def _score_metrics(s_theta, s_old, s_ref, L):
    """Per-completion means shared by the sequence-score losses (all per token: divided by L)."""
    with torch.no_grad():
        out = {"abs_log_ratio": ((s_theta - s_old).abs() / L).mean(), "score": (s_theta / L).mean()}
        if s_ref is not None:
            out["kl"] = (kl_k2(s_theta, s_ref) / L).mean()
    return out


# ----------------------------------------------------------------------------------------------
# Step 7. The official-code form.

def kl_k2(logp, logp_ref):
    """k2 estimate of KL(π‖π_ref) from samples of π: ½ (log π - log π_ref)² (≥ 0, 0 at equality)."""
    return 0.5 * (logp - logp_ref) ** 2


def gdsd_official_loss(s_theta, s_old, s_ref, adv, *, length, psi, beta, eps):
    """The released GDSD trainer's loss of one draw, mean over completions:

        Δ = clamp(S_θ - S_old, log(1-ε), log(1+ε))
        ℓ = mean_b [ (Δ/L - ψ·A)² + β·½(S_θ - S_ref)²/L ]

    The clamp acts on the summed log-ratio (ε = 4e-4: ±1.6e-6 nats per token at L = 256), so outside
    the window the matching term has exactly zero gradient: a hard trust region around π_old.
    Use "logprob" scores for GDSD and "elbo" scores for the official "TLC".
    Departure: one draw; the official code sums its matching term over num_mc draws but averages its
    KL term over them, so with num_mc > 1 pass beta / num_mc to reproduce it.
    Metrics: in_window (fraction of completions inside the clamp window), clip_frac = 1 - in_window,
    kl = mean ½(S_θ - S_ref)²/L, abs_log_ratio = mean |S_θ - S_old|/L, score = mean S_θ/L.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1) (the clamp window is [log(1-eps), log(1+eps)]), got {eps}")
    _check_scores(s_theta, s_old, s_ref, adv, beta, length)
    L = length
    lo, hi = math.log(1 - eps), math.log(1 + eps)
    log_ratio = s_theta - s_old.detach()  # (B,)
    delta = log_ratio.clamp(lo, hi)  # (B,) zero gradient outside [lo, hi]
    loss = (delta / L - psi * adv).pow(2).mean()
    if beta != 0:
        loss = loss + beta * (kl_k2(s_theta, s_ref.detach()) / L).mean()
    metrics = _score_metrics(s_theta, s_old, s_ref, L)
    inside = ((log_ratio >= lo) & (log_ratio <= hi)).float().mean().detach()
    metrics.update(in_window=inside, clip_frac=1 - inside)
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# Baselines on the same rollouts: d1 (diffu-GRPO), wd1, ESPO, SPG.

def kl_k3(logp, logp_ref):
    """k3 estimate of KL(π‖π_ref): exp(d) - d - 1, d = log π_ref - log π (≥ 0, 0 at equality)."""
    d = logp_ref - logp
    return torch.exp(d) - d - 1


def masked_mean(x, mask=None):
    """Mean of x over the True entries of mask (all entries if None); the loss's and metrics' mean."""
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def ppo_clip(ratio, adv, clip_eps):
    """PPO's clipped surrogate loss -min(ρA, clip(ρ, 1-ε, 1+ε)A) elementwise, and where the clipped
    branch is active (its gradient is zero there)."""
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def eos_completion_mask(x0, eos_id):
    """d1's completion mask (B, L) bool: positions up to and including the first EOS (all if none)."""
    is_eos = x0 == eos_id  # (B, L)
    seen_before = is_eos.long().cumsum(-1) - is_eos.long()  # (B, L) EOS strictly before i
    return seen_before == 0


def one_pass_logprobs(model, prompt_ids, x0, *, mask_id, prompt_mask_prob, seed, attention_mask=None):
    """d1's one-pass likelihood surrogate (diffu-GRPO, also wd1), per token, (B, L) float32:

        log p_θ(x0_i | c̃, all completion positions masked),   c̃ = prompt with each token replaced
        by the mask token independently with probability `prompt_mask_prob` (d1: p = 0.15).

    The prompt masks are a pure function of `seed` through a dedicated CPU generator (as in
    forward_process); use a fresh seed per inner iteration, the same seed for the current, old and
    reference policies. Like d1, padding positions of the prompt may be masked too (they are not
    attended to when an attention mask is given).
    """
    if not 0.0 <= prompt_mask_prob < 1.0:
        raise ValueError(f"prompt_mask_prob must be in [0, 1), got {prompt_mask_prob}")
    _check_completions(prompt_ids, x0, mask_id)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    hide = torch.rand(prompt_ids.shape, generator=gen) < prompt_mask_prob  # (B, P)
    everything = torch.ones_like(x0, dtype=torch.bool)[None]  # (1, B, L) the whole completion masked
    return masked_token_scores(model, prompt_ids, x0, everything, mask_id=mask_id,
                               prompt_masks=hide.to(prompt_ids.device)[None], attention_mask=attention_mask)[0]


def d1_loss(logp, logp_old, logp_ref, adv, *, clip_eps, beta, token_mask=None):
    """diffu-GRPO (d1) loss of one micro-batch, token-level PPO with a k3 KL to the reference:

        ρ_i = exp(log p_θ,i - log p_old,i)      per completion token, from one_pass_logprobs
        ℓ = masked_mean_i [ -min(ρ_i A, clip(ρ_i, 1-ε, 1+ε) A) + β·k3(log p_θ,i, log p_ref,i) ]

    logp* (B, L); adv (B,) (group_mean_advantages in d1); token_mask (B, L) optional, e.g.
    eos_completion_mask (d1 scores tokens up to the first EOS); the mean runs over all masked-in
    tokens of the micro-batch, as in d1. logp_ref may be None when β = 0.
    Metrics: kl (masked mean k3), clip_frac, abs_log_ratio (masked mean |log p_θ - log p_old|).
    Departure: clip_frac counts the tokens whose clipped branch is active (zero gradient), ESPO's
    definition; d1 logs the fraction where the unclipped branch is the minimum (a metric only).
    """
    if logp_ref is None and beta != 0:
        raise ValueError(f"logp_ref is None; the reference log-probs are needed whenever beta != 0 (beta = {beta})")
    shapes = [tuple(v.shape) for v in (logp, logp_old, logp_ref, token_mask) if v is not None]
    if logp.dim() != 2 or len(set(shapes)) != 1 or adv.shape != logp.shape[:1]:
        raise ValueError(f"d1_loss takes per-token log-probs (and token_mask) of one shape (B, L) and adv (B,), "
                         f"got {shapes} and adv {tuple(adv.shape)}")
    ratio = torch.exp(logp - logp_old.detach())  # (B, L)
    per_token, clipped = ppo_clip(ratio, adv.unsqueeze(1), clip_eps)  # (B, L)
    if beta != 0:
        per_token = per_token + beta * kl_k3(logp, logp_ref.detach())
    loss = masked_mean(per_token, token_mask)
    with torch.no_grad():
        metrics = {"clip_frac": masked_mean(clipped.float(), token_mask),
                   "abs_log_ratio": masked_mean((logp - logp_old).abs(), token_mask)}
        if logp_ref is not None:
            metrics["kl"] = masked_mean(kl_k3(logp, logp_ref), token_mask)
    return loss, metrics


def wd1_weights(rewards, group_size):
    """wd1's weights within each group of G: w⁺ = softmax(A), w⁻ = softmax(-A), A = r - mean_group(r).

    Each sums to one per group. Softmax is shift-invariant, so rewards or r - mean give the same
    weights (RLOO advantages, scaled by G/(G-1), would not). Returns (w_pos, w_neg), each (B,).
    """
    r = _grouped_rewards(rewards, group_size)  # (B/G, G)
    adv = r - r.mean(-1, keepdim=True)
    return torch.softmax(adv, -1).view(-1), torch.softmax(-adv, -1).view(-1)


def wd1_loss(seq_logp, rewards, *, group_size):
    """wd1 loss of one micro-batch: no ratio, no old policy; mean over its groups of

        ℓ_group = - Σ_i w⁺_i · log π_θ(y_i) + Σ_i w⁻_i · log π_θ(y_i)     (weights: wd1_weights)

    seq_logp (B,): per-sequence log-likelihood surrogate (d1's one-pass log p summed over the
    completion tokens, optionally up to the first EOS as in wd1); rewards (B,) in groups of G.
    Departure: the softmax runs per group; wd1 runs it over a device micro-batch, which in its
    configs is exactly one group. Several groups in one call are averaged (wd1 averages them through
    gradient accumulation).
    Metrics: logp = mean per-sequence log p, w_pos_max = mean over groups of the largest w⁺.
    """
    if seq_logp.dim() != 1 or seq_logp.shape != rewards.shape:
        raise ValueError(f"wd1_loss takes per-sequence log p (B,) and rewards (B,), got "
                         f"{tuple(seq_logp.shape)} and {tuple(rewards.shape)} (sum token log p over L first)")
    w_pos, w_neg = wd1_weights(rewards.to(seq_logp.device), group_size)  # (B,), (B,)
    per_group = ((w_neg - w_pos) * seq_logp).view(-1, group_size).sum(-1)  # (B/G,)
    metrics = {"logp": seq_logp.detach().mean(), "w_pos_max": w_pos.view(-1, group_size).max(-1).values.mean()}
    return per_group.mean(), metrics


def espo_loss(s_theta, s_old, s_ref, adv, *, length, clip_eps, beta):
    """ESPO loss of one draw: sequence-level PPO on the per-token ELBO ratio, k2 KL:

        ρ_b = exp((S_θ,b - S_old,b)/L)          S = denoiser_scores(..., estimator="elbo")
        ℓ = mean_b [ -min(ρ_b A_b, clip(ρ_b, 1-ε, 1+ε) A_b) + β·½(S_θ,b - S_ref,b)²/L ]

    s_ref may be None when β = 0. Metrics: clip_frac, kl, abs_log_ratio, score (all per token).
    Departure: one ratio per draw; with num_mc > 1 ESPO averages the draws' ELBOs before forming the
    ratio (identical at num_mc = 1; pass scores averaged over the draws to reproduce it otherwise).
    """
    _check_scores(s_theta, s_old, s_ref, adv, beta, length)
    L = length
    ratio = torch.exp((s_theta - s_old.detach()) / L)  # (B,)
    per_seq, clipped = ppo_clip(ratio, adv, clip_eps)  # (B,)
    if beta != 0:
        per_seq = per_seq + beta * kl_k2(s_theta, s_ref.detach()) / L
    metrics = _score_metrics(s_theta, s_old, s_ref, L)
    metrics["clip_frac"] = clipped.float().mean()
    return per_seq.mean(), metrics


# SPG (Sandwiched Policy Gradient, arXiv 2510.09541) as the official SPG trainer of the GDSD
# repository computes it: raise a lower bound (ELBO) of log π for completions with A > 0, lower an
# upper bound (EUBO, or its mixture with the ELBO) for the others, both estimated on block-wise masks.
# Defaults are that trainer's: block masks of the sampler's block length (32), num_t = 2 draws,
# prompt noise p = 0.15, EUBO β = 1.5, mixture weight 0.5 (its min_t = 0, max_t = 1 are built in).

def spg_forward_process(seed, lengths, completion_len, prompt_len, *, num_t=2, block_length=32,
                        prompt_mask_prob=0.15):
    """SPG's masks for `num_t` draws (the official "block_random" forward process), a pure function of
    `seed`. For completion b of n_b tokens (lengths (B,): up to and including its first EOS) and draw k:

      - one block j of `block_length` positions among the ⌈n_b/block_length⌉ blocks the completion
        reaches, drawn as the official code draws it: a random permutation of all L/block_length
        blocks taken modulo that count (not uniform when the count does not divide L/block_length);
      - in block j, m ~ U{1..span} of its span = min(block_length, n_b - j·block_length) completion
        positions, uniformly at random (the block being decoded);
      - every later position (later blocks and the EOS tail) masked;
      - every earlier position and every prompt position masked with probability prompt_mask_prob,
        independently (official: its prompt noise runs over all positions not yet masked, so it also
        hits the clean earlier blocks).

    block_length=None is the official "random" forward process: one block spanning the completion.
    Returns (masks (num_t, B, L), prompt_masks (num_t, B, P)), bool on the CPU, True = masked.
    Departure: the official code requires num_t <= L/block_length; here further draws continue with
    fresh permutations (the tiny model's one block allows num_t = 2). Randomness from a dedicated CPU
    generator, as in forward_process.
    """
    B, L = lengths.numel(), completion_len
    block = block_length or L
    if L % block or num_t < 1 or not 0.0 <= prompt_mask_prob < 1.0:
        raise ValueError(f"spg_forward_process needs block_length dividing L = {L}, num_t >= 1 and "
                         f"prompt_mask_prob in [0, 1), got {block_length}, {num_t}, {prompt_mask_prob}")
    n_blocks = L // block
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    masks = torch.zeros(num_t, B, L, dtype=torch.bool)
    earlier = torch.zeros(num_t, B, L, dtype=torch.bool)  # the clean blocks before block j
    for b, n in enumerate(lengths.tolist()):
        assert 1 <= n <= L, f"lengths must be in 1..L = {L}, got {n}"
        perms = torch.cat([torch.randperm(n_blocks, generator=gen) for _ in range(-(-num_t // n_blocks))])
        for k, j in enumerate((perms[:num_t] % ((n - 1) // block + 1)).tolist()):
            start, span = j * block, min(block, n - j * block)
            count = int(torch.randint(1, span + 1, (), generator=gen))
            masks[k, b, start + torch.randperm(span, generator=gen)[:count]] = True
            masks[k, b, start + span:] = True  # later blocks and the EOS tail
            earlier[k, b, :start] = True
    masks |= earlier & (torch.rand(num_t, B, L, generator=gen) < prompt_mask_prob)
    prompt_masks = torch.rand(num_t, B, prompt_len, generator=gen) < prompt_mask_prob  # (num_t, B, P)
    return masks, prompt_masks


def spg_elbo(logp, scored):
    """SPG's per-token ELBO of each completion (the official estimate), (B,):

        ELBO_b = (1/K) Σ_k (1/n_kb) Σ_{i scored in draw k} log p_θ(x0_i | x_t^k)

    logp (K, B, L) (masked_token_scores), scored (K, B, L) bool, n_kb its count. n_b·ELBO_b is the
    masked-diffusion ELBO of the completion's n_b tokens with mask ratio n_kb/n_b.
    """
    n = scored.sum(-1)  # (K, B)
    return ((logp * scored).sum(-1) / n.clamp(min=1)).mean(0)


def spg_eubo(logp, scored, lengths, beta):
    """SPG's per-token EUBO of each completion (the official estimate), (B,):

        EUBO_b = mean_{i ∈ U_b} (1/β) · log( (1/K) Σ_k 1[i scored in draw k] · p_θ(x0_i | x_t^k)^β / t_kb )

    t_kb = n_kb / n_b (scored positions of the draw over the completion's length `lengths` (B,)),
    U_b the positions scored in at least one draw; β >= 1 (official default 1.5).
    Departure: computed in log space (a logsumexp of β·log p - log t); the official code averages
    p^β itself, which underflows to 0 in float32 for p^β < 1e-45 and then silently drops the
    position from U_b.
    """
    K = logp.shape[0]
    t = scored.sum(-1).clamp(min=1) / lengths  # (K, B)
    terms = beta * logp - t.log()[..., None]  # (K, B, L)
    seen = scored.any(0)  # (B, L) U_b
    # draws that did not score i add nothing (-inf); unseen positions get finite 0s and drop out below
    terms = terms.masked_fill(~scored, -math.inf).masked_fill(~seen, 0.0)
    per_token = torch.logsumexp(terms, 0) - math.log(K)  # (B, L)
    return (per_token * seen).sum(-1) / seen.sum(-1).clamp(min=1) / beta


def spg_scores(model, prompt_ids, x0, lengths, *, mask_id, seed, num_t=2, block_length=32, eubo_beta=1.5,
               prompt_mask_prob=0.15, attention_mask=None):
    """SPG's two bounds of each completion's per-token log-likelihood, (ELBO (B,), EUBO (B,)), on the
    num_t draws of spg_forward_process(seed, lengths, ...), in one model call on num_t·B sequences.

    lengths (B,): tokens up to and including the first EOS (eos_completion_mask(x0, eos).sum(-1));
    positions past them are masked in every input and never scored, as in the official trainer.
    """
    _check_completions(prompt_ids, x0, mask_id)
    B, L = x0.shape
    masks, prompt_masks = spg_forward_process(seed, lengths.cpu(), L, prompt_ids.shape[1], num_t=num_t,
                                              block_length=block_length, prompt_mask_prob=prompt_mask_prob)
    masks, prompt_masks, lengths = masks.to(x0.device), prompt_masks.to(x0.device), lengths.to(x0.device)
    scored = masks & (torch.arange(L, device=x0.device) < lengths[:, None])  # (num_t, B, L)
    logp = masked_token_scores(model, prompt_ids, x0, masks, mask_id=mask_id, scored=scored,
                               prompt_masks=prompt_masks, attention_mask=attention_mask)  # (num_t, B, L)
    return spg_elbo(logp, scored), spg_eubo(logp, scored, lengths, eubo_beta)


def spg_loss(elbo, eubo, adv, lengths, *, mix_weight):
    """SPG loss of one micro-batch (no ratio, no old or reference policy):

        S_b = ELBO_b                          if A_b > 0
        S_b = ω·EUBO_b + (1-ω)·ELBO_b         otherwise     (ω = mix_weight: 1 EUBO, 0.5 mixture, 0 ELBO)
        ℓ = - Σ_b A_b · n_b · S_b / Σ_b n_b   n_b = lengths (tokens up to the first EOS)

    n_b·S_b is a sequence-level bound, so the loss pushes a lower bound of log π up for completions
    better than their group and an upper bound down for the others ("sandwiching" log π), averaged
    over the micro-batch's tokens. adv: group_mean_advantages. The gradient is the same at any θ.
    Metrics: elbo, eubo (means of the per-token bounds).
    """
    if not (elbo.dim() == 1 and elbo.shape == eubo.shape == adv.shape == lengths.shape):
        raise ValueError(f"spg_loss takes elbo, eubo, adv and lengths of one shape (B,), got {tuple(elbo.shape)}, "
                         f"{tuple(eubo.shape)}, {tuple(adv.shape)} and {tuple(lengths.shape)}")
    bound = torch.where(adv > 0, elbo, mix_weight * eubo + (1 - mix_weight) * elbo)  # (B,)
    n = lengths.to(elbo.dtype)
    loss = -(adv * n * bound).sum() / n.sum()
    return loss, {"elbo": elbo.detach().mean(), "eubo": eubo.detach().mean()}


# ----------------------------------------------------------------------------------------------
# Memory: what lets a 126k–152k vocabulary fit. bench/bench_loss.py measures it.

# Rows of (rows, V) float32 work buffers: ~32 MB per chunk whatever the vocabulary.
_CHUNK_ELEMENTS = 1 << 23


def target_scores(logits, target, estimator):
    """Per-position score φ of the target token, float32 (N,) from logits (N, V). It equals the plain

        logprob / elbo:  φ = -F.cross_entropy(logits.float(), target, reduction="none")
        centered:        φ = logits.float().gather(1, target[:, None])[:, 0] - logits.float().mean(-1)

    in value and gradient (tests/test_loss.py checks both against autograd of these lines, and the
    scores built on it against a loop transcription, `plain_scores`).
    Departure (precision): float32 whatever the logits' dtype, as logit[target] - logsumexp with bf16
    upcast one row chunk at a time; no (N, V) float32 or log-softmax copy is materialised (the
    official code applies cross-entropy to bf16 autocast logits).
    """
    assert logits.dim() == 2 and target.shape == logits.shape[:1] and estimator in ESTIMATORS
    return _TargetScore.apply(logits, target.long(), estimator == "centered")


class _TargetScore(torch.autograd.Function):
    """target_scores' autograd function, forward and backward on ~32 MB row chunks.

    Autograd of the plain lines would keep a float32 copy of bf16 logits and, in backward, several
    (N, V) temporaries. Saved for backward: the logits themselves (no copy) and the (N,) logsumexp;
    the centred score needs neither (its gradient onehot - 1/V does not depend on z).
    """

    @staticmethod
    def forward(ctx, logits, target, centered):
        N, V = logits.shape
        rows = max(1, _CHUNK_ELEMENTS // V)
        phi = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,)
        norm = torch.empty(N, dtype=torch.float32, device=logits.device)  # (N,) logsumexp or mean
        for s in range(0, N, rows):
            z = logits[s:s + rows].float()  # (r, V) float32: bf16 upcast one chunk at a time
            norm[s:s + rows] = z.mean(-1) if centered else torch.logsumexp(z, dim=-1)
            phi[s:s + rows] = z.gather(1, target[s:s + rows, None])[:, 0] - norm[s:s + rows]
        ctx.centered = centered
        if centered:
            ctx.shape, ctx.dtype = logits.shape, logits.dtype
            ctx.save_for_backward(target)
        else:
            ctx.save_for_backward(logits, target, norm)
        return phi

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_phi):
        if ctx.centered:
            (target,) = ctx.saved_tensors
            (N, V), dtype = ctx.shape, ctx.dtype
        else:
            logits, target, lse = ctx.saved_tensors
            (N, V), dtype = logits.shape, logits.dtype
        rows = max(1, _CHUNK_ELEMENTS // V)
        grad = torch.empty((N, V), dtype=dtype, device=grad_phi.device)  # (N, V)
        for s in range(0, N, rows):
            g = grad_phi[s:s + rows, None].float()  # (r, 1)
            # dφ/dz = onehot(target) - softmax(z)   or   onehot(target) - 1/V
            if ctx.centered:
                d = (-g / V).expand(-1, V).clone()  # (r, V)
            else:
                d = (logits[s:s + rows].float() - lse[s:s + rows, None]).exp_().mul_(-g)  # (r, V)
            d.scatter_add_(1, target[s:s + rows, None], g)
            grad[s:s + rows] = d
        return grad, None, None


def _scores_in_checkpointed_chunks(model, prompt_ids, x0, mask, attention_mask, per_call, **kwargs):
    """denoiser_scores of `per_call` completions per model call, equal to the one-call scores.

    Under autograd each call is wrapped in torch.utils.checkpoint: only its scores are kept and its
    forward runs again in backward, so peak logits memory drops by B/per_call at the cost of one more
    forward. Under FSDP prefer one call plus the model's own per-block activation checkpointing:
    checkpointing around a sharded root module is not exercised by this project's tests.
    """
    if per_call < 1:
        raise ValueError(f"completions_per_call must be a positive int or None, got {per_call}")

    def one_call(p, x, m, a):
        return denoiser_scores(model, p, x, m, attention_mask=a, **kwargs)

    scores = []
    for s in range(0, x0.shape[0], per_call):
        part = [None if v is None else v[s:s + per_call] for v in (prompt_ids, x0, mask, attention_mask)]
        if torch.is_grad_enabled():
            # keep only this chunk's scores; its logits are recomputed (same RNG state) in backward
            scores.append(torch.utils.checkpoint.checkpoint(one_call, *part, use_reentrant=False))
        else:
            scores.append(one_call(*part))
    return torch.cat(scores)  # (B,)
