"""lm-evaluation-harness adapter: run its standard tasks against a llada-jax run (`pip install 'llada-jax[lm_eval]'`).

    python -m llada_jax.lm_eval_adapter --model_args workdir=runs/tiny,mc_samples=32 --tasks arc_easy
    # or, in Python:  lm_eval.simple_evaluate(model=LLaDAEvalLM("runs/tiny"), tasks=[...])

loglikelihood: the Monte Carlo estimator of REFERENCE.md section 5 (Algorithm 3; the exact value for an
autoregressive-baseline run; the block ELBO's estimate for a block-diffusion run); is_greedy as the official
evaluation does it (the whole continuation masked, one pass, argmax equals the continuation). generate_until: the
reverse process with the run's sampling.* settings (overridable in model_args), cut at the first stop string.
loglikelihood_rolling: minus the ELBO bound of the text (a lower bound on its log-likelihood).
The harness's own tasks download their datasets: run it where that is possible.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llada_jax import evaluate, inference


@register_model("llada_jax")
class LLaDAEvalLM(LM):
    """model_args: workdir (required), tokenizer, mc_samples, mc_batch, seed, and any sampling.* key by its short
    name (gen_length, steps, block_length, temperature, cfg_scale, remasking, threshold, cache)."""

    def __init__(self, workdir, tokenizer=None, mc_samples=None, mc_batch=None, seed=0, **sampling_kwargs):
        super().__init__()
        overrides = [(f"sampling.{k}", str(v)) for k, v in sampling_kwargs.items()
                     if k not in ("batch_size", "max_batch_size", "device")]  # harness-wide arguments we ignore
        if mc_samples is not None:
            overrides.append(("eval.mc_samples", str(mc_samples)))
        if mc_batch is not None:
            overrides.append(("eval.mc_batch", str(mc_batch)))
        self.run = inference.load_run(workdir, overrides, tokenizer=tokenizer)
        self.key = jax.random.key(int(seed))
        self.calls = 0

    def _next_key(self):
        self.calls += 1
        return jax.random.fold_in(self.key, self.calls)

    def _greedy(self, context, continuation):
        """The continuation fully masked after the context: does one pass's argmax reproduce it?"""
        run = self.run
        if run.cfg.objective == "block":
            return evaluate.block_greedy(run.model, run.params, context, continuation, run.cfg.tokens.mask_id,
                                         evaluate.block_size_of(run.cfg))
        x = np.asarray(context + [run.cfg.tokens.mask_id] * len(continuation), np.int32)[None]
        logits = run.model.apply(run.params, jnp.asarray(x), causal=run.cfg.objective == "arm")
        if run.cfg.objective == "arm":  # next-token predictions of the continuation's positions
            pred = np.asarray(jnp.argmax(logits[0, len(context) - 1:-1], -1))
        else:
            pred = np.asarray(jnp.argmax(logits[0, len(context):], -1))
        return bool(np.array_equal(pred, continuation))

    def loglikelihood(self, requests):
        run, ev, out = self.run, self.run.cfg.eval, []
        for req in requests:
            context, continuation = req.args
            ctx, cont = run.codec.encode(context), run.codec.encode(continuation)
            if not ctx:  # an empty context (some tasks score the unconditional continuation): one EOS stands in
                ctx = [run.cfg.tokens.eos_id]
            ll = evaluate.objective_log_likelihood(run.cfg.objective, run.model, run.params, ctx, cont,
                                                   self._next_key(), run.cfg.tokens.mask_id, n_samples=ev.mc_samples,
                                                   batch_size=ev.mc_batch, cfg_scale=run.cfg.sampling.cfg_scale,
                                                   bucket=16, block_size=evaluate.block_size_of(run.cfg),
                                                   eps=run.cfg.diffusion.eps)
            out.append((ll, self._greedy(ctx, cont)))
        return out

    def loglikelihood_rolling(self, requests):
        run, out = self.run, []
        for req in requests:
            ids = np.asarray(run.codec.encode(req.args[0]), np.int32)[None]
            r = evaluate.elbo_perplexity(run.model, run.params, ids, self._next_key(), run.cfg.tokens.mask_id,
                                         n_samples=max(1, run.cfg.eval.mc_samples // 16), batch_size=1,
                                         eps=run.cfg.diffusion.eps, block_size=evaluate.block_size_of(run.cfg))
            out.append(-r["nll"] * r["tokens"])
        return out

    def generate_until(self, requests):
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            text = self.run.sample([context], key=self._next_key())["texts"][0]
            cut = min([text.find(s) for s in until if s and s in text] + [len(text)])
            out.append(text[:cut])
        return out


def main(argv=None):
    """The harness's command line with the llada_jax model registered."""
    from lm_eval.__main__ import cli_evaluate
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["lm_eval", "--model", "llada_jax"] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
