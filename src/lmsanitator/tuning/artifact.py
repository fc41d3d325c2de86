"""A tuned model on disk: the folder :meth:`TunedModel.save` writes and :meth:`TunedModel.load` reads.

``tune.json`` (method, model, fingerprint, task, labels, settings, which settings were chosen
rather than left at their default, metrics), the peft adapter (``adapter_config.json``,
``adapter_model.safetensors``) or, for full fine-tuning, ``encoder.safetensors``, and
``head.safetensors`` when there is a linear head.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import Encoder, load_encoder
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.encoding import TaskInfo
from lmsanitator.tuning.methods import get_method

# Readers ignore keys they do not know, so adding one (as "changed" was) keeps version 1; a
# version bump is for a change an older reader would misread.
FORMAT_VERSION = 1
TUNE_JSON = "tune.json"
HEAD_FILE = "head.safetensors"
FULL_FILE = "encoder.safetensors"
REQUIRED_KEYS = ("method", "model", "fingerprint", "labels", "config", "task_info")
# the training report, kept through a save/load round trip
REPORT_KEYS = (
    "splits",
    "metrics",
    "accuracy",
    "macro_f1",
    "seconds",
    "history",
    "best_epoch",
    "trainable_parameters",
    "task_spec",
)


def tune_info(model) -> dict:
    """The content of ``tune.json`` for ``model`` (a :class:`~lmsanitator.tuning.TunedModel`)."""
    return {
        "format_version": FORMAT_VERSION,
        "method": model.method.name,
        "model": model.base_name,
        "model_path": model.base_path,
        "model_type": model.model_type,
        "fingerprint": model.base_fingerprint,
        "task": model.task.name,
        "kind": model.task.kind,
        "labels": list(model.task.labels),
        "target": model.target,
        "virtual_tokens": model.n_virtual,
        "max_length": model.max_length,
        "verbalizer": list(model.verbalizer_words) if model.verbalizer_words else None,
        "head": "verbalizer (frozen MLM head at [MASK])"
        if model.mlm_head is not None
        else f"linear on {model.target}",
        "task_info": model.task.to_dict(),
        "config": model.config.to_dict(),
        # the options set away from their defaults (None: not recorded, a folder from before)
        "changed": model.changed_options,
        **model.report,
    }


def save_tuned(model, folder: str | Path) -> None:
    """Write adapter (safetensors), head and ``tune.json`` into the existing ``folder``."""
    folder = Path(folder)
    if model.method.peft_type is None:
        save_file(_cpu_state(model.backbone), str(folder / FULL_FILE))
    else:
        model.backbone.save_pretrained(str(folder), safe_serialization=True)
    if model.head is not None:
        save_file(_cpu_state(model.head), str(folder / HEAD_FILE))
    with open(folder / TUNE_JSON, "w", encoding="utf-8") as f:
        json.dump(tune_info(model), f, indent=2)
        f.write("\n")


def _cpu_state(module) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def load_tuned(cls, folder: str | Path, encoder: Encoder | None = None, *, device: str = "cpu"):
    """A ``cls`` (TunedModel) from ``folder``: see :meth:`TunedModel.load`."""
    folder = Path(folder)
    info = read_tune_json(folder)
    recorded = encoder is None
    encoder = _base_encoder(folder, info, encoder, device)
    config, task = _config_and_task(folder, info)
    method = get_method(config.method)
    try:
        model = cls(encoder, task, config, adapter_dir=folder if method.peft_type else None)
        if method.peft_type is None:
            model.backbone.load_state_dict(load_file(str(folder / FULL_FILE)))
        if model.head is not None:
            model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
    except LMSanitatorError:
        raise
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LMSanitatorError(f"cannot load the tuned model in '{folder}': {msg}") from None
    if recorded:
        model.base_name = info["model"]
    model.changed_options = info.get("changed")
    model.report = {k: info[k] for k in REPORT_KEYS if k in info}
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def _base_encoder(folder: Path, info: dict, encoder: Encoder | None, device: str) -> Encoder:
    """The recorded base model (or ``encoder``), refused when its fingerprint is not the recorded one."""
    if encoder is None:
        ref = info.get("model_path") or info["model"]
        if not Path(str(ref)).exists():
            ref = info["model"]
        encoder = load_encoder(ref, device=device)
    if encoder.fingerprint() != info["fingerprint"]:
        raise LMSanitatorError(
            f"adapter '{folder}' was trained on a different base model (fingerprint "
            f"{info['fingerprint'][:12]}..., this encoder {encoder.fingerprint()[:12]}...)"
        )
    return encoder


def _config_and_task(folder: Path, info: dict) -> tuple[TuneConfig, TaskInfo]:
    # options this version does not know (written by another version) are skipped, as before
    names = {f.name for f in dataclasses.fields(TuneConfig)}
    try:
        config = TuneConfig.from_dict({k: v for k, v in info["config"].items() if k in names})
        task = TaskInfo.from_dict(info["task_info"])
    except (KeyError, TypeError) as exc:
        raise LMSanitatorError(f"'{folder / TUNE_JSON}' is incomplete: {exc}") from None
    return config, task


def read_tune_json(folder: str | Path) -> dict:
    """``tune.json`` of ``folder``, with a one-line error when it is missing or lacks a key."""
    folder = Path(folder)
    p = folder / TUNE_JSON
    if not folder.is_dir():
        raise LMSanitatorError(f"adapter folder '{folder}' does not exist")
    if not p.is_file():
        raise LMSanitatorError(f"'{folder}' is not a tuned-model folder (no {TUNE_JSON})")
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LMSanitatorError(f"cannot read '{p}': {exc}") from None
    for k in REQUIRED_KEYS:
        if k not in info:
            raise LMSanitatorError(f"'{p}' lacks the field '{k}'")
    return info
