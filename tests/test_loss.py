"""Tests of loss.py: the forward process, denoiser scores, advantages, GDSD and the baselines.

Everything runs on the CPU with tiny shapes and toy denoisers defined here (they follow the calling
convention of loss.py), so the exact values are known: closed forms, enumerations and plain
transcriptions of the equations, never "it runs" checks.
"""
import itertools
import math

import pytest
import torch
import torch.nn as nn

import loss as L

MASK = 2  # mask token id of the toy vocabularies (ids 0..2 are special, like the tiny model)


class TinyDenoiser(nn.Module):
    """A small random bidirectional denoiser: token + position embeddings, a pooled context mix
    over the attended positions, an LM head. Honours attention_mask and logits_mask."""

    def __init__(self, vocab=13, d=8, max_len=64, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(0.7 * torch.randn(vocab, d, generator=g))
        self.pos = nn.Parameter(0.7 * torch.randn(max_len, d, generator=g))
        self.mix = nn.Parameter(0.5 * torch.randn(d, d, generator=g))
        self.head = nn.Parameter(0.7 * torch.randn(d, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, logits_mask=None):
        N, T = input_ids.shape
        h = self.emb[input_ids] + self.pos[:T]  # (N, T, d)
        w = torch.ones(N, T) if attention_mask is None else attention_mask.float()  # (N, T)
        ctx = (h * w[..., None]).sum(1, keepdim=True) / w.sum(1)[:, None, None]  # (N, 1, d)
        h = torch.tanh(h + ctx @ self.mix)  # (N, T, d) every position sees the whole sequence
        if logits_mask is not None:
            h = h[logits_mask]  # (n, d)
        return h @ self.head  # (N, T, V) or (n, V)


class PositionOnly(nn.Module):
    """Ignores the tokens: logits at position j are table[j], so the exact likelihood is known."""

    def __init__(self, vocab=11, max_len=32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(1.5 * torch.randn(max_len, vocab, generator=g))

    def forward(self, input_ids, attention_mask=None, logits_mask=None):
        N, T = input_ids.shape
        z = self.table[:T].expand(N, T, -1)  # (N, T, V)
        return z if logits_mask is None else z[logits_mask]


def full_logits_only(model):
    """A denoiser that ignores logits_mask (returns (N, T, V)); loss.py must index it itself."""
    return lambda ids, attention_mask=None, logits_mask=None: model(ids, attention_mask=attention_mask)


def batch(B=4, P=3, Lc=6, vocab=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (B, P), generator=g), torch.randint(3, vocab, (B, Lc), generator=g)


def plain_scores(model, prompt_ids, x0, mask, estimator, attention_mask=None):
    """Plain transcription of §4: full logits, explicit log-softmax, a loop over positions."""
    B, Lc = x0.shape
    P = prompt_ids.shape[1]
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask, torch.ones(B, Lc, dtype=attention_mask.dtype)], 1)
    out = torch.zeros(B, dtype=torch.float64)
    for half in (mask, ~mask):
        ids = torch.cat([prompt_ids, x0.masked_fill(half, MASK)], 1)
        z = model(ids, attention_mask=attn).double()  # (B, P+L, V)
        for b in range(B):
            n = int(half[b].sum())
            for i in range(Lc):
                if not half[b, i]:
                    continue
                zi = z[b, P + i]
                if estimator == "centered":
                    phi, w = zi[x0[b, i]] - zi.mean(), 1.0
                else:
                    phi = torch.log_softmax(zi, -1)[x0[b, i]]
                    w = (Lc + 1) / n if estimator == "elbo" else 1.0
                out[b] += 0.5 * w * phi
    return out


# ----------------------------------------------------------------------------------------------
# Forward process.

@pytest.mark.parametrize("B,Lc", [(4, 7), (6, 256), (2, 16), (3, 1), (9, 4)])
def test_stratified_counts_cover_all_ratios_evenly(B, Lc):
    spread = [math.floor(b * (Lc + 1) / B + 0.5) for b in range(B)]  # round half up, exact
    seen = [set() for _ in range(B)]
    for k in range(Lc + 1):
        n = L.stratified_counts(k, B, Lc).tolist()
        assert n == [(k + s) % (Lc + 1) for s in spread]
        for b in range(B):
            seen[b].add(n[b])
    # each n_b alone is a bijection of the offset k: uniform on 0..L when k is (ties included:
    # (6, 256) and (2, 16) hit b(L+1)/B = x.5 exactly)
    assert all(s == set(range(Lc + 1)) for s in seen)


def test_forward_process_counts_follow_one_offset():
    B, Lc = 5, 11
    masks = L.forward_process(123, B, Lc, num_mc=20)  # (20, B, L)
    assert masks.shape == (20, B, Lc) and masks.dtype == torch.bool
    for m in masks:
        n = m.sum(-1)
        k = int(n[0])  # the first count is the offset itself
        assert torch.equal(n, L.stratified_counts(k, B, Lc))


def test_forward_process_is_a_pure_function_of_the_seed():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = L.forward_process(7, 4, 9, num_mc=3)
    b = L.forward_process(7, 4, 9, num_mc=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, b)
    assert not torch.equal(a, L.forward_process(8, 4, 9, num_mc=3))
    assert torch.equal(a[:2], L.forward_process(7, 4, 9, num_mc=2))  # draw j does not depend on num_mc
    assert not torch.equal(a[0], a[1])  # draws are independent


def test_forward_process_positions_are_uniform():
    # B = 1: n = k ~ U{0..L}, so each position is masked with probability E[n]/L = 1/2
    Lc, seeds = 6, 3000
    m = torch.stack([L.forward_process(s, 1, Lc)[0, 0] for s in range(seeds)]).float()  # (seeds, L)
    se = math.sqrt(0.25 / seeds)
    assert (m.mean(0) - 0.5).abs().max() < 5 * se
    # given n, every subset of that size is equally likely: pairs are masked together with prob
    # E[n(n-1)] / (L(L-1)) = (2L+1)(L+1)/6 ... computed exactly over n ~ U{0..L}
    pair = sum(n * (n - 1) for n in range(Lc + 1)) / (Lc + 1) / (Lc * (Lc - 1))
    both = (m[:, 0] * m[:, 3]).mean()
    assert abs(float(both) - pair) < 5 * math.sqrt(pair * (1 - pair) / seeds)


def test_forward_process_errors():
    with pytest.raises(ValueError, match="completion_len"):
        L.forward_process(0, 4, 0)


# ----------------------------------------------------------------------------------------------
# Denoiser scores.

class Recorder:
    """Wraps a denoiser and records what loss.py feeds it."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, ids, attention_mask=None, logits_mask=None):
        self.calls.append((ids.clone(), None if attention_mask is None else attention_mask.clone(), logits_mask.clone()))
        return self.model(ids, attention_mask=attention_mask, logits_mask=logits_mask)


def test_coupled_inputs_partition_the_completion_and_never_mask_the_prompt():
    B, P, Lc = 4, 3, 6
    prompt_ids, x0 = batch(B, P, Lc)
    mask = L.forward_process(1, B, Lc)[0]
    rec = Recorder(TinyDenoiser())
    L.denoiser_scores(rec, prompt_ids, x0, mask, mask_id=MASK, estimator="logprob")
    ((ids, attn, lmask),) = rec.calls  # one call on the 2B stacked sequences
    assert ids.shape == (2 * B, P + Lc) and attn is None
    assert torch.equal(ids[:B, :P], prompt_ids) and torch.equal(ids[B:, :P], prompt_ids)
    assert torch.equal(ids[:B, P:] == MASK, mask) and torch.equal(ids[B:, P:] == MASK, ~mask)
    # every completion position is scored exactly once across the pair, the prompt never
    assert not lmask[:, :P].any()
    assert torch.equal(lmask[:B, P:], mask) and torch.equal(lmask[B:, P:], ~mask)
    assert torch.equal(lmask[:B, P:] ^ lmask[B:, P:], torch.ones(B, Lc, dtype=torch.bool))


@pytest.mark.parametrize("estimator", L.ESTIMATORS)
def test_scores_match_plain_transcription_and_full_logits_path(estimator):
    B, P, Lc = 4, 3, 6
    model = TinyDenoiser()
    prompt_ids, x0 = batch(B, P, Lc)
    attn = torch.ones(B, P, dtype=torch.bool)
    attn[0, 0] = attn[1, :2] = False  # left padding
    for seed in range(3):
        mask = L.forward_process(seed, B, Lc)[0]
        ref = plain_scores(model, prompt_ids, x0, mask, estimator, attn)
        got = L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator=estimator, attention_mask=attn)
        full = L.denoiser_scores(full_logits_only(model), prompt_ids, x0, mask, mask_id=MASK, estimator=estimator,
                                 attention_mask=attn)
        assert got.dtype == torch.float32 and got.shape == (B,)
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(full, got, rtol=0, atol=1e-6)
    # a whole-sequence attention mask (B, P+L) means the same
    full_attn = torch.cat([attn, torch.ones(B, Lc, dtype=torch.bool)], 1)
    torch.testing.assert_close(
        L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator=estimator, attention_mask=full_attn), got)


def test_centered_scores_ignore_a_per_position_constant():
    model = TinyDenoiser()
    prompt_ids, x0 = batch()

    def shifted(ids, attention_mask=None, logits_mask=None):
        z = model(ids, attention_mask=attention_mask)  # (N, T, V)
        c = 5.0 * torch.sin(ids.float().cumsum(1)) + torch.arange(ids.shape[1])  # (N, T) depends on input and position
        z = z + c[..., None]
        return z if logits_mask is None else z[logits_mask]

    mask = L.forward_process(3, 4, 6)[0]
    a = L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator="centered")
    b = L.denoiser_scores(shifted, prompt_ids, x0, mask, mask_id=MASK, estimator="centered")
    torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    # the raw target logit alone is not invariant: the centring is what removes the constant
    ids = torch.cat([prompt_ids, x0], 1)
    assert (model(ids) - shifted(ids)).abs().max() > 1.0


def as_denoiser(hf_model, shift=False):
    """The 3-line wrapper documented at the top of loss.py (kept identical to it)."""
    def denoiser(ids, attention_mask=None, logits_mask=None):
        z = hf_model(ids, attention_mask=attention_mask).logits                # (N, T, V)
        z = torch.cat([z[:, :1], z[:, :-1]], dim=1) if shift else z            # aligned
        return z if logits_mask is None else z[logits_mask]                    # (n, V)
    return denoiser


class DreamStyle(nn.Module):
    """A Hugging Face style output whose logits at position j predict token j+1 (Dream's layout)."""

    class Out:
        def __init__(self, logits):
            self.logits = logits

    def __init__(self, aligned):
        super().__init__()
        self.aligned = aligned

    def forward(self, ids, attention_mask=None):
        z = self.aligned(ids, attention_mask=attention_mask)  # (N, T, V) position j predicts j
        junk = torch.full_like(z[:, :1], 7.0)  # the last position predicts nothing
        return self.Out(torch.cat([z[:, 1:], junk], 1))  # position j predicts token j+1


@pytest.mark.parametrize("estimator", L.ESTIMATORS)
def test_scores_use_aligned_logits_of_a_shifted_model(estimator):
    model = TinyDenoiser()
    prompt_ids, x0 = batch()
    mask = L.forward_process(5, 4, 6)[0]
    want = L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator=estimator)
    shifted = DreamStyle(model)
    got = L.denoiser_scores(as_denoiser(shifted, shift=True), prompt_ids, x0, mask, mask_id=MASK, estimator=estimator)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    wrong = L.denoiser_scores(as_denoiser(shifted, shift=False), prompt_ids, x0, mask, mask_id=MASK, estimator=estimator)
    assert (wrong - want).abs().max() > 1e-2  # without undoing the shift the scores are wrong


@torch.no_grad()
def test_elbo_weights_give_the_exact_elbo_by_enumeration():
    """E over the forward process of S_elbo equals the any-order ELBO computed over permutations."""
    model = TinyDenoiser(seed=3)
    prompt_ids, x0 = batch(B=1, P=2, Lc=4, seed=1)
    Lc = x0.shape[1]
    P = prompt_ids.shape[1]
    # ELBO = E_σ Σ_j log p(x_σ(j) | x with σ(j..L-1) masked): the any-order autoregressive bound
    elbo = 0.0
    perms = list(itertools.permutations(range(Lc)))
    for perm in perms:
        for j in range(Lc):
            hidden = torch.zeros(1, Lc, dtype=torch.bool)
            hidden[0, list(perm[j:])] = True
            z = model(torch.cat([prompt_ids, x0.masked_fill(hidden, MASK)], 1))[0, P + perm[j]]
            elbo += float(torch.log_softmax(z.double(), -1)[x0[0, perm[j]]]) / len(perms)
    # the forward process: n ~ U{0..L}, then M uniform among subsets of size n
    expected = 0.0
    for n in range(Lc + 1):
        for subset in itertools.combinations(range(Lc), n):
            mask = torch.zeros(1, Lc, dtype=torch.bool)
            mask[0, list(subset)] = True
            s = L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator="elbo")
            expected += float(s) / ((Lc + 1) * math.comb(Lc, n))
    assert abs(expected - elbo) < 1e-5


