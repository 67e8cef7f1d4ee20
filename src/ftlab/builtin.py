"""What a `builtin:` name stands for: the models shipped inside the package, and the built-in training data with the
domain each belongs to.

    model.name: builtin:base-tiny     the Hugging Face directory src/ftlab/assets/base-tiny
    data.path: builtin:math-ift       the math domain's IFT pairs (ftlab.domains writes them into <run>/data/)

One neutral table that the config's validation, model loading, the domains and the study (which held-out prompts
KL is measured on) all read; it imports nothing of ftlab but its errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from ftlab.errors import ConfigError

BUILTIN_PREFIX = "builtin:"  # model.name builtin:<model>, data.path builtin:<kind>

Domain = Literal["source", "code", "math"]


@dataclass(frozen=True)
class DataKind:
    """One training view of a built-in domain."""

    domain: Domain  # the domain its text comes from
    shape: str  # the JSONL record shape it is written in


# The training data views, by the name data.path=builtin:<kind> uses.
DATA_KINDS: dict[str, DataKind] = {
    "source-cpt": DataKind("source", "{text}: source documents"),
    "code-cpt": DataKind("code", "{text}: function sources"),
    "code-ift": DataKind("code", "{prompt, completion}: signature + docstring -> body"),
    "math-cpt": DataKind("math", "{text}: question + worked solution"),
    "math-ift": DataKind("math", "{question, answer}: GSM8K shape"),
}
# The target domains with held-out prompts of their own (ftlab.analysis.kl.target_prompts): math questions, code
# signatures + docstrings. The source domain is what forgetting is measured on, not a target.
PROMPT_DOMAINS: tuple[Domain, ...] = ("math", "code")


def data_domain(path: str) -> Domain | None:
    """The domain of a data.path `builtin:<kind>` (None for any other path: the user's own data)."""
    if not path.startswith(BUILTIN_PREFIX):
        return None
    kind = DATA_KINDS.get(path.removeprefix(BUILTIN_PREFIX))
    return kind.domain if kind is not None else None


def _assets() -> Path:
    return Path(str(resources.files("ftlab") / "assets"))


def builtin_models() -> dict[str, Path]:
    """Every shipped model by name: the folders of the package's assets that hold a config.json."""
    assets = _assets()
    if not assets.is_dir():
        return {}
    return {p.name: p for p in sorted(assets.iterdir()) if (p / "config.json").exists()}


def builtin_model_dir(name: str) -> Path:
    """The model directory a `builtin:<name>` model name stands for; a ConfigError naming model.name if none."""
    key = name.removeprefix(BUILTIN_PREFIX)
    models = builtin_models()
    if key not in models:
        raise ConfigError(f"model.name: no built-in model {key!r}; built-in models: {', '.join(models) or 'none'}")
    return models[key]
