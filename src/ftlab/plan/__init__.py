"""Plan before you spend: every input of a run or a study checked, and each run's memory, steps, tokens and
device-hours predicted, before any training.

    memory.py   the shapes of a model (from its config.json, on the meta device) and the bytes a run keeps
    cost.py     FLOPs per token, GPUs (memory, peak FLOP/s), the MFU assumed or measured, device-hours
    fit.py      a run made to fit its device (train.activation_checkpointing auto, a smaller micro_batch) or refused
    inputs.py   a run's inputs resolved: the model, its tokenizer, the data's size; its steps and tokens
    study.py    `ftlab plan` and the checks at the start of `ftlab run`: every run of an experiment, its evaluation
                tasks' files and sandbox, one table

memory, cost, fit and inputs sit beside train.py (which asks fit.py); study.py sits beside experiment/ (it reads an
experiment's runs). Importing this package imports none of them.
"""
