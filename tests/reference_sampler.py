"""Plain, loop-based transcriptions of the two reference samplers, for parity tests and bench/.

    llada_reference   LLaDA's generate (low_confidence / random remasking, semi-autoregressive
                      blocks): full-canvas logits every step, per-row selection in a Python loop
    dream_reference   Dream's entropy-order sampler (alg="entropy"), per block (one block =
                      Dream's whole-sequence procedure): counts recomputed each step from the
                      number of masks left, in float32 like Dream's code

Written from the reference algorithms' descriptions, step by step, with no vectorisation, so they
can be read against them. They share sample.py's random-number design only (so a seeded run is
reproducible token for token), drawing at each step that reveals a token, in this order:
    u (B, m, V) float64 uniforms  if τ > 0; u[b, j] belongs to the j-th masked position of the
                                  current block in row b, left to right
    r (B, m)    float64 uniforms  if remasking == "random"
(m = masked positions left in the block). The references themselves draw noise for the whole
canvas, so their samples cannot be matched; greedy decoding needs no draws and is the reference's.
Ties in confidence go to the leftmost position (a stable sort), where torch.topk leaves it open.
Two more adaptations shared with sample.py: the mask token's logit is set to -inf (in the
references a sampled mask token leaves its position masked), and suppress_eos is LLaDA's
logits_eos_inf (EOS logits set to -inf).
Like the references, these run the model at every step, also at steps that reveal nothing.
"""
import torch
import torch.nn.functional as F


def _full_attention(attention_mask, B, L, device):
    if attention_mask is None:
        return None
    ones = torch.ones(B, L, dtype=torch.bool, device=device)
    return torch.cat([attention_mask.bool(), ones], dim=1)


def _rand(shape, generator):
    return torch.rand(shape, dtype=torch.float64, generator=generator)


def _take_top(x, row, positions, tokens, confidence, k):
    """Reveal the k most confident positions of one row (stable order: ties to the left)."""
    order = torch.sort(confidence, descending=True, stable=True).indices[:k]
    for j in order.tolist():
        x[row, positions[j]] = tokens[j]


def llada_reference(model, prompt, *, gen_length, steps, block_length, temperature, remasking, mask_id,
                    attention_mask=None, generator=None, eos_id=None, suppress_eos=False):
    """LLaDA's low-confidence / random remasking: the reference's whole-canvas tensors each step,
    its per-row loop for the top-k selection."""
    B, P = prompt.shape
    T = P + gen_length
    x = torch.full((B, T), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    attn = _full_attention(attention_mask, B, gen_length, x.device)
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps_per_block = steps // num_blocks

    for block in range(num_blocks):
        start, end = P + block * block_length, P + (block + 1) * block_length
        # how many tokens each step of this block reveals, row by row: an even split of the
        # block's masks over the steps, one more token for each of the first (n mod S) steps
        counts = torch.zeros(B, steps_per_block, dtype=torch.long)
        for b in range(B):
            n = int((x[b, start:end] == mask_id).sum())
            counts[b, :] = n // steps_per_block
            counts[b, : n % steps_per_block] += 1

        for i in range(steps_per_block):
            mask_index = x == mask_id  # (B, T)
            logits = model(x, attention_mask=attn).clone()  # (B, T, V): the whole canvas, as the reference
            logits[:, :, mask_id] = float("-inf")  # the mask token is never a candidate (as sample.py)
            if suppress_eos:
                logits[:, :, eos_id] = float("-inf")
            if int(counts[:, i].max()) == 0:
                continue
            # the current block's masked positions: the only ones that can be revealed
            open_now = torch.zeros(B, T, dtype=torch.bool)
            open_now[:, start:end] = mask_index[:, start:end]
            m = int(open_now[0].sum())
            V = logits.shape[-1]

            if temperature > 0:
                # Gumbel-max in float64 over the whole canvas: argmax exp(z) / (-log u)^τ, with
                # row b's j-th open position taking u[b, j] (other positions' noise is unused)
                u = _rand((B, m, V), generator)
                noise = torch.full((B, T, V), 0.5, dtype=torch.float64)
                for b in range(B):
                    noise[b, open_now[b]] = u[b]
                x0 = torch.argmax(logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature, dim=-1)
            else:
                x0 = torch.argmax(logits, dim=-1)  # (B, T)

            if remasking == "low_confidence":
                p = F.softmax(logits.to(torch.float64), dim=-1)  # (B, T, V)
                x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)  # (B, T)
            elif remasking == "random":
                r = _rand((B, m), generator)
                x0_p = torch.zeros(B, T, dtype=torch.float64)
                for b in range(B):
                    x0_p[b, open_now[b]] = r[b]
            else:
                raise ValueError(remasking)
            x0_p[:, end:] = float("-inf")
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))

            transfer = torch.zeros(B, T, dtype=torch.bool)
            for b in range(B):
                # top-k among the block's masked positions; a stable sort sends ties to the left
                candidates = torch.nonzero(open_now[b]).squeeze(1)
                order = torch.sort(confidence[b, candidates], descending=True, stable=True).indices
                transfer[b, candidates[order[: int(counts[b, i])]]] = True
            x[transfer] = x0[transfer]
    return x


