"""Conversion to and from the released LLaDA Hugging Face layout (`hf.py`) and its PyTorch model (`torch_model.py`,
importable only when torch is installed)."""
