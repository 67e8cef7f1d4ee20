"""ftlab: LoRA versus full finetuning, side by side."""

__version__ = "0.1.0"

import warnings as _warnings

# transformers 5 deprecates a name that PEFT still calls on every adapter load; nothing for a user to act on.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
