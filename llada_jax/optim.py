"""AdamW with global-norm clipping and the paper's Warmup-Stable-Decay schedule (section 2.3), or cosine."""
import math

import jax
import jax.numpy as jnp
import optax

from llada_jax import model as model_lib
from llada_jax.errors import LladaError


def tokens_per_step(cfg):
    """Tokens of one training step (the WSD milestones and the throughput count these)."""
    return cfg.train.global_batch * cfg.train.seq_len


SCHEDULES = ("wsd", "cosine", "constant")  # optim.schedule


def schedule(cfg):
    """step -> learning rate. WSD milestones are given in tokens and converted to steps here:
    linear warmup 0 -> peak over `warmup_steps`; constant; after `drop_tokens` the LR drops to `drop_lr`;
    over the last `decay_tokens` (or `decay_fraction`) of `total_tokens` it falls linearly to `final_lr`."""
    o, per_step = cfg.optim, tokens_per_step(cfg)
    total_tokens = o.total_tokens if o.total_tokens > 0 else cfg.train.steps * per_step
    total = total_tokens / per_step
    warmup = max(o.warmup_steps, 0)

    def warm(step):
        return o.peak_lr * jnp.minimum(1.0, step / warmup) if warmup else o.peak_lr

    if o.schedule == "constant":
        return lambda step: warm(jnp.asarray(step, jnp.float32))
    if o.schedule == "cosine":
        def cosine(step):
            step = jnp.asarray(step, jnp.float32)
            frac = jnp.clip((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
            lo = o.peak_lr * o.cosine_final_fraction
            return jnp.where(step < warmup, warm(step), lo + 0.5 * (o.peak_lr - lo) * (1 + jnp.cos(math.pi * frac)))
        return cosine
    if o.schedule != "wsd":
        raise LladaError(f"unknown optim.schedule={o.schedule!r}; expected one of {', '.join(SCHEDULES)}.")
    drop = o.drop_tokens / per_step if o.drop_tokens > 0 else math.inf
    decay_len = o.decay_tokens / per_step if o.decay_tokens > 0 else o.decay_fraction * total
    decay_start = total - decay_len

    def wsd(step):
        step = jnp.asarray(step, jnp.float32)
        stable = jnp.where(step >= drop, o.drop_lr, o.peak_lr)
        lr = jnp.where(step < warmup, warm(step), stable)
        if decay_len > 0:
            start_lr = o.drop_lr if drop <= decay_start else o.peak_lr
            frac = jnp.clip((step - decay_start) / decay_len, 0.0, 1.0)
            lr = jnp.where(step >= decay_start, start_lr + frac * (o.final_lr - start_lr), lr)
        return lr
    return wsd


def decay_mask(params, o, m, lora=None):
    """True where weight decay applies, by each parameter's group in the model's table (model.param_shapes):
    matrices (and LoRA adapters) always, norms and embeddings when optim.decay_norms / optim.decay_embeddings say
    so."""
    decays = {"matrix": True, "adapter": True, "norm": o.decay_norms, "embedding": o.decay_embeddings}
    return jax.tree.map(lambda p: decays[p.group], model_lib.params_like(params, m, lora), is_leaf=model_lib.is_param)


def make_optimizer(cfg):
    """(optax transformation, LR schedule). Under LoRA it sees only the trainable params (train.split_trainable)."""
    o = cfg.optim
    lr = schedule(cfg)
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm) if o.clip_norm > 0 else optax.identity(),
        optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.adam_eps, weight_decay=o.weight_decay,
                    mask=lambda p: decay_mask(p, o, cfg.model, model_lib.lora_of(cfg))),
    ), lr
