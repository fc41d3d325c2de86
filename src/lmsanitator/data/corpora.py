"""Clean, offline text corpora and deterministic attack/defence splits.

Named corpora come from Debian packages (no network needed):

* ``austen``   -- sentences of Jane Austen's six novels (``r-cran-janeaustenr``),
* ``wordnet``  -- WordNet glosses and their quoted example sentences (``wordnet-base``),
* ``fortunes`` -- entries of the classic ``fortune`` databases (``fortunes``).

Names joined by ``+`` (``austen+fortunes``) give a mix in equal shares.

Any other argument to :func:`load_corpus` is treated as a file path
(``.txt``: one sentence per line, ``.csv``: column ``text``, ``.jsonl``: key ``text``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import random
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError

__all__ = [
    "CORPORA",
    "PARTS",
    "load_corpus",
    "normalize",
    "part_of",
    "sample",
    "split_corpus",
    "split_sentences",
]

CORPORA: tuple[str, ...] = ("austen", "wordnet", "fortunes")
PARTS: tuple[str, ...] = ("attack", "defence", "heldout", "all")
# Cumulative upper bounds of the stable-hash buckets: attack 45 %, defence 45 %, heldout 10 %.
_PART_BOUNDS = (("attack", 0.45), ("defence", 0.90), ("heldout", 1.0))

JANEAUSTENR_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")

_AUSTEN_BOOKS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Collapse all whitespace runs to one space and strip the ends."""
    return _WS.sub(" ", text).strip()


