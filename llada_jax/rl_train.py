"""`llada rl`: reinforcement learning of a trained run on a built-in task's verifiable reward (docs/rl.md).

One RL step (train.steps counts them):
1. rollouts: rl.prompts_per_step prompts from the task's training distribution (task.document, cut at the prompt;
   a stream of its own, fixed by the seed and the step), rl.group_size completions each from the run's own sampler
   (the objective's decoder with the sampling.* settings, at rl.temperature), each scored by task.reward;
2. rl.inner_steps optimizer updates on that batch, each with new masks:
   - grpo (d1's diffu-GRPO): group-normalised advantages, the clipped ratio of mean-field log-probabilities (prompt
     masked with rl.p_mask; the old and the reference policy scored under the same mask before the first update)
     and the k3 KL to the reference (rl.beta);
   - vrpo (LLaDA 1.5): preference pairs from the group, a right completion over a wrong one of the same prompt (a
     prompt whose completions are all right or all wrong gives none), DPO on ELBO estimates with rl.elbo_samples
     stratified timesteps, the policy and the reference scored on the same noise.

The reference is the run the RL starts from (checkpoint.init_from); under LoRA the base itself (the adapters at
zero). The train state, its optimizer, sharding, NaN guard and checkpoints are train.Setup's; a checkpoint holds
the RL step, so a rerun resumes exactly (the prompts and keys are functions of the step).
"""
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from llada_jax import checkpoint as ckpt_lib, inference, loop, objectives, rl, sampling, train
from llada_jax.data import tasks as tasks_lib

PROMPT_STREAM = 0x524C  # the prompts' numpy stream and the RL keys' fold: apart from the training data's


def validate(cfg, sharder):
    r, shards = cfg.rl, sharder.batch_size_multiple()
    obj = objectives.get(cfg)
    if obj.causal or obj.pair or obj.blockwise:  # the estimates read one bidirectional pass over a masked sequence
        raise rl.RLError(f"objective={cfg.objective!r}: `llada rl` trains masked-diffusion runs (objective=mdm); the "
                         f"mean-field and ELBO estimates of docs/rl.md are theirs.")
    if not cfg.checkpoint.init_from:
        raise rl.RLError("checkpoint.init_from is empty: RL starts from a trained run (it is also the reference "
                         "policy); pass --config.checkpoint.init_from=RUN_DIR.")
    if r.prompts_per_step % shards:
        raise rl.RLError(f"rl.prompts_per_step={r.prompts_per_step} must be a multiple of the batch shards (mesh data "
                         f"x fsdp = {shards}).")


def prompt_width(cfg):
    w = cfg.rl.prompt_width
    return w if w > 0 else cfg.train.seq_len - cfg.sampling.gen_length


def examples_at(task, seed, step, n):
    """The n prompts (tasks.Example: prompt and the training document's answer) of RL step `step`."""
    rng = np.random.default_rng([seed, PROMPT_STREAM, step])
    return [tasks_lib.Example(*task.split(task.document(rng))) for _ in range(n)]


def through_first_eos(completion, eos_id):
    """[B, L] bool: the positions up to and including each row's first EOS (all when it has none): what d1 scores."""
    is_eos = np.asarray(completion) == eos_id
    first = np.where(is_eos.any(1), is_eos.argmax(1), completion.shape[1])
    return np.arange(completion.shape[1])[None, :] <= first[:, None]


def preference_pairs(rewards, group_size):
    """Per prompt (chosen index, rejected index, weight): the first completion with the group's best reward over the
    first with its worst, weight 1 when they differ, else (0, 0, 0): a slot without a pair."""
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    best, worst = r.argmax(1), r.argmin(1)
    has = r.max(1) > r.min(1)
    base = np.arange(r.shape[0]) * group_size
    return (np.where(has, base + best, 0), np.where(has, base + worst, 0), has.astype(np.float32))


