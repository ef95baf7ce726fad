"""Likelihood estimators (docs/objectives.md): the conditional log-likelihood estimator (the LLaDA paper's
Algorithm 3), the ELBO perplexity bound of held-out text (the pre-training objective as a bound), the block-diffusion
ELBO (BD3-LM) of both, the autoregressive baseline's exact values, and the greedy checks (is the answer the model's
argmax?) of each objective. objectives.py says which one an objective uses; evaluate.py runs `llada eval`.

Everything is generic over the model: `model` is a model_lib.Model or any apply_fn(params, tokens, key_mask) ->
logits [B, T, V] float32. Pass the same object each call: it is a static argument of the compiled programs.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import attention, diffusion, model as model_lib, sampling
from llada_jax.errors import LladaError


class EvalError(LladaError):
    """Evaluation inputs that cannot work; the message says what was wrong and how to fix it."""


def _apply_fn(model):
    return model.apply if isinstance(model, model_lib.Model) else model


def _logits(model, params, tokens, key_mask, prompt_region, cfg_scale, mask_id, use_cfg):
    run = lambda t, km: (_apply_fn(model)(params, t, km), None)
    return sampling.guided(run, tokens, key_mask, prompt_region, cfg_scale, mask_id, use_cfg)[0]


# -- conditional log-likelihood (Algorithm 3) -----------------------------------------------------------------------

def stratified_counts(key, answer_len, n):
    """Mask counts l_j of the n rows of one mini-batch: evenly spaced over {1..L} (spacing L / n) from a random
    offset k ~ U{1..L}, wrapped back into {1..L} (L = answer_len, may be traced)."""
    k = jax.random.randint(key, (), 1, answer_len + 1)
    l = jnp.round(k + jnp.arange(n, dtype=jnp.float32) * (answer_len / n)).astype(jnp.int32)
    return (l - 1) % answer_len + 1


def answer_masks(key, answer_len, counts, width):
    """[n, width] bool: row j masks exactly counts[j] of the first answer_len positions, chosen uniformly without
    replacement (the rest of the width is padding and never masked)."""
    n = counts.shape[0]
    real = jnp.arange(width)[None, :] < answer_len
    scores = jnp.where(real, jax.random.uniform(key, (n, width)), -jnp.inf)
    return real & (sampling.ranks(scores) < counts[:, None])


def _loglik_rows(model, params, prompt, prompt_mask, answer, answer_len, key, cfg_scale, mask_id, n_batches,
                 batch_size, use_cfg):
    """[n_batches, batch_size] per-row estimates of -log p(answer | prompt): sum of masked CE times L / l."""
    p_len, a_len = prompt.shape[0], answer.shape[0]
    seq = jnp.concatenate([prompt, answer])
    key_mask = jnp.concatenate([prompt_mask, jnp.arange(a_len) < answer_len])
    key_mask = jnp.broadcast_to(key_mask, (batch_size, p_len + a_len))
    prompt_region = (jnp.arange(p_len + a_len) < p_len)[None, :]

    def one(k):
        k_count, k_pos = jax.random.split(k)
        counts = stratified_counts(k_count, answer_len, batch_size)
        masked = jnp.concatenate([jnp.zeros((batch_size, p_len), bool),
                                  answer_masks(k_pos, answer_len, counts, a_len)], 1)
        x = jnp.where(masked, mask_id, seq[None, :])
        logits = _logits(model, params, x, key_mask, prompt_region, cfg_scale, mask_id, use_cfg)
        ce = jnp.where(masked, diffusion.cross_entropy(logits, jnp.broadcast_to(seq, x.shape)), 0.0)
        return jnp.sum(ce, -1) * answer_len / counts

    return jax.lax.map(one, jax.random.split(key, n_batches))


_loglik_jit = jax.jit(_loglik_rows, static_argnames=("model", "mask_id", "n_batches", "batch_size", "use_cfg"))


def _pad_to(n, bucket):
    return -(-n // bucket) * bucket


def _estimator_inputs(prompt, answer, n_samples, batch_size, model=None):
    """prompt, answer as int32 arrays, after the checks every likelihood estimator makes."""
    prompt, answer = np.asarray(prompt, np.int32), np.asarray(answer, np.int32)
    if answer.size == 0:
        raise EvalError("the answer is empty; log p(empty | prompt) = 0 needs no estimate.")
    if prompt.size < first_scored(model):
        raise EvalError("the prompt is empty, and under model.shift_logits nothing predicts a sequence's first "
                        "token; start the prompt with the run's BOS or document separator (tokens.bos_id / eos_id).")
    if n_samples % batch_size:
        raise EvalError(f"n_samples={n_samples} must be a multiple of batch_size={batch_size}.")
    return prompt, answer


def log_likelihood(model, params, prompt, answer, key, mask_id, *, n_samples=128, batch_size=16, cfg_scale=0.0,
                   bucket=1):
    """Monte Carlo estimate of log p(answer | prompt) (Algorithm 3; not length-normalised).

    prompt, answer: 1-D token ids. n_samples rows in mini-batches of batch_size (n_samples a multiple of it).
    bucket > 1 pads the prompt (left) and the answer (right) to multiples of `bucket`, hidden by the key mask, so
    examples of similar lengths share one compilation (exact only for a model that honours key_mask).
    Returns (estimate, standard error): the error from the spread of the mini-batch means (rows of one mini-batch
    are not independent: their mask counts are stratified)."""
    prompt, answer = _estimator_inputs(prompt, answer, n_samples, batch_size, model)
    prompt_full, prompt_mask, answer_full = _padded(prompt, answer, bucket, mask_id)
    rows = _loglik_jit(model, params, prompt_full, prompt_mask, answer_full, jnp.int32(answer.size), key,
                       jnp.float32(cfg_scale), mask_id, n_samples // batch_size, batch_size, cfg_scale > 0)
    return _estimate(rows)


def _padded(prompt, answer, bucket, mask_id):
    """(prompt left-padded to a multiple of bucket, its key mask, answer right-padded to a multiple of bucket)."""
    p_pad, a_pad = _pad_to(prompt.size, bucket) - prompt.size, _pad_to(answer.size, bucket) - answer.size
    prompt_full = np.concatenate([np.full(p_pad, mask_id, np.int32), prompt])
    return (prompt_full, np.arange(prompt_full.size) >= p_pad,
            np.concatenate([answer, np.full(a_pad, mask_id, np.int32)]))


def _estimate(rows):
    """-(mean of [n_batches, batch_size] per-row estimates of -log p), and its standard error: from the spread of
    the mini-batch means (rows of one mini-batch need not be independent), else of the rows."""
    rows = np.asarray(rows, np.float64)
    means = rows.mean(1)
    if means.size > 1:
        stderr = means.std(ddof=1) / math.sqrt(means.size)
    else:
        stderr = rows.std(ddof=1) / math.sqrt(rows.size) if rows.size > 1 else float("nan")
    return -float(means.mean()), float(stderr)


def _block_rows(model, params, seq, key_mask, answer, key, mask_id, eps, block_size, n_batches, batch_size):
    """[n_batches, batch_size] draws of the block ELBO of the answer positions given the rest (clean)."""
    rows = lambda a: jnp.broadcast_to(a, (batch_size, a.shape[0]))
    one = lambda k: _elbo_rows(model, params, rows(seq), rows(key_mask), rows(answer), k, mask_id, eps, block_size)
    return jax.lax.map(one, jax.random.split(key, n_batches))


_block_rows_jit = jax.jit(_block_rows, static_argnames=("model", "mask_id", "eps", "block_size", "n_batches",
                                                         "batch_size"))


def _block_layout(prompt, answer, block_size, mask_id):
    """The layout of training and of block_sampling.generate: prompt ++ answer from position 0, blocks from
    there, right-padded (hidden) to whole blocks; returns (sequence, key mask, answer positions)."""
    n = prompt.size + answer.size
    pad = -n % block_size
    pos = np.arange(n + pad)
    return np.concatenate([prompt, answer, np.full(pad, mask_id, np.int32)]), pos < n, (pos >= prompt.size) & (pos < n)


def block_log_likelihood(model, params, prompt, answer, key, mask_id, block_size, *, n_samples=128, batch_size=16,
                         eps=1e-3):
    """log p(answer | prompt) of a block-diffusion model (objective=block; a model_lib.Model): minus a Monte Carlo
    estimate of the block ELBO of the answer with the prompt clean (each block draws its own t; a block holding
    the prompt's tail and the answer's start noises only the answer; a lower bound in expectation). Returns
    (estimate, standard error) as log_likelihood does."""
    prompt, answer = _estimator_inputs(prompt, answer, n_samples, batch_size, model)
    seq, key_mask, answer_region = _block_layout(prompt, answer, block_size, mask_id)
    return _estimate(_block_rows_jit(model, params, seq, key_mask, answer_region, key, mask_id, eps, block_size,
                                     n_samples // batch_size, batch_size))


def block_greedy(model, params, prompt, answer, mask_id, block_size):
    """Is the answer each block's argmax given the true blocks before it (every answer position masked in x_t)?
    The block analogue of the autoregressive baseline's greedy check (lm-eval's is_greedy)."""
    seq, key_mask, answer_region = _block_layout(np.asarray(prompt, np.int32), np.asarray(answer, np.int32),
                                                 block_size, mask_id)
    inputs, km = diffusion.block_pair(jnp.where(answer_region, mask_id, seq)[None], seq[None], key_mask[None])
    logits = model.apply(params, inputs, km, blocks=attention.Blocks(block_size, pair=True))[0, :seq.size]
    return bool(np.array_equal(np.asarray(jnp.argmax(logits, -1))[answer_region], seq[answer_region]))


def mdm_greedy(model, params, prompt, answer, mask_id, block_size=None):
    """Is the answer the masked-diffusion model's argmax with the whole answer masked after the prompt (one pass),
    as the official evaluation computes lm-eval's is_greedy?"""
    x = np.asarray(list(prompt) + [mask_id] * len(answer), np.int32)[None]
    logits = _apply_fn(model)(params, jnp.asarray(x), None)
    return bool(np.array_equal(np.asarray(jnp.argmax(logits[0, len(prompt):], -1)), np.asarray(answer)))


