"""Training loop: ``Tuner(config).fit(encoder, task) -> TunedModel`` (scikit-learn style)."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time

import numpy as np
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.models import Encoder
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.methods import get_method
from lmsanitator.tuning.model import TaskInfo, TunedModel


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Tuner:
    """Fit a downstream model on a task; the validation split picks the best epoch.

    >>> model = Tuner(TuneConfig("p-tuning-v2", epochs=2)).fit(encoder, load_task("tweets-binary"))
    >>> model.report["metrics"]["test"]["accuracy"]
    """

    def __init__(self, config: TuneConfig):
        if not isinstance(config, TuneConfig):
            raise LMSanitatorError("Tuner needs a TuneConfig")
        self.config = config

    def fit(self, encoder: Encoder, task, *, progress: bool = False, prepare=None) -> TunedModel:
        """``prepare(model, task)``, when given, runs on the freshly built model before training
        (e.g. to initialise the head)."""
        cfg = self.config
        method = get_method(cfg.method)
        method.check(encoder.model_type, task.kind)
        if cfg.max_length is None:  # the task's default; the caller's config is left as it was
            cfg = dataclasses.replace(cfg, max_length=task.max_length)
        t0 = time.time()
        seed_everything(cfg.seed)
        model = TunedModel(encoder, TaskInfo.of(task), cfg)
        if prepare is not None:
            prepare(model, task)
        train_items = model.encode_examples(task.train)
        val_items = model.encode_examples(task.validation)

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise LMSanitatorError(f"method '{cfg.method}' left nothing to train")
        head = [p for n, p in trainable if n.startswith("head.")]
        body = [p for n, p in trainable if not n.startswith("head.")]
        groups = [
            g for g in ({"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}) if g["params"]
        ]
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(train_items) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        warm = int(cfg.warmup * total)

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        gen = torch.Generator().manual_seed(cfg.seed)
        best_score, best_epoch, best_state, stale = -math.inf, 0, None, 0
        history = []
        for epoch in range(1, cfg.epochs + 1):
            te = time.time()
            model.train()
            perm = torch.randperm(len(train_items), generator=gen).tolist()
            losses = []
            for s in range(0, len(perm), cfg.batch_size):
                batch = model.collate([train_items[i] for i in perm[s : s + cfg.batch_size]])
                loss = model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    raise LMSanitatorError(
                        f"training diverged (loss {losses[-1]}) at epoch {epoch}: lower --lr"
                    )
            val = model.evaluate(task.validation)
            score = val["macro_f1"] if task.kind == "token" else val["accuracy"]
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": float(np.mean(losses)),
                    "validation": val,
                    "seconds": round(time.time() - te, 1),
                }
            )
            if progress:
                print(
                    f"  epoch {epoch}/{cfg.epochs}: loss {np.mean(losses):.4f}, validation accuracy "
                    f"{val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f} ({time.time() - te:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            if score > best_score or cfg.keep == "last":
                best_score, best_epoch, best_state, stale = score, epoch, model.trainable_state(), 0
            else:
                stale += 1
                if cfg.patience is not None and stale >= cfg.patience:
                    break
        if best_state is not None:
            model.load_trainable_state(best_state)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        test = model.evaluate(task.test)
        model.report = {
            "splits": task.sizes(),
            "metrics": {"test": test, "validation": history[best_epoch - 1]["validation"]},
            "accuracy": test["accuracy"],
            "macro_f1": test["macro_f1"],
            "best_epoch": best_epoch,
            "history": history,
            "trainable_parameters": sum(p.numel() for _, p in trainable),
            "seconds": round(time.time() - t0, 1),
        }
        return model
