"""Training with DistributedDataParallel: two CPU processes (gloo) against one process."""
import subprocess
import sys

import pytest
import torch

from capsule_lib.checkpoint import load_checkpoint
from capsule_lib.distributed import check_global_batches, process_group, shard
from capsule_lib.train import main

# a few steps of a small capsule network without BatchNorm: 96 digits in global batches of 32
TRAIN_ARGS = ["--recipe", "deep-capsnet-cpu", "--train-size", "96", "--epochs", "1",
              "--batch-size", "32", "--seed", "3", "--quiet", "--threads", "1"]


def test_shards_of_a_batch_put_together_are_the_batch():
    batch = torch.arange(13)
    for world_size in (1, 2, 3, 4):
        shards = [shard(batch, rank, world_size) for rank in range(world_size)]
        assert torch.equal(torch.cat(shards), batch)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_without_torchrun_there_is_one_process():
    assert process_group() == (0, 1)


def test_impossible_global_batches_are_refused_with_the_fix():
    check_global_batches(96, 32, 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        check_global_batches(96, 33, 2)
    with pytest.raises(ValueError, match="last batch holds 1 image"):
        check_global_batches(97, 32, 2)           # 97 = 3 x 32 + 1: one process gets nothing


def test_cli_refuses_a_batch_that_does_not_split_over_the_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as stopped:
        main(TRAIN_ARGS[:-5] + ["--batch-size", "33"])
    assert stopped.value.code == 2
    assert "does not split evenly over 2 processes" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without GPUs")
def test_cli_refuses_nccl_without_gpus(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit) as stopped:
        main(TRAIN_ARGS + ["--backend", "nccl"])
    assert stopped.value.code == 2
    assert "nccl backend needs GPUs" in capsys.readouterr().err


def train_with_cli(launcher: list[str], save_path):
    command = launcher + ["-m", "capsule_lib.train", *TRAIN_ARGS, "--save", str(save_path)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return load_checkpoint(save_path)


def test_two_gloo_processes_train_the_weights_of_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]
    two_model, two = train_with_cli(torchrun, tmp_path / "two.pt")
    one_model, one = train_with_cli([sys.executable], tmp_path / "one.pt")
    assert two.recipe == one.recipe
    two_weights, one_weights = two_model.state_dict(), one_model.state_dict()
    for name, weight in one_weights.items():
        # three Adam steps apart only by the order of float sums: the gradients of two
        # half-batches averaged by DDP against one batch's gradient
        torch.testing.assert_close(two_weights[name], weight, atol=1e-4, rtol=1e-4, msg=name)
    assert two.history.accuracy == one.history.accuracy      # summed over both processes
    assert two.history.loss == pytest.approx(one.history.loss, rel=1e-5)
