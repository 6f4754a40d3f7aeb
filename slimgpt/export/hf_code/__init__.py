"""The modelling files copied into a per-layer Hugging Face export (see slimgpt/export/hf.py).

They import transformers at module level and are meant to be loaded by transformers from the
exported folder (`trust_remote_code=True`), not imported from here.
"""
