"""The Table 1 cells that chapter 04's CPU budget leaves out: CapsNet without the reconstruction
loss, with 1 and with 3 routing iterations, trained by the shared recipe.

Chapter 04 trains the two cells with reconstruction (its `table1_cells`); the two without it
would add about six minutes on two CPU cores, past the chapter's budget. This script trains
them by exactly the recipes the chapter would use (RECIPES["capsnet-cpu"] with
`with_decoder=False`, and `routing_iterations=1` for the first) and records each model's
prediction for every held-out digit, so that the chapter's paired tests can include them.
Nothing here feeds back into a choice.

    python benchmarks/table1_cells.py

Each model appends one record (cell, recipe, CPU, threads, seconds, last validation accuracy,
held-out accuracy, and "test_predictions": one character 0-9 per held-out digit, in the test
split's order) to capsule_lib/results/table1_cells.json (shipped with the package).
"""
import dataclasses
import json
import time
from pathlib import Path

from capsule_lib.recipes import RECIPES, capsnet_variant
from capsule_lib.training import evaluate, recipe_split, train
from common import append_record, seeds_and_threads
from shared_capsnet_search import cpu_name

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "table1_cells.json")
CELLS = [(1, False), (3, False)]                      # (routing iterations, reconstruction)


def main() -> None:
    args = seeds_and_threads(__doc__.splitlines()[0], default_seeds=[0])
    for seed in args.seeds:
        for iterations, reconstruction in CELLS:
            recipe = capsnet_variant(dataclasses.replace(RECIPES["capsnet-cpu"], seed=seed),
                                     iterations, reconstruction)
            test_set = recipe_split(recipe, "test")
            start = time.perf_counter()
            model, history = train(recipe, progress=False, device="cpu")
            result = evaluate(model, test_set)
            record = {"cell": [iterations, reconstruction], "recipe": recipe.to_dict(),
                      "cpu": cpu_name(), "threads": args.threads,
                      "seconds": round(time.perf_counter() - start, 1),
                      "training_seconds": round(sum(history.seconds), 1),
                      "validation_accuracy": history.validation_accuracy[-1],
                      "test_accuracy": result.accuracy,
                      "test_predictions": "".join(str(p) for p in result.predictions.tolist())}
            print(json.dumps({k: v for k, v in record.items() if k != "test_predictions"}),
                  flush=True)
            append_record(RESULTS, record)


if __name__ == "__main__":
    main()
