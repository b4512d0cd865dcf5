"""How Efficient-CapsNet's CPU recipe (RECIPES["efficient-capsnet-cpu"]) was chosen: train
candidate recipes on the bundled sample's 3,500 training digits, two seeds where time allowed,
and record the validation accuracy after every epoch (so one 15-epoch run also tells how any
shorter run of the same recipe ends: nothing in a run depends on its total length) in
capsule_lib/results/efficient_capsnet_search.json, shipped with the package. Chapter 07 shows
that file and makes the choice from it; the test split is never looked at here.

    python benchmarks/efficient_capsnet_search.py                  # every candidate and seed
    python benchmarks/efficient_capsnet_search.py --only 1 --seeds 0 --threads 1

Each run appends one record to the JSON file (the format of shared_capsnet_search.py).
"""
import argparse
import json
from pathlib import Path

from shared_capsnet_search import run

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "efficient_capsnet_search.json")
FAST = {"batch_size": 32, "learning_rate": 2e-3, "lr_decay": 0.8, "min_learning_rate": 5e-5}
AUTHORS = {"batch_size": 16, "learning_rate": 5e-4, "lr_decay": 0.97, "min_learning_rate": 5e-5}
CANDIDATES = [
    {**FAST, "epochs": 15},                                            # shifts of up to 2 px
    {**FAST, "epochs": 15, "augmentation": "efficient-capsnet", "max_shift": 0},
    {**AUTHORS, "epochs": 15, "augmentation": "efficient-capsnet", "max_shift": 0},
    {**FAST, "epochs": 15, "lr_decay": 0.7},                           # anneals sooner
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", type=int, nargs="*", help="indices into CANDIDATES")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--parallel-runs", type=int, default=1,
                        help="how many such runs share the machine (recorded only)")
    args = parser.parse_args()
    for index in args.only if args.only is not None else range(len(CANDIDATES)):
        for seed in args.seeds:
            settings = {**CANDIDATES[index], "seed": seed}
            record = run("efficient-capsnet", settings, args.threads, args.parallel_runs)
            print(json.dumps(record), flush=True)
            # read again: another run of this script may have added records meanwhile
            records = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
            RESULTS.write_text(json.dumps(records + [record], indent=1) + "\n")


if __name__ == "__main__":
    main()
