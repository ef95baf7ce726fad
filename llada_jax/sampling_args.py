"""The sampling settings: one schema, read by the config's `sampling` block, the CLI flags of `llada sample / chat /
eval`, the decoders, the task evaluations and lm-eval.

`SamplingArgs` holds the defaults and the "off" values (threshold <= 0, cache "none"); the default config's
`sampling` block is `SamplingArgs().to_config()`, and a run's block becomes arguments with
`SamplingArgs.from_config(cfg.sampling)`. The rules behind each field: docs/sampling.md.
"""
import dataclasses

import ml_collections

REMASKING = ("low_confidence", "random")
CACHES = ("none", "prefix", "dual")


@dataclasses.dataclass(frozen=True)
class SamplingArgs:
    """Arguments of the decoders (the reverse process, block diffusion, left to right)."""
    gen_length: int = 32  # tokens generated after the prompt
    block_length: int = 8  # = gen_length: pure diffusion; smaller: semi-autoregressive blocks
    steps: int = 32  # a multiple of gen_length / block_length; ignored by threshold decoding
    temperature: float = 0.0  # 0: argmax; > 0: Gumbel-max sampling of softmax(logits / T)
    cfg_scale: float = 0.0  # > 0: classifier-free guidance, logits = u + (w + 1)(c - u)
    remasking: str = "low_confidence"  # low_confidence | random
    logits_eos_inf: bool = False  # EOS logit -inf before sampling
    confidence_eos_eot_inf: bool = False  # EOS/EoT predictions get confidence 0 (the official chained assignment)
    threshold: float = 0.0  # > 0: Fast-dLLM threshold decoding (commit every position this confident); <= 0: off
    cache: str = "none"  # none | prefix | dual: Fast-dLLM's approximate KV caches
    attend_padding: bool = False  # True: left pads stay visible as keys, as the released modeling code computes

    @property
    def use_threshold(self):
        return self.threshold > 0

    @property
    def cached(self):
        return self.cache != "none"

    @classmethod
    def from_config(cls, block):
        """The arguments of a config's `sampling` block (a ConfigDict or a dict with every field)."""
        return cls(**{f.name: block[f.name] for f in dataclasses.fields(cls)})

    def to_config(self):
        return ml_collections.ConfigDict(dataclasses.asdict(self))


FIELDS = tuple(f.name for f in dataclasses.fields(SamplingArgs))


@dataclasses.dataclass(frozen=True)
class TokenIds:
    mask_id: int
    eos_id: int
    eot_id: int

    @classmethod
    def from_config(cls, cfg):
        return cls(mask_id=cfg.tokens.mask_id, eos_id=cfg.tokens.eos_id, eot_id=cfg.tokens.eot_id)
