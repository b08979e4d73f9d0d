"""Decoded task images cached as tensors, so a sweep decodes each task's images once.

The key is (dataset, root, resolution, the classes and the exact images chosen), which the
seed, k and n determine, and the size and modification time of every file those images are
read from (`data.sources`), so images changed under the same names are decoded again; the
file is written atomically and checked when read back.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from ttbench.data.task import Task, sample_positions
from ttbench.files import atomic_save

log = logging.getLogger(__name__)


def task_key(
    dataset: str,
    root: str,
    resolution: int,
    classes: tuple[int, ...],
    positions: np.ndarray,
    files: list[Path] = (),
) -> str:
    h = hashlib.sha1(f"{dataset}|{root}|{resolution}|{classes}|".encode())
    h.update(np.ascontiguousarray(positions, dtype=np.int64).tobytes())
    for path in files:
        st = Path(path).stat()
        h.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{dataset}_{resolution}px_{h.hexdigest()[:16]}.pt"


def cached_task(
    data, k: int, n: int, seed: int, cache_dir: Path, key_parts: tuple[str, str, int]
) -> Task:
    """sample_task, with the decoded images read from / written to cache_dir/tasks."""
    classes, positions, y = sample_positions(data.labels(), k, n, seed)
    files = data.sources(positions) if hasattr(data, "sources") else []
    path = Path(cache_dir) / "tasks" / task_key(*key_parts, classes, positions, files)
    x = None
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if np.array_equal(blob["positions"].numpy(), positions) and len(blob["x"]) == len(y):
                x = blob["x"]
        except Exception as e:  # an unreadable cache entry is rebuilt, whatever torch raises
            log.warning("task cache %s unreadable (%s); decoding again", path, e)
    if x is None:
        x = data.images(positions)
        atomic_save(path, {"x": x, "positions": torch.from_numpy(positions)})
    else:
        log.info("task images from cache %s", path.name)
    return Task(x, torch.from_numpy(y), classes, positions, seed)
