"""The Hugging Face hub, reachable or not: one quick check, instead of a library's retry loop (datasets retries
an unreachable hub for about 40 s before it says so).

    reason = hub_offline()        # None, or why the hub cannot be used: HF_HUB_OFFLINE set, the host unreachable
    with offline_mode(): ...      # huggingface_hub and datasets answer from the local cache only, at once
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0
TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> str | None:
    """None when the hub can be reached; else why not (the environment says offline, or no connection to the
    endpoint's host in CONNECT_TIMEOUT_S)."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(key, "").upper() in TRUE:
            return f"{key} is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port} is not reachable ({e.strerror or e})"
    return None


@contextlib.contextmanager
def offline_mode():
    """huggingface_hub (and datasets, where installed) in offline mode for the block: files come from the local
    cache or the call fails at once. They read HF_HUB_OFFLINE when imported, so their flags are set directly."""
    import huggingface_hub.constants as hub_constants

    flags = [(hub_constants, "HF_HUB_OFFLINE")]
    if "datasets" in sys.modules or _installed("datasets"):
        import datasets.config

        flags += [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
    saved = [(module, name, getattr(module, name)) for module, name in flags if hasattr(module, name)]
    for module, name, _ in saved:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None
