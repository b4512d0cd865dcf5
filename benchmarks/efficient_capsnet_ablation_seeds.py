"""Chapter 07's routing ablation for more seeds, or a longer recipe, than its CPU budget holds.

The chapter trains every variant of capsule_lib.efficient_capsnet.ROUTING_ABLATION by the
short recipe RECIPES["efficient-capsnet-fast"] with one seed (its default `ablation_seeds`);
a second seed would take it past its six-minute cold budget. This script trains the same
variants with other seeds and records, for each model, which of the 1,000 held-out digits it
classifies correctly, so that chapter 07 can run its paired tests over every recorded seed
as well. With --recipe it trains them by another recipe instead: the chapter also reads the
variants trained by its own recipe (efficient-capsnet-cpu, 11 epochs), seeds 0-5, whose
plan is benchmarks/plans/ablation_full_recipe.md. Nothing here feeds back into a choice: the
variants and the recipes are fixed.

    python benchmarks/efficient_capsnet_ablation_seeds.py --seeds 1 2
    python benchmarks/efficient_capsnet_ablation_seeds.py --recipe efficient-capsnet-cpu \
        --seeds 0 1 2 --threads 1   # and --seeds 3 4 5 in a second process

Each run appends one record per model (variant, recipe, seed, CPU, threads, seconds, last
validation accuracy, held-out accuracy, and "test_correct": one character per held-out digit,
"1" right and "0" wrong, in the test split's order) to
capsule_lib/results/efficient_capsnet_ablation_seeds.json (shipped with the package).
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

from capsule_lib.efficient_capsnet import ROUTING_ABLATION
from capsule_lib.recipes import RECIPES
from capsule_lib.training import evaluate, recipe_split, train
from common import append_record, seeds_and_threads
from shared_capsnet_search import cpu_name

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "efficient_capsnet_ablation_seeds.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="efficient-capsnet-fast",
                        choices=[name for name, recipe in RECIPES.items()
                                 if recipe.model == "efficient-capsnet"])
    args = seeds_and_threads(__doc__.splitlines()[0], default_seeds=[1, 2], parser=parser)
    base = RECIPES[args.recipe]
    test_set = recipe_split(base, "test")
    for seed in args.seeds:
        for variant, config in ROUTING_ABLATION.items():
            recipe = dataclasses.replace(base, seed=seed, model_config=config)
            start = time.perf_counter()
            model, history = train(recipe, progress=False, device="cpu")
            result = evaluate(model, test_set)
            correct = "".join("1" if right else "0"
                              for right in (result.predictions == result.labels).tolist())
            record = {"variant": variant, "recipe": recipe.to_dict(), "seed": seed,
                      "cpu": cpu_name(), "threads": args.threads,
                      "seconds": round(time.perf_counter() - start, 1),
                      "validation_accuracy": history.validation_accuracy[-1],
                      "test_accuracy": result.accuracy, "test_correct": correct}
            print(json.dumps({k: v for k, v in record.items() if k != "test_correct"}),
                  flush=True)
            append_record(RESULTS, record)


if __name__ == "__main__":
    main()
