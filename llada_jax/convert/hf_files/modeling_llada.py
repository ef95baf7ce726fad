"""LLaDA for `transformers` (trust_remote_code): `AutoModel` and `AutoModelForCausalLM` both give `LLaDAModelLM`,
whose forward returns the logits of a bidirectional (mask predictor) Transformer. Written for llada-jax exports;
the network itself is `torch_model.py` beside this file."""
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig
from .torch_model import LLaDA


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        self.model = LLaDA(config.to_dict())
        self.post_init()

    def _init_weights(self, module):
        """Only for weights missing from a checkpoint: normal(0, init_std) matrices, unit norm scales."""
        import torch
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=self.config.init_std)
        elif hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 1:
            torch.nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.model.transformer["wte"]

    def set_input_embeddings(self, value):
        self.model.transformer["wte"] = value

    def get_output_embeddings(self):
        return self.model.transformer["ff_out"]

    def set_output_embeddings(self, value):
        self.model.transformer["ff_out"] = value

    def forward(self, input_ids, attention_mask=None, return_dict=None, **kwargs):
        """input_ids [B, T]; attention_mask [B, T] (1 = real token) hides padded keys; logits [B, T, vocab]."""
        logits = self.model(input_ids, attention_mask)
        if return_dict is False:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)
