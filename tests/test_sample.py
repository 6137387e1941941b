"""Tests of sample.py: LLaDA's low-confidence / random remasking and Dream's entropy order.

Parity: generate against plain loop transcriptions of the reference algorithms
(tests/reference_sampler.py), token for token, greedy and seeded (both draw the same float64
uniforms from the same generator, see sample.py). Invariants through a recording model wrapper,
closed forms of the schedules and of the candidate / confidence functions, the sampled
distributions against softmax, padding invariance and argument errors. The KV caches against the
exact sampler with a cache that cannot go stale (model.py's Denoiser), threshold decoding's counts. Everything runs on the CPU
with a small random bidirectional denoiser defined here, in float64 so padded and unpadded passes
agree to the last bits.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sample as S
from reference_sampler import _dream_top_p, dream_reference, llada_reference

PAD, EOS, MASK = 0, 1, 2  # special ids of the toy vocabulary (prompts use 4..)
VOCAB = 24


class ToyDenoiser(nn.Module):
    """Random bidirectional denoiser: token + position embeddings (positions count real tokens, so
    left padding does not shift them), one attention layer over the attended keys, an MLP, an LM
    head. Follows the calling convention: attention_mask as key padding, logits_mask selects rows."""

    def __init__(self, vocab=VOCAB, d=16, max_len=64, seed=0, eos_bias=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r = lambda *s, scale=1.0: nn.Parameter(scale * torch.randn(*s, generator=g, dtype=torch.float64))
        self.emb, self.pos = r(vocab, d), r(max_len, d)
        self.wq, self.wk, self.wv = r(d, d, scale=d ** -0.5), r(d, d, scale=d ** -0.5), r(d, d, scale=d ** -0.5)
        self.w1, self.w2 = r(d, 2 * d, scale=d ** -0.5), r(2 * d, d, scale=(2 * d) ** -0.5)
        self.head = r(d, vocab, scale=2.0 * d ** -0.5)
        self.head_bias = torch.zeros(vocab, dtype=torch.float64)
        self.head_bias[EOS] = eos_bias

    def forward(self, input_ids, attention_mask=None, logits_mask=None):
        N, T = input_ids.shape
        real = torch.ones(N, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        pos = (real.long().cumsum(1) - 1).clamp(min=0)  # (N, T) index among real tokens
        h = self.emb[input_ids] + self.pos[pos]  # (N, T, d)
        scores = (h @ self.wq) @ (h @ self.wk).transpose(1, 2) / math.sqrt(h.shape[-1])  # (N, T, T)
        scores = scores.masked_fill(~real[:, None, :], float("-inf"))
        h = h + F.softmax(scores, dim=-1) @ (h @ self.wv)
        h = h + torch.tanh(h @ self.w1) @ self.w2  # (N, T, d)
        if logits_mask is not None:
            h = h[logits_mask]  # (n, d)
        return h @ self.head + self.head_bias  # (N, T, V) or (n, V)


class Recorder:
    """Wraps a denoiser and keeps a copy of every call's canvas and logits_mask."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, input_ids, attention_mask=None, logits_mask=None):
        self.calls.append((input_ids.clone(), None if logits_mask is None else logits_mask.clone()))
        return self.model(input_ids, attention_mask=attention_mask, logits_mask=logits_mask)


class IgnoresLogitsMask:
    """A denoiser that always returns full (N, T, V) logits."""

    def __init__(self, model):
        self.model = model

    def __call__(self, input_ids, attention_mask=None, logits_mask=None):
        return self.model(input_ids, attention_mask=attention_mask)


class FixedLogits:
    """Every position gets the same logits z: the sampled tokens follow a known distribution."""

    def __init__(self, z):
        self.z = z

    def __call__(self, input_ids, attention_mask=None, logits_mask=None):
        N, T = input_ids.shape
        full = self.z.expand(N, T, -1)  # (N, T, V)
        return full if logits_mask is None else full[logits_mask]


