"""`llada eval`: multiple-choice accuracy by likelihood, the exact match of sampled answers on the built-in tasks
(data/tasks.py), held-out data, and a whole run's evaluation. The estimators are likelihood.py's; which one a run
uses is its objective's (objectives.py).
"""
import json

import jax
import numpy as np

from llada_jax import objectives
from llada_jax.data import sources, store, synthetic, tasks as tasks_lib
from llada_jax.likelihood import EvalError, padded_rows

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
    eval.batch. Every batch has the longest prompt's width; a partial batch (the last, or the only one) is padded
    with copies of earlier rows up to likelihood.padded_rows (the next power of two), so a few compilations serve
    any number of prompts."""
    bs, n = run.cfg.eval.batch, len(prompts)
    if bs <= 0:
        raise EvalError(f"eval.batch={bs}; expected a positive number of prompts per batch.")
    ids = [run.codec.encode(p) for p in prompts]
    width = max(len(r) for r in ids)
    answers = []
    for start in range(0, n, bs):
        size = padded_rows(min(bs, n - start), bs)
        rows = [ids[i % n] for i in range(start, start + size)]  # a partial batch repeats earlier rows (dropped)
        out = run.sample(None, key=jax.random.fold_in(key, start), prompt_ids=rows, width=width)
        answers += out["texts"][: min(bs, n - start)]
    return answers


def evaluate_tasks(run, key, log=None, names=None):
    """The reward (task.reward: exact match, or Countdown's success) of a loaded inference.Run's sampled answers on
    eval.n_examples examples of every task in eval.tasks (only those in `names`, if given; the draws of a task are
    those of its place in eval.tasks either way): {"<eval set>/<task.metric>": fraction}. `log`, if given, receives
    one line per evaluation set."""
    cfg, out = run.cfg, {}
    for t_index, name in enumerate(tasks_lib.task_names(cfg.eval.tasks)):
        if names is not None and name not in names:
            continue
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


def heldout_tokens(cfg, n, seq_len=None):
    """n held-out sequences of seq_len tokens (default train.seq_len; evenly spaced, not overlapping when the text is
    long enough): eval.heldout (PATH[:SPLIT] of a prepared dir or store), else the validation split of the first
    data.path store, or unseen sequences of the synthetic corpus."""
    seq_len = seq_len or cfg.train.seq_len
    source = sources.get(cfg)
    if cfg.eval.heldout or source.heldout_store:
        path, _, split = cfg.eval.heldout.partition(":") if cfg.eval.heldout else (
            cfg.data.path.split(",")[0], ":", "val")
        s = store.TokenStore(path, split or "train")
        total = s.array.shape[0]
        if total < seq_len:
            raise EvalError(f"the {split or 'train'} split of {path} has {total} tokens, fewer than one sequence of "
                            f"{seq_len}; prepare with a larger --val_fraction, or set eval.heldout=PATH[:SPLIT].")
        starts = np.linspace(0, total - seq_len, min(n, total // seq_len)).astype(np.int64)
        return np.asarray(s.read_many(starts, seq_len), np.int32)
    if source.builtin:
        corpus = synthetic.SyntheticCorpus(seq_len, cfg.seed,  # the training corpus's seed, unseen indices
                                           cfg.data.synthetic_task)
        return np.stack([corpus.sequence(HELDOUT_OFFSET + i) for i in range(n)])
    raise EvalError(f"no held-out token data for data.source={cfg.data.source!r}; the perplexity bound needs a "
                    f"token store (data.source=store) or the synthetic corpus. Pass --perplexity=0 to skip it.")


def text_rows(ids, seq_len):
    """A text's token ids cut into rows of seq_len (the last one shorter): (tokens [N, W] int32 padded with zeros,
    lengths [N]), W = the longest row (seq_len, or the whole text when it is shorter). A tail of one token is
    dropped (nothing in it can be scored)."""
    ids = np.asarray(ids, np.int32)
    starts = [s for s in range(0, len(ids), seq_len) if len(ids) - s >= 2]
    if not starts:
        raise EvalError(f"the text has {len(ids)} tokens; scoring needs at least 2.")
    lengths = np.array([min(seq_len, len(ids) - s) for s in starts], np.int32)
    tokens = np.zeros((len(starts), int(lengths.max())), np.int32)
    for row, (s, n) in enumerate(zip(starts, lengths)):
        tokens[row, :n] = ids[s:s + n]
    return tokens, lengths


SCORE_TOKENS = 8192  # positions per batch of scored rows: rows of 2048 go 4 at a time, of 64 eval.mc_batch at a time


def rows_per_batch(mc_batch, width):
    """Rows of `width` tokens scored at once: eval.mc_batch, fewer for long rows (the largest power of two that
    keeps a batch within SCORE_TOKENS positions, at least 1), so that the logits of long rows fit the device."""
    return max(1, min(mc_batch, 1 << max(SCORE_TOKENS // width, 1).bit_length() - 1))


def score_rows(run, tokens, key, lengths=None):
    """The run's objective's perplexity of token rows: exact (arm) or its bound with eval.elbo_samples draws."""
    cfg, obj = run.cfg, objectives.get(run.cfg)
    return obj.perplexity(run.model, run.params, tokens, key, cfg.tokens.mask_id, lengths=lengths,
                          n_samples=cfg.eval.elbo_samples,
                          batch_size=rows_per_batch(cfg.eval.mc_batch, tokens.shape[1]), eps=cfg.diffusion.eps,
                          block_size=obj.block_size(cfg))


# -- what a run was trained on ----------------------------------------------------------------------------------------

IMPORTED_CONTEXT = 2048  # the most tokens per scored row of an imported run (its model.max_seq_len may be 8k or more)


def imported(run):
    """Whether the run's weights were not trained in its directory: `llada convert from-hf` / `from-gguf` write
    their weights as checkpoint step 0, while `llada train` and `llada rl` save from step 1 on. Such a run's
    train.* and data.* are the defaults the import started from (e.g. train.seq_len 64 and the synthetic arithmetic
    corpus), not what its weights saw. A run fine-tuned from an import (checkpoint.init_from) was trained here."""
    return run.step == 0


def context_len(run):
    """Tokens per scored row: train.seq_len for a run trained here (the length its weights saw: a run trained at 64
    tokens is scored at 64, even though model.max_seq_len says 4096), the model's context model.max_seq_len capped
    at IMPORTED_CONTEXT for an imported one."""
    return min(run.cfg.model.max_seq_len, IMPORTED_CONTEXT) if imported(run) else run.cfg.train.seq_len


def trained_tasks(cfg, step):
    """The built-in tasks a run trained on: data.synthetic_task for the synthetic corpus (packed or prompt/answer
    rows), and rl.task of an RL run; none for an imported run (step 0, see imported) or for text data (store,
    sft)."""
    if step == 0:
        return []
    names = [cfg.data.synthetic_task] if sources.get(cfg).builtin else []
    rl_task = cfg.rl.task
    return names + [rl_task] if rl_task and rl_task not in names else names


def chosen_tasks(run, explicit, log=None):
    """The built-in tasks `llada eval` scores: every one of eval.tasks when they were named on its command line
    (`explicit`: --tasks or --config.eval.tasks), else those of eval.tasks the run trained on (trained_tasks); `log`
    receives a line naming what was skipped and why."""
    names = tasks_lib.task_names(run.cfg.eval.tasks)
    if explicit:
        return names
    trained = trained_tasks(run.cfg, run.step)
    skipped = [t for t in names if t not in trained]
    if skipped and log:
        why = ("an imported run was trained on none of them" if imported(run) else
               f"the run was trained on {', '.join(trained) or 'none of them'}")
        log(f"tasks: {', '.join(skipped)} skipped ({why}; --tasks=NAMES scores them anyway)")
    return [t for t in names if t in trained]


def _log_perplexity(log, obj, r, what):
    rel = "=" if obj.exact else "<="
    err = f" +- {r['stderr']:.4f}" if np.isfinite(r["stderr"]) else ""  # one row, one draw: no spread to measure
    log(f"perplexity {'(exact)' if obj.exact else 'bound'} of {what}: nll {rel} {r['nll']:.4f}{err} nats/token, ppl "
        f"{rel} {r['ppl']:.3f} ({r['tokens']} tokens)")


def evaluate_run(run, key, *, choices=None, perplexity=None, text=None, tasks=None, log=print):
    """`llada eval` on a loaded inference.Run: the perplexity (bound) of `perplexity` held-out sequences (None: 64,
    or none for a run trained on prompt/answer rows, for an imported run without eval.heldout, or when `text` is
    given) in rows of context_len tokens, of the raw text file `text` (encoded with the run's codec, in rows of
    eval.text_len tokens, default context_len: train.seq_len, or an imported run's context; each row scored from its
    first token), multiple-choice accuracy of a JSONL file `choices`, and the reward of built-in tasks: tasks=None
    those of eval.tasks the run trained on (chosen_tasks), True every one of eval.tasks, False none.
    Returns a flat dict of metrics (what `llada eval` writes to eval.json)."""
    cfg, ev, out = run.cfg, run.cfg.eval, {"step": run.step}
    k_ppl, k_mc, k_tasks = jax.random.split(key, 3)
    obj = objectives.get(cfg)
    if perplexity is None:  # prompt/answer rows (SFT) teach no held-out text: the tasks measure such a run
        sft = sources.get(cfg).prompt_answer(cfg)
        unknown = imported(run) and not ev.heldout  # data.* of an import are not its training data
        perplexity = 0 if sft or unknown or text else 64
        if sft and not text:
            log("perplexity: skipped (the run was trained on prompt/answer rows; --perplexity=N scores N held-out "
                "sequences anyway)")
        elif unknown and not text:
            log("perplexity: skipped (an imported run has no held-out data of its own; --text=FILE scores a text, "
                "--config.eval.heldout=PATH[:SPLIT] a token store)")
    if perplexity:
        r = score_rows(run, heldout_tokens(cfg, perplexity, context_len(run)), k_ppl)
        out.update({f"{obj.metric}/{k}": r[k] for k in ("nll", "ppl", "stderr", "tokens")})
        _log_perplexity(log, obj, r, "held-out data")
    if text:
        width = ev.text_len if ev.text_len > 0 else context_len(run)
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
    names = [] if tasks is False else chosen_tasks(run, tasks is True, log)
    if names:
        r = evaluate_tasks(run, k_tasks, names=names)
        out.update(r)
        for k, v in r.items():
            log(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return out
