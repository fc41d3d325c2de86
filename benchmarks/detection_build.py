"""Build the clean, fully fine-tuned encoders of issue 19's false-positive reproduction.

The paper's clean models are pretrained encoders fully fine-tuned (+ a linear head on [CLS]) on a
sentence-classification task. This builds one such copy, the way the detection zoo's ``_finetune``
does (``Tuner(TuneConfig("full"))``, then the fine-tuned backbone is written as a plain encoder
folder that ``lmsanitator scan FOLDER`` reads), with the recipe of the issue's report: 300 steps
(batch 16 x 4800 training sentences, one epoch), lr 3e-5.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/detection_build.py \
        --model minilm --task wordnet-topic --out /tmp/det19/ft-minilm-wordnet-s0 --seed 0

Weights go to ``--out`` (never commit them); a ``built.json`` beside them records the recipe and the
test accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmsanitator.core.runtime import set_threads
from lmsanitator.experiments.base import sized_task
from lmsanitator.models import load_encoder
from lmsanitator.tuning import TuneConfig, Tuner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="wordnet-topic")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_threads(1)
    t0 = time.perf_counter()
    encoder = load_encoder(args.model)
    task = sized_task(args.task, args.steps * args.batch_size, 300, 600)
    cfg = TuneConfig("full", epochs=1, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    model = Tuner(cfg).fit(encoder, task)
    encoder.backbone.load_state_dict(model.backbone.state_dict())
    encoder.weights_changed()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save(out)
    rec = {
        "base": args.model,
        "task": args.task,
        "classes": len(task.labels),
        "train": len(task.train),
        "steps": -(-len(task.train) // args.batch_size),
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "test_accuracy": round(model.report["metrics"]["test"]["accuracy"], 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "command": "benchmarks/detection_build.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    (out / "built.json").write_text(json.dumps(rec, indent=1), encoding="utf-8")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
