"""Reinforcement learning for masked diffusion LMs, first layer (docs/rl.md): the sequence log-probabilities a policy
gradient needs, and the losses.

- d1's diffu-GRPO (Zhao et al. 2025, arXiv 2504.12216): per-token log-probabilities of a completion from one
  forward pass, the completion fully masked and the prompt randomly masked (mean_field_logprobs, prompt_noise); the
  group-normalised advantages and the clipped loss with a k3 KL penalty (grpo_advantages, grpo_loss).
- VRPO (LLaDA 1.5, Zhu et al. 2025, arXiv 2505.19223): DPO with log pi(y | x) replaced by an ELBO estimate, its
  timesteps stratified and the budget spent on timesteps (elbo_noise, elbo_draws, elbo_logprob), the policy and the
  reference scored on the same noise (antithetic sampling: the same key; vrpo_loss), and the DPO loss (dpo_loss).

Everything is a pure function of arrays and explicit keys, with static shapes: jit it with `model` (and the
keyword-only ints) static. `model` is a model_lib.Model or any apply_fn(params, tokens, key_mask) -> logits
[B, T, V] float32 (as in likelihood.py). Log-probabilities are float32.

Layout (the sampler's): prompt [B, P] int left-padded (sampling.left_pad), prompt_mask [B, P] bool True on its real
tokens; completion [B, L] int right-padded, completion_mask [B, L] bool True on the tokens that count. The model sees
prompt ++ completion with key_mask = prompt_mask ++ completion_mask, so padding is never attended to, never masked
and never scored. The model's logits are aligned by the model itself (model.shift_logits: position i's logits come
from i - 1's output, model.shift); the completion starts at position P, which under the shift must be >= 1, and
every row's prompt then needs a real token (nothing else predicts the completion's first token).
"""
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from llada_jax import diffusion, model as model_lib
from llada_jax.errors import LladaError
from llada_jax.likelihood import first_scored


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An RL algorithm (`rl.algorithm`): its updates on a batch of rollouts (rl_train.RLStep), whether it reads the
    reference policy, and the extra metrics its progress line shows. The table below is the only place that names
    one."""
    description: str
    updates: Callable  # RLStep method: (self, state, ref_params, host, rewards, keys) -> (state, [metrics], extra)
    uses_reference: Callable  # cfg.rl -> bool
    log_keys: tuple


ALGORITHMS = {
    "grpo": Algorithm("d1's diffu-GRPO", lambda s, *a: s.grpo_updates(*a), lambda r: r.beta > 0,
                      ("kl", "clip_fraction")),
    "vrpo": Algorithm("LLaDA 1.5's VRPO: DPO on ELBO estimates", lambda s, *a: s.vrpo_updates(*a), lambda r: True,
                      ("pairs", "reward_margin", "accuracy")),
}


class RLError(LladaError):
    """RL inputs that cannot work; the message says what was wrong and how to fix it."""


def _check_prompt(model, prompt):
    if prompt.shape[1] < first_scored(model):
        raise RLError("the prompt is empty, and under model.shift_logits nothing predicts a sequence's first token; "
                      "start every prompt with a real token (e.g. tokens.bos_id).")


def _completion_logprobs(model, params, inputs, key_mask, completion):
    """[B, L] log p(completion_i | inputs) at the last L positions of `inputs` [B, P + L]. A model_lib.Model applies
    its output head to those positions only (the prompt's logits are never formed); the result equals
    model.apply(...)[:, P:] (tested)."""
    start = inputs.shape[1] - completion.shape[1]
    if isinstance(model, model_lib.Model):
        h = model.forward(params, inputs, key_mask, head=False)[0][:, start:]
        w = model_lib.head_weight(params, model.m).astype(h.dtype)
        logits = model.constrain(model_lib.dense(h, w, preferred_element_type=jnp.float32),
                                 ("batch", "act_seq", "vocab"))
    else:
        logits = model(params, inputs, key_mask)[:, start:]
    return -diffusion.cross_entropy(logits, completion)


# -- d1: mean-field per-token log-probabilities ------------------------------------------------------------------

def prompt_noise(key, prompt_mask, p_mask=0.15):
    """[B, P] bool: which prompt positions d1's forward pass masks. Each real prompt token (prompt_mask) is masked
    independently with probability p_mask: uniform(key, [B, P]) < p_mask; padding never is. A function of the key and
    the shape only, never of the params: the same key gives the old, the reference and the current policy the same
    mask (d1 draws one seed per inner iteration and reuses it for all three)."""
    return jnp.asarray(prompt_mask, bool) & (jax.random.uniform(key, prompt_mask.shape) < p_mask)


def mean_field_logprobs(model, params, prompt, prompt_mask, completion, completion_mask, key, *, mask_id,
                        p_mask=0.15, completion_key_mask=None):
    """d1's per-token log-probabilities [B, L] float32 of the completion's tokens, from ONE forward pass: the input is
    the prompt with prompt_noise(key, prompt_mask, p_mask) positions set to [MASK], followed by [MASK] at every
    completion position; entry (b, i) is log softmax(logits[b, P + i])[completion[b, i]] (a mean-field
    approximation: each token given the prompt alone), 0 where completion_mask is False.

    completion_key_mask [B, L] bool: which completion positions (all [MASK]) attend as keys; default
    completion_mask. Pass all True to keep a completion's tail after its first EOS in the input, unscored, as d1 does
    (it generates gen_length tokens, scores them up to the first EOS, and runs the model on all of them)."""
    _check_prompt(model, prompt)
    completion_mask = jnp.asarray(completion_mask, bool)
    keys = completion_mask if completion_key_mask is None else jnp.asarray(completion_key_mask, bool)
    noisy_prompt = jnp.where(prompt_noise(key, prompt_mask, p_mask), mask_id, prompt)
    inputs = jnp.concatenate([noisy_prompt, jnp.full_like(completion, mask_id)], 1)
    key_mask = jnp.concatenate([jnp.asarray(prompt_mask, bool), keys], 1)
    return jnp.where(completion_mask, _completion_logprobs(model, params, inputs, key_mask, completion), 0.0)


# -- VRPO: the ELBO of log p(completion | prompt) ----------------------------------------------------------------

def elbo_noise(key, completion_mask, n, eps=1e-3, stratified=True):
    """The noise of n draws of the ELBO per row: (masked [B, n, L] bool, p [B, n] float32).

    u = uniform(split(key)[0], [B, n]); t_k = (k + u_k) / n with stratified (one t in each stratum [k/n, (k+1)/n),
    VRPO's stratified timesteps), else t_k = u_k; p = (1 - eps) t + eps (LLaDA's floored masking rate,
    diffusion.forward_process). Completion token i of draw k is masked iff uniform(split(key)[1], [B, n, L]) < p_k
    and completion_mask; one mask per timestep (VRPO's n_t = n, n_mask = 1). A function of the key and the shape
    only: the same key gives the policy and the reference the same timesteps and masks (antithetic sampling)."""
    completion_mask = jnp.asarray(completion_mask, bool)
    b, l = completion_mask.shape
    k_t, k_m = jax.random.split(key)
    u = jax.random.uniform(k_t, (b, n))
    t = (jnp.arange(n) + u) / n if stratified else u
    p = (1.0 - eps) * t + eps
    masked = (jax.random.uniform(k_m, (b, n, l)) < p[..., None]) & completion_mask[:, None, :]
    return masked, p


def elbo_draws(model, params, prompt, prompt_mask, completion, completion_mask, key, *, mask_id, n=8, eps=1e-3,
               stratified=True):
    """[B, n] float32: draw k of row b is B(t_k) = (1 / p_k) sum over the completion tokens i masked in draw k of
    log p_theta(y_i | x, y_t), y_t the completion with those tokens set to [MASK] and the prompt x clean (noise from
    elbo_noise). Each draw's expectation over its noise is the ELBO of log p(y | x) (LLaDA's conditional bound,
    with t uniform on [eps, 1]); stratified draws of one row are not independent, their mean is still unbiased. The
    B n draws run as one batch of B n rows."""
    _check_prompt(model, prompt)
    b, l = completion.shape
    masked, p = elbo_noise(key, completion_mask, n, eps, stratified)
    rows = lambda a: jnp.repeat(jnp.asarray(a), n, axis=0)  # [B, ...] -> [B n, ...]: row b n + k is draw k of row b
    x_t = jnp.where(masked.reshape(b * n, l), mask_id, rows(completion))
    inputs = jnp.concatenate([rows(prompt), x_t], 1)
    key_mask = jnp.concatenate([rows(prompt_mask), rows(completion_mask)], 1).astype(bool)
    logp = _completion_logprobs(model, params, inputs, key_mask, rows(completion)).reshape(b, n, l)
    return jnp.sum(jnp.where(masked, logp, 0.0), -1) / p


def elbo_logprob(model, params, prompt, prompt_mask, completion, completion_mask, key, *, mask_id, n=8, eps=1e-3,
                 stratified=True):
    """[B] float32: the ELBO estimate of log p(completion | prompt) (a sum over the completion's tokens, not a mean),
    the mean of elbo_draws' n draws. Pass the policy and the reference the same key: antithetic sampling."""
    return jnp.mean(elbo_draws(model, params, prompt, prompt_mask, completion, completion_mask, key, mask_id=mask_id,
                               n=n, eps=eps, stratified=stratified), -1)


# -- losses ------------------------------------------------------------------------------------------------------

def grpo_advantages(rewards, group_size, *, scale=True, std_eps=1e-4):
    """[P G] float32 group-normalised advantages A = (R - mean_group(R)) / (std_group(R) + std_eps).

    rewards [P G]: the G = group_size completions of prompt p at indices p G .. p G + G - 1 (TRL's and d1's
    repeat_interleave layout). std is the SAMPLE standard deviation (ddof = 1), as TRL's GRPOTrainer and d1 compute
    it (torch's Tensor.std is unbiased by default), so numbers match theirs; it needs G >= 2. A group whose rewards
    are all equal gets A = 0. scale=False: A = R - mean_group(R) only (d1's released trainer does this: it computes
    the std but does not divide by it; Dr. GRPO argues for it too)."""
    if scale and group_size < 2:
        raise RLError(f"group_size={group_size}: the sample std of a group needs at least 2 completions per prompt.")
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    a = r - jnp.mean(r, 1, keepdims=True)
    if scale:
        a = a / (jnp.std(r, 1, ddof=1, keepdims=True) + std_eps)
    return a.reshape(-1)


NORMALIZE = ("sequence", "token")


def grpo_loss(logp_new, logp_old, logp_ref, advantages, completion_mask, clip_eps=0.5, beta=0.04,
              normalize="sequence"):
    """diffu-GRPO's loss: (scalar, metrics). Inputs [B, L] float per token (mean_field_logprobs of the current, the
    old and the reference policy under one prompt mask), advantages [B], completion_mask [B, L] bool.

    Per token: r = exp(logp_new - logp_old), l = -min(r A, clip(r, 1 - clip_eps, 1 + clip_eps) A)
    + beta (exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1) (the k3 estimate of KL(new || ref)).
    normalize="sequence" (d1's and GRPO's equation): each completion's mean of l over its real tokens, then the mean
    over the B completions (an empty completion counts as 0). normalize="token" (d1's released trainer, TRL >= 0.16):
    the sum of l over every real token of the batch divided by their number.

    logp_old, logp_ref and advantages are constants (stop_gradient): the gradient flows through logp_new only. At
    the first inner step (logp_new == logp_old) r = 1 and the policy term is -mean(A) (sequence) or the
    token-weighted mean (token). logp_ref None: no KL term (beta may be traced: the KL term is always formed when
    logp_ref is given).
    Metrics, means over all real tokens of the batch: clip_fraction (the clipped branch is the min and differs:
    r > 1 + eps with A > 0 or r < 1 - eps with A < 0, so the token's policy gradient is zero), kl (the k3 estimate;
    0 without it), ratio (r)."""
    if normalize not in NORMALIZE:
        raise RLError(f"normalize={normalize!r}; expected one of {', '.join(NORMALIZE)}.")
    mask = jnp.asarray(completion_mask, bool)
    m = mask.astype(jnp.float32)
    adv = jax.lax.stop_gradient(jnp.asarray(advantages, jnp.float32))[:, None]
    ratio = jnp.exp(jnp.where(mask, logp_new - jax.lax.stop_gradient(logp_old), 0.0))  # padding: r = 1, no NaN
    per_token = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    kl = jnp.zeros_like(per_token)
    if logp_ref is not None:
        d = jnp.where(mask, jax.lax.stop_gradient(logp_ref) - logp_new, 0.0)
        kl = jnp.exp(d) - d - 1.0
        per_token = per_token + beta * kl
    n_tokens = jnp.maximum(jnp.sum(m), 1.0)
    token_mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0)) / n_tokens
    if normalize == "token":
        loss = token_mean(per_token)
    else:
        loss = jnp.mean(jnp.sum(jnp.where(mask, per_token, 0.0), -1) / jnp.maximum(jnp.sum(m, -1), 1.0))
    clipped = ((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))
    return loss, {"clip_fraction": token_mean(clipped.astype(jnp.float32)), "kl": token_mean(kl),
                  "ratio": token_mean(ratio)}


