"""Bad and unusual inputs, tried as a new user would (issue 10).

One table, PROBES: each row is a call and what it must give, either an exception of a given
type whose message holds a fragment (what was expected, what was given, how to fix it), or a
result that passes a check (for unusual inputs that are fine). Add a row for every new probe,
so the count only goes up. Each probe runs in an empty working directory, with the dataset
and model-cache folders pointed into it, so files a probe writes stay there.
"""
import contextlib
import gzip
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

matplotlib.use("Agg")

import capsule_lib  # noqa: E402
from capsule_lib import (checkpoint, data, diagnostics, losses, multidigit, plotting,  # noqa: E402
                         routing, train, training)

# ---- inputs ----------------------------------------------------------------------------------

GENERATOR = torch.Generator().manual_seed(0)
IMAGES = torch.rand(6, 1, 28, 28, generator=GENERATOR)               # float32 in [0, 1]
LABELS = torch.tensor([0, 1, 2, 3, 4, 5])
DATASET = TensorDataset(IMAGES, LABELS)
EMPTY = TensorDataset(IMAGES[:0], LABELS[:0])
LENGTHS = torch.rand(6, 10, generator=GENERATOR)                     # capsule lengths [B, 10]
POSES = torch.rand(6, 10, 16, generator=GENERATOR) * 0.25
UNIFORM_COUPLINGS = torch.full((4, 1152, 10), 0.1)


def dataset(images, labels=LABELS) -> TensorDataset:
    return TensorDataset(images, labels)


@cache
def capsnet():
    torch.manual_seed(0)
    return capsule_lib.CapsNet().eval()


@cache
def efficient():
    torch.manual_seed(0)
    return capsule_lib.EfficientCapsNet().eval()


@cache
def small_cnn():
    torch.manual_seed(0)
    return capsule_lib.BaselineCNN(channels=(4,), hidden=(8,)).eval()


def tiny_recipe(**changes) -> training.Recipe:
    values = dict(model="efficient-capsnet", data="mnist-sample", epochs=1, batch_size=4,
                  learning_rate=1e-3, max_shift=0)
    return training.Recipe(**{**values, **changes})


def write_idx(path: str, array: np.ndarray) -> str:
    """An unsigned-byte IDX file (gzipped when path ends in .gz) holding array."""
    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 8, array.ndim]) + b"".join(
        size.to_bytes(4, "big") for size in array.shape) + array.tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(gzip.compress(raw) if path.endswith(".gz") else raw)
    return path


def mnist_files(images: np.ndarray, labels: np.ndarray, split: str = "train") -> str:
    """Write MNIST IDX files for `split` into ./idx (as load_dataset finds them); return it."""
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
    write_idx(f"idx/{stems[0]}.gz", images)
    write_idx(f"idx/{stems[1]}.gz", labels)
    return "idx"


DIGITS = (np.arange(3 * 28 * 28) % 256).reshape(3, 28, 28)
DIGIT_LABELS = np.array([3, 1, 4])


def truncated_idx() -> str:
    Path("short.idx").write_bytes(bytes([0, 0, 8]))
    return "short.idx"


def idx_cut_in_header() -> str:
    Path("header.idx").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0]))
    return "header.idx"


def idx_cut_in_data() -> str:
    write_idx("cut.idx", DIGITS)
    Path("cut.idx").write_bytes(Path("cut.idx").read_bytes()[:-9])
    return "cut.idx"


def corrupt_gz(path: str = "broken.gz") -> str:
    Path(path).write_bytes(b"\x1f\x8b\x08 this is not gzip data")
    return path


def corrupt_mnist() -> str:
    """MNIST train files whose labels file is a broken .gz; returns their folder."""
    root = mnist_files(DIGITS, DIGIT_LABELS)
    corrupt_gz(f"{root}/train-labels-idx1-ubyte.gz")
    return root


def a_file(path: str) -> str:
    """A small text file that is neither IDX nor a checkpoint."""
    Path(path).write_text("hello world")
    return path


def cache_file_with_bad_recipe() -> Path:
    """A cache file for tiny_recipe() whose stored recipe has learning_rate=-1 (an edited file)."""
    recipe = tiny_recipe(train_size=8)
    torch.manual_seed(0)
    model = capsule_lib.EfficientCapsNet()
    path = training.cache_path(recipe)
    checkpoint.save_checkpoint(path, model, recipe)
    payload = torch.load(path, weights_only=True)
    payload["recipe"]["learning_rate"] = -1.0
    torch.save(payload, path)
    return path


def pretrained_without_training(recipe, cache_dir=None):
    """training.pretrained(recipe, cache_dir) with an untrained model in place of training:
    these probes are about the cache, and a call that would train says so on stdout."""
    def untrained(recipe, **_):
        print("pretrained trains")
        torch.manual_seed(0)
        return capsule_lib.EfficientCapsNet(), training.History()

    real_train, training.train = training.train, untrained
    try:
        return training.pretrained(recipe, cache_dir, progress=False, device="cpu")
    finally:
        training.train = real_train


def checkpoint_without(key: str) -> str:
    checkpoint.save_checkpoint("model.pt", efficient(), tiny_recipe())
    payload = torch.load("model.pt", weights_only=True)
    del payload[key]
    torch.save(payload, "model.pt")
    return "model.pt"