@pytest.mark.parametrize("make_model", [PositionOnly, TinyDenoiser])
def test_elbo_through_forward_process_is_unbiased(make_model):
    """Average over mask seeds of S_elbo vs the exact value, within 4 standard errors."""
    model = make_model(seed=2)
    B, P, Lc = 4, 2, 5
    prompt_ids, x0 = batch(B, P, Lc, vocab=11, seed=4)
    with torch.no_grad():
        if make_model is PositionOnly:
            # context is ignored: the ELBO is the exact log-likelihood Σ_i log softmax(table_i)[x0_i]
            logp = torch.log_softmax(model.table[P:P + Lc].double(), -1)  # (L, V)
            exact = logp.gather(1, x0.T).T.sum(-1)  # (B,)
        else:
            exact = torch.zeros(B, dtype=torch.float64)  # any-order ELBO by enumeration of masks
            for n in range(1, Lc + 1):
                for subset in itertools.combinations(range(Lc), n):
                    hidden = torch.zeros(B, Lc, dtype=torch.bool)
                    hidden[:, list(subset)] = True
                    z = model(torch.cat([prompt_ids, x0.masked_fill(hidden, MASK)], 1))[:, P:].double()
                    lp = torch.log_softmax(z, -1).gather(-1, x0[..., None])[..., 0]  # (B, L)
                    exact += (lp * hidden).sum(-1) / n / math.comb(Lc, n)
        seeds = 400
        diffs = torch.stack([
            (L.denoiser_scores(model, prompt_ids, x0, L.forward_process(s, B, Lc)[0], mask_id=MASK,
                               estimator="elbo").double() - exact).mean()
            for s in range(seeds)])  # one value per seed: the draws of one batch are not independent
    se = float(diffs.std() / math.sqrt(seeds))
    assert se > 0 and abs(float(diffs.mean())) < 4 * se


