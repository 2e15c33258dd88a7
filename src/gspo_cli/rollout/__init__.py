"""Rollout: sampling G completions per prompt and turning them into a training batch.

`sampling` is the batched KV-cache decoding loop, `greedy` the greedy decoding that every
accuracy figure comes from, and `stages` the rollout steps `sample` → `score_samples` →
`assemble` that `commands.train` calls in order.
"""
