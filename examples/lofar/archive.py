"""Synthetic LOFAR Long Term Archive content: subband tarballs and the archive's manifest.

One tar per subband MeasurementSet, named as the LTA names them
(``L658346_SB019_uv.MS_8190b749.tar``), holding a visibility array
(channels × baselines, complex64, as ``.npy``) and a small ``meta.json``.  The
archive records md5 and adler32 of every tar, as the LTA does; a site serves
that record as ``manifest.json`` next to the tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CHANNELS",
    "OBSERVATION",
    "ArchivedFile",
    "adler32_hex",
    "md5_hex",
    "read_visibilities",
    "write_site",
]

OBSERVATION = "L658346"
CHANNELS = 256  # per subband; the reduction averages 64 of them into one
BYTES_PER_VISIBILITY = 8  # complex64
SUBBAND_0_HZ = 120e6
SUBBAND_WIDTH_HZ = 195_312.5
MANIFEST_NAME = "manifest.json"
_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class ArchivedFile:
    """One tar as the archive records it."""

    name: str
    subband: int
    size: int
    md5: str
    adler32: str


def adler32_hex(path: Path) -> str:
    value = 1
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK_BYTES):
            value = zlib.adler32(block, value)
    return f"{value:08x}"


def md5_hex(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _visibilities(subband: int, baselines: int) -> np.ndarray:
    """A smooth sky signal across the band plus thermal noise, channels × baselines."""
    rng = np.random.default_rng(658346 * 1000 + subband)
    freqs = SUBBAND_0_HZ + subband * SUBBAND_WIDTH_HZ + np.arange(CHANNELS) * (
        SUBBAND_WIDTH_HZ / CHANNELS)
    delays_s = rng.uniform(-2e-6, 2e-6, baselines)
    amplitude = rng.uniform(0.5, 2.0, baselines)
    phase = 2 * np.pi * np.outer(freqs, delays_s)
    noise = rng.standard_normal((CHANNELS, baselines, 2), dtype=np.float32)
    vis = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    vis += (noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64) * np.float32(0.3)
    out: np.ndarray = vis
    return out


def _tar_bytes(subband: int, size_bytes: int) -> bytes:
    baselines = max(1, size_bytes // (CHANNELS * BYTES_PER_VISIBILITY))
    array = io.BytesIO()
    np.save(array, _visibilities(subband, baselines))
    meta = json.dumps({
        "observation": OBSERVATION, "subband": subband, "channels": CHANNELS,
        "baselines": baselines, "dtype": "complex64", "axes": ["channel", "baseline"],
        "frequency_hz": SUBBAND_0_HZ + subband * SUBBAND_WIDTH_HZ,
        "channel_width_hz": SUBBAND_WIDTH_HZ / CHANNELS,
    }, indent=2).encode()
    out = io.BytesIO()
    ms = f"{OBSERVATION}_SB{subband:03d}_uv.MS"
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in (("visibilities.npy", array.getvalue()), ("meta.json", meta)):
            info = tarfile.TarInfo(f"{ms}/{member}")
            info.size = len(data)
            info.mtime = 1_530_000_000  # the observation's era; keeps the tars reproducible
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_site(root: Path, site: str, subbands: list[int], size_bytes: int) -> list[ArchivedFile]:
    """Write ``subbands`` as tars under ``root/lta/<obs>/`` with the site's manifest.json."""
    folder = root / "lta" / OBSERVATION
    folder.mkdir(parents=True, exist_ok=True)
    files: list[ArchivedFile] = []
    for subband in subbands:
        data = _tar_bytes(subband, size_bytes)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        name = f"{OBSERVATION}_SB{subband:03d}_uv.MS_{md5[:8]}.tar"
        (folder / name).write_bytes(data)
        files.append(ArchivedFile(name, subband, len(data), md5, f"{zlib.adler32(data):08x}"))
    manifest = {"observation": OBSERVATION, "site": site, "files": [asdict(f) for f in files]}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return files


def read_visibilities(tar_path: Path) -> tuple[np.ndarray, dict[str, object]]:
    """The visibility array and meta.json of one subband tar."""
    with tarfile.open(tar_path) as tar:
        array: np.ndarray | None = None
        meta: dict[str, object] = {}
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            if fh is None:
                continue
            if member.name.endswith("/visibilities.npy"):
                array = np.load(io.BytesIO(fh.read()), allow_pickle=False)
            elif member.name.endswith("/meta.json"):
                meta = json.loads(fh.read())
    if array is None:
        raise ValueError(f"{tar_path.name}: no visibilities.npy inside")
    return array, meta
