"""hf_coop: make Hugging Face models cooperate."""

__version__ = "0.1.0"
