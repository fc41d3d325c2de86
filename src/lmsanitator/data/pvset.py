"""PV sets: the PVs found by a search, saved as safetensors with JSON metadata in the header.

Tensors: ``pvs`` (n x hidden) and ``soft_prompts`` (n x l_sp x embedding width). Metadata key
``lmsanitator`` holds JSON: hidden size, target, model name and fingerprint (sha256 of the
weights), seeds, losses, the last fuzz seed run (for ``--resume``) and the scan configuration.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_file

FORMAT = "lmsanitator-pvset/1"
# the output positions a PV can be mined on; the same tuple as ``lmsanitator.models.TARGETS`` (data
# may not import models: same layer), a test keeps the two equal
PV_TARGETS = ("cls", "mask", "tokens", "last")


def _stack_prompts(prompts: list) -> torch.Tensor | None:
    """Soft prompts row-aligned with the PVs; a PV whose prompt was not kept (a search continued
    from a PV set saved without prompts) gets a NaN prompt, so row i still belongs to PV i."""
    known = [p for p in prompts if p is not None]
    if not known:
        return None
    return torch.stack([p if p is not None else torch.full_like(known[0], float("nan")) for p in prompts])


@dataclass
class PVSet:
    pvs: torch.Tensor  # n x hidden
    target: str
    model: str = ""
    fingerprint: str = ""
    soft_prompts: torch.Tensor | None = None
    seeds: list[int] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)
    last_seed: int | None = None
    config: dict = field(default_factory=dict)

    @classmethod
    def from_miner(cls, miner, encoder, last_seed: int | None = None) -> PVSet:
        """The PVs a :class:`~lmsanitator.scan.PVMiner` holds, tagged with the model they came from."""
        return cls(
            pvs=torch.stack(miner.pvs_) if miner.pvs_ else torch.zeros(0, encoder.hidden_size),
            soft_prompts=_stack_prompts(miner.soft_prompts_),
            target=miner.config.target,
            model=encoder.name,
            fingerprint=encoder.fingerprint(),
            seeds=miner.pv_seeds_,
            losses=miner.pv_losses_,
            last_seed=miner.last_seed_ if last_seed is None else last_seed,
            config=dataclasses.asdict(miner.config),
        )

    @property
    def hidden_size(self) -> int:
        return int(self.pvs.shape[1])

    def __len__(self) -> int:
        return int(self.pvs.shape[0])

    def save(self, path: str | Path) -> None:
        """Atomic write: a reader never sees a half-written PV set."""
        path = Path(path)
        meta = {
            "format": FORMAT,
            "hidden_size": self.hidden_size,
            "count": len(self),
            "target": self.target,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "seeds": self.seeds,
            "losses": self.losses,
            "last_seed": self.last_seed,
            "config": self.config,
        }
        tensors = {"pvs": self.pvs.detach().float().contiguous().cpu()}
        if self.soft_prompts is not None and len(self.soft_prompts):
            tensors["soft_prompts"] = self.soft_prompts.detach().float().contiguous().cpu()
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"lmsanitator": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> PVSet:
        """Read and validate a PV set: metadata present and typed, values finite, width equal to the
        hidden size, a known target. Any problem is one :class:`LMSanitatorError` line."""
        path = Path(path)
        if not path.is_file():
            raise LMSanitatorError(f"PV set '{path}' does not exist")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("lmsanitator", "null"))
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RecursionError) as exc:
            raise LMSanitatorError(
                f"PV set '{path}' is not a readable safetensors PV set: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "pvs" not in tensors:
            raise LMSanitatorError(f"PV set '{path}' has no lmsanitator metadata")
        pvs, sp = tensors["pvs"], tensors.get("soft_prompts")
        _validate(path, meta, pvs, sp)
        return cls(
            pvs=pvs,
            target=meta["target"],
            model=meta.get("model") or "",
            fingerprint=meta.get("fingerprint") or "",
            soft_prompts=sp,
            seeds=meta.get("seeds") or [],
            losses=meta.get("losses") or [],
            last_seed=meta.get("last_seed"),
            config=meta.get("config") or {},
        )

    def check_model(
        self, hidden_size: int, fingerprint: str | None = None, target: str | None = None
    ) -> None:
        if self.hidden_size != hidden_size:
            raise LMSanitatorError(
                f"PV set width {self.hidden_size} does not match the model's hidden size {hidden_size}"
            )
        if fingerprint and self.fingerprint and fingerprint != self.fingerprint:
            raise LMSanitatorError("PV set was mined on another model (fingerprint differs)")
        if target and self.target != target:
            raise LMSanitatorError(f"PV set target '{self.target}' differs from '{target}'")


def _validate(path: Path, meta: dict, pvs: torch.Tensor, sp: torch.Tensor | None) -> None:
    """The checks of :meth:`PVSet.load` (a hand-edited or foreign file must fail here, in one line,
    not later as a KeyError or as a monitor that flags nothing because every sign is NaN)."""

    def bad(msg: str):
        raise LMSanitatorError(f"PV set '{path}' is invalid: {msg}")

    width = meta.get("hidden_size")
    if "hidden_size" not in meta or "target" not in meta:
        missing = [k for k in ("hidden_size", "target") if k not in meta]
        bad(f"metadata lacks {', '.join(missing)}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        bad(f"hidden_size must be a positive integer, got {width!r}")
    if meta["target"] not in PV_TARGETS:
        bad(f"target {meta['target']!r} is not one of {', '.join(PV_TARGETS)}")
    for key, kind in (
        ("model", str),
        ("fingerprint", str),
        ("seeds", list),
        ("losses", list),
        ("config", dict),
    ):
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            bad(f"metadata '{key}' must be a {kind.__name__}")
    last = meta.get("last_seed")
    if last is not None and (not isinstance(last, int) or isinstance(last, bool)):
        bad(f"last_seed must be an integer, got {last!r}")
    if not pvs.is_floating_point():
        bad(f"pvs must be floating point, got {pvs.dtype}")
    if pvs.ndim != 2 or pvs.shape[1] != width:
        raise LMSanitatorError(
            f"PV set '{path}' is inconsistent: pvs {tuple(pvs.shape)} vs hidden size {width}"
        )
    count = meta.get("count")
    if count is not None and count != pvs.shape[0]:
        bad(f"metadata count {count!r} but {pvs.shape[0]} PVs")
    if not bool(torch.isfinite(pvs).all()):
        bad(f"{int((~torch.isfinite(pvs)).any(dim=1).sum())} PV(s) hold NaN or infinite values")
    if sp is not None and (sp.ndim < 2 or sp.shape[0] != pvs.shape[0]):
        raise LMSanitatorError(
            f"PV set '{path}' is inconsistent: {sp.shape[0] if sp.ndim else 0} soft prompts for "
            f"{pvs.shape[0]} PVs"
        )
