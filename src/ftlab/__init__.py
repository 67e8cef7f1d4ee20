"""ftlab: LoRA versus full finetuning, side by side."""

__version__ = "0.1.0"
