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

- `countdown`: numbers and a target, "3,7,5:22=" -> an expression that uses every number once with +, - and *
  (and parentheses) and evaluates to the target, e.g. "3*5+7"; a fixed 10% of the problems (by numbers and
  target) never appears in training and is the evaluation set. Any right expression counts (rewards.countdown),
  so its metric is `success`, not exact match.

Each task scores an answer with `reward(example, prediction)` (1.0 or 0.0, llada_jax/data/rewards.py) under the name
`metric`; `evaluate.evaluate_tasks` reports "<eval set>/<metric>", and reinforcement learning uses the same reward.
"""
import dataclasses
import string

import numpy as np

from llada_jax.data import rewards
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


class ExactMatch:
    """Tasks with one right answer per query."""
    metric = "exact_match"

    @staticmethod
    def reward(example, prediction):
        return float(rewards.exact_match(prediction, example.answer))


class Arithmetic(ExactMatch):
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


class Reversal(ExactMatch):
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


class Countdown:
    """Countdown problems: `n_numbers` numbers in 1..max_number and the value of one expression over them (each used
    once, operators +, - and *, left to right with parentheses where needed), kept when it lies in
    0..max_target. Training documents "NUMBERS:TARGET=EXPRESSION" list the numbers shuffled; `holdout` of the
    problems (a fixed pseudo-random subset of (sorted numbers, target)) never appears in training and is the
    evaluation set."""
    metric = "success"

    def __init__(self, name, n_numbers=3, max_number=9, max_target=99, holdout=0.1):
        self.name, self.n_numbers, self.max_number, self.max_target = name, n_numbers, max_number, max_target
        self.holdout = holdout

    def held(self, numbers, target):
        """Whether a problem belongs to the evaluation set (a fixed hash of its sorted numbers and target)."""
        key = [EVAL_SEED, target, *sorted(int(n) for n in numbers)]
        return np.random.default_rng(key).random() < self.holdout

    def problem(self, rng):
        """(numbers in the order written, target, one solution)."""
        while True:
            numbers = rng.integers(1, self.max_number + 1, size=self.n_numbers)
            ops = rng.choice(list("+-*"), size=self.n_numbers - 1)
            order = rng.permutation(self.n_numbers)
            expr, value, additive = str(numbers[order[0]]), int(numbers[order[0]]), False
            for op, i in zip(ops, order[1:]):
                x = int(numbers[i])
                if op == "*":
                    expr, value = (f"({expr})*{x}" if additive else f"{expr}*{x}"), value * x
                else:
                    expr, value, additive = f"{expr}{op}{x}", value + x if op == "+" else value - x, True
            if 0 <= value <= self.max_target:
                return [int(n) for n in numbers], value, expr

    def document(self, rng):
        while True:
            numbers, target, expr = self.problem(rng)
            if not self.held(numbers, target):
                return f"{','.join(map(str, numbers))}:{target}={expr}"

    def eval_sets(self, n, seed=EVAL_SEED):
        rng, out = np.random.default_rng([seed, self.n_numbers, self.max_number]), []
        while len(out) < n:
            numbers, target, expr = self.problem(rng)
            if self.held(numbers, target):
                out.append(Example(f"{','.join(map(str, numbers))}:{target}=", expr))
        return {self.name: out}

    @staticmethod
    def parse(prompt):
        """(numbers, target) of a prompt "3,7,5:22="."""
        numbers, target = prompt.rstrip("=").split(":")
        return [int(n) for n in numbers.split(",")], int(target)

    def reward(self, example, prediction):
        return float(rewards.countdown(prediction, *self.parse(example.prompt)))

    @staticmethod
    def split(document):
        return split_after(document, "=")


TASKS = {
    "arithmetic": Arithmetic("arithmetic", max_operand=999),
    "arithmetic_small": Arithmetic("arithmetic_small", max_operand=99, holdout=0.1),
    "reversal": Reversal("reversal", n_facts=64),
    "countdown": Countdown("countdown"),
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
