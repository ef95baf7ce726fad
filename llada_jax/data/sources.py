"""The data-source table: one record per `data.source`, looked up once with `get(cfg)`.

A record owns what differs between sources: how training batches are made, where held-out text comes from, whether
the run's vocabulary is the built-in corpus's characters, and whether its rows are prompt/answer pairs. No other
module compares `cfg.data.source` with a name.

    synthetic  the built-in corpus (data/synthetic.py): packed documents or prompt/answer rows of a task
    store      token stores made by `llada data prepare` (data/pipeline.py): pre-training windows
    sft        chat JSONL files (data/sft.py): prompt/answer rows, the prompt never masked
"""
import dataclasses
from typing import Callable

from llada_jax.data import pipeline, sft, synthetic
from llada_jax.errors import LladaError


class SourceError(LladaError):
    """A data source that is not in the table."""


def _synthetic(cfg, process_index, process_count):
    corpus = synthetic.SyntheticCorpus(cfg.train.seq_len, cfg.seed, cfg.data.synthetic_task,
                                       cfg.data.synthetic_format)
    return synthetic.SyntheticSource(corpus, cfg.train.global_batch, process_index, process_count)


@dataclasses.dataclass(frozen=True)
class Source:
    description: str
    make: Callable  # (cfg, process_index, process_count) -> iterator of host-local batches with get_state / set_state
    builtin: bool  # the built-in corpus: its character vocabulary, its held-out sequences and its tasks
    heldout_store: bool  # held-out text is the val split of data.path's first store
    prompt_answer: Callable  # cfg -> whether the rows are prompt/answer pairs (the SFT loss)


TABLE = {
    "synthetic": Source("the built-in corpus", _synthetic, True, False,
                        lambda cfg: cfg.data.synthetic_format == "sft"),
    "store": Source("token stores of `llada data prepare`", pipeline.make_pretrain_source, False, True,
                    lambda cfg: False),
    "sft": Source("chat JSONL files", sft.make_sft_source, False, False, lambda cfg: True),
}


def get(cfg):
    """The record of cfg.data.source."""
    try:
        return TABLE[cfg.data.source]
    except KeyError:
        raise SourceError(f"data.source={cfg.data.source!r}; expected one of "
                          f"{', '.join(f'{k} ({v.description})' for k, v in TABLE.items())}.") from None