def ar_greedy(model, params, prompt, answer, mask_id=None, block_size=None):
    """Is every answer token the autoregressive baseline's argmax given the prompt and the answer before it (one
    causal pass over prompt ++ answer: what greedy decoding would produce)?"""
    seq = jnp.asarray(list(prompt) + list(answer), jnp.int32)[None]
    logits = model.apply(params, seq, causal=True)[0, len(prompt) - 1:-1]  # position i predicts token i + 1
    return bool(np.array_equal(np.asarray(jnp.argmax(logits, -1)), np.asarray(answer)))


def _ar_loglik(model, params, seq, p_len):
    logits = model.apply(params, seq[None], causal=True)[0, :-1]  # position i predicts token i + 1
    ll = -diffusion.cross_entropy(logits, seq[1:])
    return jnp.sum(jnp.where(jnp.arange(seq.shape[0] - 1) >= p_len - 1, ll, 0.0))


_ar_loglik_jit = jax.jit(_ar_loglik, static_argnames=("model", "p_len"))


def ar_log_likelihood(model, params, prompt, answer):
    """Exact log p(answer | prompt) of the autoregressive baseline (objective=arm): one causal pass."""
    prompt, answer = np.asarray(prompt, np.int32), np.asarray(answer, np.int32)
    if prompt.size == 0 or answer.size == 0:
        raise EvalError("the autoregressive likelihood needs a non-empty prompt and answer.")
    return float(_ar_loglik_jit(model, params, jnp.asarray(np.concatenate([prompt, answer])), int(prompt.size)))


