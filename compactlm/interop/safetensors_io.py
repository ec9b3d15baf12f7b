"""safetensors files in: one file or the shards an index lists (pickle files are never read).

The format (huggingface/safetensors README): 8 bytes little-endian u64 N, N bytes of JSON header
`{name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`,
then the tensors' bytes, row-major little-endian, offsets relative to the end of the header.

`SafetensorsReader` reads the headers only, then each tensor's bytes when it is looked up,
with one `readinto` into the array it returns: no memory map (its file pages would count in the
process's resident set for as long as a tensor is alive), no intermediate copy, nothing kept.
So an import holds, besides what it builds, at most the tensors of one parameter at a time.
(safetensors' own `safe_open(framework="flax")`, the only framework with bfloat16 that needs no
torch, costs ~3x a tensor's bytes in RSS: 817 MB for Qwen2.5-0.5B's 272 MB embedding.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from compactlm.interop.hf_config import InteropError
from compactlm.train.metrics import StageProgress

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
# Above this many bytes of weights, import and export say what they are doing on stderr: a
# per-tensor bar (or ~10 lines off a terminal) while reading weights, a line per stage with its
# time. Below it they take seconds and stay quiet: nano to small (12.7M params, 51 MB in f32);
# base (122M) and any Hub Llama are above.
PROGRESS_BYTES = 64 * 2**20

# safetensors dtype names -> numpy dtypes (little-endian, as the format stores them; JAX hosts
# are little-endian). bfloat16 and the float8s come from ml_dtypes, as in JAX.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# A header larger than this is not a safetensors header (the library's own limit: 100 MB).
_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: file, absolute byte offset, count, dtype and shape."""

    path: Path
    offset: int
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file holds (its header only), validated like the library does:
    known dtypes, offsets inside the file that match shape × itemsize; else InteropError."""
    size = path.stat().st_size

    def bad(why: str) -> InteropError:
        return InteropError(f"{path} is not a readable safetensors file ({why})")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(_MAX_HEADER, size - 8):
            raise bad(f"header length {n:,} bytes does not fit the file's {size:,}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    start, data = 8 + n, size - 8 - n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            kind = "an unknown dtype" if isinstance(e, KeyError) else "a malformed entry"
            raise bad(f"tensor {name} has {kind}: {info!r:.200}") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end > data:
            raise bad(f"tensor {name} ends at byte {end:,} of {data:,}: the file is cut short")
        if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != nbytes:
            raise bad(
                f"tensor {name}: data_offsets {[begin, end]} hold {end - begin:,} bytes, shape "
                f"{list(shape)} of {info['dtype']} needs {nbytes:,}"
            )
        entries[name] = TensorEntry(path, start + begin, nbytes, dtype, shape)
    return entries


def weight_files(hf_dir: Path) -> list[Path]:
    """The safetensors files of `hf_dir`: the shards its index.json lists, else *.safetensors."""
    index = hf_dir / HF_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InteropError(f"{index} is not a safetensors index (weight_map): {e}") from e
        files = sorted({hf_dir / f for f in weight_map.values()})
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(
            p.name for p in hf_dir.glob("*.pt*")
        )
        hint = f" (found {other}: pickle files are never loaded)" if other else ""
        raise InteropError(f"no *.safetensors weights in {hf_dir}{hint}")
    for path in files:
        if not path.is_file():
            raise InteropError(f"{path.name} (listed in {HF_INDEX}) is missing")
    return files


class SafetensorsReader(Mapping[str, np.ndarray]):
    """Every tensor of `hf_dir` by name, read from disk at each lookup (module docstring).

    Lookups return a fresh, writable array each time (nothing is cached: the caller decides
    what stays alive). `on_read(name)` is called after each read (progress displays).
    """

    def __init__(self, hf_dir: Path, on_read: Callable[[str], None] | None = None) -> None:
        self.files = weight_files(hf_dir)
        self.on_read = on_read
        self._entries: dict[str, TensorEntry] = {}
        for path in self.files:
            for name, entry in read_header(path).items():
                if name in self._entries:
                    raise InteropError(f"tensor {name} appears in two files ({path.name})")
                self._entries[name] = entry

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors (the weights' size on disk, headers aside)."""
        return sum(e.nbytes for e in self._entries.values())

    def entry(self, name: str) -> TensorEntry:
        """Where `name` is (KeyError if it is not in the checkpoint)."""
        return self._entries[name]

    def __getitem__(self, name: str) -> np.ndarray:
        e = self._entries[name]
        out = np.empty(e.shape, e.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))  # (a 0-d array reshapes to [1])
        with open(e.path, "rb", buffering=0) as f:
            f.seek(e.offset)
            done = 0
            while done < e.nbytes:  # readinto may return less than asked (large reads)
                got = f.readinto(view[done:])
                if not got:
                    raise InteropError(
                        f"{e.path} is not a readable safetensors file (tensor {name} is cut "
                        f"short at byte {e.offset + done:,})"
                    )
                done += got
        if self.on_read is not None:
            self.on_read(name)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def read_safetensors(hf_dir: Path) -> dict[str, Any]:
    """All tensors of `hf_dir` (model.safetensors, or the shards its index.json lists) in memory,
    with a progress display above PROGRESS_BYTES. Import reads lazily instead (SafetensorsReader);
    this is for callers that want everything at once."""
    reader = SafetensorsReader(hf_dir)
    n = len(reader.files)
    bar = StageProgress(
        f"import: reading weights from {n} file{'s' * (n > 1)}",
        total=len(reader),
        unit="tensor",
        lines=10,
        enabled=reader.nbytes > PROGRESS_BYTES,
    )
    reader.on_read = lambda _: bar.advance()
    with bar:
        return dict(reader.items())
