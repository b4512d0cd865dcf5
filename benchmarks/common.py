"""What the benchmarks that train extra seeds share: their command line and their record file."""
import argparse
import fcntl
import json
from pathlib import Path

import torch


def seeds_and_threads(description: str, default_seeds: list[int],
                      parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse --seeds and --threads (default 2, the book's machine), beside any options that
    `parser` already has, and set torch's threads."""
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=default_seeds)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def append_record(path: Path, record: dict) -> None:
    """Add one record to the JSON list at `path` (created if missing), at once, so that an
    interrupted run keeps what it finished. The file is locked while it is read and
    rewritten, so that runs in parallel processes cannot drop each other's records."""
    with open(path, "a+") as handle:  # creates the file, moves nothing
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        handle.seek(0)
        text = handle.read()
        records = json.loads(text) if text.strip() else []
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(records + [record], indent=1) + "\n")