def test_target_scores_values_and_gradients_match_autograd(monkeypatch):
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", 40)  # several row chunks even for this tiny V
    g = torch.Generator().manual_seed(0)
    N, V = 23, 17
    target = torch.randint(0, V, (N,), generator=g)
    weights = torch.randn(N, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (3 * torch.randn(N, V, generator=g)).to(dtype).requires_grad_()
        for est in ("logprob", "centered"):
            phi = L.target_scores(logits, target, est)
            assert phi.dtype == torch.float32
            (grad,) = torch.autograd.grad((phi * weights).sum(), logits)
            z = logits.detach().float().requires_grad_()
            norm = torch.logsumexp(z, -1) if est == "logprob" else z.mean(-1)
            ref = z.gather(1, target[:, None])[:, 0] - norm
            (ref_grad,) = torch.autograd.grad((ref * weights).sum(), z)
            torch.testing.assert_close(phi, ref, rtol=0, atol=1e-5)
            assert grad.dtype == dtype
            tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 gradient: rounding of the result only
            torch.testing.assert_close(grad.float(), ref_grad.to(dtype).float(), rtol=0, atol=tol)


@pytest.mark.parametrize("estimator", L.ESTIMATORS)
def test_chunked_calls_equal_one_call_in_value_and_gradient(estimator):
    model = TinyDenoiser()
    prompt_ids, x0 = batch(B=5)
    attn = torch.ones(5, 3, dtype=torch.bool)
    attn[2, 0] = False
    mask = L.forward_process(9, 5, 6)[0]
    grads = []
    for per_call in (None, 2):
        model.zero_grad()
        rec = Recorder(model)
        s = L.denoiser_scores(rec, prompt_ids, x0, mask, mask_id=MASK, estimator=estimator, attention_mask=attn,
                              completions_per_call=per_call)
        (s * torch.arange(1.0, 6.0)).sum().backward()
        grads.append((s.detach(), [p.grad.clone() for p in model.parameters()]))
        if per_call:  # 3 calls forward + 3 recomputed in backward, of at most 2·2 sequences
            assert len(rec.calls) == 6 and max(c[0].shape[0] for c in rec.calls) == 4
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_score_input_errors():
    model = TinyDenoiser()
    prompt_ids, x0 = batch()
    mask = L.forward_process(0, 4, 6)[0]
    with pytest.raises(ValueError, match="estimator"):
        L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator="ppl")
    with pytest.raises(ValueError, match="mask must be"):
        L.denoiser_scores(model, prompt_ids, x0, L.forward_process(0, 4, 6, 2), mask_id=MASK, estimator="elbo")
    with pytest.raises(ValueError, match="mask token"):
        L.denoiser_scores(model, prompt_ids, x0.masked_fill(mask, MASK), mask, mask_id=MASK, estimator="elbo")
    with pytest.raises(ValueError, match="attention_mask"):
        L.denoiser_scores(model, prompt_ids, x0, mask, mask_id=MASK, estimator="elbo", attention_mask=torch.ones(4, 5))
    with pytest.raises(ValueError, match="prompt_ids must be"):
        L.denoiser_scores(model, prompt_ids[:2], x0, mask, mask_id=MASK, estimator="elbo")
    bad = lambda ids, attention_mask=None, logits_mask=None: model(ids)[:, 0]  # (N, V): wrong rows
    with pytest.raises(ValueError, match="selecting"):
        L.denoiser_scores(bad, prompt_ids, x0, mask, mask_id=MASK, estimator="elbo")


