"""Training loop: ``Tuner(config).fit(encoder, task) -> TunedModel`` (scikit-learn style)."""

from __future__ import annotations

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
        """The fitted :class:`TunedModel` (with its ``report``); the Tuner keeps no state.

        ``prepare(model, task)``, when given, runs on the freshly built model before training
        (e.g. to initialise the head)."""
        cfg = self.config.for_task(task.max_length)  # the caller's config is left as it was
        get_method(cfg.method).check(encoder.model_type, task.kind)
        t0 = time.time()
        seed_everything(cfg.seed)
        # what the user chose, asked before for_task filled in the task's max_length
        model = TunedModel(encoder, TaskInfo.of(task), cfg, changed=self.config.changed())
        if prepare is not None:
            prepare(model, task)
        train_items = model.encode_examples(task.train)
        model.encode_examples(task.validation)  # a bad validation input fails now, not after an epoch

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise LMSanitatorError(f"method '{cfg.method}' left nothing to train")
        opt, sched = _optimizer(trainable, cfg, math.ceil(len(train_items) / cfg.batch_size) * cfg.epochs)
        gen = torch.Generator().manual_seed(cfg.seed)
        best_score, best_epoch, best_state, stale = -math.inf, 0, None, 0
        history = []
        for epoch in range(1, cfg.epochs + 1):
            te = time.time()
            perm = torch.randperm(len(train_items), generator=gen).tolist()
            losses = _train_epoch(model, [train_items[i] for i in perm], trainable, opt, sched, cfg, epoch)
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
        model.report = _report(model, task, history, best_epoch, trainable, t0)
        return model


def _report(model: TunedModel, task, history: list[dict], best_epoch: int, trainable, t0: float) -> dict:
    """The fitted model's report: test metrics, the kept epoch's validation, the history."""
    test = model.evaluate(task.test)
    return {
        "splits": task.sizes(),
        "metrics": {"test": test, "validation": history[best_epoch - 1]["validation"]},
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "best_epoch": best_epoch,
        "history": history,
        "trainable_parameters": sum(p.numel() for _, p in trainable),
        "seconds": round(time.time() - t0, 1),
    }


def _optimizer(trainable, cfg: TuneConfig, total: int):
    """AdamW (the head at ``head_lr``, the rest at ``lr``) with linear warm-up, then linear decay to 0."""
    head = [p for n, p in trainable if n.startswith("head.")]
    body = [p for n, p in trainable if not n.startswith("head.")]
    groups = [g for g in ({"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}) if g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warm = int(cfg.warmup * total)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(1, total - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _train_epoch(model: TunedModel, items: list[dict], trainable, opt, sched, cfg: TuneConfig, epoch: int):
    """One pass over ``items`` (already shuffled); the loss of each batch."""
    model.train()
    losses = []
    for s in range(0, len(items), cfg.batch_size):
        loss = model.loss(model.collate(items[s : s + cfg.batch_size]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise LMSanitatorError(f"training diverged (loss {losses[-1]}) at epoch {epoch}: lower --lr")
    return losses
