"""Chapter 06's robustness comparison for more training seeds than the chapter's CPU budget holds.

Chapter 06 trains CapsNet, its CNN control and CapsNet without routing by the shared recipe
(RECIPES["capsnet-cpu"], "pooling-cnn-cpu", "capsnet-no-routing-cpu") with one seed by
default: every further seed costs about seven minutes on two CPU cores. This script trains the
three with other seeds and records each model's accuracy on the chapter's held-out digits
under its affine test (capsule_lib.data.affine_test_set, the chapter's default strengths and
affine seed), so that the chapter can report the fraction of clean accuracy each model keeps
over every recorded seed. Nothing here feeds back into a choice.

    python benchmarks/robustness_seeds.py --seeds 1 2

Each model appends one record (model, recipe, seed, CPU, threads, seconds, strengths, affine
seed, number of test digits, accuracy at each strength) to
capsule_lib/results/robustness_seeds.json (shipped with the package).
"""
import dataclasses
import json
import time
from pathlib import Path

from capsule_lib.data import affine_test_set, load_dataset, subset
from capsule_lib.recipes import RECIPES
from capsule_lib.training import evaluate, train
from common import append_record, seeds_and_threads
from shared_capsnet_search import cpu_name

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "robustness_seeds.json")
MODELS = {"CapsNet": "capsnet-cpu", "CNN": "pooling-cnn-cpu",
          "CapsNet, no routing": "capsnet-no-routing-cpu"}
STRENGTHS, AFFINE_SEED, N_TEST = [0.0, 0.5, 1.0], 0, 1000   # chapter 06's defaults


def main() -> None:
    args = seeds_and_threads(__doc__.splitlines()[0], default_seeds=[1, 2])
    full_test_set = load_dataset("mnist-sample", "test")
    test_set = subset(full_test_set, min(N_TEST, len(full_test_set)), AFFINE_SEED)
    affine_sets = {s: affine_test_set(test_set, s, AFFINE_SEED) for s in STRENGTHS}
    for seed in args.seeds:
        for name, recipe_name in MODELS.items():
            recipe = dataclasses.replace(RECIPES[recipe_name], seed=seed)
            start = time.perf_counter()
            model, _ = train(recipe, progress=False, device="cpu")
            record = {"model": name, "recipe": recipe.to_dict(), "seed": seed,
                      "cpu": cpu_name(), "threads": args.threads,
                      "seconds": round(time.perf_counter() - start, 1),
                      "strengths": STRENGTHS, "affine_seed": AFFINE_SEED,
                      "n_test": len(test_set),
                      "accuracy": [evaluate(model, affine_sets[s]).accuracy
                                   for s in STRENGTHS]}
            print(json.dumps(record), flush=True)
            append_record(RESULTS, record)


if __name__ == "__main__":
    main()
