"""Saving, loading and caching trained models, each file with the recipe that made it.

A checkpoint holds only plain types and tensors (it loads with torch.load(weights_only=True)):
the model's name and config, its state_dict, the capsule_lib version, the recipe (a Recipe or
a PairRecipe) and its training history. `cached_model` is the one model cache of the library:
`training.pretrained` and `multidigit.pretrained_pair_model` both go through it.
"""
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .checks import check_device, check_writable
from .recipes import History, PairHistory, PairRecipe, Recipe
from .registry import MODEL_CLASSES, build_model

FORMAT = "capsule_lib checkpoint"
RETRAIN_HINT = ("Delete the file and retrain (pretrained(recipe) does it for cache files, or "
                "`python -m capsule_lib.train --model NAME --save PATH`).")
# What each kind of recipe is recorded with: recipe class name -> (recipe class, history class)
RECIPE_KINDS = {"Recipe": (Recipe, History), "PairRecipe": (PairRecipe, PairHistory)}
_KEYS = ("format", "library_version", "model_name", "model_config", "state_dict", "recipe",
         "history")


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not fit this library or model."""


@dataclass
class CheckpointInfo:
    model_name: str
    model_config: dict
    library_version: str
    recipe: Recipe | PairRecipe
    history: History | PairHistory | None


def _check_recipe(recipe, history) -> None:
    kind = type(recipe).__name__
    if kind not in RECIPE_KINDS or type(recipe) is not RECIPE_KINDS[kind][0]:
        raise TypeError(f"expected a Recipe or PairRecipe, got {kind}; pick one with "
                        f"RECIPES[name] or build Recipe(...)")
    history_class = RECIPE_KINDS[kind][1]
    if history is not None and not isinstance(history, history_class):
        raise TypeError(f"a {kind} is saved with a {history_class.__name__} (or None), got "
                        f"{type(history).__name__}")


def _check_model_fits_recipe(model: nn.Module, recipe: Recipe | PairRecipe) -> None:
    """Raise ValueError unless `model` is what recipe.model and recipe.model_config build."""
    expected_class = MODEL_CLASSES.get(recipe.model)
    if expected_class is None or type(model) is not expected_class:
        raise ValueError(f"the recipe is for a {recipe.model!r} model "
                         f"({getattr(expected_class, '__name__', 'unknown')}), but the model "
                         f"given is a {type(model).__name__}: save a model with the recipe "
                         f"that trained it")
    with torch.device("meta"):                         # shapes only: no memory, no random init
        reference = build_model(recipe.model, **recipe.model_config)
    problems = _state_dict_problems(model.state_dict(), reference.state_dict())
    if problems:
        raise ValueError(f"the model does not match its recipe's model_config "
                         f"{recipe.model_config}: {problems}")


def save_checkpoint(path: str | Path, model: nn.Module, recipe: Recipe | PairRecipe,
                    history: History | PairHistory | None = None) -> Path:
    """Write `model` (built by `recipe.model` with `recipe.model_config`) to `path`.

    Checks first that the model is the one the recipe builds, so that a wrong pairing fails
    here and not when the file is loaded. The file is written next to `path` and then renamed,
    so an interrupted save never leaves a half-written checkpoint behind.
    """
    _check_recipe(recipe, history)
    _check_model_fits_recipe(model, recipe)
    path = Path(path)
    payload = {
        "format": FORMAT,
        "library_version": __version__,
        "model_name": recipe.model,
        "model_config": dict(recipe.model_config),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "recipe_kind": type(recipe).__name__,
        "recipe": recipe.to_dict(),
        "history": history.to_dict() if history is not None else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expected_model: str | None = None) -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model saved at `path`; raise CheckpointError saying what is wrong and how
    to fix it. expected_model: also raise if the file holds another model than this one.
    map_location: the device the model is loaded to (ValueError if it is not available;
    the file itself is fine then)."""
    device = check_device(map_location, "map_location")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}. Train and save one with "
                              "`python -m capsule_lib.train --model NAME --save PATH`, or use "
                              "pretrained(recipe), which trains and caches it.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to read means the file is not a usable checkpoint
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({reason}). "
                              f"{RETRAIN_HINT}") from error
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise CheckpointError(f"{path} is a torch file but not a capsule_lib checkpoint (expected "
                              f"a dict with format={FORMAT!r}, as save_checkpoint writes). "
                              f"{RETRAIN_HINT}")
    missing = [key for key in _KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks the checkpoint fields {missing}: it was not written "
                              f"by save_checkpoint or was edited. {RETRAIN_HINT}")
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
    problems = _state_dict_problems(payload["state_dict"], model.state_dict())
    if problems:
        raise CheckpointError(f"The weights in {path} do not fit the {name!r} model built from "
                              f"its config: {problems}. {RETRAIN_HINT}")
    model.load_state_dict(payload["state_dict"])
    recipe, history = _recipe_and_history(path, payload)
    info = CheckpointInfo(model_name=name, model_config=config, library_version=__version__,
                          recipe=recipe, history=history)
    return model.to(device), info