# -- ELBO perplexity bound --------------------------------------------------------------------------------------------

def _elbo_rows(model, params, tokens, key_mask, maskable, key, mask_id, eps, block_size=None):
    """Per row: sum over masked positions (among `maskable`) of CE / p, one draw of the noise per row: the LLaDA
    bound (block_size None: one t per row), or the block-diffusion bound (a t per block of block_size, the model
    on [x_t ; x_0] as in training)."""
    if block_size is None:
        x_t, masked, p = diffusion.forward_process(key, tokens, mask_id, eps, maskable=maskable)
        logits, p = _apply_fn(model)(params, x_t, key_mask), p[:, None]
    else:
        x_t, masked, p = diffusion.block_forward_process(key, tokens, mask_id, eps, block_size, maskable)
        inputs, km = diffusion.block_pair(x_t, tokens, key_mask)
        logits = model.apply(params, inputs, km, blocks=attention.Blocks(block_size, pair=True))
        logits = logits[:, :tokens.shape[1]]
    ce = diffusion.cross_entropy(logits, tokens) / p
    return jnp.sum(jnp.where(masked, ce, 0.0), -1)


def first_scored(model):
    """model.first_predicted of our model (1 under model.shift_logits), 0 for any other (a reference model)."""
    return model_lib.first_predicted(model.m) if isinstance(model, model_lib.Model) else 0