def _dedupe(items: Iterable[str]) -> list[str]:
    """Normalise whitespace, drop empty items and exact duplicates (first occurrence wins)."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        item = normalize(item)
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _missing_package(package: str, what: Path) -> LMSanitatorError:
    return LMSanitatorError(
        f"corpus data not found at {what}; install the Debian package: apt-get install -y {package}"
    )


# --------------------------------------------------------------------------- sentence splitting

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st messrs mme mlle esq jr sr rev col capt gen lt sgt hon prof vs etc viz no co".split()
)
# End of sentence: terminal punctuation, optional closing quotes/brackets, whitespace, and the
# next sentence starting (possibly after opening quotes) with an upper-case letter or a digit.
_SENT_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]*[A-Z0-9])")
_LAST_WORD = re.compile(r"([A-Za-z]+)\.$")


def split_sentences(text: str) -> list[str]:
    """A simple regex sentence splitter that does not break after Mr./Mrs./Dr. or initials."""
    text = normalize(text)
    sentences: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        end = m.end()
        candidate = text[start:end].rstrip()
        last = _LAST_WORD.search(candidate)
        if last is not None:
            word = last.group(1)
            if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
                continue  # "Mr. Darcy", "W. Elliot": not a sentence end
        if candidate:
            sentences.append(candidate)
        start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


# --------------------------------------------------------------------------- austen


def _parse_xdr_character_vector(payload: bytes) -> list[str | None] | None:
    """Fast path for a serialized (XDR) R character vector without attributes.

    rdata's general parser takes ~0.2 s per novel; this reads the same bytes in a few ms.
    Returns None when the payload is anything else, so the caller can fall back to rdata.
    """
    if payload[:2] != b"X\n":
        return None
    pos = 2
    (version,) = struct.unpack_from(">i", payload, pos)
    pos += 12  # format version, writer R version, minimal reader R version
    native_encoding = "utf-8"
    if version == 3:
        (n,) = struct.unpack_from(">i", payload, pos)
        native_encoding = payload[pos + 4 : pos + 4 + n].decode("ascii", "replace") or "utf-8"
        pos += 4 + n
    elif version != 2:
        return None
    (flags,) = struct.unpack_from(">i", payload, pos)
    if flags & 0xFF != 16 or flags & 0x700:  # STRSXP without object/attribute/tag bits
        return None
    (length,) = struct.unpack_from(">i", payload, pos + 4)
    pos += 8
    out: list[str | None] = []
    for _ in range(length):
        cflags, n = struct.unpack_from(">ii", payload, pos)
        pos += 8
        if cflags & 0xFF != 9:  # CHARSXP
            return None
        if n == -1:
            out.append(None)  # NA_character_
            continue
        raw = payload[pos : pos + n]
        pos += n
        levels = cflags >> 12
        if levels & 4:  # LATIN1_MASK
            encoding = "latin-1"
        elif levels & (8 | 64):  # UTF8_MASK, ASCII_MASK
            encoding = "utf-8"
        else:
            encoding = native_encoding
        try:
            out.append(raw.decode(encoding, "replace"))
        except LookupError:
            out.append(raw.decode("utf-8", "replace"))
    return out


def _read_austen_books() -> dict[str, list[str]]:
    """Read the six character vectors from janeaustenr's lazy-load database (no R needed).

    ``Rdata.rdx`` is a gzip-compressed serialized R list whose ``variables`` entry maps each
    object name to ``(offset, length)`` in ``Rdata.rdb``; each blob there is a 4-byte
    big-endian uncompressed length followed by zlib data holding a serialized R object.
    """
    rdx_path = JANEAUSTENR_DIR / "Rdata.rdx"
    rdb_path = JANEAUSTENR_DIR / "Rdata.rdb"
    if not rdx_path.is_file() or not rdb_path.is_file():
        raise _missing_package("r-cran-janeaustenr", JANEAUSTENR_DIR)
    try:
        import rdata  # noqa: PLC0415  heavy: only the austen corpus reads R data
    except ImportError as exc:  # pragma: no cover - rdata is a declared dependency
        raise LMSanitatorError(
            "the 'austen' corpus needs the Python package rdata: pip install rdata"
        ) from exc

    try:
        index = rdata.conversion.convert(rdata.parser.parse_file(rdx_path, extension=".rds"))
        variables = {str(k): v for k, v in index["variables"].items()}
        compressed = bool(index.get("compressed", [True])[0])
        blob_all = rdb_path.read_bytes()
        books: dict[str, list[str]] = {}
        for name in _AUSTEN_BOOKS:
            offset, length = (int(x) for x in variables[name])
            raw = blob_all[offset : offset + length]
            payload = zlib.decompress(raw[4:]) if compressed else raw[4:]
            fast = _parse_xdr_character_vector(payload)
            if fast is None:  # not a plain character vector: let rdata handle it
                fast = rdata.conversion.convert(rdata.parser.parse_data(payload, extension=".rds")).tolist()
            books[name] = [line if isinstance(line, str) else "" for line in fast]
    except LMSanitatorError:
        raise
    except Exception as exc:  # corrupt or unexpected format
        raise LMSanitatorError(f"cannot read the janeaustenr data in {JANEAUSTENR_DIR}: {exc}") from exc
    return books


def austen_book_sentences() -> dict[str, list[str]]:
    """Sentences (6-40 words) of each novel, keyed by the janeaustenr object name."""
    out: dict[str, list[str]] = {}
    for name, lines in _read_austen_books().items():
        # Lines of one paragraph are consecutive; blank lines separate paragraphs.
        paragraphs: list[str] = []
        current: list[str] = []
        for line in lines:
            line = line.strip()
            if line:
                current.append(line)
            elif current:
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        sentences: list[str] = []
        for para in paragraphs:
            para = para.replace("_", "")  # _italics_ markers of the Gutenberg text
            for sent in split_sentences(para):
                if 6 <= len(sent.split()) <= 40:
                    sentences.append(sent)
        out[name] = sentences
    return out


def _austen() -> list[str]:
    return [s for sents in austen_book_sentences().values() for s in sents]


# --------------------------------------------------------------------------- wordnet

_QUOTED = re.compile(r'"([^"]*)"')


def _wordnet() -> list[str]:
    items: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = WORDNET_DIR / f"data.{pos}"
        if not path.is_file():
            raise _missing_package("wordnet-base", path)
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  "):  # license header
                    continue
                bar = line.find("|")
                if bar < 0:
                    continue
                gloss = line[bar + 1 :].strip()
                examples = _QUOTED.findall(gloss)
                # What is left once the examples are cut out is the definition; drop the
                # separators the examples leave behind ("def; ; " -> "def").
                parts = (normalize(p) for p in _QUOTED.sub(" ", gloss).split(";"))
                definition = "; ".join(p for p in parts if p)
                for item in (definition, *examples):
                    item = normalize(item)
                    if len(item.split()) >= 4:
                        items.append(item)
    return items


# --------------------------------------------------------------------------- fortunes

_OVERSTRIKE = re.compile(r".\x08")


def _fortunes() -> list[str]:
    if not FORTUNES_DIR.is_dir():
        raise _missing_package("fortunes", FORTUNES_DIR)
    files = sorted(p for p in FORTUNES_DIR.iterdir() if p.is_file() and not p.is_symlink() and p.suffix == "")
    if not files:
        raise _missing_package("fortunes", FORTUNES_DIR)
    entries: list[str] = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        text = _OVERSTRIKE.sub("", text).replace("\x08", "")
        for entry in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE):
            entry = normalize(entry)
            words = entry.split()
            if not 4 <= len(words) <= 60:
                continue
            # Drop ASCII art: most "words" of a real text contain a letter.
            if sum(any(c.isalpha() for c in w) for w in words) * 2 < len(words):
                continue
            entries.append(entry)
    return entries


_BUILDERS = {"austen": _austen, "wordnet": _wordnet, "fortunes": _fortunes}


@functools.cache
def _named_corpus(name: str) -> tuple[str, ...]:
    return tuple(_dedupe(_BUILDERS[name]()))


# --------------------------------------------------------------------------- files


def _read_text_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LMSanitatorError(f"cannot read corpus file {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LMSanitatorError(
            f"corpus file {path} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from exc


def _load_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".csv", ".jsonl"):
        raise LMSanitatorError(
            f"unsupported corpus file type {path.suffix or '(none)'} for {path}; use .txt, .csv or .jsonl"
        )
    text = _read_text_file(path)
    if suffix == ".txt":
        return text.splitlines()
    if suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            raise LMSanitatorError(f"no usable sentences in corpus file {path} (empty CSV)")
        names = [h.strip() for h in header]
        lowered = [h.lower() for h in names]
        if "text" in lowered:
            col = lowered.index("text")
        elif len(names) == 1:
            col = 0
        else:
            raise LMSanitatorError(f"CSV corpus {path} has no 'text' column (columns: {', '.join(names)})")
        return [row[col] for row in reader if len(row) > col]
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LMSanitatorError(f"invalid JSON on line {lineno} of {path}: {exc.msg}") from exc
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            out.append(obj["text"])
        elif isinstance(obj, str):
            out.append(obj)
        else:
            raise LMSanitatorError(f"line {lineno} of {path} has no string 'text' key")
    return out


def _mixed(names: list[str]) -> list[str]:
    """Named corpora in equal shares ("austen+fortunes"): round-robin, each cut to the smallest's
    size, so a random sample covers every domain alike (an attacker's general-domain anchor)."""
    if len(set(names)) != len(names):
        raise LMSanitatorError(f"corpus mix names a corpus twice: {'+'.join(names)}")
    lists = [list(_named_corpus(n)) for n in names]
    n = min(len(x) for x in lists)
    return _dedupe(s for row in zip(*(x[:n] for x in lists)) for s in row)


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or Path(s).suffix != ""


def load_corpus(name_or_path: str, *, limit: int | None = None) -> list[str]:
    """Load a named corpus (see :data:`CORPORA`) or a ``.txt``/``.csv``/``.jsonl`` file.

    Returns whitespace-normalised, non-empty, de-duplicated sentences in a deterministic
    order; ``limit`` keeps only the first ``limit`` of them.
    """
    if limit is not None and limit < 0:
        raise LMSanitatorError(f"corpus limit must be >= 0, got {limit}")
    key = str(name_or_path).strip()
    parts = [k.strip().lower() for k in key.split("+")]
    if len(parts) > 1 and all(k in _BUILDERS for k in parts):
        sentences = _mixed(parts)
    elif key.lower() in _BUILDERS:
        sentences = list(_named_corpus(key.lower()))
    else:
        path = Path(key).expanduser()
        if not path.exists():
            if _looks_like_path(key):
                raise LMSanitatorError(f"corpus file not found: {key}")
            raise LMSanitatorError(
                f"unknown corpus {key!r}; known corpora: {', '.join(CORPORA)}, "
                "a mix such as austen+fortunes, or a .txt/.csv/.jsonl file"
            )
        if not path.is_file():
            raise LMSanitatorError(f"corpus path is not a file: {key}")
        sentences = _dedupe(_load_file(path))
        if not sentences:
            raise LMSanitatorError(f"no usable sentences in corpus file {path}")
    if limit is not None:
        sentences = sentences[:limit]
    return sentences


# --------------------------------------------------------------------------- splits and samples


def _bucket(sentence: str) -> float:
    """Stable position in [0, 1) of a sentence, from sha256 of its normalised lower-case form."""
    digest = hashlib.sha256(normalize(sentence).lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def part_of(sentence: str) -> str:
    """Which part ("attack", "defence" or "heldout") a sentence belongs to."""
    b = _bucket(sentence)
    for name, upper in _PART_BOUNDS:
        if b < upper:
            return name
    return "heldout"  # pragma: no cover - b < 1.0 always


def split_corpus(sentences: Sequence[str], part: str) -> list[str]:
    """The sentences of one disjoint part (45 % attack, 45 % defence, 10 % heldout) or "all".

    A sentence's part depends only on the sentence itself, so an attack corpus never
    overlaps a defence corpus however the lists were built. Order is preserved.
    """
    if part not in PARTS:
        raise LMSanitatorError(f"unknown corpus part {part!r}; choose one of: {', '.join(PARTS)}")
    if part == "all":
        return list(sentences)
    return [s for s in sentences if part_of(s) == part]


def sample(sentences: Sequence[str], n: int, seed: int) -> list[str]:
    """Deterministic sample of ``n`` sentences without replacement (all, shuffled, if n > len)."""
    if n < 0:
        raise LMSanitatorError(f"sample size must be >= 0, got {n}")
    items = list(sentences)
    rng = random.Random(seed)
    if n >= len(items):
        rng.shuffle(items)
        return items
    return rng.sample(items, n)
