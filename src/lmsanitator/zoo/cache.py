"""The verdict cache: a model already scanned with the same settings is answered without a scan.

Key = sha256 of (the content hash of the model's weights, config and tokenizer files, the scan
settings, the project version). The content hash is what the model *is*, not where it lies or what
it is called, so a copy in another folder or a re-upload under another name is a hit, and any changed
byte (a new hub revision) is a miss. File hashes are memoised by (path, size, mtime) so a hit costs a
``stat`` per file, not a read of the weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmsanitator import __version__
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import write_json_atomic
from lmsanitator.core.runtime import cache_dir

# what decides a model's behaviour: weights, config, tokenizer (not attack.json, README, ...)
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model")
MODEL_FILE_NAMES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
_CHUNK = 1 << 22


def default_cache_dir() -> Path:
    """The project's cache root (:func:`lmsanitator.core.runtime.cache_dir`)."""
    return cache_dir()


def model_files(path: Path) -> list[Path]:
    """The files that define the model at ``path`` (a folder or one .gguf file), sorted."""
    if path.is_file():
        return [path]
    files = [
        p
        for p in sorted(path.iterdir())
        if p.is_file() and (p.name in MODEL_FILE_NAMES or p.suffix in MODEL_FILE_SUFFIXES)
    ]
    if not files:
        raise LMSanitatorError(f"'{path}' holds no weights, config or tokenizer files")
    return files


class VerdictCache:
    """Scan records by key under ``root/zoo`` plus a memo of file hashes."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.dir = self.root / "zoo"
        self._memo_path = self.root / "file-hashes.json"
        self._memo: dict | None = None

    # ---- content hash -------------------------------------------------------------------
    def _load_memo(self) -> dict:
        if self._memo is None:
            try:
                self._memo = json.loads(self._memo_path.read_text(encoding="utf-8"))
                if not isinstance(self._memo, dict):
                    self._memo = {}
            except (OSError, ValueError):
                self._memo = {}
        return self._memo

    def file_hash(self, p: Path) -> str:
        st = p.stat()
        memo = self._load_memo()
        key = str(p.resolve())
        hit = memo.get(key)
        if isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
            return hit["sha256"]
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}
        return memo[key]["sha256"]

    def content_hash(self, path: str | Path) -> str:
        """sha256 over the (name, sha256) of every model file: the model's identity."""
        path = Path(path)
        h = hashlib.sha256()
        for p in model_files(path):
            h.update(f"{p.name}\0{self.file_hash(p)}\n".encode())
        return h.hexdigest()

    def save_memo(self) -> None:
        if self._memo is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self._memo_path, self._memo)

    # ---- records ------------------------------------------------------------------------
    @staticmethod
    def key(content_hash: str, settings: dict) -> str:
        blob = json.dumps(
            {"content": content_hash, "settings": settings, "version": __version__}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            rec = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def put(self, key: str, record: dict) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(p, record)
