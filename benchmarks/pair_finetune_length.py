"""How long chapter 05 fine-tunes on digit pairs: score every length on validation pairs.

    python benchmarks/pair_finetune_length.py                  # 600 steps, scored every 50
    python benchmarks/pair_finetune_length.py --steps 900 --every 100

Chapter 05 fine-tunes the shared CapsNet (RECIPES["capsnet-cpu"]) and the CNN of its Table 1
(RECIPES["pooling-cnn-cpu"]) on overlapping pairs with PairRecipe's settings. The learning rate
is constant and the pairs are a seeded stream, so one long run passes through the model of every
shorter recipe: after each `--every` steps this script scores the model on the chapter's 500
validation pairs (pairs of validation-split digits, seed 2, as the chapter makes them) and
records the two-digit accuracy (both labels among the two highest scores). The test pairs are
never looked at. It writes capsule_lib/results/pair_finetune_length.json, which chapter 05 reads.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from capsule_lib.data import load_dataset, make_pairs_with_layers
from capsule_lib.multidigit import PairRecipe, evaluate_pairs, finetune_on_pairs
from capsule_lib.training import RECIPES, pretrained, training_set

RESULTS = (Path(__file__).resolve().parent.parent / "capsule_lib" / "results"
           / "pair_finetune_length.json")
BASES = {"CapsNet": "capsnet-cpu", "CNN": "pooling-cnn-cpu"}
VALIDATION_PAIRS, VALIDATION_SEED = 500, 2          # chapter 05: n_validation_pairs, seed + 2


def validation_curve(base_name: str, steps: int, every: int) -> dict:
    """Fine-tune the cached model of RECIPES[base_name] on pairs for `steps` steps and score
    it on the validation pairs before the first step and after every `every` steps."""
    base = RECIPES[base_name]
    recipe = PairRecipe(base, steps=steps)
    model, _ = pretrained(base, device="cpu")         # a fresh copy: nothing cached is changed
    images, labels = load_dataset(base.data, "validation").tensors
    pairs = make_pairs_with_layers(images, labels, VALIDATION_PAIRS, max_shift=recipe.max_shift,
                                   canvas=recipe.canvas, seed=VALIDATION_SEED)
    curve = {0: evaluate_pairs(model, pairs).two_digit_accuracy}
    scoring_seconds = 0.0

    def score(step: int, model: torch.nn.Module) -> None:
        nonlocal scoring_seconds
        if step % every == 0:
            start = time.perf_counter()
            curve[step] = evaluate_pairs(model, pairs).two_digit_accuracy
            scoring_seconds += time.perf_counter() - start
            print(f"{base_name}: step {step}: {100 * curve[step]:.1f}%", flush=True)

    history = finetune_on_pairs(model, training_set(base), recipe, progress=False,
                                after_step=score)
    return {"base": base_name, "pair_recipe": {k: v for k, v in recipe.to_dict().items()
                                                if k != "base"},
            "threads": torch.get_num_threads(),
            "training_seconds": round(history.seconds - scoring_seconds, 1),
            "validation_two_digit_accuracy": {str(k): v for k, v in curve.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    records = [validation_curve(name, args.steps, args.every) for name in BASES.values()]
    RESULTS.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
