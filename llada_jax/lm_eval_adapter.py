"""lm-evaluation-harness adapter: run its standard tasks against a llada-jax run (`pip install 'llada-jax[lm_eval]'`).

    llada-lm-eval --model_args workdir=runs/tiny,mc_samples=32 --tasks arc_easy
    # the same: python -m llada_jax.lm_eval_adapter ...; the harness's own `lm_eval` cannot find a model that
    # nothing imported (it has no plugin discovery), so llada-lm-eval is its command line with ours registered
    # or, in Python:  lm_eval.simple_evaluate(model=LLaDAEvalLM("runs/tiny"), tasks=[...])

Every request is answered the way the run's objective defines it (objectives.py):
- loglikelihood: the Monte Carlo estimator of Algorithm 3 (mdm), the block ELBO's estimate (block), or the exact
  value (arm); is_greedy: the whole continuation masked in one pass (mdm, as the official evaluation does it), each
  block's argmax given the true blocks before it (block), or greedy decoding's tokens (arm);
- loglikelihood_rolling: minus the ELBO bound of the text, a lower bound on its log-likelihood (mdm, block), or the
  exact log-likelihood (arm; the first token conditioned on EOS);
- generate_until: the run's decoder with its sampling.* settings (overridable in model_args), requests batched by
  their stop strings (model_args batch_size, default eval.batch), each answer cut at its first stop string.
The harness's own tasks download their datasets: run it where that is possible.
"""
import sys

import jax
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llada_jax import inference, objectives, sampling_args


@register_model("llada_jax")
class LLaDAEvalLM(LM):
    """model_args: workdir (required), tokenizer, mc_samples, mc_batch, seed, batch_size, and any field of
    sampling_args.SamplingArgs by its name (gen_length, steps, block_length, temperature, threshold, ...)."""

    def __init__(self, workdir, tokenizer=None, mc_samples=None, mc_batch=None, seed=0, batch_size=None,
                 **sampling_kwargs):
        super().__init__()
        unknown = set(sampling_kwargs) - set(sampling_args.FIELDS) - {"max_batch_size", "device"}  # harness-wide
        if unknown:
            raise inference.InferenceError(f"unknown model_args {', '.join(sorted(unknown))}; expected workdir, "
                                           f"tokenizer, mc_samples, mc_batch, seed, batch_size or a sampling field "
                                           f"({', '.join(sampling_args.FIELDS)}).")
        overrides = [(f"sampling.{k}", str(v)) for k, v in sampling_kwargs.items() if k in sampling_args.FIELDS]
        if mc_samples is not None:
            overrides.append(("eval.mc_samples", str(mc_samples)))
        if mc_batch is not None:
            overrides.append(("eval.mc_batch", str(mc_batch)))
        self.run = inference.load_run(workdir, overrides, tokenizer=tokenizer)
        self.objective = objectives.get(self.run.cfg)
        self.block_size = self.objective.block_size(self.run.cfg)
        self.batch_size = int(batch_size) if batch_size not in (None, "auto") else self.run.cfg.eval.batch
        self.key = jax.random.key(int(seed))
        self.calls = 0

    def _next_key(self):
        self.calls += 1
        return jax.random.fold_in(self.key, self.calls)

    def loglikelihood(self, requests):
        run, ev, out = self.run, self.run.cfg.eval, []
        obj, mask_id = self.objective, run.cfg.tokens.mask_id
        for req in requests:
            context, continuation = req.args
            ctx, cont = run.codec.encode(context), run.codec.encode(continuation)
            if not ctx:  # an empty context (some tasks score the unconditional continuation): one EOS stands in
                ctx = [run.cfg.tokens.eos_id]
            ll = obj.log_likelihood(run.model, run.params, ctx, cont, self._next_key(), mask_id,
                                    n_samples=ev.mc_samples, batch_size=ev.mc_batch,
                                    cfg_scale=run.cfg.sampling.cfg_scale, bucket=16, block_size=self.block_size,
                                    eps=run.cfg.diffusion.eps)
            out.append((ll, obj.greedy(run.model, run.params, ctx, cont, mask_id, self.block_size)))
        return out

    def loglikelihood_rolling(self, requests):
        run, obj, out = self.run, self.objective, []
        for req in requests:
            ids = run.codec.encode(req.args[0])
            if obj.causal:  # the first token has no prediction of its own: condition it on EOS
                ids = [run.cfg.tokens.eos_id] + ids
            r = obj.perplexity(run.model, run.params, np.asarray(ids, np.int32)[None], self._next_key(),
                               run.cfg.tokens.mask_id, n_samples=max(1, run.cfg.eval.mc_samples // 16), batch_size=1,
                               eps=run.cfg.diffusion.eps, block_size=self.block_size)
            out.append(-r["nll"] * r["tokens"])
        return out

    def generate_until(self, requests):
        """Requests with the same stop strings are decoded together, `batch_size` prompts at a time."""
        out = [None] * len(requests)
        groups = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault(until, []).append((i, context))
        args = self.run.sampling_args  # gen_length is the run's (max_gen_toks unused)
        for until, items in groups.items():
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                texts = self.run.sample([c for _, c in chunk], key=self._next_key(), args=args)["texts"]
                for (i, _), text in zip(chunk, texts):
                    cut = min([text.find(s) for s in until if s and s in text] + [len(text)])
                    out[i] = text[:cut]
        return out


def main(argv=None):
    """The harness's command line with the llada_jax model registered."""
    from lm_eval.__main__ import cli_evaluate
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = ["lm_eval", "--model", "llada_jax"] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
