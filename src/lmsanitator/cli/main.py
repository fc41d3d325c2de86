"""The ``lmsanitator`` command.

Exit codes (the same for every command, so scripts and CI can gate on them):

* 0 - success; for ``scan`` a clean model, for ``attack`` a verified implant, for ``search`` no PV;
* 1 - a finding: ``scan`` found a backdoor (a legit PV), ``search`` found PVs, ``attack``
  implanted a backdoor that misses the verification thresholds;
* 2 - any error: bad arguments or input (one line from argparse or ``lmsanitator: error: ...``),
  an output that exists (without ``--overwrite``) or cannot be written (checked before any
  work starts), and any unexpected exception (``lmsanitator: error: <Type>: <message>``, no
  traceback unless the global ``--debug`` flag is given);
* 130 - interrupted (Ctrl-C, or SIGTERM: it is turned into the same interrupt, so ``finally`` blocks
  run - temporary outputs are removed and a local Ray cluster is shut down instead of orphaned).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import traceback

from lmsanitator import __version__
from lmsanitator.cli import attack, baseline, evaluate, experiment, guard, models, psim, scan, tune, zoo
from lmsanitator.cli.common import Parser
from lmsanitator.core.errors import LMSanitatorError

# the command groups, in the order `lmsanitator --help` lists them; each adds its sub-commands
# with add_commands(sub), and each leaf parser names its handler (set_defaults(handler=...))
GROUPS = (attack, models, tune, evaluate, experiment, scan, zoo, guard, psim, baseline)

EXIT_OK, EXIT_FINDING, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="lmsanitator",
        description="Detect and remove task-agnostic backdoors in pretrained "
        "language models used with prompt tuning. Exit codes: 0 success/clean, 1 a finding "
        "(scan: backdoored; search: PVs found; attack: implanted but not verified), 2 error, "
        "130 interrupted.",
    )
    ap.add_argument("--version", action="version", version=f"lmsanitator {__version__}")
    ap.add_argument(
        "--debug", action="store_true", help="on an error, print the full traceback (the exit code stays 2)"
    )
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.add_commands(sub)
    return ap


def _fail(message: str) -> int:
    print(f"lmsanitator: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return EXIT_ERROR


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a CI timeout, ``kill``, a container stop) raises KeyboardInterrupt while a command
    runs: Python's default would end the process at once, skipping every ``finally``."""
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # argparse errors: one line, SystemExit(2)
    try:
        with _sigterm_as_interrupt():
            return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print("lmsanitator: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except LMSanitatorError as exc:
        if args.debug:
            traceback.print_exc()
        return _fail(str(exc))
    except Exception as exc:  # the contract: an unexpected failure is an error (2), never a finding (1)
        if args.debug:
            traceback.print_exc()
        return _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