def prompts(lengths, seed=0):
    """Left-padded random prompts (ids 4..VOCAB-1) and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    P = max(lengths)
    ids = torch.full((len(lengths), P), PAD, dtype=torch.long)
    attn = torch.zeros(len(lengths), P, dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, P - n:] = torch.randint(4, VOCAB, (n,), generator=g)
        attn[i, P - n:] = True
    return ids, attn


def gen(seed):
    return torch.Generator().manual_seed(seed)


MODEL = ToyDenoiser()
# (gen_length, block_length, steps): several blocks; uneven splits; more steps than tokens (k = 0 steps)
SHAPES = [(12, 4, 6), (8, 8, 3), (6, 3, 4), (4, 2, 8), (10, 10, 10)]


# ----------------------------------------------------------------------------------------------
# Schedules (closed forms).

def test_linear_schedule_even_split_remainder_first():
    assert S.linear_schedule(32, 5) == [7, 7, 6, 6, 6]
    assert S.linear_schedule(4, 4) == [1, 1, 1, 1]
    assert S.linear_schedule(3, 5) == [1, 1, 1, 0, 0]
    for n in range(0, 40):
        for s in range(1, 12):
            k = S.linear_schedule(n, s)
            assert sum(k) == n and max(k) - min(k) <= 1 and k == sorted(k, reverse=True)


def test_dream_schedule_hand_computed():
    # t = linspace(1, 1e-3, S+1); k_i = floor(n_i (1 - t_{i+1}/t_i)), the rest at the last step
    assert S.dream_schedule(8, 2) == [3, 5]          # floor(8 · 0.4995) = 3
    assert S.dream_schedule(4, 4) == [0, 1, 1, 2]    # 4·0.24975 < 1 reveals nothing at step 0
    assert S.dream_schedule(32, 32)[0] == 0          # Dream's first step is often empty
    for n in (1, 7, 16, 33):
        for s in (1, 2, 5, 16):
            k = S.dream_schedule(n, s)
            assert len(k) == s and sum(k) == n and min(k) >= 0


# ----------------------------------------------------------------------------------------------
# Candidates and confidences (closed forms and distributions).

def test_gumbel_argmax_samples_tempered_softmax():
    z = torch.tensor([1.0, 0.0, -0.5, 2.0, -3.0])
    n = 40000
    for tau in (1.0, 0.5, 2.0):
        u = torch.rand((n, 5), dtype=torch.float64, generator=gen(1))
        freq = torch.bincount(S.gumbel_argmax(z.expand(n, 5), u, tau), minlength=5).double() / n
        p = F.softmax(z.double() / tau, dim=-1)
        assert torch.allclose(freq, p, atol=4 * math.sqrt(0.25 / n)), (tau, freq, p)


def test_entropy_candidates_sample_nucleus_and_score_its_entropy():
    z = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64))
    n = 40000
    u = torch.rand((n, 4), dtype=torch.float64, generator=gen(2))
    x_hat, conf = S.entropy_candidates(z.expand(n, 4), 1.0, 0.7, u)
    # top_p = 0.7 keeps the tokens whose higher-ranked mass is <= 0.7: {0.5, 0.3}, renormalised
    q = torch.tensor([0.5, 0.3, 0.0, 0.0], dtype=torch.float64) / 0.8
    freq = torch.bincount(x_hat, minlength=4).double() / n
    assert torch.allclose(freq, q, atol=4 * math.sqrt(0.25 / n)) and freq[2:].sum() == 0
    expected = (q[:2] * torch.log(q[:2] + 1e-10)).sum()
    assert torch.allclose(conf, expected.expand(n))
    # τ = 0: the argmax, and the entropy of the untempered (filtered) distribution
    x0, c0 = S.entropy_candidates(z[None], 0.0, None, None)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    assert x0.item() == 0 and torch.allclose(c0, (p * torch.log(p + 1e-10)).sum())


def test_top_p_filter_matches_dream_rule():
    p = torch.tensor([0.15, 0.5, 0.05, 0.3], dtype=torch.float64)
    kept = lambda top_p: torch.isfinite(S.top_p_filter(torch.log(p), top_p)).tolist()
    assert kept(0.4) == [False, True, False, False]   # the top token always stays
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.85) == [True, True, False, True]
    assert kept(1.0) == [True, True, True, True]
    z = torch.randn(50, VOCAB, dtype=torch.float64, generator=gen(3))
    for top_p in (0.3, 0.6, 0.9):
        ours = torch.isfinite(S.top_p_filter(z, top_p))
        ref = torch.stack([_dream_top_p(row, top_p) > torch.finfo(torch.float64).min for row in z])
        assert torch.equal(ours, ref)


def test_confidence_and_entropy_closed_forms():
    z = torch.tensor([[0.0, math.log(3.0)], [2.0, 2.0]])
    assert torch.allclose(S.candidate_confidence(z, torch.tensor([1, 0])), torch.tensor([0.75, 0.5], dtype=torch.float64))
    V = 7
    assert torch.allclose(S.neg_entropy(torch.zeros(V, dtype=torch.float64)),
                          torch.tensor(math.log(1 / V + 1e-10), dtype=torch.float64))


def test_top_k_positions_ties_go_left():
    conf = torch.tensor([[0.5, 0.9, 0.5, 0.9], [-math.inf, 0.1, -math.inf, 0.2]])
    assert S.top_k_positions(conf, 3).tolist() == [[1, 3, 0], [3, 1, 0]]


# ----------------------------------------------------------------------------------------------
# Parity with the loop transcriptions.

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("remasking,temperature", [("low_confidence", 0.0), ("low_confidence", 1.0),
                                                   ("low_confidence", 0.6), ("random", 0.0), ("random", 1.0)])
def test_llada_parity(shape, remasking, temperature):
    L, block, steps = shape
    ids, attn = prompts([5, 3, 5, 1])
    kw = dict(gen_length=L, block_length=block, steps=steps, temperature=temperature,
              remasking=remasking, mask_id=MASK, attention_mask=attn)
    ours = S.generate(MODEL, ids, generator=gen(7), **kw)
    ref = llada_reference(MODEL, ids, generator=gen(7), **kw)
    assert torch.equal(ours, ref)


class Bf16:
    """The toy denoiser's logits rounded to bfloat16, as a hub model's (many exact ties)."""

    def __call__(self, input_ids, attention_mask=None, logits_mask=None):
        return MODEL(input_ids, attention_mask=attention_mask, logits_mask=logits_mask).to(torch.bfloat16)


@pytest.mark.parametrize("model", [MODEL, Bf16()], ids=["float64", "bf16"])
@pytest.mark.parametrize("remasking", ["low_confidence", "random", "entropy"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_parity_unpadded_and_bf16(model, remasking, temperature):
    ids = torch.randint(4, VOCAB, (3, 4), generator=gen(8))
    kw = dict(gen_length=8, block_length=4, steps=6, temperature=temperature, mask_id=MASK)
    ours = S.generate(model, ids, remasking=remasking, generator=gen(2), **kw)
    if remasking == "entropy":
        ref = dream_reference(model, ids, generator=gen(2), **kw)
    else:
        ref = llada_reference(model, ids, remasking=remasking, generator=gen(2), **kw)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature,top_p", [(0.0, None), (1.0, None), (0.7, 0.9), (0.0, 0.5)])
def test_dream_entropy_parity(shape, temperature, top_p):
    L, block, steps = shape
    ids, attn = prompts([4, 6, 2])
    kw = dict(gen_length=L, block_length=block, steps=steps, temperature=temperature, mask_id=MASK,
              attention_mask=attn, top_p=top_p)
    ours = S.generate(MODEL, ids, remasking="entropy", generator=gen(11), **kw)
    ref = dream_reference(MODEL, ids, generator=gen(11), **kw)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("remasking", ["low_confidence", "random", "entropy"])
def test_suppress_eos_parity(temperature, remasking):
    model = ToyDenoiser(seed=4, eos_bias=6.0)  # EOS is a frequent candidate
    ids, attn = prompts([3, 5, 4], seed=1)
    kw = dict(gen_length=8, block_length=4, steps=4, temperature=temperature, mask_id=MASK,
              attention_mask=attn, suppress_eos=True, eos_id=EOS)
    ours = S.generate(model, ids, remasking=remasking, generator=gen(5), **kw)
    if remasking == "entropy":
        ref = dream_reference(model, ids, generator=gen(5), **kw)
    else:
        ref = llada_reference(model, ids, remasking=remasking, generator=gen(5), **kw)
    assert torch.equal(ours, ref)
    assert not (ours[:, ids.shape[1]:] == EOS).any()


def test_suppress_eos_changes_the_sample():
    """With an EOS-heavy model: plain sampling reveals EOS, suppress_eos never does."""
    model = ToyDenoiser(seed=4, eos_bias=6.0)
    ids, attn = prompts([3, 5, 4], seed=1)
    kw = dict(gen_length=8, block_length=8, steps=8, mask_id=MASK, attention_mask=attn)
    assert (S.generate(model, ids, **kw)[:, ids.shape[1]:] == EOS).any()
    assert not (S.generate(model, ids, suppress_eos=True, eos_id=EOS, **kw) == EOS).any()


# ----------------------------------------------------------------------------------------------
# Invariants of the procedure, seen through a recording wrapper.

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("remasking,temperature", [("low_confidence", 1.0), ("random", 0.0), ("entropy", 1.0)])
def test_invariants(shape, remasking, temperature):
    L, block, steps = shape
    ids, attn = prompts([5, 2, 4], seed=3)
    P = ids.shape[1]
    model = Recorder(MODEL)
    out = S.generate(model, ids, gen_length=L, block_length=block, steps=steps, temperature=temperature,
                     remasking=remasking, mask_id=MASK, attention_mask=attn, generator=gen(0))
    per_block = steps // (L // block)
    schedule = (S.dream_schedule if remasking == "entropy" else S.linear_schedule)(block, per_block)
    expected = [k for _ in range(L // block) for k in schedule if k > 0]  # k = 0 steps are skipped
    canvases = [c for c, _ in model.calls] + [out]
    assert len(model.calls) == len(expected)
    assert out.shape == (ids.shape[0], P + L) and out.dtype == torch.long
    assert not (out == MASK).any()  # no mask left
    for i, ((x, lmask), k) in enumerate(zip(model.calls, expected)):
        nxt = canvases[i + 1]
        assert torch.equal(x[:, :P], ids)  # the prompt never changes
        masked = x == MASK
        revealed = masked & (nxt != MASK)
        assert (revealed.sum(1) == k).all()  # exactly the scheduled number, in every row
        assert torch.equal(nxt[~masked], x[~masked])  # a revealed token never changes
        assert not ((nxt == MASK) & ~masked).any()  # nothing is re-masked
        # the current block: the first one with a mask; earlier blocks complete, later untouched
        first = min(int(masked[:, P:].nonzero()[:, 1].min()) // block * block, L)
        lo, hi = P + first, P + first + block
        assert not revealed[:, :lo].any() and not revealed[:, hi:].any()
        assert torch.equal(lmask, masked & (torch.arange(P + L) >= lo) & (torch.arange(P + L) < hi))


def test_greedy_is_deterministic_and_draws_nothing():
    ids, attn = prompts([5, 3])
    g = gen(0)
    state, global_state = g.get_state(), torch.get_rng_state()
    runs = [S.generate(MODEL, ids, gen_length=8, block_length=4, steps=8, mask_id=MASK, attention_mask=attn,
                       remasking=r, generator=g) for r in ("low_confidence", "low_confidence", "entropy", "entropy")]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])
    assert torch.equal(g.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)


def test_seeded_batches_reproduce_and_rows_differ():
    ids = torch.tensor([[5, 6, 7]]).repeat(6, 1)  # six copies of one prompt
    kw = dict(gen_length=12, block_length=4, steps=12, temperature=1.0, mask_id=MASK)
    for remasking in ("low_confidence", "random", "entropy"):
        a = S.generate(MODEL, ids, remasking=remasking, generator=gen(1), **kw)
        b = S.generate(MODEL, ids, remasking=remasking, generator=gen(1), **kw)
        c = S.generate(MODEL, ids, remasking=remasking, generator=gen(2), **kw)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert len({tuple(row.tolist()) for row in a}) > 1  # rows draw their own numbers


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "entropy"])
def test_left_padding_gives_the_unpadded_completion(remasking):
    lengths = [6, 2, 4, 1]
    ids, attn = prompts(lengths, seed=5)
    kw = dict(gen_length=8, block_length=4, steps=8, remasking=remasking, mask_id=MASK)
    if remasking == "random":
        # random order draws per batch; one row at a time with the same seed is the fair comparison
        for i, n in enumerate(lengths):
            padded = S.generate(MODEL, ids[i:i + 1], attention_mask=attn[i:i + 1], generator=gen(3), **kw)
            alone = S.generate(MODEL, ids[i:i + 1, -n:], generator=gen(3), **kw)
            assert torch.equal(padded[:, -8:], alone[:, -8:])
        return
    batch = S.generate(MODEL, ids, attention_mask=attn, **kw)
    for i, n in enumerate(lengths):
        alone = S.generate(MODEL, ids[i:i + 1, -n:], **kw)
        assert torch.equal(batch[i, -n - 8:], alone[0])


def test_caller_tensors_untouched_and_full_logits_models_work():
    ids, attn = prompts([5, 3, 4])
    ids0, attn0 = ids.clone(), attn.clone()
    kw = dict(gen_length=8, block_length=4, steps=4, temperature=1.0, mask_id=MASK, attention_mask=attn)
    a = S.generate(MODEL, ids, generator=gen(9), **kw)
    b = S.generate(IgnoresLogitsMask(MODEL), ids, generator=gen(9), **kw)
    assert torch.equal(a, b)
    assert torch.equal(ids, ids0) and torch.equal(attn, attn0)
    assert a.data_ptr() != ids.data_ptr()
    # an int attention mask is accepted as well
    assert torch.equal(S.generate(MODEL, ids, generator=gen(9), **{**kw, "attention_mask": attn.long()}), a)


def test_single_token_sampling_follows_softmax():
    """gen_length 1, one step: the completion is one draw of softmax(z / τ) over the tokens other
    than the mask token (the last id here, whose logit is the largest), for every remasking."""
    z = torch.tensor([0.3, -1.0, 0.0, 1.2, 0.5, 3.0], dtype=torch.float64)
    n = 20000
    ids = torch.zeros(n, 1, dtype=torch.long)
    for remasking, tau in (("low_confidence", 1.0), ("random", 0.5), ("entropy", 1.5)):
        out = S.generate(FixedLogits(z), ids, gen_length=1, block_length=1, steps=1, temperature=tau,
                         remasking=remasking, mask_id=5, generator=gen(4))
        freq = torch.bincount(out[:, 1], minlength=6).double() / n
        expected = F.pad(F.softmax(z[:5] / tau, dim=-1), (0, 1))
        assert not (out[:, 1] == 5).any()  # the mask token is never sampled
        assert torch.allclose(freq, expected, atol=4 * math.sqrt(0.25 / n)), remasking


# ----------------------------------------------------------------------------------------------
# KV caches and threshold decoding (model.py's Denoiser implements the cache arguments).

def denoiser(family, head_scale=1.0):
    """A small random Denoiser of model.py in float64 (padded and unpadded passes agree to the last
    bits); Dream's layout shifts its logits and groups its KV heads. head_scale > 1 makes it confident."""
    M = pytest.importorskip("model")
    cfg = M.CONFIGS["tiny"]
    if family == "dream":
        cfg = M.ModelConfig(**{**vars(cfg), "family": "dream", "n_kv_heads": 2, "qkv_bias": True})
    model = M.init_weights(M.Denoiser(cfg), seed=3).double().eval()
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    return model


