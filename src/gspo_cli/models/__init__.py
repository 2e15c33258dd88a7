"""Models: loading by hub id, local directory or embedded name, and the embedded models.

`loading` turns a recipe's model name into a model and a tokenizer ready for left-padded
generation; `tiny` builds the embedded tiny Qwen3 (and Qwen3-MoE) in code, with their
character tokenizers and the supervised warm start that makes them worth training.
"""
