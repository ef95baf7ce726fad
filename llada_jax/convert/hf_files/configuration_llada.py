"""LLaDA model configuration for `transformers` (trust_remote_code). Written for llada-jax exports.

Keys and defaults follow the released LLaDA config.json; the model reads the sizes, `rope_theta` and `rms_norm_eps`.
"""
from transformers import PretrainedConfig

DEFAULTS = {
    "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288, "mlp_ratio": 4,
    "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096,
    "rope": True, "rope_theta": 500000.0, "rope_full_precision": True, "rms_norm_eps": 1e-05,
    "layer_norm_type": "rms", "layer_norm_with_affine": True, "bias_for_layer_norm": False, "block_type": "llama",
    "activation_type": "silu", "include_bias": False, "include_qkv_bias": False, "weight_tying": False,
    "alibi": False, "scale_logits": False, "input_emb_norm": False, "attention_layer_norm": False,
    "flash_attention": False, "block_group_size": 1, "attention_dropout": 0.0, "residual_dropout": 0.0,
    "embedding_dropout": 0.0, "init_fn": "mitchell", "init_std": 0.02, "mask_token_id": 126336,
    "precision": "amp_bf16",
}


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, eos_token_id=126081, pad_token_id=126081, use_cache=False, tie_word_embeddings=False,
                 **kwargs):
        for key, value in DEFAULTS.items():
            setattr(self, key, kwargs.pop(key, value))
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=use_cache,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
