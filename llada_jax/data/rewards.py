"""Verifiable rewards: 1.0 when a generated answer is right, else 0.0. The built-in tasks (data/tasks.py) score
their evaluation sets with these, and reinforcement learning uses them as rewards (docs/rl.md).

- `exact_match`: the answer text equals the reference (addition, reversal).
- `countdown`: an arithmetic expression over the problem's numbers, each used exactly once, with +, - and * and
  parentheses, whose value is the target (the Countdown task of TinyZero and d1, without division: the synthetic
  character vocabulary has no '/').
"""
import ast

MAX_EXPRESSION = 64  # characters: longer answers are wrong (and never evaluated)
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def exact_match(prediction, answer):
    """The generated answer text (already cut at the first EOS) equals the reference, ignoring outer spaces."""
    return prediction.strip() == answer.strip()


def _value(node, used):
    """The integer value of an expression tree of +, -, * and non-negative integer literals, appending each literal
    to `used`; None for anything else (names, calls, other operators, floats, unary minus)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _value(node.left, used), _value(node.right, used)
        return None if left is None or right is None else _OPS[type(node.op)](left, right)
    return None


def countdown(prediction, numbers, target):
    """True when `prediction` is an expression that uses every number of `numbers` exactly once (as a multiset),
    only +, -, * and parentheses, and evaluates to `target`."""
    text = prediction.strip()
    if not text or len(text) > MAX_EXPRESSION:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    used = []
    value = _value(tree.body, used)
    return value is not None and value == target and sorted(used) == sorted(numbers)
