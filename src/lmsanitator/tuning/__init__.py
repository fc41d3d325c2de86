"""Downstream prompt tuning on a frozen encoder (P-tuning, P-tuning v2, prompt tuning, LoRA) and
full fine-tuning for contrast.

    from lmsanitator.models import load_encoder
    from lmsanitator.data.tasks import load_task
    from lmsanitator.tuning import TuneConfig, Tuner, TunedModel

    model = Tuner(TuneConfig("p-tuning-v2", epochs=3)).fit(load_encoder("minilm"), load_task("tweets-binary"))
    model.save(folder)                       # peft adapter + head + tune.json (tuning.artifact)
    model = TunedModel.load(folder)          # checks the base model's fingerprint
    probs = model.predict(["what a day"])    # inputs x labels
    logits, features, rows = model.forward_with_features(["what a day"])
"""

from lmsanitator.tuning.artifact import FORMAT_VERSION, read_tune_json
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.encoding import TaskInfo
from lmsanitator.tuning.methods import METHODS, Method, get_method, register_method
from lmsanitator.tuning.model import ForwardOutput, TunedModel
from lmsanitator.tuning.trainer import Tuner, seed_everything

__all__ = [
    "METHODS",
    "Method",
    "get_method",
    "register_method",
    "TuneConfig",
    "Tuner",
    "TunedModel",
    "TaskInfo",
    "ForwardOutput",
    "read_tune_json",
    "FORMAT_VERSION",
    "seed_everything",
]