def _host(x):
    """A global array on every host as numpy."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class RLStep:
    """`llada rl`'s step function for loop.Loop: train.Setup (mesh, model, optimizer, state shardings) plus the task,
    the codec, the rollout arguments and the compiled updates. Checkpoints carry the RL step."""
    name = "RL step"

    def __init__(self, setup, log=print):
        self.setup, cfg = setup, setup.cfg
        self.cfg, self.log, r = cfg, log, cfg.rl
        validate(cfg, setup.sharder)
        self.model = setup.model
        self.task = tasks_lib.get(r.task or cfg.data.synthetic_task)
        self.codec = inference.make_codec(cfg)
        self.ids = sampling.TokenIds.from_config(cfg)
        self.args = dataclasses.replace(sampling.SamplingArgs.from_config(cfg.sampling), temperature=r.temperature)
        self.objective = objectives.get(cfg)
        self.args = self.objective.check_sampling(self.args, self.model, self.objective.block_size(cfg))
        self.width = prompt_width(cfg)
        self.algorithm = rl.ALGORITHMS[r.algorithm]
        rep, state_sh = setup.sharder.replicated, setup.state_sharding
        self.logps = jax.jit(self._logps)
        self.grpo_step = jax.jit(self._grpo_step, in_shardings=(state_sh, None, rep), out_shardings=(state_sh, rep),
                                 donate_argnums=(0,))
        self.vrpo_step = jax.jit(self._vrpo_step, in_shardings=(state_sh, None, None, rep),
                                 out_shardings=(state_sh, rep), donate_argnums=(0,))
        self.ref_params = None

    # -- placing host arrays ---------------------------------------------------------------------------------------
    def put(self, **arrays):
        """Host numpy arrays, identical on every host, -> global arrays sharded over the batch axes."""
        out = {}
        for k, v in arrays.items():
            v = np.asarray(v)
            sh = self.setup.sharder.named(("batch",) + (None,) * (v.ndim - 1))
            out[k] = jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
        return out

    def reference(self, state, log=print):
        """The reference policy's params: the init_from run's (full fine-tuning), or the state's with the LoRA
        adapters at zero (the base)."""
        if self.setup.lora:  # a copy of the base: the updates donate the state's buffers
            trainable, frozen = train.split_trainable(state["params"], self.setup.lora)
            return train.join_trainable(jax.tree.map(jnp.zeros_like, trainable), jax.tree.map(jnp.copy, frozen))
        abstract = self.setup.abstract_state()["params"]
        return ckpt_lib.restore_params(self.cfg.checkpoint.init_from, abstract, log=log)[0]

    # -- rollouts ----------------------------------------------------------------------------------------------
    def rollouts(self, params, step, key):
        """RL step `step`'s prompts and completions: (examples [P], host dict prompt [P G, W], prompt_mask,
        completion [P G, L], rewards [P G], texts)."""
        r = self.cfg.rl
        examples = examples_at(self.task, self.cfg.seed, step, r.prompts_per_step)
        rows = [self.codec.encode(e.prompt) for e in examples]
        if max(map(len, rows)) > self.width:
            raise rl.RLError(f"a prompt of {max(map(len, rows))} tokens is longer than rl.prompt_width={self.width}; "
                             f"raise rl.prompt_width (or train.seq_len - sampling.gen_length).")
        prompt, prompt_mask = sampling.left_pad([x for x in rows for _ in range(r.group_size)], self.cfg.tokens.pad_id,
                                                self.width)
        dev = self.put(prompt=prompt, prompt_mask=prompt_mask)
        out = self.objective.decode(self.model, params, dev["prompt"], dev["prompt_mask"], key, self.args, self.ids,
                                    self.objective.block_size(self.cfg))
        completion = _host(out["tokens"])[:, self.width:]
        texts = [self.codec.decode(sampling.answer_ids(c, 0, self.ids.eos_id)) for c in completion]
        rewards = np.array([self.task.reward(examples[i // r.group_size], t) for i, t in enumerate(texts)],
                           np.float32)
        return examples, {"prompt": prompt, "prompt_mask": prompt_mask, "completion": completion}, rewards, texts

    # -- the updates ---------------------------------------------------------------------------------------------
    def _logps(self, params, batch, key):
        """d1's mean-field per-token log-probabilities [B, L] (rl.mean_field_logprobs), every completion position
        attended, the tokens through the first EOS scored."""
        return rl.mean_field_logprobs(self.model, params, batch["prompt"], batch["prompt_mask"], batch["completion"],
                                      batch["completion_mask"], key, mask_id=self.ids.mask_id,
                                      p_mask=self.cfg.rl.p_mask,
                                      completion_key_mask=jnp.ones(batch["completion"].shape, bool))

    def _update(self, state, loss_fn):
        """One optimizer update of the trainable params on loss_fn(params) -> (loss, metrics)."""
        trainable, frozen = train.split_trainable(state["params"], self.setup.lora)
        (loss, aux), grads = jax.value_and_grad(
            lambda p: loss_fn(train.join_trainable(p, frozen)), has_aux=True)(trainable)
        new_state, grad_norm, finite = self.setup.apply_grads(state, loss, grads)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": 1 - finite.astype(jnp.int32),
                           "lr": self.setup.lr(state["step"]) * state["lr_scale"], **aux}

    def _grpo_step(self, state, batch, key):
        """batch: prompt, prompt_mask, completion, completion_mask, advantages, and logp_old / logp_ref [B, L]
        (absent: logp_old is the current policy's, ratio 1; no reference, no KL)."""
        r = self.cfg.rl

        def loss_fn(params):
            logp = self._logps(params, batch, key)
            old = batch.get("logp_old", jax.lax.stop_gradient(logp))
            return rl.grpo_loss(logp, old, batch.get("logp_ref"), batch["advantages"], batch["completion_mask"],
                                clip_eps=r.clip_eps, beta=r.beta, normalize=r.normalize)
        return self._update(state, loss_fn)

    def _vrpo_step(self, state, ref_params, batch, key):
        r = self.cfg.rl
        full = jnp.ones(batch["chosen"].shape, bool)  # the whole generated region, EOS padding included

        def loss_fn(params):
            return rl.vrpo_loss(self.model, params, ref_params, batch["prompt"], batch["prompt_mask"], batch["chosen"],
                                full, batch["rejected"], full, key, mask_id=self.ids.mask_id, n=r.elbo_samples,
                                eps=self.cfg.diffusion.eps, beta=r.dpo_beta, weights=batch["weights"])
        return self._update(state, loss_fn)

    def step(self, state, ref_params, step):
        """RL step `step` (rollouts, then rl.inner_steps updates of the algorithm): (state, metrics as floats)."""
        r = self.cfg.rl
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), PROMPT_STREAM), step)
        k_roll, k_inner = jax.random.split(key)
        _, host, rewards, _ = self.rollouts(state["params"], step, k_roll)
        keys = [jax.random.fold_in(k_inner, i) for i in range(r.inner_steps)]
        state, metrics, extra = self.algorithm.updates(self, state, ref_params, host, rewards, keys)
        out = {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[0]}
        out["skipped"] = int(round(out["skipped"] * len(metrics)))
        out["reward"] = float(np.mean(rewards))
        return state, {**out, **extra}

    def grpo_updates(self, state, ref_params, host, rewards, keys):
        """diffu-GRPO: group advantages; the old and the reference log-probabilities before the first update."""
        r = self.cfg.rl
        adv = np.asarray(rl.grpo_advantages(rewards, r.group_size, scale=r.scale_advantages))
        batch = self.put(**host, completion_mask=through_first_eos(host["completion"], self.ids.eos_id),
                         advantages=adv)
        extra = []
        for k in keys:
            e = {"logp_old": self.logps(state["params"], batch, k)} if r.inner_steps > 1 else {}
            if r.beta > 0:
                e["logp_ref"] = self.logps(ref_params, batch, k)
            extra.append(e)
        metrics = []
        for k, e in zip(keys, extra):
            state, m = self.grpo_step(state, {**batch, **e}, k)
            metrics.append(m)
        return state, metrics, {}

    def vrpo_updates(self, state, ref_params, host, rewards, keys):
        """VRPO: DPO on ELBO estimates of a right over a wrong completion of each prompt (weight 0 without a pair)."""
        r = self.cfg.rl
        chosen, rejected, weights = preference_pairs(rewards, r.group_size)
        first = np.arange(r.prompts_per_step) * r.group_size
        batch = self.put(prompt=host["prompt"][first], prompt_mask=host["prompt_mask"][first],
                         chosen=host["completion"][chosen], rejected=host["completion"][rejected], weights=weights)
        metrics = []
        for k in keys:
            state, m = self.vrpo_step(state, ref_params, batch, k)
            metrics.append(m)
        return state, metrics, {"pairs": float(np.mean(weights))}

    # -- the loop's step function (loop.Loop) ---------------------------------------------------------------
    def resume(self, state, data_state):
        return int(data_state["rl_step"]) if data_state else 0

    def begin(self, state):
        """The reference policy (none when grpo has rl.beta = 0: no KL term, no reference pass) and the run's line."""
        cfg, r = self.cfg, self.cfg.rl
        unused = not self.algorithm.uses_reference(r)
        self.ref_params = None if unused else self.reference(state, self.log)
        self.log(f"rl: {r.algorithm} on task {self.task.name} ({self.task.metric}), {r.prompts_per_step} prompts x "
                 f"{r.group_size} completions of {cfg.sampling.gen_length} tokens per step, {r.inner_steps} update(s) "
                 f"each; reference {'none (rl.beta=0)' if unused else cfg.checkpoint.init_from}"
                 f"{' (LoRA base)' if self.setup.lora and not unused else ''}")

    def fetch(self, clock):
        return None

    def compile_key(self, step):
        return {}

    def run(self, state, inputs, step):
        return self.step(state, self.ref_params, step)

    def data_state(self, step):
        return {"rl_step": step}

    def report(self, fetched, step, steps_done, elapsed, state):
        row = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        row["skipped"] = int(sum(m["skipped"] for m in fetched))
        row["seconds_per_step"] = elapsed / len(fetched)
        steps = self.cfg.train.steps
        extra = " ".join(f"{k} {row[k]:.4f}" for k in self.algorithm.log_keys)
        line = (f"rl step {step}/{steps} reward {row['reward']:.3f} loss {row['loss']:.4f} {extra} lr {row['lr']:.2e} "
                f"| {row['seconds_per_step']:.2f} s/step{loop.eta(steps - step, elapsed, steps_done)}"
                f"{' | skipped ' + str(row['skipped']) + ' non-finite' if row['skipped'] else ''}")
        return row, line


def rl_train(cfg, workdir, log=print, devices=None, hooks=()):
    """Runs `llada rl` for `cfg` into `workdir` (loop.Loop with RLStep), resuming from its newest readable
    checkpoint. Returns (state, history: one row per logged step). `hooks`: (fn, every) pairs for Loop.add_hook."""
    started = time.time()
    log = log if jax.process_index() == 0 else (lambda *a, **k: None)
    setup = train.Setup(cfg, devices)
    runner = loop.Loop(setup, RLStep(setup, log), workdir, log, started)
    for fn, every in hooks:
        runner.add_hook(fn, every)
    return runner.run()
