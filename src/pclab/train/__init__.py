"""Configured training runs: configs and presets, building, the loop, run directories."""

from .build import build_inference, build_model, build_rule, make_batch, prepare_images, task, task_loss
from .config import ConfigError, RunConfig, apply_overrides, to_dict, validate
from .loop import DivergenceError, Run, evaluate, load_data, load_run, prepare, read_metrics, train
from .networks import hybrid_precisions
from .presets import PRESETS, preset

__all__ = [
    "ConfigError", "DivergenceError", "PRESETS", "Run", "RunConfig", "apply_overrides", "build_inference",
    "build_model", "build_rule", "evaluate", "hybrid_precisions", "load_data", "load_run", "make_batch", "prepare",
    "prepare_images", "preset", "read_metrics", "task", "task_loss", "to_dict", "train", "validate",
]
