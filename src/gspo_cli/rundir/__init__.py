"""A run on disk: its file names, checkpoints and trainer state, manifests and metrics.

`paths` is the one home of every run-directory name and cache path; `checkpoint` and
`trainstate` write and restore checkpoints; `manifest` reads them without torch; `metrics`
writes `metrics.jsonl`; `watchdog` reads its rows and warns about runs that learn nothing.
"""
