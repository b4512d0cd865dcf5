"""The held-out accuracy of Efficient-CapsNet's CPU recipe over several training seeds.

Reporting only: the recipe (RECIPES["efficient-capsnet-cpu"]) was fixed on the validation
split by benchmarks/efficient_capsnet_search.py before this script ran, and nothing here feeds
back into it. One seed's model is one draw: on the 1,000 held-out digits two seeds of the same
recipe can differ by several digits, so chapter 07 reports its own model (seed 0) beside the
mean and range over the seeds recorded here, in
capsule_lib/results/efficient_capsnet_seeds.json (shipped with the package).

    python benchmarks/efficient_capsnet_seeds.py --seeds 0 1 2 3 4 5
    python benchmarks/efficient_capsnet_seeds.py --refit --seeds 0 1 2 3 4 5
    python benchmarks/efficient_capsnet_seeds.py --refit --candidate longer-shifts

Each run appends one record (recipe, seed, CPU, threads, seconds, last validation accuracy,
held-out accuracy and errors, and every digit's class scores on both splits, the capsule
lengths in ten-thousandths, from which chapter 07 builds ensembles of the recorded models).

--refit trains the same recipe, epochs included, on the train and validation splits together
(all 4,000 training digits of the bundled sample), the usual last step once a validation split
has made its choices; with no digits left to validate on, its records hold the held-out split
only, in efficient_capsnet_refit_seeds.json. --candidate refits another of
efficient_capsnet_cv.py's candidates instead of the CPU recipe: the one that cross-validation
chose, so that the held-out split is looked at once, for the winner only.
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from capsule_lib.registry import build_model
from capsule_lib.training import evaluate, fit, recipe_split, train
from common import append_record
from efficient_capsnet_cv import CANDIDATES, train_and_validation
from shared_capsnet_search import cpu_name

RESULTS_DIR = Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
RESULTS = RESULTS_DIR / "efficient_capsnet_seeds.json"
REFIT_RESULTS = RESULTS_DIR / "efficient_capsnet_refit_seeds.json"


def scores_text(scores: torch.Tensor) -> list[str]:
    """Class scores [N, 10] (capsule lengths, in [0, 1]) as one string per digit: the ten
    scores in ten-thousandths, space-separated ("31 9914 2 ..."). Thousandths are not enough:
    they tie a digit's two longest capsules often enough to change a model's errors."""
    return [" ".join(str(round(10000 * value)) for value in row) for row in scores.tolist()]


def train_record(recipe, test_set: TensorDataset) -> dict:
    """Train the recipe on the train split; its accuracy and scores on both splits."""
    model, history = train(recipe, progress=False, device="cpu")
    validation = evaluate(model, recipe_split(recipe, "validation"))
    return {"validation_accuracy": history.validation_accuracy[-1],
            "validation_scores": scores_text(validation.scores),
            **test_record(model, test_set)}


def refit_model(recipe):
    """The recipe's model trained on the train and validation splits together."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, **recipe.model_config)
    fit(model, train_and_validation(recipe), recipe, device="cpu", progress=False)
    return model


def refit_record(recipe, test_set: TensorDataset) -> dict:
    """Train the recipe on the train and validation splits together; its held-out record."""
    return {"trained_on": "train+validation", **test_record(refit_model(recipe), test_set)}


def test_record(model, test_set: TensorDataset) -> dict:
    result = evaluate(model, test_set)
    return {"test_accuracy": result.accuracy, "test_errors": result.errors,
            "test_scores": scores_text(result.scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refit", action="store_true",
                        help="train on the train and validation splits together")
    parser.add_argument("--candidate", choices=sorted(CANDIDATES), default="cpu",
                        help="with --refit: which of efficient_capsnet_cv.py's candidates")
    args = parser.parse_args()
    if args.candidate != "cpu" and not args.refit:
        parser.error("--candidate needs --refit: only the CPU recipe is scored after "
                     "training on the train split alone")
    torch.set_num_threads(args.threads)
    base = CANDIDATES[args.candidate]
    test_set = recipe_split(base, "test")
    make_record, path = (refit_record, REFIT_RESULTS) if args.refit else (train_record, RESULTS)
    for seed in args.seeds:
        recipe = dataclasses.replace(base, seed=seed)
        start = time.perf_counter()
        record = {"recipe": recipe.to_dict(), "seed": seed, "cpu": cpu_name(),
                  "threads": args.threads,
                  **make_record(recipe, test_set)}
        record["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({k: v for k, v in record.items() if not k.endswith("_scores")}),
              flush=True)
        append_record(path, record)


if __name__ == "__main__":
    main()
