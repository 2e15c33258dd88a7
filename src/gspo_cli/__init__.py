"""gspo: reinforcement-learning fine-tuning with GSPO (and GRPO as an ablation)."""

__version__ = "0.1.0"
