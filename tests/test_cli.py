"""The command line: python -m capsule_lib.train."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capsule_lib.checkpoint import load_checkpoint
from capsule_lib.train import main, recipe_from_args, parse_args
from capsule_lib.training import cpu_recipe


def run_cli(*arguments, cwd=None):
    return subprocess.run([sys.executable, "-m", "capsule_lib.train", *arguments],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_lists_the_options():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--model", "--data", "--epochs", "--batch-size", "--lr", "--seed",
                   "--train-size", "--device", "--save"):
        assert option in result.stdout
    assert "held-out" in result.stdout


def test_options_override_the_cpu_recipe():
    recipe = recipe_from_args(parse_args(["--model", "capsnet", "--epochs", "1", "--lr", "0.01",
                                          "--train-size", "100", "--max-shift", "0"]))
    default = cpu_recipe("capsnet")
    assert (recipe.epochs, recipe.learning_rate, recipe.train_size, recipe.max_shift) == (
        1, 0.01, 100, 0)
    assert (recipe.batch_size, recipe.lr_decay, recipe.data) == (
        default.batch_size, default.lr_decay, default.data)


def test_augmentation_option_switches_the_rule_and_its_shift():
    default = recipe_from_args(parse_args([]))
    assert (default.model, default.augmentation, default.max_shift) == (
        "efficient-capsnet", "shift", 2)
    authors = recipe_from_args(parse_args(["--augmentation", "efficient-capsnet"]))
    assert (authors.augmentation, authors.max_shift) == ("efficient-capsnet", 0)
    back = recipe_from_args(parse_args(["--recipe", "efficient-capsnet-paper",
                                        "--augmentation", "shift"]))
    assert (back.augmentation, back.max_shift) == ("shift", 2)
    one_pixel = recipe_from_args(parse_args(["--recipe", "efficient-capsnet-paper",
                                             "--augmentation", "shift", "--max-shift", "1"]))
    assert one_pixel.max_shift == 1


def test_bad_values_exit_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "0"])
    assert exit_.value.code == 2
    assert "error: Recipe.epochs must be a whole number >= 1" in capsys.readouterr().err


def test_a_failed_save_after_training_keeps_the_model(tmp_path, monkeypatch, capsys):
    """If --save passes the check but writing fails after training (the folder was removed,
    the disk filled up), the checkpoint goes to a temporary folder, and the message says where."""
    import capsule_lib.train as cli
    target = tmp_path / "out" / "model.pt"
    real_save = cli.save_checkpoint

    def save_once_failing(path, *args):
        if Path(path) == target:
            raise OSError(28, "No space left on device", str(path))
        return real_save(path, *args)

    monkeypatch.setattr(cli, "save_checkpoint", save_once_failing)
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "efficient-capsnet", "--epochs", "1", "--train-size", "16", "--quiet",
              "--device", "cpu", "--save", str(target)])
    message = str(exit_.value.code)
    assert message.startswith("error: could not save the checkpoint to") and "No space" in message
    fallback = Path(message.rsplit("saved it to ", 1)[1].removesuffix(" instead"))
    model, info = load_checkpoint(fallback)
    assert info.recipe.train_size == 16


def test_unknown_model_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model", "resnet"])
    assert "invalid choice" in capsys.readouterr().err


def test_tiny_run_prints_accuracy_and_saves(tmp_path):
    path = tmp_path / "tiny.pt"
    result = run_cli("--model", "efficient-capsnet", "--epochs", "1", "--train-size", "200",
                     "--device", "cpu", "--quiet", "--save", str(path))
    assert result.returncode == 0, result.stderr
    accuracy = re.search(r"held-out accuracy .*: (\d+\.\d+)%", result.stdout)
    assert accuracy is not None, result.stdout
    assert 0 <= float(accuracy.group(1)) <= 100
    assert re.search(r"wall time: \d+\.\d s", result.stdout)
    model, info = load_checkpoint(path)
    assert info.recipe.train_size == 200 and info.recipe.epochs == 1


def test_precision_option(monkeypatch, capsys):
    import capsule_lib.precision as precision
    assert parse_args([]).precision == "fp32"
    with pytest.raises(SystemExit):
        parse_args(["--precision", "fp16"])
    assert "invalid choice" in capsys.readouterr().err
    # without bf16 hardware the run says so and trains in fp32
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.warns(UserWarning, match="fp32 instead"):
        main(["--model", "efficient-capsnet", "--epochs", "1", "--train-size", "16", "--quiet",
              "--device", "cpu", "--precision", "bf16"])
    assert "in fp32" in capsys.readouterr().out


def test_compile_option_reaches_training(monkeypatch, capsys):
    import capsule_lib.train as cli
    assert parse_args([]).compile is False
    asked = []
    real_train = cli.train

    def recording_train(recipe, **kwargs):
        asked.append(kwargs["compile_model"])
        return real_train(recipe, **{**kwargs, "compile_model": False})   # eager: quick

    monkeypatch.setattr(cli, "train", recording_train)
    main(["--model", "efficient-capsnet", "--epochs", "1", "--train-size", "16", "--quiet",
          "--device", "cpu", "--compile"])
    assert asked == [True]
    assert "held-out accuracy" in capsys.readouterr().out
