"""Work across processes and machines on Ray: a local cluster by default, an existing one by address.

    with ray_session(address=None, num_cpus=2):
        for item, result, error in run_tasks(scan_one, items, num_cpus=1):
            ...                                  # in completion order, as each task finishes

Ray restarts a task whose worker process died (``max_retries``), so losing a worker costs time, not
a result. An exception raised *inside* a task is the task's answer (it is not retried): callers
that want one record per item catch inside the task and return an error record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.runtime import available_cores

# a worker killed by the OS, the OOM killer or a lost node: try the task again this often
TASK_RETRIES = 3


def _ray():
    try:
        import ray  # noqa: PLC0415  heavy: Ray starts slowly and only the runner needs it
    except ImportError:
        raise LMSanitatorError("this command runs on Ray: pip install ray") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """Join the cluster at ``address``, or start a local one with ``num_cpus`` (default: the cores
    this process may use) and shut it down on exit. Reuses a session that is already up."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phone-home from an offline machine
    kw: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        kw["address"] = address
    else:
        kw["num_cpus"] = num_cpus or available_cores()
        # workers of a local cluster import what this process imports (a test module, a script's folder)
        kw["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
        if num_gpus is not None:
            kw["num_gpus"] = num_gpus
    # ray.init installs a C-level SIGTERM handler that ends the driver at once, orphaning the local
    # cluster's processes; keep the Python one (the CLI's turns SIGTERM into an interrupt, so the
    # shutdown below runs)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise LMSanitatorError(f"cannot start {where}: {str(exc).splitlines()[0]}") from None
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    try:
        yield ray
    finally:
        ray.shutdown()


def run_tasks(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    retries: int = TASK_RETRIES,
    name: str | None = None,
) -> Iterator[tuple[Any, Any, str | None]]:
    """Run ``fn(item)`` for every item as a Ray task with the given resources; yield
    ``(item, result, None)`` as each finishes, or ``(item, None, reason)`` when the task raised or
    its worker died more than ``retries`` times. Must run inside :func:`ray_session`."""
    ray = _ray()
    remote = ray.remote(fn).options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_retries=retries, name=name or fn.__name__
    )
    pending = {remote.remote(item): item for item in items}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            item = pending.pop(ref)
            try:
                yield item, ray.get(ref), None
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None) or exc
                yield item, None, f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300]}"


def cluster_cpus() -> int:
    """CPUs the Ray cluster offers (inside :func:`ray_session`)."""
    return int(_ray().cluster_resources().get("CPU", 1))
