"""Evaluation: what a model learned (target tasks) and what it forgot (source tasks).

Tasks are data (`tasks.py`); evaluators take documents of one shape and a model wrapper (`lm.py`):
multiple choice by log-likelihood, generation with answer extraction, sandboxed code execution, perplexity.
"""
