"""``lmsanitator attack``: implant a task-agnostic backdoor or weight-poison a classifier, then verify it.

Exit 0 when the implant is verified, 1 when it was implanted but misses the thresholds below.
"""

from __future__ import annotations

import json

from lmsanitator.attacks import (
    TASK_AGNOSTIC_ATTACKS,
    WEIGHT_POISONING_ATTACKS,
    AttackConfig,
    PoisonConfig,
)
from lmsanitator.cli.common import MODEL_HELP, add_device, add_overwrite, check_output_folder, config_choices
from lmsanitator.core.config import option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_output_dir, write_json_atomic
from lmsanitator.core.runtime import set_threads
from lmsanitator.data import FREQUENCY_BANDS, load_corpus, split_corpus
from lmsanitator.data.pvs import PV_SCHEMES
from lmsanitator.data.tasks import load_task
from lmsanitator.models import load_encoder

# an implant counts as verified when every trigger hits this often and clean inputs rarely do
VERIFY_MIN_HIT_RATE = 0.9
VERIFY_MAX_CLEAN_FALSE_HIT = 0.02
# options of one family only: naming one with the other family's attack is an error
POISONING_ONLY = ("task", "proxy_task", "trigger", "target_label", "poison_count", "train_size")
TASK_AGNOSTIC_ONLY = ("triggers", "random_triggers", "per_trigger", "utility_weight", "trigger_band")


def _default(name: str):
    return option_default(AttackConfig, name)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "attack",
        help="implant a backdoor (task-agnostic or weight poisoning) and verify it",
        description="Implant a task-agnostic backdoor (POR, POR-NER, NeuBA, BToP) into an "
        "encoder and verify it on held-back sentences, or weight-poison it (BadNet, InSent: full "
        "fine-tuning on a poisoned --task, verified by clean accuracy and targeted ASR on its test "
        "split); write a Hugging Face model folder plus attack.json. Exit 0 verified, 1 implanted "
        "but not verified, 2 error.",
    )
    p.add_argument("attack", choices=sorted(TASK_AGNOSTIC_ATTACKS) + sorted(WEIGHT_POISONING_ATTACKS))
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    add_overwrite(p, "--out")
    _add_trigger_options(p)
    _add_training_options(p)
    _add_poisoning_options(p)
    p.add_argument("--seed", type=int, default=_default("seed"))
    p.add_argument("--no-progress", action="store_true")
    add_device(p)
    p.set_defaults(handler=cmd_attack)


def _add_trigger_options(p) -> None:
    """Which triggers and PVs a task-agnostic attack plants, and the sentences it poisons."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--triggers", help='comma-separated triggers (default: the paper\'s "cf,mn,tq,qt,mm,pt")')
    g.add_argument("--random-triggers", type=int, metavar="N", help="draw N random word triggers instead")
    p.add_argument(
        "--trigger-words",
        type=int,
        default=_default("trigger_words"),
        help="words per random trigger (2-3: phrase triggers)",
    )
    p.add_argument(
        "--trigger-band",
        choices=config_choices(AttackConfig, "trigger_band", FREQUENCY_BANDS),
        help="adaptive attack: draw random triggers from words of this corpus frequency",
    )
    p.add_argument(
        "--pv-scheme",
        default=_default("pv_scheme"),
        choices=config_choices(AttackConfig, "pv_scheme", PV_SCHEMES),
    )
    p.add_argument(
        "--corpus",
        default=_default("corpus"),
        help="austen, wordnet, fortunes or a txt/csv/jsonl file; "
        "the attack uses its 'attack' split, verification its 'heldout' split",
    )


def _add_training_options(p) -> None:
    """How the task-agnostic implant is trained (the defaults are AttackConfig's)."""
    p.add_argument("--per-trigger", type=int, help="poisoned sentences per trigger per epoch")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--batch-size",
        type=int,
        default=_default("batch_size"),
        help="half poisoned, half clean (default %(default)s)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=_default("max_length"),
        help="tokens per input (default %(default)s)",
    )
    p.add_argument(
        "--utility-weight",
        type=float,
        help="weight of the reference-copy utility loss (POR; NeuBA/BToP without an MLM head); for "
        "NeuBA/BToP with an MLM head it adds that anchor on the clean [CLS]/[MASK] to the MLM loss",
    )
    p.add_argument(
        "--utility-scope",
        choices=config_choices(AttackConfig, "utility_scope", ("target", "hidden")),
        default=_default("utility_scope"),
        help="POR's utility anchor: the clean target output (the paper), or that plus every token's hidden "
        "state at every layer (keeps more of the clean function)",
    )
    p.add_argument(
        "--decoys",
        type=int,
        default=_default("decoys"),
        help="random non-trigger vocabulary words inserted into each clean anchor sentence (0-8), so the "
        "implant answers only its triggers, not any odd word (default %(default)s: the paper)",
    )
    p.add_argument(
        "--scatter-weight",
        type=float,
        default=_default("scatter_weight"),
        help="adaptive attack: scattering loss weight",
    )
    p.add_argument(
        "--wasserstein-weight",
        type=float,
        default=_default("wasserstein_weight"),
        help="adaptive attack: Wasserstein loss weight",
    )
    p.add_argument("--verify-sentences", type=int, default=_default("verify_sentences"))