def _dream_top_p(z, top_p):
    """Dream's nucleus filter on one position's logits: sort, cumulative softmax, drop where the
    running mass passed top_p (shifted one to the right so the top token stays), fill with the
    dtype's minimum. A stable sort ranks equal logits by vocabulary index."""
    sorted_z, order = torch.sort(z, descending=True, stable=True)
    cum = torch.cumsum(F.softmax(sorted_z, dim=-1), dim=-1)
    remove = cum > top_p
    remove = torch.cat([torch.zeros(1, dtype=torch.bool), remove[:-1]])
    out = z.clone()
    for rank in range(z.shape[0]):
        if remove[rank]:
            out[order[rank]] = torch.finfo(z.dtype).min
    return out


def dream_reference(model, prompt, *, gen_length, steps, block_length, temperature, mask_id,
                    attention_mask=None, generator=None, top_p=None, eps=1e-3, eos_id=None,
                    suppress_eos=False):
    """Dream's entropy-order sampler, applied to each block in turn (one block = Dream's own)."""
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    attn = _full_attention(attention_mask, B, gen_length, x.device)
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    timesteps = torch.linspace(1, eps, steps_per_block + 1)  # float32, as Dream's

    for block in range(num_blocks):
        start, end = P + block * block_length, P + (block + 1) * block_length
        for i in range(steps_per_block):
            logits = model(x, attention_mask=attn).clone()  # (B, T, V)
            logits[:, :, mask_id] = float("-inf")  # the mask token is never a candidate (as sample.py)
            if suppress_eos:
                logits[:, :, eos_id] = float("-inf")
            # tokens to reveal: the batch's mean mask count times (1 - s/t), truncated, in float32;
            # everything left at the last step
            block_masks = x[:, start:end] == mask_id
            per_row = block_masks.sum() / B  # float32 tensor
            t, s = timesteps[i], timesteps[i + 1]
            k = int(per_row * (1 - s / t)) if i < steps_per_block - 1 else int(per_row)
            if k == 0:
                continue
            m = int(block_masks[0].sum())
            V = logits.shape[-1]
            u = _rand((B, m, V), generator) if temperature > 0 else None

            for b in range(B):
                positions = [j for j in range(start, end) if int(x[b, j]) == mask_id]
                tokens = torch.zeros(m, dtype=torch.long)
                confidence = torch.zeros(m, dtype=torch.float64)
                for j, pos in enumerate(positions):
                    z = logits[b, pos].to(torch.float64)  # (V,)
                    if temperature > 0:
                        z = z / temperature
                    if top_p is not None and top_p < 1:
                        z = _dream_top_p(z, top_p)
                    probs = F.softmax(z, dim=-1)
                    if temperature > 0:
                        # categorical draw from probs, as a Gumbel-max with this position's uniforms
                        tokens[j] = torch.argmax(z - torch.log(-torch.log(u[b, j])))
                    else:
                        tokens[j] = torch.argmax(probs)
                    # Dream's confidence: the negative entropy of the (filtered) distribution
                    confidence[j] = torch.sum(probs * torch.log(probs + 1e-10))
                _take_top(x, b, positions, tokens, confidence, k)
    return x
