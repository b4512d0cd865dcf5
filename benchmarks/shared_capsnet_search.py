"""How the shared CapsNet's recipe (RECIPES["capsnet-cpu"]) was chosen: train candidate recipes
on the bundled sample's 3,500 training digits and record each one's validation accuracy after
every epoch and its training time, in capsule_lib/results/shared_capsnet_search.json (shipped
with the package). Chapter 04 shows that file; the test split is never looked at here.

    python benchmarks/shared_capsnet_search.py                      # run the candidates below
    python benchmarks/shared_capsnet_search.py --threads 1 --only 0  # one candidate, one thread
    python benchmarks/shared_capsnet_search.py --model pooling-cnn   # the CNN's own candidates

Each run appends one record (recipe, CPU, threads, seconds, accuracies) to the JSON file;
"parallel_runs" > 1 marks runs that shared the machine with others (slower than alone).
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from capsule_lib.recipes import Recipe
from capsule_lib.training import train

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "shared_capsnet_search.json")
# Adam with a per-epoch exponential decay, shifts of up to 2 px (the paper's), one seed each.
CANDIDATES = [  # CapsNet
    {"epochs": 4, "batch_size": 16, "learning_rate": 1e-3, "lr_decay": 0.7},
    {"epochs": 4, "batch_size": 16, "learning_rate": 2e-3, "lr_decay": 0.6},
    {"epochs": 3, "batch_size": 16, "learning_rate": 4e-3, "lr_decay": 0.5},
    {"epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "lr_decay": 0.5},
    # On a faster CPU (stop 13): a longer, gentler schedule. Per-epoch decay means the first k
    # epochs of this run are exactly the k-epoch recipe.
    {"epochs": 6, "batch_size": 16, "learning_rate": 2e-3, "lr_decay": 0.75},
]
# The CNN of Table 1 (PoolingCNN, --model pooling-cnn): CapsNet's recipe, and the same with
# a lower learning rate.
CNN_CANDIDATES = [
    {"epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "lr_decay": 0.6},
    {"epochs": 3, "batch_size": 16, "learning_rate": 1e-3, "lr_decay": 0.6},
]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(model: str, settings: dict, threads: int, parallel_runs: int) -> dict:
    torch.set_num_threads(threads)
    recipe = Recipe(model=model, data="mnist-sample", **settings)
    start = time.perf_counter()
    _, history = train(recipe, progress=False, device="cpu")
    return {"model": model, "recipe": settings, "cpu": cpu_name(), "threads": threads,
            "parallel_runs": parallel_runs,
            "seconds": round(time.perf_counter() - start, 1),
            "training_seconds": round(sum(history.seconds), 1),
            "validation_accuracy": history.validation_accuracy,
            "train_accuracy": history.accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="capsnet", choices=["capsnet", "pooling-cnn"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", type=int, nargs="*", help="indices into CANDIDATES")
    parser.add_argument("--parallel-runs", type=int, default=1,
                        help="how many such runs share the machine (recorded only)")
    args = parser.parse_args()
    records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    candidates = CANDIDATES if args.model == "capsnet" else CNN_CANDIDATES
    for index in args.only if args.only is not None else range(len(candidates)):
        record = run(args.model, candidates[index], args.threads, args.parallel_runs)
        print(json.dumps(record), flush=True)
        records.append(record)
        RESULTS.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