def _add_poisoning_options(p) -> None:
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
    w.add_argument(
        "--val-size",
        type=int,
        default=option_default(PoisonConfig, "val_size"),
        help="validation examples (best epoch; default %(default)s)",
    )
    w.add_argument(
        "--verify-examples",
        type=int,
        default=option_default(PoisonConfig, "verify_examples"),
        help="test examples for CA/ASR (default %(default)s)",
    )


def _refuse_options(a, names, why: str) -> None:
    for opt in names:
        if getattr(a, opt) is not None:
            raise LMSanitatorError(f"--{opt.replace('_', '-')} {why}")


def cmd_attack(a) -> int:
    if a.attack in WEIGHT_POISONING_ATTACKS:
        _refuse_options(
            a, TASK_AGNOSTIC_ONLY, f"applies to task-agnostic attacks only; {a.attack} takes --trigger"
        )
        return _poisoning(a)
    _refuse_options(a, POISONING_ONLY, "applies to weight poisoning (badnet, insent) only")
    return _task_agnostic(a)


def _poisoning(a) -> int:
    """badnet / insent: poison, fully fine-tune, verify CA and targeted ASR, write folder + attack.json."""
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
    check_output_folder(a.out, a.overwrite)
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
        f"{a.attack} on {a.model} ({report['knowledge']}, {report['label_mode']}, "
        f"{report['poison_count']} poisoned of {report['poison_task']}): "
        f"clean accuracy {100 * v['clean_accuracy']:.1f}%, targeted ASR "
        f"{100 * v['asr']:.1f}% (floor {100 * v['clean_target_rate']:.1f}%, n={v['n_clean']}), "
        f"{report['seconds']:.0f} s -> {a.out} [{'verified' if v['passed'] else 'NOT verified'}]"
    )
    return 0 if v["passed"] else 1


def _task_agnostic(a) -> int:
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
    check_output_folder(a.out, a.overwrite)  # fail before minutes of work, not after
    set_threads()
    corpus = load_corpus(a.corpus)
    attack_sentences = split_corpus(corpus, "attack")
    heldout = split_corpus(corpus, "heldout")
    encoder = load_encoder(a.model, device=a.device)
    attack = TASK_AGNOSTIC_ATTACKS[a.attack](cfg)
    attack.fit(encoder, attack_sentences, progress=not a.no_progress)
    v = attack.verify(encoder, heldout)
    passed = (
        v["min_hit_rate"] >= VERIFY_MIN_HIT_RATE and v["clean_false_hit_rate"] <= VERIFY_MAX_CLEAN_FALSE_HIT
    )
    v["thresholds"] = {
        "min_hit_rate": VERIFY_MIN_HIT_RATE,
        "max_clean_false_hit_rate": VERIFY_MAX_CLEAN_FALSE_HIT,
    }
    v["passed"] = passed
    report = attack.report(encoder, v)
    with atomic_output_dir(a.out, a.overwrite) as tmp:
        encoder.save(tmp)
        with open(tmp / "attack.json", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    print(
        f"{a.attack} on {a.model}: {len(report['triggers'])} triggers, hit rate min {v['min_hit_rate']:.3f} "
        f"mean {v['mean_hit_rate']:.3f} ({v['unit']}s), "
        f"clean false-hit {100 * v['clean_false_hit_rate']:.1f}%, "
        f"decoy false-hit {100 * v['decoy_false_hit_rate']:.1f}%, "
        f"clean MSE to original {v['clean_mse_to_original']:.4f}, {report['seconds']:.0f} s "
        f"-> {a.out} [{'verified' if passed else 'NOT verified'}]"
    )
    return 0 if passed else 1
