"""Save a trained model with its recipe, and load it back, rebuilt through the registry.

A checkpoint holds only plain types and tensors (it loads with torch.load(weights_only=True)):
the model's name and config, its state_dict, the capsule_lib version, the recipe and the
training history.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .registry import build_model
from .training import History, Recipe

FORMAT = "capsule_lib checkpoint"
RETRAIN_HINT = ("Delete the file and retrain (pretrained(recipe) does it for cache files, or "
                "`python -m capsule_lib.train --model NAME --save PATH`).")


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit this library or model."""


@dataclass
class CheckpointInfo:
    model_name: str
    model_config: dict
    library_version: str
    recipe: Recipe
    history: History | None


def save_checkpoint(path: str | Path, model: nn.Module, recipe: Recipe,
                    history: History | None = None) -> Path:
    """Write `model` (built by `recipe.model` with `recipe.model_config`) to `path`.

    The file is written next to `path` and then renamed, so an interrupted save never leaves a
    half-written checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "library_version": __version__,
        "model_name": recipe.model,
        "model_config": dict(recipe.model_config),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "recipe": recipe.to_dict(),
        "history": history.to_dict() if history is not None else None,
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expected_model: str | None = None) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model saved at `path`; raise CheckpointError saying what is wrong and how
    to fix it. expected_model: also raise if the file holds another model than this one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}. Train and save one with "
                              "`python -m capsule_lib.train --model NAME --save PATH`, or use "
                              "pretrained(recipe), which trains and caches it.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # any failure to read means the file is not a usable checkpoint
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({reason}). "
                              f"{RETRAIN_HINT}") from error
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise CheckpointError(f"{path} is a torch file but not a capsule_lib checkpoint (expected "
                              f"a dict with format={FORMAT!r}, as save_checkpoint writes). "
                              f"{RETRAIN_HINT}")
    if payload["library_version"] != __version__:
        raise CheckpointError(f"{path} was saved by capsule_lib {payload['library_version']}, "
                              f"this is {__version__}; its weights may not fit this version's "
                              f"models. {RETRAIN_HINT}")
    name, config = payload["model_name"], payload["model_config"]
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path} holds a {name!r} model, expected {expected_model!r}. "
                              f"Load the file of the model you want. {RETRAIN_HINT}")
    try:
        model = build_model(name, **config)
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} names model {name!r} with config {config}, which this "
                              f"library cannot build ({error}). {RETRAIN_HINT}") from error
    _check_state_dict(path, name, payload["state_dict"], model.state_dict())
    model.load_state_dict(payload["state_dict"])
    model.to(map_location)
    history = payload["history"]
    info = CheckpointInfo(model_name=name, model_config=config, library_version=__version__,
                          recipe=Recipe.from_dict(payload["recipe"]),
                          history=History.from_dict(history) if history is not None else None)
    return model, info


def _check_state_dict(path: Path, name: str, saved: dict, expected: dict) -> None:
    """Raise CheckpointError listing the keys and shapes that do not fit the rebuilt model."""
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"The weights in {path} do not belong to the {name!r} model they "
                              f"claim: missing keys {missing[:5]}, unexpected keys "
                              f"{unexpected[:5]}. {RETRAIN_HINT}")
    mismatched = [f"{key}: file {tuple(saved[key].shape)} vs model {tuple(value.shape)}"
                  for key, value in expected.items() if saved[key].shape != value.shape]
    if mismatched:
        raise CheckpointError(f"The weights in {path} have shapes that do not fit the {name!r} "
                              f"model built from its config: {'; '.join(mismatched[:5])}. "
                              f"{RETRAIN_HINT}")