# ----------------------------------------------------------------------------------------------
# d1's one-pass estimate.

def test_one_pass_logprobs_masks_the_completion_and_some_prompt_tokens():
    B, P, Lc = 6, 40, 5
    model = TinyDenoiser()
    prompt_ids, x0 = batch(B, P, Lc)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    rec = Recorder(model)
    lp = L.one_pass_logprobs(rec, prompt_ids, x0, mask_id=MASK, prompt_mask_prob=0.3, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    ((ids, _, lmask),) = rec.calls
    assert (ids[:, P:] == MASK).all()  # completion fully masked
    hidden = ids[:, :P] == MASK
    assert torch.equal(ids[:, :P][~hidden], prompt_ids[~hidden])  # other prompt tokens intact
    frac, se = float(hidden.float().mean()), math.sqrt(0.3 * 0.7 / (B * P))
    assert abs(frac - 0.3) < 4 * se
    assert torch.equal(lmask[:, P:], torch.ones(B, Lc, dtype=torch.bool)) and not lmask[:, :P].any()
    # values: log_softmax of the full logits of that input at the completion positions
    ref = torch.log_softmax(model(ids)[:, P:], -1).gather(-1, x0[..., None])[..., 0]
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    # same seed, same estimate; p = 0 leaves the prompt alone
    torch.testing.assert_close(L.one_pass_logprobs(model, prompt_ids, x0, mask_id=MASK, prompt_mask_prob=0.3, seed=11), lp)
    rec = Recorder(model)
    L.one_pass_logprobs(rec, prompt_ids, x0, mask_id=MASK, prompt_mask_prob=0.0, seed=11)
    assert torch.equal(rec.calls[0][0][:, :P], prompt_ids)


def test_eos_completion_mask():
    x0 = torch.tensor([[5, 1, 6, 1], [5, 6, 7, 8], [1, 1, 1, 1]])
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(L.eos_completion_mask(x0, eos_id=1), want)


# ----------------------------------------------------------------------------------------------
# Advantages.

def test_rloo_and_group_mean_against_hand_computation():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.0, 0.5, 1.0, 0.5])
    adv, zero = L.rloo_advantages(r, 4)
    hand = [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 0, 0, 0, 0,
            0 - 2 / 3, 0.5 - 1.5 / 3, 1 - 1 / 3, 0.5 - 1.5 / 3]
    torch.testing.assert_close(adv, torch.tensor(hand), rtol=0, atol=1e-6)
    assert zero == pytest.approx(1 / 3)
    assert torch.equal(adv[4:8], torch.zeros(4))  # exactly zero, not rounding noise
    adv, zero = L.group_mean_advantages(r, 4)
    hand = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.5, 0, 0.5, 0]
    torch.testing.assert_close(adv, torch.tensor(hand), rtol=0, atol=1e-6)
    assert zero == pytest.approx(1 / 3)


def test_advantage_errors():
    with pytest.raises(ValueError, match="does not divide"):
        L.rloo_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match=">= 2"):
        L.group_mean_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="1-D"):
        L.rloo_advantages(torch.zeros(2, 4), 4)


# ----------------------------------------------------------------------------------------------
# GDSD: gradient identities against closed forms.

def scored(model, seed=0, estimator="logprob", B=4):
    prompt_ids, x0 = batch(B=B)
    mask = L.forward_process(seed, B, 6)[0]
    return lambda m=model: L.denoiser_scores(m, prompt_ids, x0, mask, mask_id=MASK, estimator=estimator)


def param_grads(model, scalar):
    return torch.autograd.grad(scalar, list(model.parameters()))


