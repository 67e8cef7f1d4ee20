"""Analyses of trained models and of what their evaluations wrote, rerunnable without retraining."""