def _recipe_and_history(path: Path, payload: dict):
    kind = payload.get("recipe_kind", "Recipe")
    if kind not in RECIPE_KINDS:
        raise CheckpointError(f"{path} records a recipe of unknown kind {kind!r}. {RETRAIN_HINT}")
    recipe_class, history_class = RECIPE_KINDS[kind]
    try:
        recipe = recipe_class.from_dict(payload["recipe"])
        history = (history_class.from_dict(payload["history"])
                   if payload["history"] is not None else None)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds a recipe or history this library cannot read "
                              f"({error}). {RETRAIN_HINT}") from error
    return recipe, history


def _state_dict_problems(saved: dict, expected: dict) -> str:
    """'' when saved has exactly expected's keys and shapes, else what differs (up to 5 each)."""
    missing = sorted(expected.keys() - saved.keys())
    unexpected = sorted(saved.keys() - expected.keys())
    if missing or unexpected:
        return f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
    mismatched = [f"{key}: file {tuple(saved[key].shape)} vs model {tuple(value.shape)}"
                  for key, value in expected.items() if saved[key].shape != value.shape]
    return "; ".join(mismatched[:5])


# ---- the model cache -------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """Where trained models are cached: $CAPSULE_LIB_CACHE, else ~/.cache/capsule_lib."""
    return Path(os.environ.get("CAPSULE_LIB_CACHE", Path.home() / ".cache" / "capsule_lib"))


def cache_path(recipe: Recipe | PairRecipe, directory: str | Path | None = None) -> Path:
    """The cache file of a recipe, keyed by a hash of the recipe and the library version."""
    _check_recipe(recipe, None)
    key = json.dumps({recipe.CACHE_KEY: recipe.to_dict(), "version": __version__},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = Path(directory) if directory is not None else default_cache_dir()
    return directory / f"{recipe.model}{recipe.CACHE_SUFFIX}-{digest}.pt"


def cached_model(recipe: Recipe | PairRecipe, make: Callable[[], tuple[nn.Module, object]],
                 cache_dir: str | Path | None = None,
                 device: torch.device | str = "cpu") -> tuple[nn.Module, object]:
    """(model in eval mode on `device`, history): loaded from the recipe's cache file, or made
    by make() -> (model, history), saved there, and returned.

    A cache file that cannot be used (unreadable, another recipe, another library version) is
    made again and overwritten, with a warning.
    """
    path = cache_path(recipe, cache_dir)
    device = check_device(device)
    if path.exists():
        try:
            model, info = load_checkpoint(path, map_location=device,
                                          expected_model=recipe.model)
            if info.recipe != recipe:
                raise CheckpointError(f"{path} holds a different recipe than the one asked for")
            return model.eval(), info.history
        except CheckpointError as error:
            warnings.warn(f"Cached model unusable, retraining: {error}", stacklevel=3)
    check_writable(path, "the model cache file")     # before training, not after
    model, history = make()
    save_checkpoint(path, model, recipe, history)
    return model.to(device).eval(), history
