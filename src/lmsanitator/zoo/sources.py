"""What a zoo is made of: the SOURCE arguments of ``lmsanitator zoo`` expanded into model references.

A SOURCE is a model folder (has ``config.json``), a folder of model folders (and ``.gguf`` files), a
text file with one model per line (folder, bundled name, hub id, ``hf://org/name@revision``,
optionally followed by ``target=mask``; ``#`` starts a comment), a ``.gguf`` file, a bundled name or a hub id.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import BUNDLED, BUNDLED_CAUSAL, TARGETS

Kind = Literal["bundled", "folder", "gguf", "hub", "invalid"]
MAX_LIST_LINES = 100_000  # a list file is user input: bound what we read
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    """One model of the zoo: how it was named and where it lives."""

    source: str  # as the user wrote it
    kind: Kind
    location: str  # folder, file, bundled name or hub id
    revision: str | None = None  # hub revision asked for (branch, tag or commit)
    target: str | None = None  # the output to scan, when it is not the zoo's default
    problem: str | None = None  # kind "invalid": why the name resolves to no model (its error record)

    @property
    def name(self) -> str:
        """A file-system-safe, readable name (unique within a zoo after :func:`unique_names`)."""
        base = self.location if self.kind in ("bundled", "hub") else Path(self.location).name
        if self.revision:
            base += f"@{self.revision}"
        return re.sub(r"[^\w.@-]+", "_", base).strip("._") or "model"

    def to_dict(self) -> dict:
        return asdict(self)


def _is_model_folder(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _one(spec: str, where: str, target: str | None = None) -> ModelRef:
    """A single model named by ``spec`` (a line of a list file, or a SOURCE that is not a folder)."""
    if spec.startswith("hf://"):
        repo, _, rev = spec[len("hf://") :].partition("@")
        if not _HUB_ID.match(repo):
            raise LMSanitatorError(f"{where}: '{spec}' is not hf://org/name[@revision]")
        return ModelRef(spec, "hub", repo, rev or None, target)
    if spec in BUNDLED or spec in BUNDLED_CAUSAL:
        return ModelRef(spec, "bundled", spec, None, target)
    p = Path(spec).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelRef(spec, "gguf", str(p.resolve()), None, target)
    if _is_model_folder(p):
        return ModelRef(spec, "folder", str(p.resolve()), None, target)
    if p.exists():
        raise LMSanitatorError(f"{where}: '{spec}' is neither a model folder (config.json) nor a .gguf file")
    if _HUB_ID.match(spec):
        return ModelRef(spec, "hub", spec, None, target)
    raise LMSanitatorError(f"{where}: '{spec}' does not exist and is not a hub id (org/name)")


def _list_file(p: Path) -> list[ModelRef]:
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LMSanitatorError(f"cannot read model list '{p}': {exc}") from None
    lines = text.split("\n")
    if len(lines) > MAX_LIST_LINES:
        raise LMSanitatorError(f"model list '{p}' has {len(lines)} lines, more than {MAX_LIST_LINES}")
    refs = []
    for i, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        spec, target = words[0], None
        for opt in words[1:]:  # "MODEL target=mask": this model's scan reads another output
            k, _, v = opt.partition("=")
            if k != "target" or v not in TARGETS:
                raise LMSanitatorError(
                    f"{p}:{i}: unknown option '{opt}' (allowed: target={'|'.join(TARGETS)})"
                )
            target = v
        # relative folders in a list are relative to the list, not to where the command runs
        rel = p.parent / spec
        local = str(rel) if not Path(spec).is_absolute() and rel.exists() else spec
        try:
            refs.append(_one(local, f"{p}:{i}", target))
        except LMSanitatorError as exc:  # one bad line is that model's error, not the zoo's end
            refs.append(ModelRef(spec, "invalid", spec, problem=str(exc)))
    return refs


def expand_source(source: str) -> list[ModelRef]:
    """The models one SOURCE names (a folder of models is read in sorted order)."""
    p = Path(source).expanduser()
    if p.is_dir() and not _is_model_folder(p):
        refs = [
            ModelRef(str(c), "gguf" if c.is_file() else "folder", str(c.resolve()))
            for c in sorted(p.iterdir())
            if _is_model_folder(c) or (c.is_file() and c.suffix == ".gguf")
        ]
        if not refs:
            raise LMSanitatorError(f"folder '{source}' holds no model folders (config.json) or .gguf files")
        return refs
    if p.is_file() and p.suffix != ".gguf":
        return _list_file(p)
    return [_one(source, "source")]


def expand_sources(sources: list[str]) -> list[ModelRef]:
    """Every SOURCE expanded, duplicates (same location, revision and target) dropped, order kept."""
    seen, out = set(), []
    for s in sources:
        for ref in expand_source(s):
            key = (ref.kind, ref.location, ref.revision, ref.target)
            if key not in seen:
                seen.add(key)
                out.append(ref)
    return out


def unique_names(refs: list[ModelRef]) -> list[str]:
    """One distinct file name per model (``name``, then ``name-2``, ``name-3`` for clashes)."""
    used: dict[str, int] = {}
    names = []
    for ref in refs:
        n = ref.name
        used[n] = used.get(n, 0) + 1
        names.append(n if used[n] == 1 else f"{n}-{used[n]}")
    return names