@pytest.mark.parametrize("estimator", ["logprob", "centered"])
def test_gdsd_gradient_at_old_policy_is_the_normalised_policy_gradient(estimator):
    model, Lc, psi = TinyDenoiser(), 6, 1.7
    score = scored(model, estimator=estimator)
    adv = torch.tensor([0.5, -1.0, 0.25, 0.0])
    with torch.no_grad():
        s_old = score()  # θ = θ_old: the rollout policy's scores on the same masks
    s = score()
    loss, metrics = L.gdsd_loss(s, s_old, None, adv, length=Lc, psi=psi, beta=0.0)
    assert float(loss.detach()) == pytest.approx(float((psi * adv).pow(2).mean()), rel=1e-6)
    assert float(metrics["abs_log_ratio"]) == 0.0 and "kl" not in metrics
    got = param_grads(model, loss)
    want = param_grads(model, -(2 * psi / Lc) * (adv * score()).mean())  # -(2ψA/L)·∇S, mean over completions
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_gdsd_teacher_is_the_reference_at_beta_one():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, generator=g).requires_grad_()
    s_old, s_ref, adv = torch.randn(5, generator=g), torch.randn(5, generator=g), torch.randn(5, generator=g)
    a, _ = L.gdsd_loss(s, s_old, s_ref, adv, length=8, psi=1.0, beta=1.0)
    b, _ = L.gdsd_loss(s, s_ref, None, adv, length=8, psi=1.0, beta=0.0)
    c, _ = L.gdsd_loss(s, s_old + 3.0, s_ref, adv, length=8, psi=1.0, beta=1.0)  # the old policy plays no part
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(*[torch.autograd.grad(x, s)[0] for x in (a, b)])
    # and in general T = (1-β)·S_old + β·S_ref, detached
    t = L.gdsd_teacher(s_old.requires_grad_(), s_ref, 0.25)
    torch.testing.assert_close(t, 0.75 * s_old.detach() + 0.25 * s_ref)
    assert not t.requires_grad and not L.gdsd_teacher(s_old, None, 0.0).requires_grad
    want = ((s.detach() - t) / 8 - 2.0 * adv).pow(2).mean()
    torch.testing.assert_close(L.gdsd_loss(s, s_old, s_ref, adv, length=8, psi=2.0, beta=0.25)[0].detach(), want)


def test_gdsd_official_gradient_is_zero_outside_the_clamp_window():
    eps, Lc, psi = 4e-4, 6, 1.0
    lo, hi = math.log(1 - eps), math.log(1 + eps)
    s_old = torch.tensor([-10.0, -10.0, -10.0, -10.0, -10.0])
    offsets = torch.tensor([1e-4, -1e-4, 2e-3, -2e-3, 0.5])  # three outside the window
    s = (s_old + offsets).requires_grad_()
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0, 0.3])
    loss, metrics = L.gdsd_official_loss(s, s_old, None, adv, length=Lc, psi=psi, beta=0.0, eps=eps)
    (grad,) = torch.autograd.grad(loss, s)
    inside = torch.tensor([True, True, False, False, False])
    delta = (s.detach() - s_old).clamp(lo, hi)
    assert torch.equal(grad[~inside], torch.zeros(3))  # exactly zero
    torch.testing.assert_close(grad[inside], (2 * (delta / Lc - psi * adv) / Lc / 5)[inside])
    assert float(metrics["in_window"]) == pytest.approx(2 / 5) and float(metrics["clip_frac"]) == pytest.approx(3 / 5)
    torch.testing.assert_close(loss.detach(), (delta / Lc - psi * adv).pow(2).mean())
    # with β > 0 only the reference term acts outside the window: β·(S_θ - S_ref)/L per completion
    s_ref = s_old - 1.0
    loss, metrics = L.gdsd_official_loss(s, s_old, s_ref, adv, length=Lc, psi=psi, beta=0.1, eps=eps)
    (grad,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(grad[~inside], (0.1 * (s.detach() - s_ref) / Lc / 5)[~inside])
    torch.testing.assert_close(metrics["kl"], (0.5 * (s.detach() - s_ref) ** 2 / Lc).mean())


def test_gdsd_official_through_a_model_outside_the_window_has_no_gradient():
    model = TinyDenoiser()
    score = scored(model)
    with torch.no_grad():
        s_old = score() + 1.0  # every completion far outside the ±4e-4 window
    loss, metrics = L.gdsd_official_loss(score(), s_old, None, torch.ones(4), length=6, psi=1.0, beta=0.0, eps=4e-4)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in param_grads(model, loss))
    assert float(metrics["in_window"]) == 0.0


def test_gdsd_errors():
    s = torch.zeros(4)
    with pytest.raises(ValueError, match="s_ref is None"):
        L.gdsd_loss(s, s, None, s, length=6, psi=1.0, beta=0.1)
    with pytest.raises(ValueError, match="adv has shape"):
        L.gdsd_loss(s, s, None, torch.zeros(3), length=6, psi=1.0, beta=0.0)
    with pytest.raises(ValueError, match="s_theta must be"):
        L.gdsd_official_loss(torch.zeros(4, 2), s, None, s, length=6, psi=1.0, beta=0.0, eps=4e-4)
    with pytest.raises(ValueError, match="length"):
        L.gdsd_loss(s, s, None, s, length=0, psi=1.0, beta=0.0)


# ----------------------------------------------------------------------------------------------
# Baselines.

def test_d1_ratio_is_one_at_the_old_policy():
    model = TinyDenoiser()
    prompt_ids, x0 = batch()
    logp_of = lambda: L.one_pass_logprobs(model, prompt_ids, x0, mask_id=MASK, prompt_mask_prob=0.15, seed=3)
    tmask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, 0.25, 2.0])
    with torch.no_grad():
        old = logp_of()
    lp = logp_of()
    loss, metrics = L.d1_loss(lp, old, old, adv, clip_eps=0.2, beta=0.04, token_mask=tmask)
    a = adv[:, None].expand_as(tmask)
    torch.testing.assert_close(loss.detach(), -L.masked_mean(a, tmask))  # ratio 1 and KL 0
    assert float(metrics["clip_frac"]) == 0.0 and float(metrics["kl"]) == 0.0
    got = param_grads(model, loss)
    want = param_grads(model, -L.masked_mean(a * logp_of(), tmask))  # ∇ρ = ∇log p at ρ = 1; ∇k3 = 0
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_d1_clipping_and_kl():
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]])).requires_grad_()
    old = torch.log(torch.tensor([[0.25, 0.5, 0.6, 0.5]]))  # ratios 2, 1, 0.83, 1
    loss, metrics = L.d1_loss(logp, old, None, torch.tensor([1.0]), clip_eps=0.2, beta=0.0)
    (grad,) = torch.autograd.grad(loss, logp)
    # ratio 2 with A > 0 is clipped (zero gradient); ratio 0.83 with A > 0 is not
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.25, -0.25 * 0.5 / 0.6, -0.25]]))
    assert float(metrics["clip_frac"]) == pytest.approx(0.25)
    torch.testing.assert_close(loss.detach(), -(1.2 + 1 + 0.5 / 0.6 + 1) / 4 * torch.tensor(1.0))
    with pytest.raises(ValueError, match="logp_ref is None"):
        L.d1_loss(logp, old, None, torch.tensor([1.0]), clip_eps=0.2, beta=0.04)


