"""The built-in deterministic synthetic corpus: no downloads, and learning is checkable.

Documents come from a task of `data/tasks.py` (`data.synthetic_task`; the default: arithmetic facts such as
"317+45=362"), written in a character vocabulary. `data.synthetic_format="packed"` (pre-training) joins them with
EOS into fixed-length sequences; "sft" (supervised fine-tuning, paper section 2.4) gives one document per row,
split into prompt ("317+45=") and answer ("362"), padded with EOS, with `prompt_lengths` so that the SFT loss never
masks the prompt. Sequence i depends only on (seed, i), so any step's batch can be rebuilt exactly, on any host.
"""
import numpy as np

from llada_jax.data import tasks
from llada_jax.errors import LladaError

SPECIAL = ("<eos>", "<bos>", "<mask>", "<eot>", "<sh>", "<eh>")  # ids 0..5, matching the tiny config's tokens.*
CHARS = "0123456789+-*=;:,.?()<>| abcdefghijklmnopqrstuvwxyz\n"


class CharTokenizer:
    """Character tokenizer of the synthetic corpus; special roles take ids 0..5 (EOS doubles as pad)."""

    vocab_size = len(SPECIAL) + len(CHARS)

    def __init__(self):
        self.char_to_id = {ch: i + len(SPECIAL) for i, ch in enumerate(CHARS)}
        self.id_to_char = {i: ch for ch, i in self.char_to_id.items()}
        self.eos_id, self.bos_id, self.mask_id, self.eot_id = 0, 1, 2, 3

    def encode(self, text):
        try:
            return [self.char_to_id[ch] for ch in text]
        except KeyError as e:
            raise LladaError(f"character {e.args[0]!r} is not in the synthetic vocabulary {CHARS!r}.") from None

    def decode(self, ids, stop_at_eos=False):
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos_id:
                break
            out.append(self.id_to_char.get(i, SPECIAL[i] if i < len(SPECIAL) else f"<{i}>"))
        return "".join(out)


TASKS = {name: task.document for name, task in tasks.TASKS.items()}  # name -> document(rng) -> text
FORMATS = ("packed", "sft")


class SyntheticCorpus:
    """Random-access fixed-length sequences of packed synthetic documents."""

    def __init__(self, seq_len, seed=0, task="arithmetic", fmt="packed"):
        if task not in TASKS:
            raise LladaError(f"unknown data.synthetic_task={task!r}; expected one of {', '.join(TASKS)}.")
        if fmt not in FORMATS:
            raise LladaError(f"unknown data.synthetic_format={fmt!r}; expected one of {', '.join(FORMATS)}.")
        self.seq_len, self.seed, self.task, self.fmt = seq_len, seed, tasks.get(task), fmt
        self.tokenizer = CharTokenizer()

    def sequence(self, index):
        """Row `index`: packed tokens [seq_len], or for the sft format (tokens [seq_len], prompt length)."""
        rng = np.random.default_rng([self.seed, index])
        enc, eos = self.tokenizer.encode, self.tokenizer.eos_id
        if self.fmt == "sft":
            prompt, answer = self.task.split(self.task.document(rng))
            ids = enc(prompt) + enc(answer)
            if len(ids) >= self.seq_len:
                raise LladaError(f"a {self.task.name} example has {len(ids)} tokens plus EOS, more than "
                                 f"train.seq_len={self.seq_len}; raise --config.train.seq_len.")
            return np.asarray(ids + [eos] * (self.seq_len - len(ids)), np.int32), len(prompt)
        out = []
        while len(out) < self.seq_len:
            out += enc(self.task.document(rng)) + [eos]
        return np.asarray(out[: self.seq_len], np.int32)

    def batch(self, step, global_batch, process_index=0, process_count=1):
        """This host's rows of the global batch of `step`: {'tokens': [global_batch / process_count, seq_len]}
        (and 'prompt_lengths' [global_batch / process_count] for the sft format)."""
        local = global_batch // process_count
        first = step * global_batch + process_index * local
        rows = [self.sequence(first + i) for i in range(local)]
        if self.fmt == "sft":
            return {"tokens": np.stack([r[0] for r in rows]), "prompt_lengths": np.asarray([r[1] for r in rows],
                                                                                              np.int32)}
        return {"tokens": np.stack(rows)}


class SyntheticSource:
    """The data-source contract of the trainer: an iterator of host-local numpy batches with a small, JSON-able
    position state (`get_state` / `set_state`) that checkpoints save and restore."""

    def __init__(self, corpus, global_batch, process_index=0, process_count=1):
        self.corpus, self.global_batch = corpus, global_batch
        self.process_index, self.process_count = process_index, process_count
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.corpus.batch(self.step, self.global_batch, self.process_index, self.process_count)
        self.step += 1
        return batch

    def get_state(self):
        return {"step": self.step}

    def set_state(self, state):
        self.step = int(state["step"])