def _elbo_batch(model, params, tokens, lengths, key, mask_id, eps, block_size):
    pos = jnp.arange(tokens.shape[1])[None, :]
    valid = pos < lengths[:, None]
    return _elbo_rows(model, params, tokens, valid, valid & (pos >= first_scored(model)), key, mask_id, eps,
                      block_size)


_elbo_jit = jax.jit(_elbo_batch, static_argnames=("model", "mask_id", "eps", "block_size"))


def elbo_perplexity(model, params, tokens, key, mask_id, *, lengths=None, n_samples=1, batch_size=16, eps=1e-3,
                    block_size=None):
    """Upper bound on the per-token negative log-likelihood of held-out data (the pre-training objective, an
    unbiased estimate of E_t[(1/t) sum_i 1[masked] (-log p(x0_i | x_t))] / L, averaged over t and the data).
    block_size: the block-diffusion bound instead (objective=block; the sum of the blocks' bounds), rows padded
    (hidden) to whole blocks.

    tokens [N, L] int (numpy); lengths [N] real tokens per row (default L; the tail is hidden and unscored).
    n_samples draws of (t, mask) per row. Returns a dict: nll (nats per token, the bound), ppl = exp(nll),
    stderr (of nll, over rows and draws), tokens (real tokens scored; all but each row's first under
    model.shift_logits, as the exact perplexity of a causal model)."""
    tokens = np.asarray(tokens, np.int32)
    n, l = tokens.shape
    lengths = np.full(n, l, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    if block_size is not None and l % block_size:
        tokens = np.pad(tokens, ((0, 0), (0, -l % block_size)))

    def draw(s):  # the per-row sums of draw s (its key folded with the batch's first row)
        fn = lambda b0, rows, row_lengths: _elbo_jit(model, params, rows, row_lengths, jax.random.fold_in(
            jax.random.fold_in(key, s), b0), mask_id, eps, block_size)
        return _by_batches(fn, tokens, lengths, 0, batch_size)

    sums = np.stack([draw(s) for s in range(n_samples)])
    counts = lengths - first_scored(model)
    nll, stderr = _ratio_of_means(sums, np.broadcast_to(counts, sums.shape))
    return {"nll": nll, "ppl": math.exp(nll), "stderr": stderr, "tokens": int(counts.sum())}


def padded_rows(n, batch_size):
    """The rows a batch of n real rows (1 <= n <= batch_size) is padded to: the next power of two, at most
    batch_size. A batch is not padded far past the rows present (2 rows of a long text run as 2, not batch_size),
    and its shapes stay few: 1, 2, 4, ... or batch_size rows, log2(batch_size) + 1 of them for a power of two
    (floor(log2(batch_size)) + 2 otherwise), so as many compilations at most."""
    return min(batch_size, 1 << (n - 1).bit_length())


def _by_batches(fn, tokens, lengths, pad_length, batch_size):
    """fn(first row, tokens [B, L], lengths [B]) -> [B] per-row values, over the rows in batches of batch_size; a
    partial batch (the last, or the only one) is filled up to padded_rows with zero rows of length pad_length. [N]
    float64."""
    n, l = tokens.shape
    out = []
    for b0 in range(0, n, batch_size):
        rows, row_lengths = tokens[b0:b0 + batch_size], lengths[b0:b0 + batch_size]
        m = rows.shape[0]
        pad = padded_rows(m, batch_size) - m
        rows = np.concatenate([rows, np.zeros((pad, l), np.int32)])
        row_lengths = np.concatenate([row_lengths, np.full(pad, pad_length, np.int32)])
        out.append(np.asarray(fn(b0, rows, row_lengths), np.float64)[:m])
    return np.concatenate(out)


def _ratio_of_means(sums, counts):
    """(sum of sums / sum of counts, its delta-method standard error over the rows): the per-token nll of rows
    whose summed nll is `sums` over `counts` tokens (arrays of one shape)."""
    nll = float(sums.sum() / counts.sum())
    resid = (sums - nll * counts).ravel()
    stderr = resid.std(ddof=1) / (math.sqrt(resid.size) * counts.mean()) if resid.size > 1 else float("nan")
    return nll, stderr


def _ar_nll_rows(model, params, tokens, start, lengths):
    """Per row: the summed -log p(x_i | x_<i) over positions start..length-1 (one causal pass)."""
    logits = model.apply(params, tokens, causal=True)[:, :-1]
    ce = diffusion.cross_entropy(logits, tokens[:, 1:])
    pos = jnp.arange(1, tokens.shape[1])[None, :]
    return jnp.sum(jnp.where((pos >= start) & (pos < lengths[:, None]), ce, 0.0), -1)


_ar_nll_jit = jax.jit(_ar_nll_rows, static_argnames=("model", "start"))


def ar_perplexity(model, params, tokens, *, start=1, lengths=None, batch_size=16):
    """The exact per-token perplexity of the autoregressive baseline on rows tokens [N, L], scoring positions
    start..L-1 given everything before them (start=1: every token but the first, which has no context; a prompt
    length to score only the continuations, e.g. generative perplexity). lengths [N]: score row n up to position
    lengths[n] - 1 only (e.g. a sample that stopped early; default L). Returns elbo_perplexity's dict: nll per
    scored token, stderr over rows."""
    tokens = np.asarray(tokens, np.int32)
    n, l = tokens.shape
    lengths = np.full(n, l, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    if not 1 <= start < l:
        raise EvalError(f"start={start} must be in [1, {l - 1}] for rows of {l} tokens.")
    if lengths.shape != (n,) or lengths.min() <= start or lengths.max() > l:
        raise EvalError(f"lengths must be {n} values in [{start + 1}, {l}] (more than start={start}); "
                        f"got {lengths.tolist()}.")
    sums = _by_batches(lambda b0, rows, row_lengths: _ar_nll_jit(model, params, rows, start, row_lengths), tokens,
                       lengths, l, batch_size)
    counts = lengths - start
    nll, stderr = _ratio_of_means(sums, counts)
    return {"nll": nll, "ppl": math.exp(nll), "stderr": stderr, "tokens": int(counts.sum())}