def test_espo_ratio_is_one_at_the_old_policy():
    model, Lc = TinyDenoiser(), 6
    score = scored(model, estimator="elbo")
    adv = torch.tensor([0.5, -1.0, 0.25, 1.5])
    with torch.no_grad():
        s_old = score()
    s = score()
    loss, metrics = L.espo_loss(s, s_old, s_old, adv, length=Lc, clip_eps=0.2, beta=0.01)
    torch.testing.assert_close(loss.detach(), -adv.mean())
    assert float(metrics["clip_frac"]) == 0.0 and float(metrics["kl"]) == 0.0
    got = param_grads(model, loss)
    want = param_grads(model, -(adv * score()).mean() / Lc)  # ∇exp((S-S_old)/L) = ∇S/L at ratio 1
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_espo_clip_and_kl_closed_form():
    Lc = 4
    s_old = torch.tensor([-8.0, -8.0])
    s = (s_old + torch.tensor([Lc * math.log(1.5), Lc * math.log(1.1)])).requires_grad_()  # ratios 1.5, 1.1
    s_ref = s_old - 2.0
    loss, metrics = L.espo_loss(s, s_old, s_ref, torch.tensor([1.0, 1.0]), length=Lc, clip_eps=0.2, beta=0.5)
    (grad,) = torch.autograd.grad(loss, s)
    kl_grad = 0.5 * (s.detach() - s_ref) / Lc / 2
    torch.testing.assert_close(grad, torch.tensor([0.0, -1.1 / Lc / 2]) + kl_grad)
    assert float(metrics["clip_frac"]) == pytest.approx(0.5)


def test_wd1_weights_sum_to_one_per_group_and_loss_closed_form():
    r = torch.tensor([1.0, 0.0, 0.5, 0.1, 0.3, 0.3])
    w_pos, w_neg = L.wd1_weights(r, 3)
    torch.testing.assert_close(w_pos.view(2, 3).sum(-1), torch.ones(2))
    torch.testing.assert_close(w_neg.view(2, 3).sum(-1), torch.ones(2))
    a = r.view(2, 3) - r.view(2, 3).mean(-1, keepdim=True)
    torch.testing.assert_close(w_pos, torch.softmax(a, -1).view(-1))
    torch.testing.assert_close(w_neg, torch.softmax(-a, -1).view(-1))
    # softmax is shift-invariant: r - mean gives the same weights as r
    torch.testing.assert_close(L.wd1_weights(a.view(-1), 3)[0], w_pos)
    seq_logp = torch.tensor([-3.0, -5.0, -4.0, -2.0, -6.0, -1.0], requires_grad=True)
    loss, _ = L.wd1_loss(seq_logp, r, group_size=3)
    want = ((w_neg - w_pos) * seq_logp.detach()).view(2, 3).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), want)
    (grad,) = torch.autograd.grad(loss, seq_logp)
    torch.testing.assert_close(grad, (w_neg - w_pos) / 2)
    with pytest.raises(ValueError, match="does not divide"):
        L.wd1_loss(seq_logp, r, group_size=4)


def test_kl_estimators_are_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    a, b = 3 * torch.randn(1000, generator=g), 3 * torch.randn(1000, generator=g)
    for kl in (L.kl_k2, L.kl_k3):
        assert (kl(a, b) >= 0).all()
        assert torch.equal(kl(a, a), torch.zeros(1000))
    # k3 is unbiased for KL(π‖π_ref): π = N(0,1) samples, log densities of two unit Gaussians
    x = torch.randn(200000, generator=g, dtype=torch.float64)
    logp, logq = -0.5 * x**2, -0.5 * (x - 0.5) ** 2
    assert float(L.kl_k3(logp, logq).mean()) == pytest.approx(0.125, abs=5e-3)  # KL = 0.5²/2


# ----------------------------------------------------------------------------------------------
# SPG.

def chosen_blocks(masks, lengths, block):
    """Per (draw, completion): the block being decoded, read off masks drawn with no noise."""
    out = torch.zeros(masks.shape[:2], dtype=torch.long)
    for k, b in itertools.product(range(masks.shape[0]), range(masks.shape[1])):
        out[k, b] = int(masks[k, b].nonzero()[0]) // block  # the first masked position lies in it
    return out


def test_spg_masks_follow_the_block_structure():
    Lc, block, P = 16, 4, 3
    lengths = torch.tensor([16, 11, 3, 9, 1, 13])
    torch.manual_seed(0)
    state = torch.get_rng_state()
    masks, prompt_masks = L.spg_forward_process(5, lengths, Lc, P, num_t=3, block_length=block, prompt_mask_prob=0.0)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert masks.shape == (3, 6, Lc) and prompt_masks.shape == (3, 6, P) and not prompt_masks.any()
    blocks = chosen_blocks(masks, lengths, block).flatten().tolist()
    for (k, b), j in zip(itertools.product(range(3), range(6)), blocks):
        n, start = int(lengths[b]), j * block
        span = min(block, n - start)
        assert start < n  # a block the completion reaches
        assert not masks[k, b, :start].any()  # earlier blocks clean (no noise at p = 0)
        assert 1 <= int(masks[k, b, start:start + span].sum()) <= span  # the block being decoded
        assert masks[k, b, start + span:].all()  # later blocks and the EOS tail
    again = L.spg_forward_process(5, lengths, Lc, P, num_t=3, block_length=block, prompt_mask_prob=0.0)
    assert torch.equal(again[0], masks)
    # without blocks (the official "random" process) every draw masks a subset of the completion,
    # and more draws than blocks are fine
    masks, _ = L.spg_forward_process(1, lengths, Lc, P, num_t=5, block_length=None, prompt_mask_prob=0.0)
    for k, b in itertools.product(range(5), range(6)):
        n = int(lengths[b])
        assert 1 <= int(masks[k, b, :n].sum()) <= n and masks[k, b, n:].all()
    with pytest.raises(ValueError, match="block_length dividing"):
        L.spg_forward_process(0, lengths, Lc, P, block_length=5)


