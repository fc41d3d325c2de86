"""``lmsanitator zoo SOURCE... --out DIR``: scan many models on Ray, one verdict each."""

from __future__ import annotations

from pathlib import Path

from lmsanitator.cli.common import add_device, check_output_folder
from lmsanitator.cli.scan import add_scan_options, scan_config
from lmsanitator.core.config import option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.scan.config import ScanConfig
from lmsanitator.zoo import VerdictCache, ZooRunner, default_cache_dir, expand_sources


def add_commands(sub) -> None:
    p = sub.add_parser(
        "zoo",
        help="scan many models on Ray: one verdict each, cached, resumable (exit 1 any backdoored, "
        "2 any error)",
        description="Scan every model the SOURCEs name with the same detection scan as `lmsanitator "
        "scan`, each as a Ray task (a local Ray with this machine's cores, or --address). Verdicts are "
        "cached by the content of the weights, config and tokenizer plus the scan settings. DIR gets "
        "zoo.json, zoo.sarif, index.html and per-model reports, rewritten as each model finishes, so an "
        "interrupted zoo resumes. Exit 1 when any model is backdoored, else 2 when any errored or none "
        "was scanned, else 0.",
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a model folder, a folder of model folders, a text file with one model per line (folder, "
        "bundled name, hub id, hf://org/name@revision; optionally 'target=mask'), a .gguf file, a "
        "bundled name or a hub id",
    )
    p.add_argument("--out", required=True, help="output folder (a previous zoo's folder resumes)")
    add_scan_options(p)
    p.add_argument(
        "--loops",
        type=int,
        default=option_default(ScanConfig, "loops"),
        help="fuzz loops per model (default %(default)s)",
    )
    p.add_argument("--cache", help=f"verdict cache folder (default {default_cache_dir()})")
    p.add_argument("--rescan", action="store_true", help="scan again even where the cache has a verdict")
    p.add_argument("--address", help="Ray cluster to join (default: start a local Ray, stop it at the end)")
    p.add_argument("--cpus-per-model", type=int, default=1, help="CPUs (torch threads) per scan (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not a zoo")
    p.add_argument("--no-progress", action="store_true")
    add_device(p)
    p.set_defaults(handler=cmd_zoo)


def _check_out(out: Path, overwrite: bool) -> None:
    """A previous zoo's folder is resumed; any other non-empty folder needs --overwrite."""
    if (out / "zoo.json").is_file():
        check_output_folder(out, True)
    else:
        check_output_folder(out, overwrite)


def cmd_zoo(a) -> int:
    if a.cpus_per_model < 1:
        raise LMSanitatorError("--cpus-per-model must be >= 1")
    out = Path(a.out)
    _check_out(out, a.overwrite)
    config = scan_config(a, "detect")
    refs = expand_sources(a.sources)
    runner = ZooRunner(
        config,
        corpus=a.corpus,
        device=a.device,
        cache=VerdictCache(a.cache),
        rescan=a.rescan,
        address=a.address,
        cpus_per_model=a.cpus_per_model,
        progress=not a.no_progress,
    )
    result = runner.run(refs, out)
    print(
        f"{len(result.records)} models: {result.count('clean')} clean, {result.count('backdoored')} "
        f"backdoored, {result.count('error')} error(s); "
        f"{sum(r['cache_hit'] for r in result.records)} from the cache; {result.seconds:.0f} s; "
        f"report: {out / 'index.html'}"
    )
    return result.exit_code