def tiny_prompts(lengths, seed=0):
    """Left-padded prompts of the tiny vocabulary (pad 0, mask 2; ids 3..97 printable)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attn = torch.zeros(len(lengths), max(lengths), dtype=torch.bool)
    for i, n in enumerate(lengths):
        ids[i, -n:] = torch.randint(3, 98, (n,), generator=g)
        attn[i, -n:] = True
    return ids, attn


class RefreshEveryStep:
    """The cache convention with the keys/values recomputed from the current canvas before every
    window call: a cache that is never stale. Records each call's window."""

    def __init__(self, model):
        self.model, self.windows = model, []

    def forward(self, input_ids, attention_mask=None, logits_mask=None, past=None, window=None):
        self.windows.append(window)
        if window is not None:
            self.model(input_ids, attention_mask=attention_mask, past=past)
        return self.model(input_ids, attention_mask=attention_mask, logits_mask=logits_mask, past=past, window=window)

    __call__ = forward


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("remasking,temperature", [("low_confidence", 0.0), ("low_confidence", 1.0), ("entropy", 1.0)])
def test_cache_refreshed_at_every_step_gives_the_exact_canvas(family, cache, remasking, temperature):
    """With keys/values that cannot be stale, a cached run is the exact run: the window calls, the
    positions and padding of the window and Dream's shift at the window's edge are all right."""
    model = RefreshEveryStep(denoiser(family))
    ids, attn = tiny_prompts([5, 2, 4], seed=1)
    P, L, block = ids.shape[1], 12, 4
    kw = dict(gen_length=L, block_length=block, steps=6, temperature=temperature, remasking=remasking,
              mask_id=2, attention_mask=attn)
    exact = S.generate(model.model, ids, generator=gen(3), **kw)
    assert torch.equal(S.generate(model, ids, cache=cache, generator=gen(3), **kw), exact)
    # one call on the whole canvas per block, then windows: the block ("dual") or the block onwards
    per_block = 2 if remasking == "low_confidence" else sum(k > 0 for k in S.dream_schedule(block, 2))
    starts = [P + b * block for b in range(L // block)]
    expected = [w for lo in starts for w in [None] + [(lo, lo + block if cache == "dual" else P + L)] * (per_block - 1)]
    assert model.windows == expected


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_stale_cache_is_exact_at_each_blocks_first_step_only(family):
    """The caches really are stale (another rollout policy): over many prompts the canvases differ
    from the exact sampler's somewhere, while every block's first step (one full pass) is exact."""
    model = denoiser(family)
    ids, attn = tiny_prompts([6] * 8, seed=2)
    kw = dict(gen_length=8, block_length=8, mask_id=2, attention_mask=attn)
    exact = S.generate(model, ids, steps=8, **kw)
    for cache in ("prefix", "dual"):
        assert not torch.equal(S.generate(model, ids, steps=8, cache=cache, **kw), exact)
        assert torch.equal(S.generate(model, ids, steps=1, cache=cache, **kw), S.generate(model, ids, steps=1, **kw))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_model_without_past_runs_the_exact_procedure(cache):
    ids, attn = prompts([5, 3, 4])
    kw = dict(gen_length=8, block_length=4, steps=8, temperature=1.0, mask_id=MASK, attention_mask=attn)
    recorder = Recorder(MODEL)  # takes no `past`: it would raise if one were passed
    assert torch.equal(S.generate(recorder, ids, cache=cache, generator=gen(1), **kw),
                       S.generate(MODEL, ids, generator=gen(1), **kw))
    assert len(recorder.calls) == 8


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("cache,threshold", [("none", None), ("prefix", None), ("dual", None), ("none", 0.05),
                                             ("dual", 0.05)])
def test_left_padding_gives_the_unpadded_completion_in_every_mode(family, cache, threshold):
    model = denoiser(family)
    lengths = [6, 2, 4, 1]
    ids, attn = tiny_prompts(lengths, seed=5)
    kw = dict(gen_length=8, block_length=4, steps=8, mask_id=2, cache=cache, threshold=threshold)
    batch = S.generate(model, ids, attention_mask=attn, **kw)
    for i, n in enumerate(lengths):
        alone = S.generate(model, ids[i:i + 1, -n:], **kw)
        assert torch.equal(batch[i, -n - 8:], alone[0])


class ConfidenceRecorder:
    """Records each call's canvas and the greedy confidence max_v softmax(z)_v (mask token excluded)
    of every position the sampler asked logits for (-1 elsewhere). Passes the cache arguments on."""

    def __init__(self, model, mask_id):
        self.model, self.mask_id, self.steps = model, mask_id, []

    def forward(self, input_ids, attention_mask=None, logits_mask=None, past=None, window=None):
        extra = {} if past is None else {"past": past, "window": window}
        z = self.model(input_ids, attention_mask=attention_mask, logits_mask=logits_mask, **extra)  # (n, V)
        p = F.softmax(z.double().index_fill(-1, torch.tensor([self.mask_id]), float("-inf")), dim=-1).amax(-1)
        self.steps.append((input_ids.clone(), torch.full(logits_mask.shape, -1.0, dtype=torch.float64).masked_scatter(logits_mask, p)))
        return z

    __call__ = forward


@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_threshold_reveals_everything_above_it_and_at_least_the_schedule(cache, threshold):
    """Greedy, one block of 8, 4 steps (k = 2): every step reveals at least min(2, masks left) tokens
    per row and every candidate whose confidence reaches the threshold; it fills the canvas in fewer
    steps when candidates are confident, and never leaves a mask."""
    base, mask = (denoiser("llada", head_scale=30), 2) if cache == "dual" else (MODEL, MASK)
    model = ConfidenceRecorder(base, mask)
    ids, attn = tiny_prompts([5, 2, 4], seed=4) if cache == "dual" else prompts([5, 2, 4], seed=4)
    out = S.generate(model, ids, gen_length=8, block_length=8, steps=4, mask_id=mask, attention_mask=attn,
                     cache=cache, threshold=threshold)
    canvases = [x for x, _ in model.steps] + [out]
    for i, (x, conf) in enumerate(model.steps):
        nxt = canvases[i + 1]
        masked = x == mask
        revealed = masked & (nxt != mask)
        assert (revealed.sum(1) >= masked.sum(1).clamp(max=2)).all()  # the schedule's k is the floor
        assert not (masked & (conf >= threshold) & ~revealed).any()  # everything above the threshold
        assert torch.equal(nxt[~masked], x[~masked])  # revealed tokens never change
    assert not (out == mask).any() and len(model.steps) <= 4
    if threshold == 0.3:
        assert len(model.steps) < 4  # confident candidates finish the block early


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_threshold_rows_go_at_their_own_pace_and_never_reveal_less_than_one(cache):
    """τ = 1, three blocks of 4, one token per step by the schedule: rows reveal different numbers of
    tokens at a step (the threshold is reached in some rows only); each row with a mask left in the
    current block reveals at least one, a row whose block is complete waits; no mask is left."""
    base, mask = (denoiser("llada", head_scale=30), 2) if cache == "dual" else (MODEL, MASK)
    model = ConfidenceRecorder(base, mask)
    ids, attn = tiny_prompts([5, 2, 4, 3], seed=6) if cache == "dual" else prompts([5, 2, 4, 3], seed=6)
    P, block = ids.shape[1], 4
    out = S.generate(model, ids, gen_length=12, block_length=block, steps=12, temperature=1.0, mask_id=mask,
                     attention_mask=attn, cache=cache, threshold=0.5, generator=gen(1))
    assert not (out == mask).any() and len(model.steps) <= 12
    canvases = [x for x, _ in model.steps] + [out]
    counts = []
    for x, nxt in zip(canvases, canvases[1:]):
        masked = x == mask
        lo = P + int(masked[:, P:].nonzero()[:, 1].min()) // block * block  # the first block with a mask
        left = masked[:, lo:lo + block].sum(1)
        revealed = masked & (nxt != mask)
        assert not revealed[:, :lo].any() and not revealed[:, lo + block:].any()
        n = revealed.sum(1)
        assert (n >= left.clamp(max=1)).all() and (n <= left).all()
        counts.append(n.tolist())
    assert any(len(set(c)) > 1 for c in counts)  # rows out of step somewhere


# ----------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize("change,message", [
    (dict(gen_length=10, block_length=4), "not a multiple of block_length"),
    (dict(steps=2, gen_length=12, block_length=4), r"steps 2 < number of blocks 3"),
    (dict(steps=7, gen_length=12, block_length=4), r"not divisible by the number of blocks 3.*steps = 6 or 9"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(gen_length=0), "gen_length must be a positive int"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(remasking="topk_margin"), "remasking must be one of"),
    (dict(mask_id=-1), "mask_id must be a token id"),
    (dict(top_p=0.9), "top_p belongs to Dream's sampler"),
    (dict(top_p=1.5, remasking="entropy"), r"top_p must be in \(0, 1\]"),
    (dict(suppress_eos=True), "suppress_eos needs eos_id"),
    (dict(eos_id=EOS), "eos_id alone changes nothing"),
    (dict(suppress_eos=True, eos_id=VOCAB + 3), f"eos_id {VOCAB + 3} is outside the model's vocabulary"),
    (dict(cache="kv"), "cache must be one of"),
    (dict(threshold=0.9, remasking="entropy"), "threshold compares LLaDA's confidence"),
    (dict(threshold=0.0), r"threshold must be a probability in \(0, 1\]"),
    (dict(attention_mask=torch.ones(2, 5)), "attention_mask must have the prompt's shape"),
    (dict(prompt_ids=torch.ones(2, 3)), "prompt_ids must be a .B, P. torch.long tensor"),
    (dict(prompt_ids=torch.ones(3, dtype=torch.long)), "prompt_ids must be a .B, P. torch.long tensor"),
])
def test_bad_arguments(change, message):
    kw = dict(prompt_ids=torch.full((2, 3), 5), gen_length=8, block_length=4, steps=4, mask_id=MASK)
    kw.update(change)
    with pytest.raises(ValueError, match=message):
        S.generate(MODEL, **kw)


