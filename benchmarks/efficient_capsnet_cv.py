"""Five-fold cross-validation of Efficient-CapsNet recipes over all 4,000 training digits.

Chapter 07's validation split (500 digits) cannot tell its candidate recipes apart: single
models of one recipe differ by 1 to 6 of those digits from seed to seed. This script scores each
candidate on all 4,000 digits of the train and validation splits instead, each digit once, by a
model that did not train on it: the digits are shuffled once (generator seed 0) and cut into
five folds of 800; fold k's model (seed k) trains on the other 3,200 digits for the candidate's
fixed number of epochs. The held-out split is never looked at here. The plan (candidates and
the rule that picks one) was written down before any of these models existed; chapter 07 says
what it was and reads the records from capsule_lib/results/efficient_capsnet_cv.json.

    python benchmarks/efficient_capsnet_cv.py                       # every candidate and fold
    python benchmarks/efficient_capsnet_cv.py --only longer-shifts --folds 0 1 --threads 1

Each run appends one record per fold: the candidate, fold, seed, CPU, threads, seconds, the
fold's accuracy after every epoch, and which of the fold's 800 digits the last epoch got right
("1" or "0" per digit, in the order of the shuffle), from which the chapter pairs candidates.
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from capsule_lib.recipes import RECIPES
from capsule_lib.registry import build_model
from capsule_lib.training import evaluate, fit, recipe_split, training_set
from common import append_record
from shared_capsnet_search import cpu_name

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "efficient_capsnet_cv.json")
FOLDS = 5
SHUFFLE_SEED = 0
CPU_RECIPE = RECIPES["efficient-capsnet-cpu"]
# Thirty epochs decay the rate from 2e-3 to the 5e-5 floor as eleven epochs at x0.7 do:
# 0.88 ** 29 = 0.025 = 5e-5 / 2e-3.
LONGER = {"epochs": 30, "lr_decay": 0.88}
CANDIDATES = {
    "cpu": CPU_RECIPE,
    "longer-authors-augmentation": dataclasses.replace(
        CPU_RECIPE, **LONGER, augmentation="efficient-capsnet", max_shift=0),
    "longer-shifts": dataclasses.replace(CPU_RECIPE, **LONGER),
}


def train_and_validation(recipe) -> TensorDataset:
    """The digits the recipe trains on, then its validation split: all 4,000 training digits
    of the bundled sample."""
    parts = (training_set(recipe), recipe_split(recipe, "validation"))
    return TensorDataset(*(torch.cat([part.tensors[k] for part in parts]) for k in range(2)))


def all_training_digits() -> TensorDataset:
    """The train and validation splits together, in the order of one seeded shuffle."""
    images, labels = train_and_validation(CPU_RECIPE).tensors
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    return TensorDataset(images[order], labels[order])                  # [4000, 1, 28, 28]


def fold_sets(digits: TensorDataset, fold: int) -> tuple[TensorDataset, TensorDataset]:
    """(the 3,200 digits fold `fold`'s model trains on, the 800 it is scored on)."""
    size = len(digits) // FOLDS
    scored = torch.zeros(len(digits), dtype=torch.bool)
    scored[fold * size:(fold + 1) * size] = True
    images, labels = digits.tensors
    return (TensorDataset(images[~scored], labels[~scored]),
            TensorDataset(images[scored], labels[scored]))


def fold_recipe(name: str, fold: int):
    return dataclasses.replace(CANDIDATES[name], seed=fold)


def fold_model(name: str, fold: int, digits: TensorDataset):
    """(fold `fold`'s model of candidate `name`, its History scored on the fold's digits)."""
    recipe = fold_recipe(name, fold)
    train_set, scored_set = fold_sets(digits, fold)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, **recipe.model_config)
    history = fit(model, train_set, recipe, validation_set=scored_set, device="cpu",
                  progress=False)
    return model, history


def right_text(result) -> str:
    """Which digits an EvalResult got right, "1" or "0" per digit."""
    return "".join("1" if value else "0" for value in (result.predictions == result.labels))


def fold_record(name: str, fold: int, digits: TensorDataset) -> dict:
    start = time.perf_counter()
    model, history = fold_model(name, fold, digits)
    result = evaluate(model, fold_sets(digits, fold)[1])
    return {"candidate": name, "recipe": fold_recipe(name, fold).to_dict(), "fold": fold,
            "seed": fold, "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - start, 1),
            "fold_accuracy": history.validation_accuracy,
            "fold_right": right_text(result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES),
                        default=list(CANDIDATES))
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = all_training_digits()
    for name in args.only:
        for fold in args.folds:
            record = fold_record(name, fold, digits)
            print(json.dumps({k: v for k, v in record.items() if k != "fold_right"}),
                  flush=True)
            append_record(RESULTS, record)


if __name__ == "__main__":
    main()