def test_spg_block_choice_counts_and_noise_have_the_official_distribution():
    Lc, block, P, seeds = 16, 4, 8, 1500
    lengths = torch.tensor([11, 16])  # 3 of the 4 blocks; all 4
    picks, counts, noise, prompt_noise = [], [], [], []
    for s in range(seeds):
        clean, _ = L.spg_forward_process(s, lengths, Lc, P, num_t=1, block_length=block, prompt_mask_prob=0.0)
        noisy, prompt_masks = L.spg_forward_process(s, lengths, Lc, P, num_t=1, block_length=block,
                                                    prompt_mask_prob=0.3)
        j = int(chosen_blocks(clean, lengths, block)[0, 0])
        picks.append(j)
        if j == 1:
            counts.append(int(clean[0, 0, 4:8].sum()))
        # the noise only adds masks at earlier positions, the decoded block draws the same
        assert torch.equal(noisy[0, 0, block * j:], clean[0, 0, block * j:])
        noise += noisy[0, 0, :block * j].tolist()
        prompt_noise += prompt_masks.flatten().tolist()
    # a permutation of the 4 blocks folded onto 3: block 0 comes from 0 or 3, so P = 1/2, 1/4, 1/4
    for j, p in ((0, 0.5), (1, 0.25), (2, 0.25)):
        assert abs(picks.count(j) / seeds - p) < 5 * math.sqrt(p * (1 - p) / seeds)
    for m in range(1, 5):  # m ~ U{1..4} in a full block
        assert abs(counts.count(m) / len(counts) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / len(counts))
    for hits in (noise, prompt_noise):  # earlier blocks and the prompt: independent p = 0.3
        assert abs(sum(hits) / len(hits) - 0.3) < 5 * math.sqrt(0.21 / len(hits))


def plain_spg(model, prompt_ids, x0, lengths, masks, prompt_masks, attention_mask, beta):
    """Transcription of the official SPG trainer's estimates: full logits per draw, probabilities
    averaged before the log, zero averages set to 1 and dropped (float64)."""
    K, (B, Lc), P = masks.shape[0], x0.shape, prompt_ids.shape[1]
    attn = torch.cat([attention_mask, torch.ones(B, Lc, dtype=attention_mask.dtype)], 1)
    completion = (torch.arange(Lc) < lengths[:, None]).double()  # (B, L)
    logps = []
    for k in range(K):
        ids = torch.cat([prompt_ids.masked_fill(prompt_masks[k], MASK), x0.masked_fill(masks[k], MASK)], 1)
        z = model(ids, attention_mask=attn)[:, P:].double()  # (B, L, V)
        logps.append(torch.log_softmax(z, -1).gather(-1, x0[..., None])[..., 0])
    logp, hit = torch.stack(logps), masks.double() * completion  # (K, B, L)
    per_draw = (logp * hit).sum(-1) / hit.sum(-1)  # (K, B)
    t = hit.sum(-1) / completion.sum(-1)  # (K, B)
    avg = (logp.exp() ** beta * hit / t[..., None]).mean(0)  # (B, L)
    keep = avg > 0
    avg = torch.where(keep, avg, torch.ones_like(avg))
    eubo = (avg.log() * keep).sum(-1) / keep.sum(-1) / beta
    return per_draw.mean(0), eubo


