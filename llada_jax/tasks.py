"""Built-in synthetic tasks with checkable answers: training documents, evaluation examples and exact-match scores.

A task is generated deterministically from seeds (no downloads). Each task gives
- `document(rng)`: one training document (text) for the synthetic corpus (`data/synthetic.py` packs them);
- `eval_sets(n, seed)`: {metric prefix: [Example(prompt, answer)]}, the held-out queries;
- `score(prediction, answer)`: exact match of the generated text (up to the first EOS) with the answer.

Tasks:
- `arithmetic`: "a+b=c" with a, b in 0..999 (the original corpus, unchanged); evaluation draws fresh pairs.
- `arithmetic_small`: a, b in 0..99; a fixed 10% of the 10,000 pairs never appears in training and is the
  evaluation set, so the score measures addition, not memorised facts.
- `reversal`: a fixed set of 64 random facts A -> B (3-letter strings, task seed 0, the same for every run, like a
  fixed corpus). Training states every fact forward, "A>B"; the first half of the facts also appears reversed,
  "B<A", so the reverse query format is learnable. Evaluation asks the other half (seen only forward) both ways:
  `reversal_forward` "A>" -> B (recall) and `reversal_reverse` "B<" -> A (the paper's reversal experiment,
  section 4 / Table 4: a bidirectional model should not suffer the autoregressive "reversal curse").

`evaluate(cfg, model, params, key)` samples answers with `sampling.sample` for the tasks in `cfg.eval.tasks` and
returns a flat dict such as {"arithmetic/exact_match": 0.97}.
"""
import dataclasses
import string

import numpy as np

EVAL_SEED = 20250214  # evaluation examples come from their own stream, never the training corpus's


class TaskError(ValueError):
    """An unknown task or an evaluation that cannot run; the message says what was wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def split_after(document, marks):
    """(prompt, answer) of a training document: the prompt ends with the first of the characters `marks`."""
    cut = min(i for i in (document.find(m) for m in marks) if i >= 0) + 1
    return document[:cut], document[cut:]


def exact_match(prediction, answer):
    """The generated answer text (already cut at the first EOS) equals the reference, ignoring outer spaces."""
    return prediction.strip() == answer.strip()


class Arithmetic:
    """Addition facts "a+b=c" with operands in 0..max_operand; `holdout` > 0 keeps that fraction of operand pairs
    (a fixed random subset) out of training and evaluates on it."""

    def __init__(self, name, max_operand=999, holdout=0.0):
        self.name, self.max_operand, self.holdout = name, max_operand, holdout
        n = max_operand + 1
        self.held = np.random.default_rng([EVAL_SEED, n]).random((n, n)) < holdout if holdout > 0 else None

    def document(self, rng):
        while True:
            a, b = rng.integers(0, self.max_operand + 1, size=2)
            if self.held is None or not self.held[a, b]:
                return f"{a}+{b}={a + b}"

    def eval_sets(self, n, seed=EVAL_SEED):
        rng = np.random.default_rng([seed, self.max_operand])
        if self.held is None:
            pairs = rng.integers(0, self.max_operand + 1, size=(n, 2))
        else:
            pool = np.argwhere(self.held)
            pairs = pool[rng.choice(len(pool), size=n, replace=n > len(pool))]
        return {self.name: [Example(f"{a}+{b}=", str(a + b)) for a, b in pairs]}

    score = staticmethod(exact_match)

    @staticmethod
    def split(document):
        return split_after(document, "=")


class Reversal:
    """Random facts A -> B; training states all forward ("A>B") and the first half also reversed ("B<A");
    evaluation queries the second half forward ("A>" -> B) and reversed ("B<" -> A)."""

    def __init__(self, name, n_facts=64, length=3, seed=0):
        if n_facts < 2:
            raise TaskError(f"reversal needs at least 2 facts (half are trained both ways); got n_facts={n_facts}.")
        self.name, self.n_facts = name, n_facts
        rng = np.random.default_rng([seed, n_facts, length])
        letters = np.array(list(string.ascii_lowercase))
        words, seen = [], set()
        while len(words) < 2 * n_facts:  # all A and B distinct, so every query has one right answer
            w = "".join(rng.choice(letters, size=length))
            if w not in seen:
                seen.add(w)
                words.append(w)
        self.facts = list(zip(words[:n_facts], words[n_facts:]))
        self.n_both = n_facts // 2  # facts [0, n_both) appear both ways in training; the rest only forward

    def document(self, rng):
        i = int(rng.integers(0, self.n_facts))
        a, b = self.facts[i]
        if i < self.n_both and rng.random() < 0.5:
            return f"{b}<{a}"
        return f"{a}>{b}"

    def eval_sets(self, n, seed=EVAL_SEED):
        held = self.facts[self.n_both:]
        rng = np.random.default_rng([seed, self.n_facts])
        pick = [held[i] for i in rng.permutation(len(held))[:n]]  # at most every held-out fact once
        return {f"{self.name}_forward": [Example(f"{a}>", b) for a, b in pick],
                f"{self.name}_reverse": [Example(f"{b}<", a) for a, b in pick]}

    score = staticmethod(exact_match)

    @staticmethod
    def split(document):
        return split_after(document, "<>")


TASKS = {
    "arithmetic": Arithmetic("arithmetic", max_operand=999),
    "arithmetic_small": Arithmetic("arithmetic_small", max_operand=99, holdout=0.1),
    "reversal": Reversal("reversal", n_facts=64),
}


def get(name):
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; expected one of {', '.join(TASKS)} "
                        f"(set --config.data.synthetic_task / --config.eval.tasks to one of them).")
    return TASKS[name]


def task_names(spec):
    """'arithmetic, reversal' -> ['arithmetic', 'reversal'] (each checked)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        get(n)
    return names