def run_cli(*argv: str) -> tuple[object, str]:
    """Run `python -m capsule_lib.train argv` in this process: (exit status, stderr)."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            train.main(list(argv))
        except SystemExit as exit_:
            return exit_.code, errors.getvalue()
    return 0, errors.getvalue()


# Quick settings for CLI probes, so that a probe the checks let through trains for seconds only.
QUICK = ("--model", "efficient-capsnet", "--epochs", "1", "--train-size", "16", "--quiet")


# ---- the table -------------------------------------------------------------------------------

@dataclass
class Probe:
    name: str
    call: Callable[[], object]
    error: type[BaseException] | None = None     # expected exception type, or None
    message: str = ""                            # a fragment of its message
    check: Callable[[object], bool] | None = None  # for a result: what must hold
    lead: str = ""                               # fails in a file outside this task's scope


def fails(name, call, error, message, lead=""):
    return Probe(name, call, error, message, lead=lead)


def gives(name, call, check, lead=""):
    return Probe(name, call, check=check, lead=lead)


def refused(name, *argv, message):
    """A command line that must stop before training with one `error:` line and exit 2."""
    return Probe(name, lambda: run_cli(*argv), check=lambda result: (
        result[0] == 2 and result[1].count("error:") == 1 and message in result[1]
        and "Traceback" not in result[1]))


def finite_scores(output) -> bool:
    return bool(torch.isfinite(output.scores).all())


FLOAT_LABELS = LABELS.float()
OUT_OF_RANGE = torch.tensor([0, 1, 2, 3, 4, 10])
NEGATIVE = torch.tensor([0, 1, 2, 3, 4, -1])

PROBES = [
    # -- images given to a model -------------------------------------------------------------
    fails("images/uint8-to-forward", lambda: efficient()((IMAGES * 255).byte()),
          TypeError, "/ 255"),
    fails("images/float64-to-forward", lambda: efficient()(IMAGES.double()), TypeError,
          "images.float()"),
    fails("images/numpy-to-forward", lambda: efficient()(IMAGES.numpy()), TypeError,
          "torch.from_numpy"),
    fails("images/list-to-forward", lambda: efficient()(IMAGES.tolist()), TypeError,
          "torch tensor"),
    fails("images/no-channel-dim", lambda: capsnet()(IMAGES[:, 0]), ValueError, "unsqueeze(1)"),
    fails("images/no-batch-dim", lambda: capsnet()(IMAGES[0]), ValueError, "unsqueeze(0)"),
    fails("images/32x32", lambda: efficient()(torch.rand(2, 1, 32, 32)), ValueError, "28x28"),
    fails("images/3-channel", lambda: small_cnn()(torch.rand(2, 3, 28, 28)), ValueError,
          "1 channel"),
    fails("images/uint8-to-baseline", lambda: small_cnn()((IMAGES * 255).byte()), TypeError,
          "/ 255"),
    fails("images/numpy-to-deep-capsnet", lambda: capsule_lib.DeepCapsNet()(IMAGES.numpy()),
          TypeError, "torch.from_numpy"),
    fails("images/uint8-to-encode-primary", lambda: capsnet().encode_primary_capsules(
        (IMAGES * 255).byte()), TypeError, "/ 255"),
    gives("images/negated-to-forward-is-allowed", lambda: efficient()(-IMAGES), finite_scores),
    gives("images/nan-to-forward-is-not-read", lambda: small_cnn()(IMAGES.clone().fill_(math.nan)),
          lambda output: output.scores.shape == (6, 10)),
    fails("images/nan-to-evaluate", lambda: training.evaluate(efficient(), dataset(
        IMAGES.clone().index_fill_(0, torch.tensor([2]), math.nan))), ValueError, "NaN"),
    fails("images/inf-to-evaluate", lambda: training.evaluate(efficient(), dataset(
        IMAGES.clone().index_fill_(0, torch.tensor([1]), math.inf))), ValueError, "infinite"),
    fails("images/0-255-floats-to-evaluate", lambda: training.evaluate(
        efficient(), dataset(IMAGES * 255)), ValueError, "divide by 255"),
    fails("images/0-255-floats-to-fit", lambda: training.fit(
        capsule_lib.EfficientCapsNet(), dataset(IMAGES * 255), tiny_recipe(), progress=False),
          ValueError, "divide by 255"),
    fails("images/nan-to-fit", lambda: training.fit(
        capsule_lib.EfficientCapsNet(), dataset(IMAGES * math.nan), tiny_recipe(),
        progress=False), ValueError, "NaN"),
    fails("images/normalised-to-[-1,1]-to-fit", lambda: training.fit(
        capsule_lib.EfficientCapsNet(), dataset(IMAGES * 2 - 1), tiny_recipe(),
        progress=False), ValueError, "[0, 1]"),
    fails("images/uint8-dataset-to-evaluate", lambda: training.evaluate(
        efficient(), dataset((IMAGES * 255).byte())), TypeError, "/ 255"),
    fails("images/float64-dataset-to-evaluate", lambda: training.evaluate(
        efficient(), dataset(IMAGES.double())), TypeError, "images.float()"),
    fails("images/tuple-instead-of-dataset-to-fit", lambda: training.fit(
        capsule_lib.EfficientCapsNet(), (IMAGES, LABELS), tiny_recipe(), progress=False),
          TypeError, "TensorDataset"),
    fails("images/numpy-dataset-to-evaluate", lambda: training.evaluate(
        efficient(), (IMAGES.numpy(), LABELS.numpy())), TypeError, "TensorDataset"),
    fails("images/not-a-model-to-evaluate", lambda: training.evaluate(
        torch.nn.Linear(784, 10), DATASET), TypeError, "capsule_lib model"),

    # -- labels ------------------------------------------------------------------------------
    fails("labels/float-to-forward", lambda: capsnet()(IMAGES, FLOAT_LABELS), TypeError,
          "labels.long()"),
    fails("labels/out-of-range-to-forward", lambda: capsnet()(IMAGES, OUT_OF_RANGE),
          ValueError, "[0, 10)"),
    fails("labels/negative-to-forward", lambda: efficient()(IMAGES, NEGATIVE), ValueError,
          "[0, 10)"),
    fails("labels/wrong-count-to-forward", lambda: capsnet()(IMAGES, LABELS[:3]), ValueError,
          "one per image"),
    fails("labels/list-to-forward", lambda: capsnet()(IMAGES, LABELS.tolist()), TypeError,
          "torch.as_tensor"),
    fails("labels/numpy-to-forward", lambda: small_cnn()(IMAGES, LABELS.numpy()), TypeError,
          "torch.as_tensor"),
    gives("labels/int32-to-forward", lambda: capsnet()(IMAGES, LABELS.int()),
          lambda output: output.reconstructions.shape == (6, 1, 28, 28)),
    fails("labels/float-to-margin-loss", lambda: losses.margin_loss(LENGTHS, FLOAT_LABELS),
          TypeError, "labels.long()"),
    fails("labels/out-of-range-to-margin-loss", lambda: losses.margin_loss(LENGTHS, OUT_OF_RANGE),
          ValueError, "[0, 10)"),
    fails("labels/negative-to-margin-loss", lambda: losses.margin_loss(LENGTHS, NEGATIVE),
          ValueError, "[0, 10)"),
    gives("labels/int32-to-margin-loss", lambda: losses.margin_loss(LENGTHS, LABELS.int()),
          lambda loss: torch.allclose(loss, losses.margin_loss(LENGTHS, LABELS))),
    fails("labels/pair-out-of-range-to-margin-loss", lambda: losses.margin_loss(
        LENGTHS, torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [9, 10]])),
          ValueError, "[0, 10)"),
    fails("labels/1d-lengths-to-margin-loss", lambda: losses.margin_loss(LENGTHS[0], LABELS[:1]),
          ValueError, "[batch, n_classes]"),
    fails("labels/float-pairs-to-margin-loss", lambda: losses.margin_loss(
        LENGTHS, torch.rand(6, 2)), TypeError, "labels.long()"),
    fails("labels/float-to-decoder", lambda: capsule_lib.CapsuleDecoder()(POSES, FLOAT_LABELS),
          TypeError, "labels.long()"),
    fails("labels/out-of-range-to-decoder", lambda: capsule_lib.CapsuleDecoder()(
        POSES, OUT_OF_RANGE), ValueError, "[0, 10)"),
    fails("labels/bad-poses-to-decoder", lambda: capsule_lib.CapsuleDecoder()(
        POSES[:, :, :8], LABELS), ValueError, "[batch, 10, 16]"),
    fails("labels/out-of-range-to-baseline-loss", lambda: small_cnn().loss(
        small_cnn()(IMAGES), IMAGES, OUT_OF_RANGE), ValueError, "[0, 10)"),
    fails("labels/out-of-range-to-evaluate", lambda: training.evaluate(
        efficient(), dataset(IMAGES, OUT_OF_RANGE)), ValueError, "[0, 10)"),
    fails("labels/float-to-fit", lambda: training.fit(
        capsule_lib.EfficientCapsNet(), dataset(IMAGES, FLOAT_LABELS), tiny_recipe(),
        progress=False), TypeError, "labels.long()"),
    fails("labels/two-per-image-to-evaluate", lambda: training.evaluate(
        efficient(), TensorDataset(IMAGES, torch.zeros(6, 2, dtype=torch.long))),
          ValueError, "one per image"),

    # -- empty inputs ------------------------------------------------------------------------
    fails("empty/margin-loss", lambda: losses.margin_loss(LENGTHS[:0], LABELS[:0]), ValueError,
          "empty batch"),
    fails("empty/model-loss", lambda: efficient().loss(efficient()(IMAGES[:0]), IMAGES[:0],
                                                       LABELS[:0]), ValueError, "empty batch"),
    fails("empty/baseline-loss", lambda: small_cnn().loss(small_cnn()(IMAGES[:0]), IMAGES[:0],
                                                          LABELS[:0]), ValueError, "empty batch"),
    fails("empty/reconstruction-loss", lambda: losses.reconstruction_loss(IMAGES[:0], IMAGES[:0]),
          ValueError, "empty batch"),
    gives("empty/forward-capsnet", lambda: capsnet()(IMAGES[:0]),
          lambda output: output.scores.shape == (0, 10)),
    gives("empty/forward-efficient", lambda: efficient()(IMAGES[:0]),
          lambda output: output.scores.shape == (0, 10)),
    fails("empty/fit", lambda: training.fit(capsule_lib.EfficientCapsNet(), EMPTY, tiny_recipe(),
                                            progress=False), ValueError, "empty dataset"),
    fails("empty/evaluate", lambda: training.evaluate(efficient(), EMPTY), ValueError,
          "empty dataset"),
    fails("empty/evaluate-batch-size-0", lambda: training.evaluate(efficient(), DATASET,
                                                                  batch_size=0),
          ValueError, "batch_size must be a whole number >= 1"),
    fails("empty/evaluate-batch-size-2.5", lambda: training.evaluate(efficient(), DATASET,
                                                                    batch_size=2.5),
          ValueError, "batch_size must be a whole number >= 1"),
    fails("empty/plot-reconstructions-n-0", lambda: plotting.plot_reconstructions(
        IMAGES, IMAGES, n=0), ValueError, "n (examples to draw) must be a whole number >= 1"),
    fails("empty/plot-reconstructions-n-negative", lambda: plotting.plot_reconstructions(
        IMAGES, IMAGES, n=-2), ValueError, "n (examples to draw) must be a whole number >= 1"),
    fails("empty/plot-reconstructions-n-2.5", lambda: plotting.plot_reconstructions(
        IMAGES, IMAGES, n=2.5), ValueError, "n (examples to draw) must be a whole number"),
    fails("empty/plot-reconstructions-no-images", lambda: plotting.plot_reconstructions(
        IMAGES[:0], IMAGES[:0]), ValueError, "no images to draw"),
    fails("empty/plot-capsule-lengths", lambda: plotting.plot_capsule_lengths(LENGTHS[:0]),
          ValueError, "no examples"),
    fails("empty/plot-digits-with-lengths", lambda: plotting.plot_digits_with_lengths(
        IMAGES[:0], LENGTHS[:0], LABELS[:0]), ValueError, "no images to draw"),
    fails("empty/plot-coupling-heatmap", lambda: plotting.plot_coupling_heatmap(
        torch.empty(0, 10)), ValueError, "no input capsules"),
    fails("empty/plot-training-curves", lambda: plotting.plot_training_curves({}), ValueError,
          "history has no per-epoch"),
    fails("empty/subset-n-0", lambda: data.subset(DATASET, 0), ValueError,
          "n must be a whole number >= 1"),
    fails("empty/subset-of-empty", lambda: data.subset(EMPTY, 1), ValueError,
          "larger than the dataset"),
    fails("empty/capsule-activation-stats", lambda: diagnostics.capsule_activation_stats(
        LENGTHS[:0]), ValueError, "at least one example"),
    fails("empty/dead-capsule-fraction", lambda: diagnostics.dead_capsule_fraction(LENGTHS[:0]),
          ValueError, "at least one example"),
    fails("empty/collect-capsule-lengths", lambda: diagnostics.collect_capsule_lengths(
        efficient(), IMAGES[:0]), ValueError, "empty"),
    fails("empty/mean-coupling-entropy", lambda: diagnostics.mean_coupling_entropy(
        torch.empty(0, 10)), ValueError, "no input capsules"),
    fails("empty/two-digit-accuracy", lambda: multidigit.two_digit_accuracy(
        LENGTHS[:0], torch.empty(0, 2, dtype=torch.long)), ValueError, "empty batch"),
    gives("empty/shift-images", lambda: data.shift_images(IMAGES[:0], torch.empty(0, 2)),
          lambda moved: moved.shape == (0, 1, 28, 28)),
    gives("empty/affine-transform", lambda: data.affine_transform(IMAGES[:0], 10.0),
          lambda moved: moved.shape == (0, 1, 28, 28)),

    # -- numbers that are not what they claim ------------------------------------------------
    fails("numbers/capsnet-routing-iterations-2.0", lambda: capsule_lib.CapsNet(
        routing_iterations=2.0), ValueError, "write 2"),
    fails("numbers/digit-capsules-routing-iterations-0", lambda: capsule_lib.DigitCapsules(
        routing_iterations=0), ValueError, "routing_iterations must be a whole number >= 1"),
    fails("numbers/deep-capsnet-hidden-layers-1.5", lambda: capsule_lib.DeepCapsNet(
        hidden_layers=1.5), ValueError, "hidden_layers must be a whole number"),
    fails("numbers/deep-capsnet-routing-iterations-2.5", lambda: capsule_lib.DeepCapsNet(
        routing_iterations=2.5), ValueError, "routing_iterations must be a whole number"),
    fails("numbers/build-model-routing-iterations-2.5", lambda: capsule_lib.build_model(
        "deep-capsnet", routing_iterations=2.5), ValueError, "routing_iterations"),
    fails("numbers/build-model-unknown-option", lambda: capsule_lib.build_model(
        "capsnet", layers=3), TypeError, "bad configuration for 'capsnet'"),
    fails("numbers/build-model-unknown-name", lambda: capsule_lib.build_model("resnet"),
          ValueError, "valid names"),
    fails("numbers/dynamic-routing-iterations-2.0", lambda: routing.dynamic_routing(
        torch.rand(2, 8, 10, 16), 2.0), ValueError, "iterations must be a whole number"),
    fails("numbers/dynamic-routing-3d-votes", lambda: routing.dynamic_routing(
        torch.rand(8, 10, 16)), ValueError, "[batch, n_in, n_out, d_out]"),
    fails("numbers/self-attention-routing-bad-prior", lambda: routing.self_attention_routing(
        torch.rand(2, 16, 10, 16), torch.zeros(10, 16)), ValueError, "prior must have shape"),
    fails("numbers/digit-capsules-bad-input", lambda: capsule_lib.DigitCapsules()(
        torch.rand(2, 100, 8)), ValueError, "[batch, 1152, 8]"),
    fails("numbers/deep-capsnet-hidden-capsules-0", lambda: capsule_lib.DeepCapsNet(
        hidden_capsules=0), ValueError, "hidden_capsules"),
    fails("numbers/deep-capsnet-hidden-capsules-2.5", lambda: capsule_lib.DeepCapsNet(
        hidden_capsules=2.5), ValueError, "hidden_capsules"),
    fails("numbers/deep-capsnet-primary-types-0", lambda: capsule_lib.DeepCapsNet(
        primary_types=0), ValueError, "primary_types"),
    fails("numbers/squash-int-tensor", lambda: capsule_lib.squash(
        torch.ones(3, 4, dtype=torch.long)), TypeError, ".float()"),
    fails("numbers/squash-numpy", lambda: capsule_lib.squash(np.ones((3, 4))), TypeError,
          "torch.from_numpy"),
    fails("numbers/efficient-squash-numpy", lambda: capsule_lib.efficient_squash(np.ones((3, 4))),
          TypeError, "torch.from_numpy"),
    fails("numbers/squash-dim-out-of-range", lambda: capsule_lib.squash(torch.ones(3, 4), dim=5),
          IndexError, "Dimension out of range"),
    fails("numbers/squash-curves-max-norm-nan", lambda: plotting.squash_curves(math.nan),
          ValueError, "max_norm"),
    fails("numbers/squash-curves-n-points-2.5", lambda: plotting.squash_curves(5.0, 2.5),
          ValueError, "n_points"),
    fails("numbers/self-attention-routing-prior-list", lambda: routing.self_attention_routing(
        torch.rand(2, 16, 10, 16), [[0.0] * 10] * 16), TypeError, "prior"),
    fails("numbers/digit-capsules-votes-numpy", lambda: capsule_lib.DigitCapsules().votes(
        np.ones((2, 1152, 8), dtype=np.float32)), TypeError, "torch.from_numpy"),
    fails("numbers/fit-device-gpu", lambda: training.fit(
        capsule_lib.EfficientCapsNet(), DATASET, tiny_recipe(), device="gpu", progress=False),
          ValueError, "'cpu' or 'cuda'"),
    fails("numbers/evaluate-device-cuda", lambda: training.evaluate(
        efficient(), DATASET, device="cuda"), ValueError, "torch sees none here"),
    fails("numbers/squash-curves-max-norm-0", lambda: plotting.squash_curves(0.0), ValueError,
          "max_norm > 0"),
    fails("numbers/plot-squash-curves-negative", lambda: plotting.plot_squash_curves(-1.0),
          ValueError, "max_norm > 0"),
    fails("numbers/recipe-epochs-1.5", lambda: tiny_recipe(epochs=1.5), ValueError,
          "Recipe.epochs must be a whole number >= 1"),
    fails("numbers/recipe-epochs-2.0", lambda: tiny_recipe(epochs=2.0), ValueError, "write 2"),
    fails("numbers/recipe-lr-inf", lambda: tiny_recipe(learning_rate=math.inf), ValueError,
          "finite number > 0"),
    fails("numbers/recipe-lr-nan", lambda: tiny_recipe(learning_rate=math.nan), ValueError,
          "finite number > 0"),
    fails("numbers/recipe-lr-0", lambda: tiny_recipe(learning_rate=0), ValueError,
          "finite number > 0"),
    fails("numbers/recipe-batch-size-0", lambda: tiny_recipe(batch_size=0), ValueError,
          "batch_size must be a whole number >= 1"),
    fails("numbers/recipe-lr-decay-0", lambda: tiny_recipe(lr_decay=0.0), ValueError, "(0, 1]"),
    fails("numbers/recipe-lr-decay-nan", lambda: tiny_recipe(lr_decay=math.nan), ValueError,
          "(0, 1]"),
    fails("numbers/recipe-min-lr-inf", lambda: tiny_recipe(min_learning_rate=math.inf),
          ValueError, "finite number >= 0"),
    fails("numbers/recipe-max-shift-negative", lambda: tiny_recipe(max_shift=-1), ValueError,
          "max_shift (pixels) must be a whole number >= 0"),
    fails("numbers/recipe-train-size-0", lambda: tiny_recipe(train_size=0), ValueError,
          "train_size"),
    fails("numbers/recipe-seed-1.5", lambda: tiny_recipe(seed=1.5), ValueError,
          "seed must be a whole number"),
    fails("numbers/train-recipe-unknown-model", lambda: training.train(
        tiny_recipe(model="resnet"), progress=False), ValueError, "valid names"),
    fails("numbers/train-recipe-unknown-data", lambda: training.train(
        tiny_recipe(data="cifar"), progress=False), ValueError, "expected one of"),
    fails("numbers/recipe-unsaveable-config", lambda: tiny_recipe(model_config={"x": object()}),
          ValueError, "plain values"),
    fails("numbers/recipe-train-size-larger-than-split", lambda: training.training_set(
        tiny_recipe(train_size=999_999)), ValueError, "larger than the training split"),
    fails("numbers/pair-recipe-steps-0", lambda: multidigit.PairRecipe(tiny_recipe(), steps=0),
          ValueError, "steps must be a whole number >= 1"),
    fails("numbers/pair-recipe-base-name", lambda: multidigit.PairRecipe("capsnet-cpu"),
          TypeError, "must be a Recipe"),
    fails("numbers/pair-recipe-lr-inf", lambda: multidigit.PairRecipe(
        tiny_recipe(), learning_rate=math.inf), ValueError, "finite number > 0"),
    fails("numbers/subset-n-2.5", lambda: data.subset(DATASET, 2.5), ValueError,
          "n must be a whole number >= 1"),
    fails("numbers/subset-n-negative", lambda: data.subset(DATASET, -3), ValueError,
          "n must be a whole number >= 1"),
    fails("numbers/subset-n-too-large", lambda: data.subset(DATASET, 7), ValueError,
          "larger than the dataset"),
    fails("numbers/subset-of-tensors", lambda: data.subset((IMAGES, LABELS), 2), TypeError,
          "TensorDataset"),
    fails("numbers/subset-seed-0.5", lambda: data.subset(DATASET, 2, seed=0.5), ValueError,
          "seed must be a whole number"),
    gives("numbers/subset-n-numpy-int", lambda: data.subset(DATASET, np.int64(3)),
          lambda result: len(result) == 3),
    fails("numbers/shift-images-fractional", lambda: data.shift_images(
        IMAGES[:2], torch.tensor([[0.5, 1.0], [0.0, 2.7]])), ValueError, "whole numbers"),
    fails("numbers/shift-images-nan", lambda: data.shift_images(
        IMAGES[:2], torch.tensor([[math.nan, 1.0], [0.0, 2.0]])), ValueError, "whole numbers"),
    fails("numbers/shift-images-inf", lambda: data.shift_images(
        IMAGES[:2], torch.tensor([[math.inf, 1.0], [0.0, 2.0]])), ValueError, "whole numbers"),
    gives("numbers/shift-images-far-out-of-frame", lambda: data.shift_images(
        IMAGES[:2], torch.tensor([[10 ** 9, 0], [0, -(10 ** 9)]])),
          lambda moved: moved.shape == (2, 1, 28, 28) and not bool(moved.any())),
    fails("numbers/shift-images-wrong-shape", lambda: data.shift_images(
        IMAGES[:2], torch.tensor([1, 2])), ValueError, "[B, 2]"),
    gives("numbers/shift-images-whole-floats", lambda: data.shift_images(
        IMAGES[:1], torch.tensor([[1.0, 0.0]])),
          lambda moved: torch.equal(moved[0, 0, 1:], IMAGES[0, 0, :-1])),
    gives("numbers/shift-images-list", lambda: data.shift_images(IMAGES[:1], [[0, -1]]),
          lambda moved: torch.equal(moved[0, 0, :, :-1], IMAGES[0, 0, :, 1:])),
    fails("numbers/random-shift-1.5", lambda: data.random_shift(IMAGES, 1.5), ValueError,
          "max_shift"),
    fails("numbers/random-shift-negative", lambda: data.random_shift(IMAGES, -1), ValueError,
          "max_shift"),
    fails("numbers/random-shift-bool", lambda: data.random_shift(IMAGES, True), ValueError,
          "max_shift"),
    gives("numbers/random-shift-numpy-int", lambda: data.random_shift(IMAGES, np.int64(2)),
          lambda moved: moved.shape == IMAGES.shape),
    fails("numbers/random-shift-numpy-images", lambda: data.random_shift(IMAGES.numpy()),
          TypeError, "torch.from_numpy"),
    fails("numbers/pad-to-fractional", lambda: data.pad_to(IMAGES, 30.5), ValueError,
          "size (pixels) must be a whole number"),
    fails("numbers/pad-to-smaller", lambda: data.pad_to(IMAGES, 20), ValueError, "only pads"),
    fails("numbers/pad-to-3d", lambda: data.pad_to(IMAGES[0], 32), ValueError, "unsqueeze(0)"),
    gives("numbers/pad-to-same-size", lambda: data.pad_to(IMAGES, 28),
          lambda padded: torch.equal(padded, IMAGES)),
    fails("numbers/affine-rotation-nan", lambda: data.affine_transform(IMAGES, math.nan),
          ValueError, "rotation_deg must be finite"),
    fails("numbers/affine-shear-inf", lambda: data.affine_transform(IMAGES, shear_deg=math.inf),
          ValueError, "shear_deg must be finite"),
    fails("numbers/affine-shear-90", lambda: data.affine_transform(IMAGES, shear_deg=90.0),
          ValueError, "shear_deg"),
    fails("numbers/affine-scale-nan", lambda: data.affine_transform(IMAGES, scale=math.nan),
          ValueError, "scale must be finite"),
    fails("numbers/affine-scale-0", lambda: data.affine_transform(IMAGES, scale=0.0),
          ValueError, "scale must be positive"),
    fails("numbers/affine-translate-nan", lambda: data.affine_transform(
        IMAGES, translate=(math.nan, 0.0)), ValueError, "translate must be finite"),
    fails("numbers/affine-translate-3-values", lambda: data.affine_transform(
        IMAGES, translate=(1.0, 2.0, 3.0)), ValueError, "translate must be (tx, ty)"),
    fails("numbers/affine-rotation-per-image-wrong-count", lambda: data.affine_transform(
        IMAGES, torch.zeros(4)), ValueError, "one per image"),
    fails("numbers/affine-uint8-images", lambda: data.affine_transform(
        (IMAGES * 255).byte(), 10.0), TypeError, "/ 255"),
    gives("numbers/affine-per-image-angles", lambda: data.affine_transform(
        IMAGES, torch.linspace(-10, 10, 6)), lambda moved: moved.shape == IMAGES.shape),
    fails("numbers/random-affine-strength-1.5", lambda: data.random_affine(IMAGES, 1.5),
          ValueError, "strength must be in [0, 1]"),
    fails("numbers/random-affine-strength-nan", lambda: data.random_affine(IMAGES, math.nan),
          ValueError, "strength must be in [0, 1]"),
    fails("numbers/random-affine-strength-text", lambda: data.random_affine(IMAGES, "0.5"),
          ValueError, "strength must be in [0, 1]"),
    fails("numbers/affine-test-set-strength-2", lambda: data.affine_test_set(DATASET, 2.0),
          ValueError, "strength must be in [0, 1]"),
    fails("numbers/affine-test-set-of-tensors", lambda: data.affine_test_set(IMAGES, 0.5),
          TypeError, "TensorDataset"),
    fails("numbers/pairs-n-negative", lambda: data.make_overlapping_pairs(IMAGES, LABELS, -1),
          ValueError, "n (pairs) must be a whole number >= 1"),
    fails("numbers/pairs-n-2.5", lambda: data.make_overlapping_pairs(IMAGES, LABELS, 2.5),
          ValueError, "n (pairs) must be a whole number >= 1"),
    fails("numbers/pairs-max-shift-negative", lambda: data.make_overlapping_pairs(
        IMAGES, LABELS, 4, max_shift=-1), ValueError, "max_shift (pixels) must be a whole number"),
    fails("numbers/pairs-max-shift-1.5", lambda: data.make_overlapping_pairs(
        IMAGES, LABELS, 4, max_shift=1.5), ValueError, "max_shift (pixels) must be a whole"),
    fails("numbers/pairs-one-class", lambda: data.make_overlapping_pairs(
        IMAGES, torch.zeros(6, dtype=torch.long), 4), ValueError, "at least two classes"),
    fails("numbers/pairs-float-labels", lambda: data.make_overlapping_pairs(
        IMAGES, FLOAT_LABELS, 4), TypeError, "labels.long()"),
    fails("numbers/pairs-label-count", lambda: data.make_overlapping_pairs(
        IMAGES, LABELS[:4], 4), ValueError, "one per image"),
    fails("numbers/pairs-canvas-smaller", lambda: data.make_overlapping_pairs(
        IMAGES, LABELS, 4, canvas=20), ValueError, "only pads"),
    fails("numbers/pairs-uint8-images", lambda: data.make_overlapping_pairs(
        (IMAGES * 255).byte(), LABELS, 4), TypeError, "/ 255"),
    fails("numbers/pairs-0-255-floats", lambda: data.make_overlapping_pairs(
        IMAGES * 255, LABELS, 4), ValueError, "divide by 255"),
    fails("numbers/multimnist-n-0", lambda: data.make_multimnist(IMAGES, LABELS, 0), ValueError,
          "n (pairs) must be a whole number >= 1"),
    fails("numbers/multimnist-max-shift-nan", lambda: data.make_multimnist(
        IMAGES, LABELS, 2, max_shift=math.nan), ValueError, "max_shift (pixels)"),
    fails("numbers/pairs-with-layers-n-0", lambda: multidigit.make_pairs_with_layers(
        IMAGES, LABELS, 0), ValueError, "n (pairs) must be a whole number >= 1"),

    # -- files -------------------------------------------------------------------------------
    fails("files/idx-shorter-than-magic", lambda: data.read_idx(truncated_idx()), ValueError,
          "short.idx"),
    fails("files/idx-cut-in-header", lambda: data.read_idx(idx_cut_in_header()), ValueError,
          "header.idx"),
    fails("files/idx-truncated-data", lambda: data.read_idx(idx_cut_in_data()), ValueError,
          "cut.idx"),
    fails("files/idx-corrupt-gz", lambda: data.read_idx(corrupt_gz()), ValueError,
          "broken.gz"),
    fails("files/idx-missing", lambda: data.read_idx("nowhere.idx"), FileNotFoundError,
          "nowhere.idx"),
    fails("files/idx-not-idx", lambda: data.read_idx(a_file("text.idx")), ValueError,
          "text.idx"),
    gives("files/idx-roundtrip", lambda: data.read_idx(write_idx("ok.idx.gz", DIGITS)),
          lambda array: np.array_equal(array, DIGITS)),
    gives("files/load-mnist-from-idx", lambda: data.load_dataset(
        "mnist", "test", root=mnist_files(DIGITS, DIGIT_LABELS, "test")),
          lambda result: result.tensors[0].shape == (3, 1, 28, 28)
          and result.tensors[1].tolist() == [3, 1, 4]),
    fails("files/load-train-too-small-for-validation", lambda: data.load_dataset(
        "mnist", "train", root=mnist_files(DIGITS, DIGIT_LABELS)), ValueError,
          "too few to hold out"),
    fails("files/load-count-mismatch", lambda: data.load_dataset(
        "mnist", root=mnist_files(DIGITS, DIGIT_LABELS[:2])), ValueError,
          "3 images but 2 labels"),
    fails("files/load-wrong-image-size", lambda: data.load_dataset(
        "mnist", root=mnist_files(np.zeros((3, 32, 32)), DIGIT_LABELS)), ValueError,
          "28x28"),
    fails("files/load-labels-10-or-more", lambda: data.load_dataset(
        "fashion-mnist", root=mnist_files(DIGITS, np.array([3, 10, 4]))), ValueError,
          "[0, 10)"),
    fails("files/load-labels-2d", lambda: data.load_dataset(
        "mnist", root=mnist_files(DIGITS, np.zeros((3, 2)))), ValueError, "labels"),
    fails("files/load-corrupt-gz", lambda: data.load_dataset("mnist", root=corrupt_mnist()),
          ValueError, "train-labels-idx1-ubyte.gz"),
    fails("files/load-absent", lambda: data.load_dataset("mnist", root="empty"),
          data.DatasetNotFoundError, "mnist-sample"),
    fails("files/load-root-is-a-file", lambda: data.load_dataset("mnist", root=a_file("root")),
          data.DatasetNotFoundError, "not found"),
    fails("files/load-unknown-name", lambda: data.load_dataset("cifar"), ValueError,
          "expected one of"),
    fails("files/load-unknown-split", lambda: data.load_dataset("mnist-sample", "val"),
          ValueError, "expected one of"),

    # -- checkpoints -------------------------------------------------------------------------
    fails("checkpoints/save-model-recipe-mismatch", lambda: checkpoint.save_checkpoint(
        "model.pt", capsnet(), training.RECIPES["efficient-capsnet-cpu"]), ValueError,
          "save a model with the recipe that trained it"),
    fails("checkpoints/save-config-mismatch", lambda: checkpoint.save_checkpoint(
        "model.pt", capsule_lib.EfficientCapsNet(with_decoder=False), tiny_recipe()),
          ValueError, "model_config"),
    fails("checkpoints/save-recipe-name", lambda: checkpoint.save_checkpoint(
        "model.pt", efficient(), "efficient-capsnet-cpu"), TypeError, "RECIPES[name]"),
    fails("checkpoints/save-wrong-history", lambda: checkpoint.save_checkpoint(
        "model.pt", efficient(), tiny_recipe(), history={"loss": []}), TypeError, "History"),
    fails("checkpoints/save-under-a-file", lambda: checkpoint.save_checkpoint(
        a_file("file.txt") + "/model.pt", efficient(), tiny_recipe()),
          OSError, "file.txt"),
    fails("checkpoints/load-missing-keys", lambda: checkpoint.load_checkpoint(
        checkpoint_without("state_dict")), checkpoint.CheckpointError, "state_dict"),
    fails("checkpoints/load-missing-file", lambda: checkpoint.load_checkpoint("absent.pt"),
          checkpoint.CheckpointError, "No checkpoint file"),
    fails("checkpoints/load-garbage", lambda: checkpoint.load_checkpoint(
        a_file("junk.pt")), checkpoint.CheckpointError,
          "not a readable torch checkpoint"),
    fails("checkpoints/load-other-torch-file", lambda: checkpoint.load_checkpoint(
        torch.save({"weights": torch.zeros(2)}, "other.pt") or "other.pt"),
          checkpoint.CheckpointError, "not a capsule_lib checkpoint"),
    fails("checkpoints/load-to-absent-gpu", lambda: checkpoint.load_checkpoint(
        checkpoint.save_checkpoint("model.pt", efficient(), tiny_recipe()), map_location="cuda"),
          ValueError, "torch sees none here"),
    fails("checkpoints/load-to-unknown-device", lambda: checkpoint.load_checkpoint(
        checkpoint.save_checkpoint("model.pt", efficient(), tiny_recipe()), map_location="gpu"),
          ValueError, "such as 'cpu' or 'cuda'"),
    fails("checkpoints/load-other-model", lambda: checkpoint.load_checkpoint(
        checkpoint.save_checkpoint("model.pt", efficient(), tiny_recipe()),
        expected_model="capsnet"), checkpoint.CheckpointError, "expected 'capsnet'"),
    gives("checkpoints/invalid-recipe-in-cache-is-retrained", lambda: (
        cache_file_with_bad_recipe(), pretrained_without_training(tiny_recipe(train_size=8))),
          lambda result: checkpoint.load_checkpoint(result[0])[1].recipe.learning_rate == 1e-3),
    fails("checkpoints/pretrained-cache-dir-is-a-file", lambda: pretrained_without_training(
        tiny_recipe(), cache_dir=a_file("cache.txt")), ValueError, "cannot write a file there"),
    fails("checkpoints/pretrained-recipe-name", lambda: training.pretrained("capsnet-cpu"),
          TypeError, "RECIPES[name]"),
    fails("checkpoints/pretrained-to-absent-gpu", lambda: training.pretrained(
        tiny_recipe(), device="cuda"), ValueError, "torch sees none here"),

    # -- diagnostics -------------------------------------------------------------------------
    fails("diagnostics/gradient-norms-empty-batch", lambda: diagnostics.gradient_norms(
        small_cnn(), IMAGES[:0], LABELS[:0]), ValueError, "at least one example"),
    fails("diagnostics/gradient-norms-float-labels", lambda: diagnostics.gradient_norms(
        efficient(), IMAGES, FLOAT_LABELS), TypeError, "labels.long()"),
    fails("diagnostics/gradient-norms-no-loss", lambda: diagnostics.gradient_norms(
        torch.nn.Linear(784, 10), IMAGES, LABELS), TypeError, "capsule_lib model"),
    fails("diagnostics/coupling-entropy-rows-not-summing-to-1",
          lambda: diagnostics.coupling_entropy(torch.full((8, 10), 0.5)), ValueError, "sum to 1"),
    fails("diagnostics/coupling-entropy-negative", lambda: diagnostics.coupling_entropy(
        torch.tensor([[1.5, -0.5]])), ValueError, "negative"),
    fails("diagnostics/coupling-entropy-nan", lambda: diagnostics.coupling_entropy(
        torch.full((8, 10), math.nan)), ValueError, "sum to 1"),
    fails("diagnostics/coupling-entropy-numpy", lambda: diagnostics.coupling_entropy(
        np.full((8, 10), 0.1)), TypeError, "torch.from_numpy"),
    fails("diagnostics/coupling-entropy-1d", lambda: diagnostics.coupling_entropy(
        torch.full((10,), 0.1)), ValueError, "[..., n_in, n_out]"),
    fails("diagnostics/coupling-entropy-one-output", lambda: diagnostics.coupling_entropy(
        torch.ones(8, 1)), ValueError, "at least 2 output capsules"),
    gives("diagnostics/coupling-entropy-uniform-is-1", lambda: diagnostics.coupling_entropy(
        UNIFORM_COUPLINGS), lambda entropy: torch.allclose(entropy, torch.ones(4, 1152))),
    gives("diagnostics/coupling-entropy-float-rounding", lambda: diagnostics.coupling_entropy(
        torch.softmax(torch.randn(3, 1152, 10, generator=GENERATOR), -1).half()),
          lambda entropy: bool(((entropy >= 0) & (entropy <= 1.01)).all())),
    fails("diagnostics/mean-coupling-entropy-5d", lambda: diagnostics.mean_coupling_entropy(
        torch.full((1, 1, 1, 4, 10), 0.1)), ValueError, "[iterations, B, n_in, n_out]"),
    fails("diagnostics/activation-stats-1d", lambda: diagnostics.capsule_activation_stats(
        LENGTHS[0]), ValueError, "unsqueeze(0)"),
    fails("diagnostics/activation-stats-numpy", lambda: diagnostics.capsule_activation_stats(
        LENGTHS.numpy()), TypeError, "torch.from_numpy"),
    fails("diagnostics/dead-fraction-list", lambda: diagnostics.dead_capsule_fraction(
        LENGTHS.tolist()), TypeError, "torch"),
    fails("diagnostics/collect-batch-size-0", lambda: diagnostics.collect_capsule_lengths(
        efficient(), IMAGES, batch_size=0), ValueError, "batch_size must be a whole number"),
    fails("diagnostics/collect-uint8-images", lambda: diagnostics.collect_capsule_lengths(
        efficient(), (IMAGES * 255).byte()), TypeError, "/ 255"),
    fails("diagnostics/collect-device-gpu", lambda: diagnostics.collect_capsule_lengths(
        efficient(), IMAGES, device="gpu"), ValueError, "'cpu' or 'cuda'"),
    fails("diagnostics/collect-no-default-layers", lambda: diagnostics.collect_capsule_lengths(
        small_cnn(), IMAGES), ValueError, "pass layer_fn"),

    # -- plotting ----------------------------------------------------------------------------
    fails("plotting/reconstructions-shape-mismatch", lambda: plotting.plot_reconstructions(
        IMAGES, IMAGES[:3]), ValueError, "same shape"),
    fails("plotting/reconstructions-one-image", lambda: plotting.plot_reconstructions(
        IMAGES[0, 0], IMAGES[0, 0]), ValueError, "unsqueeze(0)"),
    fails("plotting/reconstructions-too-few-labels", lambda: plotting.plot_reconstructions(
        IMAGES, IMAGES, labels=LABELS[:2], n=4), ValueError, "one per example"),
    gives("plotting/reconstructions-n-larger-than-batch", lambda: plotting.plot_reconstructions(
        IMAGES[:2], IMAGES[:2], n=8), lambda fig: len(fig.axes) == 4),
    fails("plotting/capsule-lengths-label-out-of-range", lambda: plotting.plot_capsule_lengths(
        LENGTHS[:2], labels=[1, 12]), ValueError, "[0, 10)"),
    fails("plotting/capsule-lengths-label-count", lambda: plotting.plot_capsule_lengths(
        LENGTHS[:3], labels=[1, 2]), ValueError, "one per example"),
    fails("plotting/capsule-lengths-few-class-names", lambda: plotting.plot_capsule_lengths(
        LENGTHS[:2], class_names=["a", "b"]), ValueError, "class_names"),
    fails("plotting/capsule-lengths-3d", lambda: plotting.plot_capsule_lengths(POSES),
          ValueError, "[n_examples, n_capsules]"),
    fails("plotting/digits-with-lengths-label-out-of-range",
          lambda: plotting.plot_digits_with_lengths(IMAGES[:2], LENGTHS[:2], [1, 10]),
          ValueError, "[0, 10)"),
    fails("plotting/digits-with-lengths-count-mismatch",
          lambda: plotting.plot_digits_with_lengths(IMAGES[:3], LENGTHS[:2], LABELS[:2]),
          ValueError, "same number of examples"),
    fails("plotting/coupling-heatmap-numpy", lambda: plotting.plot_coupling_heatmap(
        np.full((4, 10), 0.1)), TypeError, "torch.from_numpy"),
    fails("plotting/coupling-heatmap-3d", lambda: plotting.plot_coupling_heatmap(
        UNIFORM_COUPLINGS), ValueError, "mean(0)"),
    fails("plotting/primary-maps-wrong-size", lambda: plotting.plot_primary_coupling_maps(
        torch.full((100, 10), 0.1)), ValueError, "[1152, n_classes]"),
    fails("plotting/primary-maps-numpy", lambda: plotting.plot_primary_coupling_maps(
        np.full((1152, 10), 0.1)), TypeError, "torch.from_numpy"),
    fails("plotting/training-curves-no-accuracy", lambda: plotting.plot_training_curves(
        {"loss": [1.0, 0.5]}), ValueError, "accuracy"),
    fails("plotting/perturbations-no-decoder", lambda: plotting.plot_dimension_perturbations(
        small_cnn(), IMAGES[:1]), ValueError, "has no decoder"),
    fails("plotting/perturbations-two-images", lambda: plotting.plot_dimension_perturbations(
        efficient(), IMAGES[:2]), ValueError, "ONE image"),
    fails("plotting/perturbations-dim-16", lambda: plotting.plot_dimension_perturbations(
        efficient(), IMAGES[:1], dims=[16]), ValueError, "dims must lie in [0, 16)"),
    fails("plotting/perturbations-label-10", lambda: plotting.perturbed_reconstructions(
        efficient(), IMAGES[:1], label=10), ValueError, "[0, 10)"),
    fails("plotting/perturbations-nan-delta", lambda: plotting.perturbed_reconstructions(
        efficient(), IMAGES[:1], deltas=[0.0, math.nan]), ValueError, "deltas must be finite"),
    fails("plotting/perturbations-no-deltas", lambda: plotting.plot_dimension_perturbations(
        efficient(), IMAGES[:1], deltas=[]), ValueError, "at least one value"),
    fails("plotting/perturbations-numpy-image", lambda: plotting.perturbed_reconstructions(
        efficient(), IMAGES[0].numpy()), TypeError, "torch.from_numpy"),

    # -- two digits per image ----------------------------------------------------------------
    fails("multidigit/accuracy-one-label-per-image", lambda: multidigit.two_digit_accuracy(
        LENGTHS, LABELS), ValueError, "[batch, 2]"),
    fails("multidigit/accuracy-numpy", lambda: multidigit.two_digit_accuracy(
        LENGTHS.numpy(), np.zeros((6, 2), dtype=int)), TypeError, "torch"),
    fails("multidigit/accuracy-labels-out-of-range", lambda: multidigit.two_digit_accuracy(
        LENGTHS, torch.full((6, 2), 10)), ValueError, "[0, 10)"),
    fails("multidigit/reconstruct-one-label-per-image", lambda: multidigit.reconstruct_each_digit(
        efficient(), POSES, LABELS), ValueError, "digits per image"),
    fails("multidigit/reconstruct-no-decoder", lambda: multidigit.reconstruct_each_digit(
        small_cnn(), POSES, LABELS), ValueError, "has no decoder"),
    fails("multidigit/finetune-recipe", lambda: multidigit.finetune_on_pairs(
        capsnet(), DATASET, tiny_recipe(), progress=False), TypeError, "PairRecipe"),
    fails("multidigit/finetune-tensors", lambda: multidigit.finetune_on_pairs(
        capsule_lib.EfficientCapsNet(), (IMAGES, LABELS), multidigit.PairRecipe(tiny_recipe(),
                                                                                steps=1),
        progress=False), TypeError, "TensorDataset"),
    fails("multidigit/finetune-no-decoder", lambda: multidigit.finetune_on_pairs(
        capsule_lib.EfficientCapsNet(with_decoder=False), DATASET,
        multidigit.PairRecipe(tiny_recipe(), steps=1), progress=False), ValueError,
          "has no decoder"),
    fails("multidigit/finetune-canvas-mismatch", lambda: multidigit.finetune_on_pairs(
        capsule_lib.EfficientCapsNet(), DATASET,
        multidigit.PairRecipe(tiny_recipe(), steps=1, canvas=36), progress=False), ValueError,
          "image_size=36"),
    fails("numbers/stream-pairs-batch-0", lambda: list(capsule_lib.data.stream_pairs(
        IMAGES, LABELS, 0, 1)), ValueError, "batch_size (pairs) must be a whole number"),
    fails("numbers/capsnet-image-size-too-small", lambda: capsule_lib.CapsNet(image_size=16),
          ValueError, "image_size must be a whole number >= 17"),
    fails("shapes/capsnet-36-given-28", lambda: capsule_lib.CapsNet(image_size=36)(IMAGES),
          ValueError, "36"),
    fails("multidigit/evaluate-pairs-batch-size-0", lambda: multidigit.evaluate_pairs(
        efficient(), multidigit.make_pairs_with_layers(IMAGES, LABELS, 4), batch_size=0),
          ValueError, "batch_size must be a whole number >= 1"),
    fails("multidigit/pair-loss-tuple", lambda: multidigit.pair_loss(
        efficient(), POSES, LENGTHS, data.make_overlapping_pairs(IMAGES, LABELS, 6)), TypeError,
          "DigitPairs"),
    fails("multidigit/evaluate-pairs-tuple", lambda: multidigit.evaluate_pairs(
        efficient(), data.make_overlapping_pairs(IMAGES, LABELS, 4)), TypeError, "DigitPairs"),
    fails("multidigit/pretrained-pair-model-recipe", lambda: multidigit.pretrained_pair_model(
        tiny_recipe()), TypeError, "PairRecipe"),

    # -- the command line --------------------------------------------------------------------
    refused("cli/data-cifar", *QUICK, "--data", "cifar", message="cifar"),
    refused("cli/data-mnist-absent", *QUICK, "--data", "mnist", message="not found"),
    refused("cli/train-size-999999", "--train-size", "999999", "--quiet",
            message="larger than the training split"),
    refused("cli/train-size-0", "--train-size", "0", "--quiet", message="train_size"),
    refused("cli/threads-0", *QUICK, "--threads", "0", message="--threads"),
    refused("cli/device-gpu", *QUICK, "--device", "gpu", message="'cpu' or 'cuda'"),
    refused("cli/device-cuda-without-gpu", *QUICK, "--device", "cuda", message="torch sees none"),
    refused("cli/save-under-a-file", *QUICK, "--save", "/dev/null/model.pt", message="/dev/null"),
    refused("cli/save-to-a-directory", *QUICK, "--save", ".", message="is a directory"),
    refused("cli/epochs-0", *QUICK, "--epochs", "0", message="epochs must be a whole number"),
    refused("cli/epochs-text", *QUICK, "--epochs", "two", message="invalid int value"),
    refused("cli/lr-inf", *QUICK, "--lr", "inf", message="finite number > 0"),
    refused("cli/lr-nan", *QUICK, "--lr", "nan", message="finite number > 0"),
    refused("cli/batch-size-0", *QUICK, "--batch-size", "0", message="batch_size"),
    refused("cli/max-shift-negative", *QUICK, "--max-shift", "-1", message="max_shift"),
    refused("cli/seed-negative", *QUICK, "--seed", "-1", message="seed"),
    refused("cli/unknown-model", "--model", "resnet", message="invalid choice"),
]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty working directory; datasets and cached models are looked for inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPSULE_LIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CAPSULE_LIB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _parameters():
    for probe in PROBES:
        marks = [pytest.mark.xfail(reason=probe.lead, strict=True)] if probe.lead else []
        yield pytest.param(probe, id=probe.name, marks=marks)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("probe", _parameters())
def test_probe(probe: Probe, workspace):
    if probe.error is not None:
        with pytest.raises(probe.error) as raised:
            probe.call()
        assert probe.message in str(raised.value)
    else:
        result = probe.call()
        assert probe.check(result), f"unexpected result {result!r}"


def test_probe_names_are_unique():
    names = [probe.name for probe in PROBES]
    assert len(names) == len(set(names))