def dpo_loss(pi_chosen, ref_chosen, pi_rejected, ref_rejected, beta=0.1, weights=None):
    """DPO's loss on [N] sequence log-probabilities (VRPO: ELBO estimates): (scalar, metrics).

    chosen reward = beta (pi_chosen - ref_chosen), rejected reward = beta (pi_rejected - ref_rejected), margin =
    chosen - rejected; loss = mean over pairs of -log sigmoid(margin). The reference values are constants
    (stop_gradient). weights [N] (optional, >= 0): a weighted mean instead, e.g. 0 for the slots of a fixed-size
    batch that hold no pair (0 when every weight is 0). Metrics (the same means over pairs): reward_margin,
    accuracy (margin > 0), chosen_reward, rejected_reward."""
    chosen = beta * (pi_chosen - jax.lax.stop_gradient(ref_chosen))
    rejected = beta * (pi_rejected - jax.lax.stop_gradient(ref_rejected))
    margin = chosen - rejected
    w = jnp.ones_like(margin) if weights is None else jnp.asarray(weights, jnp.float32)
    mean = lambda x: jnp.sum(w * x) / jnp.maximum(jnp.sum(w), 1e-12)
    return mean(-jax.nn.log_sigmoid(margin)), {
        "reward_margin": mean(margin), "accuracy": mean((margin > 0).astype(jnp.float32)),
        "chosen_reward": mean(chosen), "rejected_reward": mean(rejected)}


def vrpo_loss(model, params, ref_params, prompt, prompt_mask, chosen, chosen_mask, rejected, rejected_mask, key, *,
              mask_id, n=8, eps=1e-3, stratified=True, beta=0.1, weights=None):
    """VRPO: dpo_loss of ELBO estimates (elbo_logprob with n stratified timesteps, one mask each). k_w, k_l =
    split(key): the chosen completions' noise is k_w for BOTH the policy (params) and the reference (ref_params), the
    rejected's k_l for both (antithetic sampling). Chosen and rejected share the prompt; their widths may differ.
    weights [N]: dpo_loss's. Returns dpo_loss's (loss, metrics)."""
    k_w, k_l = jax.random.split(key)
    elbo = functools.partial(elbo_logprob, model, mask_id=mask_id, n=n, eps=eps, stratified=stratified)
    scores = [elbo(p, prompt, prompt_mask, y, y_mask, k)
              for y, y_mask, k in ((chosen, chosen_mask, k_w), (rejected, rejected_mask, k_l))
              for p in (params, ref_params)]
    return dpo_loss(*scores, beta=beta, weights=weights)
