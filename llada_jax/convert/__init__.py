"""Conversion to and from Hugging Face directories: `hf.py` runs `llada convert` (export and import of a run
directory), `layout.py` maps our parameters and config to the LLaDA release's and Llama's names and config.json,
`safetensors_io.py` reads and writes the tensor files, `stream.py` plans the memory-bounded blocks both directions
move; `torch_model.py` is the PyTorch model (importable only when torch is installed)."""
from llada_jax.errors import LladaError


class ConvertError(LladaError):
    """A checkpoint or HF directory that cannot be converted; the message names the tensor or key at fault."""
