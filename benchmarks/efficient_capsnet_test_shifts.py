"""Test-time shifts for the recipe that cross-validation chose: decided out of fold first.

Averaging each digit's class scores over copies of it moved by a pixel or so (test-time
augmentation, training.evaluate_over_shifts) costs nothing to train. Whether it helps is
decided as the recipe was, on all 4,000 training digits and never on the held-out split: the
five fold models of efficient_capsnet_cv.py's winner ("longer-shifts") are trained again, with
the same digits and seeds, and every out-of-fold digit is scored plain and averaged over the 9
copies shifted by up to one pixel (the only variant scored; the plan was written down before
any score existed). The rule: the shifts are kept only if they make strictly fewer out-of-fold
errors. Only then does `--refit` train the winner's six refits again (seeds 0-5, all 4,000
digits) and score the held-out split with the shifts, once.

    python benchmarks/efficient_capsnet_test_shifts.py --folds 0 1 2 3 4
    python benchmarks/efficient_capsnet_test_shifts.py --refit --seeds 0 1 2 3 4 5

Records go to capsule_lib/results/efficient_capsnet_test_shifts.json. A fold record holds which
of the fold's 800 digits the model got right plain and with shifts ("1" or "0" per digit, in
the order of the cross-validation's shuffle); a refit record holds every held-out digit's class
scores plain and with shifts (capsule lengths in ten-thousandths), from which chapter 07 builds
the ensemble. The plain results must equal efficient_capsnet_cv.py's and
efficient_capsnet_seeds.py's records for the same models: the chapter checks that they do.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from capsule_lib.training import evaluate, evaluate_over_shifts, recipe_split
from common import append_record
from efficient_capsnet_cv import (FOLDS, all_training_digits, fold_model, fold_recipe,
                                  fold_sets, right_text)
from efficient_capsnet_seeds import refit_model, scores_text
from shared_capsnet_search import cpu_name

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "efficient_capsnet_test_shifts.json")
CANDIDATE = "longer-shifts"
MAX_SHIFT = 1


def fold_record(fold: int, digits) -> dict:
    start = time.perf_counter()
    model, _ = fold_model(CANDIDATE, fold, digits)
    scored_set = fold_sets(digits, fold)[1]
    return {"stage": "fold", "candidate": CANDIDATE, "fold": fold, "seed": fold,
            "recipe": fold_recipe(CANDIDATE, fold).to_dict(), "max_shift": MAX_SHIFT,
            "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - start, 1),
            "fold_right": right_text(evaluate(model, scored_set)),
            "fold_right_shifted": right_text(evaluate_over_shifts(model, scored_set,
                                                                  MAX_SHIFT))}


def refit_record(seed: int) -> dict:
    recipe = fold_recipe(CANDIDATE, seed)                 # the candidate with this seed
    test_set = recipe_split(recipe, "test")
    start = time.perf_counter()
    model = refit_model(recipe)
    return {"stage": "refit", "candidate": CANDIDATE, "seed": seed,
            "trained_on": "train+validation", "recipe": recipe.to_dict(),
            "max_shift": MAX_SHIFT, "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - start, 1),
            "test_scores": scores_text(evaluate(model, test_set).scores),
            "test_shifted_scores": scores_text(
                evaluate_over_shifts(model, test_set, MAX_SHIFT).scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)))
    parser.add_argument("--refit", action="store_true",
                        help="the held-out look: refits with --seeds (only once the folds "
                             "have kept the shifts)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.refit:
        records = (refit_record(seed) for seed in args.seeds)
    else:
        digits = all_training_digits()
        records = (fold_record(fold, digits) for fold in args.folds)
    for record in records:
        print(json.dumps({k: v for k, v in record.items()
                          if not k.endswith("_scores") and not k.startswith("fold_right")}),
              flush=True)
        append_record(RESULTS, record)


if __name__ == "__main__":
    main()
