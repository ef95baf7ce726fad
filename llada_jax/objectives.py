"""The objective table: one record per training objective, looked up once from `cfg.objective` with `get(cfg)`.

A record owns everything that differs between objectives:
- the loss terms (diffusion.py);
- the decoder and its checks (sampling.py, block_sampling.py);
- the log-likelihood of an answer, the perplexity of held-out rows and the greedy check (likelihood.py: estimates
  and upper bounds, or exact values);
- the FLOPs flags and the block size.
No other module compares `cfg.objective` with a name. Adding an objective means one record here and its tests.

    mdm    LLaDA's masked diffusion (the paper): one t per sequence, bidirectional attention
    arm    the paper's autoregressive baseline: next-token prediction, causal attention
    block  block diffusion (BD3-LM): a t per block of diffusion.block_size, [x_t ; x_0] in training
"""
import dataclasses
from typing import Callable

from llada_jax import block_sampling, diffusion, likelihood, sampling
from llada_jax.errors import LladaError


class ObjectiveError(LladaError):
    """An objective name that is not in the table, or an operation it does not define."""


def _no_cfg(log_likelihood):
    """An estimator without classifier-free guidance: refuses cfg_scale > 0 and ignores bucketing."""
    def wrapped(model, params, prompt, answer, key, mask_id, *, cfg_scale=0.0, bucket=1, **kwargs):
        if cfg_scale > 0:
            raise likelihood.EvalError("classifier-free guidance is not defined for this objective's likelihood; set "
                                       "sampling.cfg_scale=0.")
        return log_likelihood(model, params, prompt, answer, key, mask_id, **kwargs)
    return wrapped


def _mdm_log_likelihood(model, params, prompt, answer, key, mask_id, *, block_size=None, eps=1e-3, **kwargs):
    return likelihood.log_likelihood(model, params, prompt, answer, key, mask_id, **kwargs)[0]


def _block_log_likelihood(model, params, prompt, answer, key, mask_id, *, block_size, eps=1e-3, **kwargs):
    return likelihood.block_log_likelihood(model, params, prompt, answer, key, mask_id, block_size, eps=eps,
                                           **kwargs)[0]


def _arm_log_likelihood(model, params, prompt, answer, key, mask_id, *, block_size=None, eps=1e-3, **kwargs):
    return likelihood.ar_log_likelihood(model, params, prompt, answer)


def _elbo(model, params, tokens, key, mask_id, *, block_size=None, eps=1e-3, n_samples=1, batch_size=16,
          lengths=None):
    return likelihood.elbo_perplexity(model, params, tokens, key, mask_id, lengths=lengths, n_samples=n_samples,
                                      batch_size=batch_size, eps=eps, block_size=block_size)


def _exact(model, params, tokens, key, mask_id, *, block_size=None, eps=1e-3, n_samples=1, batch_size=16,
           lengths=None):
    return likelihood.ar_perplexity(model, params, tokens, lengths=lengths, batch_size=batch_size)


def _decode_mdm(model, params, prompt, prompt_mask, key, args, ids, block_size=None):
    return sampling.generate(model, params, prompt, prompt_mask, key, args, ids)


def _decode_arm(model, params, prompt, prompt_mask, key, args, ids, block_size=None):
    return sampling.generate_ar(model, params, prompt, prompt_mask, key, args, ids)


def _check_sampling(args, model, block_size):
    sampling.validate(args, model)
    return args


def _check_ar_sampling(args, model, block_size):
    sampling.validate_ar(args, model)
    return args


