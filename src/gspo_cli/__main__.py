"""`python -m gspo_cli` runs the CLI (and is what torchrun launches)."""

from gspo_cli.cli import app

if __name__ == "__main__":
    app()
