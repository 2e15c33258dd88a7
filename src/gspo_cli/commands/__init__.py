"""The command cores: what `gspo train`, `check`, `prepare`, `eval` and `compare` do.

Each is a plain function the CLI calls once (`train.run`, `preflight.batch_plan` and
`resources.estimate`, `prepare.prepare`, `evaluate.evaluate`, `compare.compare`); they use the
parts below them (models, rollout, scoring, the update, rundir, base) and never the CLI.
"""
