"""Stage 2: the pre-processing step: average every 64 channels into one (64× smaller)."""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from examples.lofar.archive import adler32_hex, md5_hex, read_visibilities

__all__ = ["AVERAGE_CHANNELS", "Reduction", "average_channels", "reduce_all"]

AVERAGE_CHANNELS = 64
PRODUCTS_MANIFEST = "products.json"


def average_channels(vis: np.ndarray, factor: int = AVERAGE_CHANNELS) -> np.ndarray:
    """Mean over each run of ``factor`` channels (axis 0); complex64 in, complex64 out."""
    channels, baselines = vis.shape
    if channels % factor:
        raise ValueError(f"{channels} channels do not split into groups of {factor}")
    out: np.ndarray = vis.reshape(channels // factor, factor, baselines).mean(
        axis=1, dtype=np.complex64)
    return out


def product_name(tar_name: str) -> str:
    """``L658346_SB019_uv.MS_8190b749.tar`` → ``L658346_SB019_uv.avg64.npy``."""
    ms = tar_name.split(".MS_", 1)[0]
    return f"{ms}.avg{AVERAGE_CHANNELS}.npy"


@dataclass(frozen=True)
class Reduction:
    files_in: int
    bytes_in: int
    files_out: int
    bytes_out: int
    seconds: float


def reduce_all(raw: list[Path], out_dir: Path) -> Reduction:
    """Average every raw subband tar into ``out_dir``, with a products.json (md5, adler32)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    records = []
    bytes_in = bytes_out = 0
    for tar_path in sorted(raw):
        vis, meta = read_visibilities(tar_path)
        reduced = average_channels(vis)
        buffer = io.BytesIO()
        np.save(buffer, reduced)
        target = out_dir / product_name(tar_path.name)
        target.write_bytes(buffer.getvalue())
        bytes_in += tar_path.stat().st_size
        bytes_out += target.stat().st_size
        records.append({
            "name": target.name, "from": tar_path.name, "subband": meta.get("subband"),
            "shape": list(reduced.shape), "size": target.stat().st_size,
            "md5": md5_hex(target), "adler32": adler32_hex(target),
        })
    (out_dir / PRODUCTS_MANIFEST).write_text(json.dumps(
        {"averaged_channels": AVERAGE_CHANNELS, "products": records}, indent=2))
    return Reduction(len(raw), bytes_in, len(records), bytes_out, time.monotonic() - started)
