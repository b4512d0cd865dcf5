"""Train a model from the command line and report its held-out accuracy.

    python -m capsule_lib.train --model efficient-capsnet --data mnist-sample --epochs 8
"""
import argparse
import dataclasses
import sys
import time

import torch

from .checkpoint import save_checkpoint
from .data import load_dataset
from .recipes import CPU_RECIPE_MODELS, cpu_recipe
from .training import evaluate, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m capsule_lib.train",
        description="Train a capsule network (or the baseline CNN) with Adam and exponential "
                    "learning-rate decay, then print its accuracy on the held-out test split. "
                    "Options left out take the model's CPU-sized recipe "
                    "(capsule_lib.training.RECIPES['<model>-cpu']).",
        epilog="Example: python -m capsule_lib.train --model efficient-capsnet --epochs 2 "
               "--save efficient.pt")
    parser.add_argument("--model", default="efficient-capsnet", choices=CPU_RECIPE_MODELS,
                        help="which model to train (default: %(default)s)")
    parser.add_argument("--data", help="dataset name for load_dataset (default: the recipe's, "
                                       "mnist-sample: the bundled 4,000 train / 1,000 test)")
    parser.add_argument("--epochs", type=int, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, help="images per optimizer step")
    parser.add_argument("--lr", type=float, help="initial Adam learning rate")
    parser.add_argument("--seed", type=int, help="seed for initialisation, order and shifts")
    parser.add_argument("--train-size", type=int,
                        help="train on a random subset of this many training images")
    parser.add_argument("--max-shift", type=int,
                        help="shift training images by up to this many pixels (0: no shifts)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when "
                                         "available, else cpu)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch (default: torch's choice, usually one per "
                             "core); 1 is faster when other programs keep the cores busy")
    parser.add_argument("--save", metavar="PATH", help="write the trained model's checkpoint here "
                                                        "(load it with load_checkpoint(PATH))")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace):
    overrides = {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                 "learning_rate": args.lr, "seed": args.seed, "train_size": args.train_size,
                 "max_shift": args.max_shift}
    given = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(cpu_recipe(args.model), **given)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        recipe = recipe_from_args(args)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"Training {recipe}", flush=True)
    start = time.perf_counter()
    model, history = train(recipe, progress=not args.quiet, device=args.device)
    result = evaluate(model, load_dataset(recipe.data, "test"))
    wall = time.perf_counter() - start
    print(f"held-out accuracy ({recipe.data} test split, {len(result.labels)} images): "
          f"{result.accuracy:.2%} ({result.errors} errors), loss {result.loss:.4f}")
    print(f"wall time: {wall:.1f} s (training steps {sum(history.seconds):.1f} s, "
          f"{history.samples_per_second[-1]:.0f} images/s in the last epoch)")
    if args.save:
        path = save_checkpoint(args.save, model, recipe, history)
        print(f"checkpoint saved to {path}")


if __name__ == "__main__":
    main()