def test_spg_scores_and_gradient_match_a_transcription_of_the_official_trainer():
    B, P, Lc, block = 4, 3, 8, 4
    model = TinyDenoiser()
    prompt_ids, x0 = batch(B, P, Lc)
    attn = torch.ones(B, P, dtype=torch.bool)
    attn[0, 0] = attn[2, :2] = False  # left padding
    lengths = torch.tensor([8, 5, 2, 7])
    adv = torch.tensor([0.5, -0.25, 0.0, -0.25])
    kw = dict(num_t=3, block_length=block, prompt_mask_prob=0.3)
    rec = Recorder(model)
    elbo, eubo = L.spg_scores(rec, prompt_ids, x0, lengths, mask_id=MASK, seed=4, eubo_beta=1.5, attention_mask=attn,
                              **kw)
    masks, prompt_masks = L.spg_forward_process(4, lengths, Lc, P, **kw)
    ((ids, _, lmask),) = rec.calls  # one call on the num_t·B noisy copies
    assert ids.shape == (3 * B, P + Lc)
    assert torch.equal(ids[:, P:] == MASK, masks.view(3 * B, Lc))  # the EOS tail is masked ...
    assert torch.equal(lmask[:, P:], (masks & (torch.arange(Lc) < lengths[:, None])).view(3 * B, Lc))  # ... not scored
    want_elbo, want_eubo = plain_spg(model, prompt_ids, x0, lengths, masks, prompt_masks, attn, 1.5)
    torch.testing.assert_close(elbo.double(), want_elbo, rtol=0, atol=1e-5)
    torch.testing.assert_close(eubo.double(), want_eubo, rtol=0, atol=1e-5)
    # the official loss: -Σ A·n·S / Σ n, S = ELBO for A > 0, else ½ EUBO + ½ ELBO
    loss, metrics = L.spg_loss(elbo, eubo, adv, lengths, mix_weight=0.5)
    bound = torch.where(adv > 0, want_elbo, 0.5 * want_eubo + 0.5 * want_elbo)
    want = -(adv * lengths * bound).sum() / lengths.sum()
    torch.testing.assert_close(loss.double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(metrics["eubo"], eubo.mean())
    for g, w in zip(param_grads(model, loss), param_grads(model, want)):
        torch.testing.assert_close(g, w.float(), rtol=1e-4, atol=1e-6)


def test_spg_bounds_on_a_denoiser_whose_likelihood_is_known():
    """PositionOnly ignores the context, so log π(x0) = Σ_i log p_i exactly: the ELBO is unbiased for
    it, the EUBO tends to it as the draws grow (E[1[i masked]/t] = 1), and both have closed forms."""
    B, P, Lc, beta = 3, 2, 6, 1.5
    model = PositionOnly(seed=1)
    prompt_ids, x0 = batch(B, P, Lc, vocab=11, seed=2)
    lengths = torch.tensor([6, 4, 1])
    with torch.no_grad():
        logp = torch.log_softmax(model.table[P:P + Lc].double(), -1).gather(1, x0.T).T  # (B, L) log p_i
        completion = torch.arange(Lc) < lengths[:, None]
        exact = (logp * completion).sum(-1) / lengths  # per-token log-likelihood
        # closed forms on one set of block masks
        kw = dict(num_t=4, block_length=2, prompt_mask_prob=0.2)
        elbo, eubo = L.spg_scores(model, prompt_ids, x0, lengths, mask_id=MASK, seed=7, eubo_beta=beta, **kw)
        hit = (L.spg_forward_process(7, lengths, Lc, P, **kw)[0] & completion).double()  # (K, B, L)
        t = hit.sum(-1) / lengths  # (K, B)
        torch.testing.assert_close(elbo.double(), ((hit * logp).sum(-1) / hit.sum(-1)).mean(0), rtol=0, atol=1e-6)
        seen = hit.amax(0)  # (B, L)
        weight = (hit / t[..., None]).mean(0)  # (B, L) mean of 1[i masked]/t over the draws
        closed = (seen * (logp + weight.clamp(min=1e-30).log() / beta)).sum(-1) / seen.sum(-1)
        torch.testing.assert_close(eubo.double(), closed, rtol=0, atol=1e-5)
        # many draws without blocks: the ELBO is unbiased (within 4 standard errors of its draws) and
        # the EUBO reaches the exact per-token log-likelihood
        kw = dict(num_t=4000, block_length=None, prompt_mask_prob=0.0)
        elbo, eubo = L.spg_scores(model, prompt_ids, x0, lengths, mask_id=MASK, seed=1, eubo_beta=beta, **kw)
        hit = (L.spg_forward_process(1, lengths, Lc, P, **kw)[0] & completion).double()
        se = ((hit * logp).sum(-1) / hit.sum(-1)).std(0) / math.sqrt(4000)  # (B,) of the per-draw ELBOs
    assert ((elbo.double() - exact).abs() <= 4 * se + 1e-6).all()
    torch.testing.assert_close(eubo.double(), exact, rtol=0, atol=2e-3)
    # the mixture used for negative advantages is the ω-weighted sum
    loss, _ = L.spg_loss(elbo, eubo, -torch.ones(B), lengths, mix_weight=0.25)
    torch.testing.assert_close(loss, ((0.25 * eubo + 0.75 * elbo) * lengths).sum() / lengths.sum())


def test_spg_gradient_is_the_closed_form_on_a_position_only_denoiser():
    """ℓ = -Σ_b A_b n_b S_b / Σ n: on PositionOnly, ∂ELBO_b/∂z_i = mean_k 1[i ∈ M_kb]/n_kb · (e_x0 - softmax)
    and ∂EUBO_b/∂z_i = 1[i seen]/|seen_b| · (e_x0 - softmax) (p^β factors out of the log-mean)."""
    B, P, Lc = 4, 2, 6
    model = PositionOnly(seed=3)
    prompt_ids, x0 = batch(B, P, Lc, vocab=11, seed=5)
    lengths, adv = torch.tensor([6, 3, 5, 6]), torch.tensor([1.0, -0.5, -1.5, 0.75])
    kw = dict(num_t=3, block_length=2, prompt_mask_prob=0.15)
    elbo, eubo = L.spg_scores(model, prompt_ids, x0, lengths, mask_id=MASK, seed=11, eubo_beta=1.5, **kw)
    loss, _ = L.spg_loss(elbo, eubo, adv, lengths, mix_weight=0.5)
    (grad,) = torch.autograd.grad(loss, model.table)
    hit = (L.spg_forward_process(11, lengths, Lc, P, **kw)[0] & (torch.arange(Lc) < lengths[:, None])).float()
    d_elbo = (hit / hit.sum(-1, keepdim=True)).mean(0)  # (B, L)
    seen = hit.amax(0)
    d_eubo = seen / seen.sum(-1, keepdim=True)
    d_bound = torch.where(adv[:, None] > 0, d_elbo, 0.5 * d_eubo + 0.5 * d_elbo)  # (B, L)
    coef = -(adv * lengths)[:, None] / lengths.sum() * d_bound  # (B, L) ∂ℓ/∂log p_i
    soft = torch.softmax(model.table[P:P + Lc].detach(), -1)  # (L, V)
    want = torch.zeros_like(model.table)
    for b, i in itertools.product(range(B), range(Lc)):
        want[P + i] += coef[b, i] * (torch.nn.functional.one_hot(x0[b, i], 11) - soft[i])
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)


def test_spg_loss_errors():
    with pytest.raises(ValueError, match="one shape"):
        L.spg_loss(torch.zeros(4), torch.zeros(4), torch.zeros(3), torch.ones(4), mix_weight=0.5)
