"""What every layer stands on, importing nothing above it.

`constants` (names and numbers shared with the torch-only modules), `errors` (the user
errors and their exit codes), `distributed` (torchrun, FSDP2, the few collectives),
`interrupt` (Ctrl-C / SIGTERM), `seeding` (derived seeds), `storage` (atomic writes, staged
directories, a full disk as a normal event) and `safestate` (tensors and JSON, never pickle).
"""
