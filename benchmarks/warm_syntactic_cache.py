"""Fill the syntactic paraphraser's rewrite cache for every text of the named tasks (train, validation
and test; both fields of a pair), so SynAttack runs later on a machine without spaCy.

python benchmarks/warm_syntactic_cache.py tweets-binary [TASK ...]

Copy the printed cache file to the same place under the other machine's ``cache_dir()``
(``$LMSANITATOR_CACHE``, else ``~/.cache/lmsanitator``).
"""

from __future__ import annotations

import argparse
import json
import time

from lmsanitator.data import load_task
from lmsanitator.data.syntactic import parser_version, warm_cache


def task_texts(name: str) -> list[str]:
    """Every text SynAttack may paraphrase in the task: each example's text and its pair."""
    task = load_task(name)
    out = []
    for e in [*task.train, *task.validation, *task.test]:
        out += [t for t in (e.text, e.text_pair) if t]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tasks", nargs="+", metavar="TASK")
    a = ap.parse_args()
    for name in a.tasks:
        t0 = time.perf_counter()
        counts = warm_cache(task_texts(name))
        print(
            json.dumps(
                {"task": name, **counts, "parser": parser_version(), "s": round(time.perf_counter() - t0, 1)}
            )
        )


if __name__ == "__main__":
    main()