# -- evaluation ------------------------------------------------------------------------------------------------

def generate_answers(cfg, model, params, key, prompts):
    """Answer texts (up to the first EOS) for prompt texts, sampled in batches of cfg.eval.batch. Every batch has
    the same shape (the last is padded with copies), so one compilation serves the whole list."""
    import jax

    from llada_jax import diffusion, sampling
    from llada_jax.data import synthetic
    tok = synthetic.CharTokenizer()
    args, ids = sampling.args_from_config(cfg.sampling), sampling.token_ids(cfg)
    prompt, mask = sampling.left_pad([tok.encode(p) for p in prompts], cfg.tokens.pad_id)
    bs, n = cfg.eval.batch, len(prompts)
    if bs <= 0:
        raise TaskError(f"eval.batch={bs}; expected a positive number of prompts per batch.")
    answers = []
    for start in range(0, n, bs):
        rows = np.arange(start, start + bs) % n  # the last batch repeats earlier rows; their answers are dropped
        out = sampling.sample(model, params, prompt[rows], mask[rows], jax.random.fold_in(key, start), args, ids,
                              cfg.objective, block_size=diffusion.block_size(cfg))
        tokens = np.asarray(jax.device_get(out["tokens"]))
        for row in tokens[: min(bs, n - start)]:
            answers.append(tok.decode(sampling.answer_ids(row, prompt.shape[1], ids.eos_id)))
    return answers


def evaluate(cfg, model, params, key, log=None):
    """Exact match of sampled answers on cfg.eval.n_examples examples of every task in cfg.eval.tasks:
    {"<eval set>/exact_match": fraction}. `log`, if given, receives one line per evaluation set with an example."""
    import jax
    out = {}
    for t_index, name in enumerate(task_names(cfg.eval.tasks)):
        task = get(name)
        for s_index, (set_name, examples) in enumerate(task.eval_sets(cfg.eval.n_examples).items()):
            k = jax.random.fold_in(jax.random.fold_in(key, t_index), s_index)
            preds = generate_answers(cfg, model, params, k, [e.prompt for e in examples])
            right = [task.score(p, e.answer) for p, e in zip(preds, examples)]
            out[f"{set_name}/exact_match"] = float(np.mean(right))
            if log:
                log(f"{set_name}: exact match {np.mean(right):.3f} on {len(examples)} examples (e.g. "
                    f"{examples[0].prompt!r} -> {preds[0]!r}, want {examples[0].answer!r})")
    return out
