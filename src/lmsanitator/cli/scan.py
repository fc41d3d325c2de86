"""``lmsanitator scan`` (detection mode) and ``lmsanitator search`` (search mode)."""

from __future__ import annotations

from pathlib import Path

from lmsanitator.cli.common import (
    MODEL_HELP,
    add_device,
    add_overwrite,
    check_output_file,
    config_choices,
)
from lmsanitator.core.config import option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import write_json_atomic
from lmsanitator.core.runtime import available_cores, set_threads
from lmsanitator.data.pvset import PVSet
from lmsanitator.models import TARGETS
from lmsanitator.scan.config import ScanConfig
from lmsanitator.scan.miner import PVMiner
from lmsanitator.scan.run import load_for_scan, scan_model
from lmsanitator.scan.sarif import how_found, scan_sarif

# search mode keeps mining until --patience loops bring no new PV; ScanConfig.loops is detection's
SEARCH_LOOPS = 1000
SEARCH_PATIENCE = 200


def _mining_args(p) -> None:
    p.add_argument("model", help=MODEL_HELP)
    add_scan_options(p)
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--no-progress", action="store_true")
    add_device(p)


def add_scan_options(p) -> None:
    """The PV-mining options that decide a verdict (scan, search and zoo share them)."""
    p.add_argument(
        "--corpus",
        default="austen",
        help="clean sentences: austen, wordnet, fortunes or a "
        "txt/csv/jsonl file (its 'defence' split, disjoint from what attacks train on)",
    )
    p.add_argument(
        "--sentences",
        type=int,
        default=option_default(ScanConfig, "sentences"),
        help="clean sentences per epoch (default %(default)s; the paper uses 2000)",
    )
    p.add_argument("--target", default=option_default(ScanConfig, "target"), choices=_targets())
    p.add_argument("--batch-size", type=int, default=option_default(ScanConfig, "batch_size"))
    p.add_argument(
        "--max-length",
        type=int,
        default=option_default(ScanConfig, "max_length"),
        help="tokens per input (default %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=option_default(ScanConfig, "epochs"),
        help="epochs per fuzz loop (default: 3 in scan at lr 3e-3, 6 in search at lr 1e-3; the abort "
        "check is half way; the paper: 4 epochs of 2000 sentences, check after epoch 2)",
    )
    p.add_argument(
        "--t-l", type=float, help="distance threshold T_L (default 1.0 clean-std units; paper 0.1/0.2 raw)"
    )
    p.add_argument("--t-div", type=float, help="diversity threshold T_div (default -(ln batch - 0.0197))")
    p.add_argument(
        "--lr",
        type=float,
        help="soft-prompt learning rate after the adaptive boost "
        "(default, clean-std units: 3e-3 scan, 1e-3 search)",
    )
    p.add_argument("--no-path-loss", action="store_true", help="ablation: no path loss")
    p.add_argument("--no-adaptive-lr", action="store_true", help="ablation: no adaptive learning rate")
    p.add_argument(
        "--no-early-accept",
        action="store_true",
        help="train every fuzz loop for all epochs like the paper (default: stop at the first epoch "
        "that passes T_L and T_div; later epochs overshoot the PV)",
    )
    p.add_argument(
        "--raw-features",
        action="store_true",
        help="measure losses on raw outputs like the paper (default: clean-std units)",
    )
    p.add_argument(
        "--t-clean-div",
        type=float,
        help="clean-evidence threshold: reject a candidate PV whose nearest clean outputs already collapse "
        "below this diversity (a class direction, not a backdoor; default -(ln batch - 0.25); off when "
        "--t-div is set by hand unless this is given too)",
    )
    p.add_argument(
        "--no-clean-evidence",
        action="store_true",
        help="accept on the collapse test alone (the paper; fine-tuned clean classifiers may then pass)",
    )
    p.add_argument(
        "--t-spread",
        type=float,
        help="relative-spread test: a loop whose batch variance over its squared distance from the clean "
        "outputs ends below this counts as collapsed even when the diversity test fails (a Wasserstein "
        "attacker's PV; default 0.003, 0 turns it off, off when --t-div is set by hand unless given too)",
    )
    p.add_argument(
        "--no-observe",
        action="store_true",
        help="skip the look for a PV the defence corpus already shows (a tight group of clean outputs "
        "that a word shared by its sentences sends other sentences onto: frequent-word triggers)",
    )
    p.add_argument(
        "--settle-epochs",
        type=int,
        default=option_default(ScanConfig, "settle_epochs"),
        help="epochs an accepted loop trains on to settle its PV (0: read it at acceptance; "
        "default %(default)s)",
    )
    p.add_argument(
        "--settle-pull",
        type=float,
        default=option_default(ScanConfig, "settle_pull"),
        help="weight of the pull towards the clean outputs while settling (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=option_default(ScanConfig, "seed"), help="first fuzz seed")


def _targets() -> list:
    return config_choices(ScanConfig, "target", TARGETS)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "scan",
        help="detect a task-agnostic backdoor (exit 0 clean, 1 backdoored, 2 error)",
        description="LMSanitator detection mode: fuzz loops of PV mining and filtering; stops "
        "at the first legit PV. Exit 0 clean, 1 backdoored, 2 error.",
    )
    _mining_args(p)
    p.add_argument(
        "--loops",
        type=int,
        default=option_default(ScanConfig, "loops"),
        help="fuzz loops (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="fuzz loops run at once, each in a one-thread process (default on a CPU: one per core "
        "available; 1 = one process with intra-op threads; CUDA always 1). Same verdict and PV",
    )
    p.add_argument("--sarif", help="write a SARIF 2.1.0 log here")
    add_overwrite(p, "--report/--sarif")
    p.set_defaults(handler=cmd_scan)

    p = sub.add_parser(
        "search",
        help="mine every PV of a model into a PV set (exit 0 none found, 1 PVs found, 2 error)",
        description="LMSanitator search mode: keep mining PVs; stop after --patience loops "
        "without a new one. Each PV is saved as soon as it is found. The PV set is what "
        "`lmsanitator guard --pvs` reads.",
    )
    _mining_args(p)
    p.add_argument("--out", required=True, help="PV set file (.safetensors)")
    p.add_argument("--loops", type=int, default=SEARCH_LOOPS, help="fuzz loops (default %(default)s)")
    p.add_argument(
        "--patience",
        type=int,
        default=SEARCH_PATIENCE,
        help="stop after this many fuzz loops without a new PV (default %(default)s)",
    )
    p.add_argument(
        "--max-pvs", type=int, help="stop once this many PVs are found (e.g. the Figure 9 ablation: 3)"
    )
    p.add_argument("--resume", action="store_true", help="continue the search stored in --out")
    p.add_argument(
        "--no-antipode-probe",
        action="store_true",
        help="do not probe -v after each PV v found (the paper's search; see ScanConfig.antipode_probe)",
    )
    add_overwrite(p, "--out/--report")
    p.set_defaults(handler=cmd_search)


def scan_config(a, mode: str) -> ScanConfig:
    """The ScanConfig the options of :func:`add_scan_options` (and ``--loops``) describe."""
    kw = dict(
        target=a.target,
        sentences=a.sentences,
        batch_size=a.batch_size,
        max_length=a.max_length,
        loops=a.loops,
        epochs=a.epochs,
        t_l=a.t_l,
        t_div=a.t_div,
        lr=a.lr,
        path_loss=not a.no_path_loss,
        adaptive_lr=not a.no_adaptive_lr,
        early_accept=not a.no_early_accept,
        standardize=not a.raw_features,
        seed=a.seed,
        t_clean_div=a.t_clean_div,
        clean_evidence=not a.no_clean_evidence,
        observe=not a.no_observe,
        t_spread=a.t_spread,
        settle_epochs=a.settle_epochs,
        settle_pull=a.settle_pull,
        mode=mode,
        stop_at_first=mode == "detect",
        antipode_probe=not getattr(a, "no_antipode_probe", False),
    )
    if mode == "detect" and getattr(a, "workers", None) is not None:
        kw["workers"] = a.workers
    elif mode == "detect":
        kw["workers"] = _default_workers(a)
    return ScanConfig(**kw)


def _default_workers(a) -> int:
    return available_cores() if str(a.device).startswith("cpu") else 1


def _load(a, cfg):
    set_threads()
    return load_for_scan(a.model, cfg, corpus=a.corpus, device=a.device)


def cmd_scan(a) -> int:
    cfg = scan_config(a, "detect")
    report = check_output_file(a.report, a.overwrite, "--report")
    sarif = check_output_file(a.sarif, a.overwrite, "--sarif")
    set_threads()
    rep = scan_model(a.model, cfg, corpus=a.corpus, device=a.device, progress=not a.no_progress)
    if report is not None:
        write_json_atomic(report, rep)
    if sarif is not None:
        write_json_atomic(sarif, scan_sarif(rep))
    if rep["verdict"] == "backdoored":
        print(f"{a.model}: BACKDOORED - {how_found(rep)}, {rep['seconds']:.0f} s")
        return 1
    print(f"{a.model}: clean - no legit PV in {rep['loops_run']} fuzz loop(s), {rep['seconds']:.0f} s")
    return 0


def _search_outputs(a) -> tuple[Path, Path | None, PVSet | None]:
    """The PV set file, the report file and, with ``--resume``, the PV set to continue."""
    if a.max_pvs is not None and a.max_pvs < 1:
        raise LMSanitatorError("--max-pvs must be >= 1")
    out = Path(a.out)
    previous = None
    if a.resume:
        if not out.is_file():
            raise LMSanitatorError(f"--resume: PV set '{out}' does not exist")
        previous = PVSet.load(out)
        check_output_file(out, True, "--out")  # rewritten in place after every loop
    else:
        check_output_file(out, a.overwrite, "--out", "use --resume to continue it or --overwrite")
    return out, check_output_file(a.report, a.overwrite, "--report"), previous


def cmd_search(a) -> int:
    cfg = scan_config(a, "search")
    out, report, previous = _search_outputs(a)
    encoder, sentences, cfg = _load(a, cfg)
    miner = PVMiner(cfg)
    start, since = cfg.seed, None
    if previous is not None:
        previous.check_model(encoder.hidden_size, encoder.fingerprint(), cfg.target)
        start = miner.warm_start(previous)
        if previous.last_seed is not None:
            # the patience counts loops without a new PV across runs: a resumed search owes only the rest
            since = PVMiner.loops_since_new_pv(previous, cfg.seed)
    patience = a.patience if since is None else a.patience - since

    # saved after every fuzz loop and probe (a few KB), the last one included, so a killed or
    # interrupted search keeps its PVs and --resume continues after the last loop that finished
    def on_loop(m):
        PVSet.from_miner(m, encoder, m.last_seed_).save(out)

    n_before = len(miner.pvs_)
    extra = {"corpus": a.corpus, "pvset": str(out), "resumed_from_seed": start if previous else None}
    if since is not None and patience < 1:
        if cfg.antipode_probe and miner.unprobed():  # a search saved before its probes ran
            miner.probe_antipodes(encoder, sentences, on_loop=on_loop, progress=not a.no_progress)
            if report is not None:
                write_json_atomic(report, {**miner.report_, **extra, "new_pvs": len(miner.pvs_) - n_before})
        print(
            f"{a.model}: {len(miner.pvs_)} PV(s) ({len(miner.pvs_) - n_before} new from antipode probes); "
            f"the search already ran {since} loops without a new PV (>= --patience {a.patience}); "
            "raise --patience to continue"
        )
        return 1 if len(miner.pvs_) else 0
    miner.fit(
        encoder,
        sentences,
        start_seed=start,
        patience=patience,
        on_loop=on_loop,
        progress=not a.no_progress,
        max_pvs=a.max_pvs,
    )
    rep = miner.report_
    rep.update(**extra, new_pvs=len(miner.pvs_) - n_before)
    if report is not None:
        write_json_atomic(report, rep)
    print(
        f"{a.model}: {len(miner.pvs_)} PV(s) ({len(miner.pvs_) - n_before} new) after fuzz seeds "
        f"{start}..{miner.last_seed_} and {miner.probes_run_} antipode probes, "
        f"{rep['seconds']:.0f} s -> {out}"
    )
    return 1 if miner.pvs_ else 0
