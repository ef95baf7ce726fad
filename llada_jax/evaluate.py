"""`llada eval`: multiple-choice accuracy by likelihood, the exact match of sampled answers on the built-in tasks
(data/tasks.py), held-out data, and a whole run's evaluation. The estimators are likelihood.py's; which one a run
uses is its objective's (objectives.py).
"""
import json

import jax
import numpy as np

from llada_jax import objectives
from llada_jax.data import store, synthetic, tasks as tasks_lib
from llada_jax.likelihood import EvalError

# -- multiple choice ------------------------------------------------------------------------------------------------

def load_jsonl(path):
    """Multiple-choice examples: one JSON object per line with context (str), choices (list of str) and answer
    (the index of the right choice, or its text)."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            ex = json.loads(line)
            missing = {"context", "choices", "answer"} - set(ex)
            if missing:
                raise EvalError(f"{path}:{n}: missing {', '.join(sorted(missing))}; each line needs context, choices "
                                f"(a list) and answer (an index or the choice's text).")
            out.append(ex)
    return out


def _answer_index(ex):
    a = ex["answer"]
    if isinstance(a, str):
        if a not in ex["choices"]:
            raise EvalError(f"answer {a!r} is not one of the choices {ex['choices']!r}.")
        return ex["choices"].index(a)
    return int(a)


def multiple_choice(model, params, examples, encode, key, mask_id, *, n_samples=128, batch_size=16, cfg_scale=0.0,
                    bucket=1, objective=objectives.TABLE["mdm"], block_size=None, eps=1e-3):
    """Accuracy by likelihood: the prediction is the choice with the largest estimated log p(choice | context).
    examples: a JSONL path or a list of dicts (see load_jsonl); encode(text) -> list of ids. All choices of one
    example share the random draws (common random numbers), which lowers the variance of their comparison.
    Returns a dict: accuracy, n, predictions, scores (per example, per choice)."""
    if isinstance(examples, str):
        examples = load_jsonl(examples)
    predictions, scores, right = [], [], 0
    for i, ex in enumerate(examples):
        k = jax.random.fold_in(key, i)
        context = encode(ex["context"])
        s = [objective.log_likelihood(model, params, context, encode(c), k, mask_id, n_samples=n_samples,
                                      batch_size=batch_size, cfg_scale=cfg_scale, bucket=bucket,
                                      block_size=block_size, eps=eps)
             for c in ex["choices"]]
        pred = int(np.argmax(s))
        predictions.append(pred)
        scores.append(s)
        right += pred == _answer_index(ex)
    n = len(predictions)
    return {"accuracy": right / n if n else float("nan"), "n": n, "predictions": predictions, "scores": scores}


# -- built-in tasks: the reward of sampled answers ------------------------------------------------------------------

def generate_answers(run, key, prompts):
    """Answer texts (up to the first EOS) of a loaded inference.Run for prompt texts, sampled in batches of
    eval.batch. Every batch has the same shape (the longest prompt's width; the last batch is padded with copies),
    so one compilation serves the whole list."""
    bs, n = run.cfg.eval.batch, len(prompts)
    if bs <= 0:
        raise EvalError(f"eval.batch={bs}; expected a positive number of prompts per batch.")
    ids = [run.codec.encode(p) for p in prompts]
    width = max(len(r) for r in ids)
    answers = []
    for start in range(0, n, bs):
        rows = [ids[i % n] for i in range(start, start + bs)]  # the last batch repeats earlier rows (dropped)
        out = run.sample(None, key=jax.random.fold_in(key, start), prompt_ids=rows, width=width)
        answers += out["texts"][: min(bs, n - start)]
    return answers


def evaluate_tasks(run, key, log=None):
    """The reward (task.reward: exact match, or Countdown's success) of a loaded inference.Run's sampled answers on
    eval.n_examples examples of every task in eval.tasks: {"<eval set>/<task.metric>": fraction}. `log`, if given,
    receives one line per evaluation set."""
    cfg, out = run.cfg, {}
    for t_index, name in enumerate(tasks_lib.task_names(cfg.eval.tasks)):
        task = tasks_lib.get(name)
        for s_index, (set_name, examples) in enumerate(task.eval_sets(cfg.eval.n_examples).items()):
            k = jax.random.fold_in(jax.random.fold_in(key, t_index), s_index)
            preds = generate_answers(run, k, [e.prompt for e in examples])
            right = [task.reward(e, p) for p, e in zip(preds, examples)]
            out[f"{set_name}/{task.metric}"] = float(np.mean(right))
            if log:
                log(f"{set_name}: {task.metric.replace('_', ' ')} {np.mean(right):.3f} on {len(examples)} examples "
                    f"(e.g. {examples[0].prompt!r} -> {preds[0]!r}, want {examples[0].answer!r})")
    return out


# -- a whole run: `llada eval` ----------------------------------------------------------------------------------------

HELDOUT_OFFSET = 10**9  # synthetic runs: held-out sequences are corpus indices from here on (training never gets there)


def heldout_tokens(cfg, n):
    """n held-out sequences of train.seq_len tokens (evenly spaced, not overlapping when the text is long enough):
    eval.heldout (PATH[:SPLIT] of a prepared dir or store), else the validation split of the first data.path store,
    or unseen sequences of the synthetic corpus."""
    seq_len = cfg.train.seq_len
    if cfg.eval.get("heldout", "") or cfg.data.source == "store":
        path, _, split = cfg.eval.heldout.partition(":") if cfg.eval.get("heldout", "") else (
            cfg.data.path.split(",")[0], ":", "val")
        s = store.TokenStore(path, split or "train")
        total = s.array.shape[0]
        if total < seq_len:
            raise EvalError(f"the {split or 'train'} split of {path} has {total} tokens, fewer than one sequence of "
                            f"{seq_len}; prepare with a larger --val_fraction, or set eval.heldout=PATH[:SPLIT].")
        starts = np.linspace(0, total - seq_len, min(n, total // seq_len)).astype(np.int64)
        return np.asarray(s.read_many(starts, seq_len), np.int32)
    if cfg.data.source == "synthetic":
        corpus = synthetic.SyntheticCorpus(seq_len, cfg.seed,  # the training corpus's seed, unseen indices
                                           cfg.data.synthetic_task)
        return np.stack([corpus.sequence(HELDOUT_OFFSET + i) for i in range(n)])
    raise EvalError(f"no held-out token data for data.source={cfg.data.source!r}; the perplexity bound needs a "
                    f"token store (data.source=store) or the synthetic corpus. Pass --perplexity=0 to skip it.")


def text_rows(ids, seq_len):
    """A text's token ids cut into rows of seq_len (the last one shorter): (tokens [N, seq_len] int32 padded with
    zeros, lengths [N]). A tail of one token is dropped (nothing in it can be scored)."""
    ids = np.asarray(ids, np.int32)
    starts = [s for s in range(0, len(ids), seq_len) if len(ids) - s >= 2]
    if not starts:
        raise EvalError(f"the text has {len(ids)} tokens; scoring needs at least 2.")
    tokens = np.zeros((len(starts), seq_len), np.int32)
    lengths = np.array([min(seq_len, len(ids) - s) for s in starts], np.int32)
    for row, (s, n) in enumerate(zip(starts, lengths)):
        tokens[row, :n] = ids[s:s + n]
    return tokens, lengths


def score_rows(run, tokens, key, lengths=None):
    """The run's objective's perplexity of token rows: exact (arm) or its bound with eval.elbo_samples draws."""
    cfg, obj = run.cfg, objectives.get(run.cfg)
    return obj.perplexity(run.model, run.params, tokens, key, cfg.tokens.mask_id, lengths=lengths,
                          n_samples=cfg.eval.get("elbo_samples", 1), batch_size=cfg.eval.mc_batch,
                          eps=cfg.diffusion.eps, block_size=obj.block_size(cfg))


def _log_perplexity(log, obj, r, what):
    rel = "=" if obj.exact else "<="
    log(f"perplexity {'(exact)' if obj.exact else 'bound'} of {what}: nll {rel} {r['nll']:.4f} +- {r['stderr']:.4f} "
        f"nats/token, ppl {rel} {r['ppl']:.3f} ({r['tokens']} tokens)")


def evaluate_run(run, key, *, choices=None, perplexity=None, text=None, tasks=True, log=print):
    """`llada eval` on a loaded inference.Run: the perplexity (bound) of `perplexity` held-out sequences (None: 64,
    or none for a run trained on prompt/answer rows, or when `text` is given), of the raw text file `text` (encoded
    with the run's codec, in rows of eval.text_len tokens, default train.seq_len, each scored from its first token),
    multiple-choice accuracy of a JSONL file `choices`, and the exact match of the built-in tasks of eval.tasks.
    Returns a flat dict of metrics (what `llada eval` writes to eval.json)."""
    cfg, ev, out = run.cfg, run.cfg.eval, {"step": run.step}
    k_ppl, k_mc, k_tasks = jax.random.split(key, 3)
    obj = objectives.get(cfg)
    if perplexity is None:  # prompt/answer rows (SFT) teach no held-out text: the tasks measure such a run
        sft = cfg.data.source == "sft" or (cfg.data.source == "synthetic" and cfg.data.synthetic_format == "sft")
        perplexity = 0 if sft or text else 64
        if sft and not text:
            log("perplexity: skipped (the run was trained on prompt/answer rows; --perplexity=N scores N held-out "
                "sequences anyway)")
    if perplexity:
        r = score_rows(run, heldout_tokens(cfg, perplexity), k_ppl)
        out.update({f"{obj.metric}/{k}": r[k] for k in ("nll", "ppl", "stderr", "tokens")})
        _log_perplexity(log, obj, r, "held-out data")
    if text:
        width = ev.text_len if ev.text_len > 0 else cfg.train.seq_len
        with open(text, encoding="utf-8") as f:
            tokens, lengths = text_rows(run.codec.encode(f.read()), width)
        r = score_rows(run, tokens, jax.random.fold_in(k_ppl, 1), lengths)
        out.update({f"text/{obj.metric}_{k}": r[k] for k in ("nll", "ppl", "stderr", "tokens")})
        _log_perplexity(log, obj, r, f"{text} in rows of {width} tokens")
    if choices:
        r = multiple_choice(run.model, run.params, choices, run.codec.encode, k_mc, cfg.tokens.mask_id,
                            n_samples=ev.mc_samples, batch_size=ev.mc_batch, objective=obj,
                            block_size=obj.block_size(cfg), eps=cfg.diffusion.eps)
        out.update({"choices/accuracy": r["accuracy"], "choices/n": r["n"]})
        log(f"multiple choice ({choices}): accuracy {r['accuracy']:.3f} on {r['n']} examples")
    if tasks and ev.tasks:
        r = evaluate_tasks(run, k_tasks)
        out.update(r)
        for k, v in r.items():
            log(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return out
