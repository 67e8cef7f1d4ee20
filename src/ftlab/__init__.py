"""ftlab: LoRA versus full finetuning, side by side.

Importing ftlab (or any of its modules) changes nothing process-wide; the `ftlab` command sets what it needs
(ftlab.cli.main).
"""

__version__ = "0.1.0"
