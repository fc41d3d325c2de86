"""``lmsanitator evaluate``: the measurement sub-commands, assembled here and only here.

Each sub-command lives beside the feature it measures (``asr`` with ``tune``, ``guard`` with
``guard``, ``psim`` with ``psim``); this module decides which exist and in what order.
"""

from __future__ import annotations

from lmsanitator.cli import guard, psim, tune
from lmsanitator.cli.common import Parser

# name -> the function adding `lmsanitator evaluate NAME` to the evaluate sub-parsers
EVALUATE_COMMANDS = (
    ("asr", tune.add_evaluate_asr),
    ("guard", guard.add_evaluate_guard),
    ("psim", psim.add_evaluate_psim),
)


def add_commands(sub) -> None:
    names = ", ".join(name for name, _ in EVALUATE_COMMANDS)
    p = sub.add_parser(
        "evaluate",
        help=f"measure a tuned model: {names}",
        description="Evaluation sub-commands: asr (attack success rate), guard (the PV guard), psim (PSIM).",
    )
    esub = p.add_subparsers(dest="evaluate_command", required=True, parser_class=Parser)
    for _, add in EVALUATE_COMMANDS:
        add(esub)