def test_ids_outside_the_logits_vocabulary_are_named():
    model = FixedLogits(torch.zeros(VOCAB, dtype=torch.float64))  # no embedding: tolerates any id
    kw = dict(gen_length=4, block_length=4, steps=4)
    with pytest.raises(ValueError, match=f"mask_id {VOCAB + 5} is outside the model's vocabulary of {VOCAB}"):
        S.generate(model, torch.full((2, 3), 5), mask_id=VOCAB + 5, **kw)
    with pytest.raises(ValueError, match=f"eos_id {VOCAB} is outside the model's vocabulary of {VOCAB}"):
        S.generate(model, torch.full((2, 3), 5), mask_id=MASK, suppress_eos=True, eos_id=VOCAB, **kw)


def test_model_breaking_the_convention_is_named():
    bad = lambda ids, attention_mask=None, logits_mask=None: torch.zeros(3, VOCAB)
    with pytest.raises(ValueError, match=r"returned logits of shape \(3, 24\).*selecting 8 positions"):
        S.generate(bad, torch.full((2, 3), 5), gen_length=4, block_length=4, steps=4, mask_id=MASK)


# ----------------------------------------------------------------------------------------------
# The project's tiny model, when model.py provides it (the suite does not depend on it).

def test_tiny_model_parity_if_available():
    M = pytest.importorskip("model")
    if not hasattr(M, "load_model"):
        pytest.skip("model.py has no load_model yet")
    model = M.load_model("tiny").eval()
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (4, 6), generator=g)
    attn = torch.ones(4, 6, dtype=torch.bool)
    attn[1, :2] = False
    ids[1, :2] = cfg.pad_id
    for temperature in (0.0, 1.0):
        kw = dict(gen_length=8, block_length=4, steps=8, temperature=temperature, mask_id=cfg.mask_id,
                  attention_mask=attn)
        ours = S.generate(model, ids, remasking="low_confidence", generator=gen(1), **kw)
        ref = llada_reference(model, ids, remasking="low_confidence", generator=gen(1), **kw)
        assert torch.equal(ours, ref)
