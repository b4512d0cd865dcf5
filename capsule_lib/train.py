"""Train a model from the command line and report its held-out accuracy.

    python -m capsule_lib.train --model capsnet        # the shared CapsNet of chapters 04-06
    python -m capsule_lib.train --recipe capsnet-paper --data mnist --device cuda
    torchrun --standalone --nproc_per_node 4 -m capsule_lib.train --recipe capsnet-paper

Under torchrun every process trains a shard of each global batch (--batch-size is the global
batch; see capsule_lib.distributed); only rank 0 prints, shows progress and saves.

Every argument, the data files and the --save location are checked before training starts; a
bad one ends the program with one `error:` line and exit status 2 (argparse's convention).
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import save_checkpoint
from .checks import check_device, check_whole_number, check_writable
from .data import DatasetNotFoundError, load_dataset
from .distributed import (BACKENDS, check_global_batches, is_main_process,
                          launched_by_torchrun, start_from_environment, stop)
from .recipes import AUGMENTATIONS, CPU_RECIPE_MODELS, RECIPES, cpu_recipe
from .precision import PRECISIONS, resolve_precision
from .training import _device, evaluate, recipe_split, train, training_set


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capsule_lib.train",
        description="Train a capsule network (or the baseline CNN) with Adam and exponential "
                    "learning-rate decay, then print its accuracy on the validation split and "
                    "on the held-out test split. Options left out take the recipe's values: "
                    "--recipe, else the model's CPU-sized recipe "
                    "(capsule_lib.training.RECIPES['<model>-cpu']; for capsnet the shared "
                    "CapsNet of chapters 04-06).",
        epilog="Example: python -m capsule_lib.train --model efficient-capsnet --epochs 2 "
               "--save efficient.pt")
    parser.add_argument("--model", default="efficient-capsnet", choices=CPU_RECIPE_MODELS,
                        help="which model to train with its CPU recipe (default: %(default)s)")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="start from this recipe of capsule_lib.recipes.RECIPES instead "
                             "(its model; --model is then ignored)")
    parser.add_argument("--data", help="dataset name for load_dataset (default: the recipe's; "
                                       "mnist-sample: the bundled 3,500 train / 500 validation "
                                       "/ 1,000 test)")
    parser.add_argument("--epochs", type=int, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, help="images per optimizer step")
    parser.add_argument("--lr", type=float, help="initial Adam learning rate")
    parser.add_argument("--seed", type=int, help="seed for initialisation, order and shifts")
    parser.add_argument("--train-size", type=int,
                        help="train on a random subset of this many training images")
    parser.add_argument("--max-shift", type=int,
                        help="shift training images by up to this many pixels (0: no shifts; "
                             "with --augmentation shift)")
    parser.add_argument("--augmentation", choices=AUGMENTATIONS,
                        help="shift: random shifts of up to --max-shift pixels (Sabour et al.; "
                             "2 unless given); efficient-capsnet: Mazzia et al.'s rotation, "
                             "in-frame shift, squish and erase")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when "
                                         "available, else cpu)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch (default: torch's choice, usually one per "
                             "core); 1 is faster when other programs keep the cores busy")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="under torchrun: nccl (one GPU per process) or gloo (CPU "
                             "processes); default nccl when CUDA is available and --device is "
                             "not cpu, else gloo")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: mixed precision (bf16 autocast) where the CPU or GPU computes "
                             "in bf16 (AVX512-BF16 or AMX CPUs, Ampere or newer GPUs); elsewhere "
                             "it warns and trains in fp32 (default: fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile(model), meant for long GPU runs "
                             "(not timed on a GPU for this book; slower on its 2-core CPU); "
                             "the first step waits for the compiler")
    parser.add_argument("--save", metavar="PATH", help="write the trained model's checkpoint here "
                                                        "(load it with load_checkpoint(PATH))")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def recipe_from_args(args: argparse.Namespace):
    overrides = {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                 "learning_rate": args.lr, "seed": args.seed, "train_size": args.train_size,
                 "max_shift": args.max_shift}
    given = {name: value for name, value in overrides.items() if value is not None}
    base = RECIPES[args.recipe] if args.recipe is not None else cpu_recipe(args.model)
    if args.augmentation is not None and args.augmentation != base.augmentation:
        # switching: the other rule's max_shift (efficient-capsnet has none, shift 2 px)
        given = {"augmentation": args.augmentation,
                 "max_shift": 0 if args.augmentation != "shift" else 2, **given}
    return dataclasses.replace(base, **given)


def check_arguments(args: argparse.Namespace):
    """(recipe, device, save path) from the arguments, after checking every one of them and
    that the data are there: a ValueError or DatasetNotFoundError for the first that is not."""
    recipe = recipe_from_args(args)
    device = check_device(args.device, "--device") if args.device is not None else None
    if args.threads is not None:
        check_whole_number(args.threads, "--threads (CPU threads)")
    digits = training_set(recipe)                         # the data, and --train-size
    if launched_by_torchrun():                            # a share of every batch for each
        check_global_batches(len(digits), recipe.batch_size, int(os.environ["WORLD_SIZE"]))
    load_dataset(recipe.data, "test")
    save_path = check_writable(args.save, "--save") if args.save else None
    return recipe, device, save_path


def save_or_fall_back(path: Path, model, recipe, history) -> None:
    """Save the checkpoint at path; if that fails now (disk full, folder removed), save it in a
    fresh temporary folder instead, say where, and exit with status 1: a trained model is
    never lost to a bad path."""
    try:
        saved = save_checkpoint(path, model, recipe, history)
    except OSError as error:
        fallback = Path(tempfile.mkdtemp(prefix="capsule_lib-")) / path.name
        saved = save_checkpoint(fallback, model, recipe, history)
        sys.exit(f"error: could not save the checkpoint to {path} ({error}); saved it to "
                 f"{saved} instead")
    print(f"checkpoint saved to {saved}")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        recipe, device, save_path = check_arguments(args)
    except (ValueError, DatasetNotFoundError) as error:
        parser.error(str(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if launched_by_torchrun():
        backend = args.backend or ("gloo" if args.device == "cpu"
                                   or not torch.cuda.is_available() else "nccl")
        try:
            device = start_from_environment(backend)
        except ValueError as error:
            parser.error(str(error))
        try:
            train_and_report(args, recipe, device, save_path)
        finally:
            stop()
    else:
        train_and_report(args, recipe, device, save_path)


def train_and_report(args: argparse.Namespace, recipe, device, save_path) -> None:
    """Train, print the validation and held-out accuracy (rank 0 only), save if asked."""
    precision = resolve_precision(args.precision, _device(device))     # warns if it falls back
    if is_main_process():
        print(f"Training {recipe} in {precision}", flush=True)
    start = time.perf_counter()
    model, history = train(recipe, progress=not args.quiet, device=device, precision=precision,
                           compile_model=args.compile)
    if not is_main_process():
        return
    result = evaluate(model, recipe_split(recipe, "test"))
    wall = time.perf_counter() - start
    print(f"validation accuracy ({recipe.data} validation split, used for choices): "
          f"{history.validation_accuracy[-1]:.2%}")
    print(f"held-out accuracy ({recipe.data} test split, {len(result.labels)} images): "
          f"{result.accuracy:.2%} ({result.errors} errors), loss {result.loss:.4f}")
    print(f"wall time: {wall:.1f} s (training steps {sum(history.seconds):.1f} s, "
          f"{history.samples_per_second[-1]:.0f} images/s in the last epoch)")
    if save_path is not None:
        save_or_fall_back(save_path, model, recipe, history)


if __name__ == "__main__":
    main()
