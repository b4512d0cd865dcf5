"""What the benchmarks that train extra seeds share: their command line and their record file."""
import argparse
import json
from pathlib import Path

import torch


def seeds_and_threads(description: str, default_seeds: list[int]) -> argparse.Namespace:
    """Parse --seeds and --threads (default 2, the book's machine), and set torch's threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=default_seeds)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def append_record(path: Path, record: dict) -> None:
    """Add one record to the JSON list at `path` (created if missing), at once, so that an
    interrupted run keeps what it finished."""
    records = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(records + [record], indent=1) + "\n")
