"""Scoring: per-token log-probabilities of completions, and MoE routing capture and replay.

`completions` is the entry point (log π(y_t | x, y_<t) for a batch); `chunked` computes them
without materialising `[N, T, vocab]` logits, `packing` lays each prompt out once, `microbatch`
splits rows into token-budget forwards, and `routing` records and replays expert choices.
"""