@dataclasses.dataclass(frozen=True)
class Objective:
    """One row of the table. The callables take plain values (a model, params, token ids, the mask id), so tests
    and benchmarks call them on models built without a config.

    terms(batch, noise, cfg, block_size) -> (inputs, targets, weights, attention kwargs): the training loss's terms.
    decode(model, params, prompt, prompt_mask, key, args, ids, block_size) -> generate()'s dict.
    check_sampling(args, model, block_size) -> the SamplingArgs decoding runs with (raises SamplingError).
    log_likelihood(model, params, prompt, answer, key, mask_id, *, block_size, eps, n_samples, batch_size,
        cfg_scale, bucket) -> log p(answer | prompt): an estimate (exact=False) or the exact value.
    perplexity(model, params, tokens, key, mask_id, *, block_size, eps, n_samples, batch_size, lengths) -> dict
        (nll, ppl, stderr, tokens): an upper bound (exact=False) or the exact value, per scored token.
    greedy(model, params, prompt, answer, mask_id, block_size) -> is the answer the model's argmax."""
    name: str
    summary: str
    causal: bool  # attention is causal (training, scoring, decoding)
    pair: bool  # training reads [x_t ; x_0], twice the sequence (FLOPs)
    blockwise: bool  # noise, bounds and decoding by blocks of diffusion.block_size
    exact: bool  # log_likelihood and perplexity are exact values, not estimates / bounds
    terms: Callable
    decode: Callable
    check_sampling: Callable
    log_likelihood: Callable
    perplexity: Callable
    greedy: Callable

    def block_size(self, cfg, step=None):
        """The block size of a blockwise objective (at training step `step`: diffusion.block_size_schedule), else
        None."""
        return diffusion.block_size(cfg, step) if self.blockwise else None

    @property
    def metric(self):
        """The eval.json prefix of its perplexity: `ar` (exact) or `elbo` (a bound)."""
        return "ar" if self.exact else "elbo"


TABLE = {o.name: o for o in (
    Objective("mdm", "masked diffusion (LLaDA)", causal=False, pair=False, blockwise=False, exact=False,
              terms=diffusion.mdm_terms, decode=_decode_mdm, check_sampling=_check_sampling,
              log_likelihood=_mdm_log_likelihood, perplexity=_elbo, greedy=likelihood.mdm_greedy),
    Objective("arm", "autoregressive baseline", causal=True, pair=False, blockwise=False, exact=True,
              terms=diffusion.arm_terms, decode=_decode_arm, check_sampling=_check_ar_sampling,
              log_likelihood=_arm_log_likelihood, perplexity=_exact, greedy=likelihood.ar_greedy),
    Objective("block", "block diffusion (BD3-LM)", causal=False, pair=True, blockwise=True, exact=False,
              terms=diffusion.block_terms, decode=block_sampling.generate, check_sampling=block_sampling.validate,
              log_likelihood=_no_cfg(_block_log_likelihood), perplexity=_elbo, greedy=likelihood.block_greedy),
)}


def by_name(name):
    """The record of objective `name`; ObjectiveError for a name not in the table."""
    try:
        return TABLE[name]
    except KeyError:
        raise ObjectiveError(f"objective={name!r}; expected one of: "
                             f"{', '.join(f'{o.name} ({o.summary})' for o in TABLE.values())}.") from None


def get(cfg):
    """The record of `cfg.objective` (refusing model.shift_logits for a causal objective: it predicts the next
    token with its own position's logits)."""
    obj = by_name(cfg.objective)
    if obj.causal and cfg.model.get("shift_logits"):
        raise ObjectiveError(f"model.shift_logits is for the diffusion objectives (mdm, block); objective="
                             f"{obj.name} predicts the next token at its own position: set model.shift_logits=False.")
    return obj


# The training step's two calls (train.Setup; tests call them with a config).

def draw_noise(key, batch, cfg, block_size=None):
    """diffusion.draw_noise with `cfg.objective`'s noise: per block (of `block_size`, default the config's) for a
    blockwise objective, else one t per sequence."""
    obj = get(cfg)
    return diffusion.draw_noise(key, batch, cfg, (block_size or obj.block_size(cfg)) if obj.blockwise else None)


def loss_given_noise(model, params, batch, noise, cfg, block_size=None):
    """`cfg.objective`'s loss on one batch with its noise fixed; returns (loss, aux metrics). block_size: a
    blockwise objective's (default the config's)."""
    obj = get(cfg)
    size = (block_size or obj.block_size(cfg)) if obj.blockwise else None
    return diffusion.weighted_loss(model, params, batch, noise, obj.terms(batch, noise, cfg, size), cfg)
