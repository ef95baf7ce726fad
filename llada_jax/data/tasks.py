"""Built-in synthetic tasks with checkable answers: training documents and evaluation examples.

A task is generated deterministically from seeds (no downloads). Each task gives
- `document(rng)`: one training document (text) for the synthetic corpus (`data/synthetic.py` packs them);
- `eval_sets(n, seed)`: {metric prefix: [Example(prompt, answer)]}, the held-out queries.

Tasks:
- `arithmetic`: "a+b=c" with a, b in 0..999 (the original corpus, unchanged); evaluation draws fresh pairs.
- `arithmetic_small`: a, b in 0..99; a fixed 10% of the 10,000 pairs never appears in training and is the
  evaluation set, so the score measures addition, not memorised facts.
- `reversal`: a fixed set of 64 random facts A -> B (3-letter strings, task seed 0, the same for every run, like a
  fixed corpus). Training states every fact forward, "A>B"; the first half of the facts also appears reversed,
  "B<A", so the reverse query format is learnable. Evaluation asks the other half (seen only forward) both ways:
  `reversal_forward` "A>" -> B (recall) and `reversal_reverse` "B<" -> A (the paper's reversal experiment,
  section 4 / Table 4: a bidirectional model should not suffer the autoregressive "reversal curse").

`evaluate.evaluate_tasks` scores a model on them by exact match.
"""
import dataclasses
import string

import numpy as np

from llada_jax.errors import LladaError

EVAL_SEED = 20250214  # evaluation examples come from their own stream, never the training corpus's


class TaskError(LladaError):
    """An unknown task or an evaluation that cannot run; the message says what was wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def split_after(document, marks):
    """(prompt, answer) of a training document: the prompt ends with the first of the characters `marks`."""
    cut = min(i for i in (document.find(m) for m in marks) if i >= 0) + 1
    return document[:cut], document[cut:]


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
