"""``lmsanitator scan`` (detection mode) and ``lmsanitator search`` (search mode)."""

from __future__ import annotations

from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError


def _mining_args(p) -> None:
    p.add_argument("model", help="bundled name (minilm, minilm-sre, splade-tiny), hub id or model folder")
    p.add_argument(
        "--corpus",
        default="austen",
        help="clean sentences: austen, wordnet, fortunes or a "
        "txt/csv/jsonl file (its 'defence' split, disjoint from what attacks train on)",
    )
    p.add_argument(
        "--sentences",
        type=int,
        default=None,
        help="clean sentences per epoch (default 320; the paper uses 2000)",
    )
    p.add_argument("--target", default="cls", choices=["cls", "mask", "tokens"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
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
    p.add_argument("--seed", type=int, default=0, help="first fuzz seed")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu")


def _config(a, mode: str):
    from lmsanitator.scan.config import ScanConfig

    kw = dict(
        target=a.target,
        batch_size=a.batch_size,
        max_length=a.max_length,
        loops=a.loops,
        t_l=a.t_l,
        t_div=a.t_div,
        lr=a.lr,
        path_loss=not a.no_path_loss,
        adaptive_lr=not a.no_adaptive_lr,
        early_accept=not a.no_early_accept,
        standardize=not a.raw_features,
        seed=a.seed,
        mode=mode,
        stop_at_first=mode == "detect",
        antipode_probe=not getattr(a, "no_antipode_probe", False),
    )
    if a.sentences is not None:
        kw["sentences"] = a.sentences
    if a.epochs is not None:
        kw["epochs"] = a.epochs
    if mode == "detect":
        kw["workers"] = _default_workers(a) if a.workers is None else a.workers
    return ScanConfig(**kw)


def _default_workers(a) -> int:
    from lmsanitator.core.runtime import available_cores

    return available_cores() if str(a.device).startswith("cpu") else 1


def _load(a, cfg):
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.data import load_corpus, sample, split_corpus
    from lmsanitator.models import load_encoder

    set_threads()
    corpus = split_corpus(load_corpus(a.corpus), "defence")
    if len(corpus) < cfg.batch_size:
        raise LMSanitatorError(
            f"corpus '{a.corpus}' has {len(corpus)} defence sentences, fewer than one batch"
        )
    sentences = sample(corpus, cfg.sentences, 0)
    encoder = load_encoder(a.model, device=a.device, max_length=cfg.max_length)
    encoder.require_target(cfg.target)
    return encoder, sentences


def _write_json(path, obj) -> None:
    from lmsanitator.core.io import write_json_atomic

    write_json_atomic(path, obj)


def _check_writable(*paths) -> None:
    for p in paths:
        if p and not Path(p).resolve().parent.is_dir():
            raise LMSanitatorError(f"cannot write '{p}': its folder does not exist")


def cmd_scan(a) -> int:
    from lmsanitator.scan.miner import PVMiner
    from lmsanitator.scan.sarif import scan_sarif

    _check_writable(a.report, a.sarif)
    cfg = _config(a, "detect")
    encoder, sentences = _load(a, cfg)
    miner = PVMiner(cfg).fit(encoder, sentences, progress=not a.no_progress)
    rep = miner.report_
    rep["corpus"] = a.corpus
    if a.report:
        _write_json(a.report, rep)
    if a.sarif:
        _write_json(a.sarif, scan_sarif(rep))
    if rep["verdict"] == "backdoored":
        seed = [c["seed"] for c in rep["candidates"] if c["accepted"]][0]
        print(
            f"{a.model}: BACKDOORED - legit PV inverted at fuzz seed {seed} after {rep['loops_run']} "
            f"loop(s), {rep['seconds']:.0f} s"
        )
        return 1
    print(f"{a.model}: clean - no legit PV in {rep['loops_run']} fuzz loop(s), {rep['seconds']:.0f} s")
    return 0


def cmd_search(a) -> int:
    from lmsanitator.data.pvset import PVSet
    from lmsanitator.scan.miner import PVMiner

    _check_writable(a.out, a.report)
    if a.max_pvs is not None and a.max_pvs < 1:
        raise LMSanitatorError("--max-pvs must be >= 1")
    out = Path(a.out)
    cfg = _config(a, "search")
    previous = None
    if a.resume:
        if not out.exists():
            raise LMSanitatorError(f"--resume: PV set '{out}' does not exist")
        previous = PVSet.load(out)
    elif out.exists():
        if not a.overwrite:
            raise LMSanitatorError(f"--out '{out}' exists (use --resume to continue it or --overwrite)")
    encoder, sentences = _load(a, cfg)
    miner = PVMiner(cfg)
    start = cfg.seed
    if previous is not None:
        previous.check_model(encoder.hidden_size, encoder.fingerprint(), cfg.target)
        start = miner.warm_start(previous)
    patience = a.patience

    # saved after every fuzz loop and probe (a few KB), the last one included, so a killed or
    # interrupted search keeps its PVs and --resume continues after the last loop that finished
    def on_loop(m):
        PVSet.from_miner(m, encoder, m.last_seed_).save(out)

    if previous is not None and previous.last_seed is not None:
        # the patience counts loops without a new PV across runs: a resumed search owes only the rest
        since = PVMiner.loops_since_new_pv(previous, cfg.seed)
        patience = a.patience - since
        if patience < 1:
            n_before = len(miner.pvs_)
            if cfg.antipode_probe and miner.unprobed():  # a search saved before its probes ran
                miner.probe_antipodes(encoder, sentences, on_loop=on_loop, progress=not a.no_progress)
                if a.report:
                    _write_json(
                        a.report,
                        {
                            **miner.report_,
                            "corpus": a.corpus,
                            "pvset": str(out),
                            "resumed_from_seed": start,
                            "new_pvs": len(miner.pvs_) - n_before,
                        },
                    )
            print(
                f"{a.model}: {len(miner.pvs_)} PV(s) ({len(miner.pvs_) - n_before} new from antipode probes); "
                f"the search already ran {since} loops without a new PV (>= --patience {a.patience}); "
                "raise --patience to continue"
            )
            return 1 if len(miner.pvs_) else 0

    n_before = len(miner.pvs_)
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
    rep.update(
        corpus=a.corpus,
        pvset=str(out),
        resumed_from_seed=start if previous else None,
        new_pvs=len(miner.pvs_) - n_before,
    )
    if a.report:
        _write_json(a.report, rep)
    print(
        f"{a.model}: {len(miner.pvs_)} PV(s) ({len(miner.pvs_) - n_before} new) after fuzz seeds "
        f"{start}..{miner.last_seed_} and {miner.probes_run_} antipode probes, {rep['seconds']:.0f} s -> {out}"
    )
    return 1 if miner.pvs_ else 0


def register(sub) -> dict:
    p = sub.add_parser(
        "scan",
        help="detect a task-agnostic backdoor (exit 0 clean, 1 backdoored, 2 error)",
        description="LMSanitator detection mode: fuzz loops of PV mining and filtering; stops "
        "at the first legit PV. Exit 0 clean, 1 backdoored, 2 error.",
    )
    _mining_args(p)
    p.add_argument("--loops", type=int, default=30, help="fuzz loops (default 30)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="fuzz loops run at once, each in a one-thread process (default on a CPU: one per core "
        "available; 1 = one process with intra-op threads; CUDA always 1). Same verdict and PV",
    )
    p.add_argument("--sarif", help="write a SARIF 2.1.0 log here")
    p = sub.add_parser(
        "search",
        help="mine every PV of a model into a PV set",
        description="LMSanitator search mode: keep mining PVs; stop after --patience loops "
        "without a new one. Each PV is saved as soon as it is found.",
    )
    _mining_args(p)
    p.add_argument("--out", required=True, help="PV set file (.safetensors)")
    p.add_argument("--loops", type=int, default=1000)
    p.add_argument("--patience", type=int, default=200)
    p.add_argument(
        "--max-pvs", type=int, help="stop once this many PVs are found (e.g. the Figure 9 ablation: 3)"
    )
    p.add_argument("--resume", action="store_true", help="continue the search stored in --out")
    p.add_argument(
        "--no-antipode-probe",
        action="store_true",
        help="do not probe -v after each PV v found (the paper's search; see ScanConfig.antipode_probe)",
    )
    p.add_argument("--overwrite", action="store_true")
    return {"scan": cmd_scan, "search": cmd_search}
