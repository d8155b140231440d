"""Token data as upstream lays it out: the shard format, token loaders, a prepared directory.

Follows the data section of upstream parameter-golf `train_gpt.py` (`load_data_shard`,
`TokenStream`, `DistributedTokenLoader`, `load_validation_tokens`) and the shard layout written
by its `data/` download scripts, so FineWeb sp1024 shards and `fineweb_1024_bpe.model` work
unchanged: point `data_path` / `tokenizer_path` at them. Nothing here needs our manifest.

Takes shard files or a directory of `fineweb_{train,val}_*.bin` shards; returns tokens as torch
tensors (`read_shard`, `load_validation_tokens`, the loaders' `[B, T]` batches) and finds a
directory's tokenizer (`default_tokenizer_path`) and the `manifest.json` golf_core.corpus wrote
(`load_manifest`). `write_shard` is the one writer. Ours on top of upstream: seeded random
windows and a resumable loader state.

    python -m golf_core.data prepare [--corpus PATH] [--out DIR] [--vocab-size N] ...

makes such a directory from a text corpus (golf_core.corpus).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------- shard format

SHARD_MAGIC = 20240520  # upstream header[0]
SHARD_VERSION = 1  # upstream header[1]
HEADER_INTS = 256  # header = 256 little-endian int32 = 1024 bytes; header[2] = token count
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1  # every document is [BOS] + ids, no EOS (upstream)


def _read_header(path: Path) -> int:
    """Validate a shard's header and size; return its token count."""
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(
            f"{path}: truncated header: file has {size} bytes, a shard header is {HEADER_BYTES}"
        )
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ValueError(
            f"{path}: bad magic {int(header[0])}, expected {SHARD_MAGIC} (not a shard)"
        )
    if int(header[1]) != SHARD_VERSION:
        raise ValueError(f"{path}: bad version {int(header[1])}, expected {SHARD_VERSION}")
    n = int(header[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise ValueError(
            f"{path}: size mismatch: header says {n} tokens ({HEADER_BYTES + 2 * n} bytes), "
            f"file has {size} bytes"
        )
    return n


def check_shard(path: str | Path) -> int:
    """Validate a shard's header and size without reading its tokens; its token count.
    ValueError naming the file and the fault."""
    return _read_header(Path(path))


def read_shard(path: str | Path) -> torch.Tensor:
    """The tokens of one shard as a 1-D uint16 tensor (upstream `load_data_shard`)."""
    path = Path(path)
    n = _read_header(path)
    tokens = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)
    return torch.from_numpy(tokens.astype(np.uint16, copy=False))


def write_shard(path: str | Path, tokens: torch.Tensor | np.ndarray | Sequence[int]) -> None:
    """Write `tokens` as an upstream shard (temp name, then rename)."""
    path = Path(path)
    arr = tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tuple(arr.shape)}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise ValueError(
            f"{path}: token ids must lie in [0, 65535] to fit uint16, "
            f"got min {int(arr.min())} max {int(arr.max())}"
        )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, arr.size)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(arr.astype("<u2").tobytes())
    os.replace(tmp, path)


def shard_files(data_path: str | Path, split: str) -> list[Path]:
    """`fineweb_{split}_*.bin` in `data_path`, sorted (upstream globs and sorts the same way)."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise FileNotFoundError(f"data_path {data_path}: no such directory")
    files = sorted(data_path.glob(f"fineweb_{split}_*.bin"))
    if not files:
        raise FileNotFoundError(f"data_path {data_path}: no fineweb_{split}_*.bin shards")
    return files


def load_validation_tokens(
    data_path: str | Path, seq_len: int, max_tokens: int = 0
) -> torch.Tensor:
    """All val shards concatenated (int64), capped at `max_tokens` (0 = all), then trimmed to
    `((n-1)//seq_len)*seq_len + 1` tokens so it splits into whole sequences plus one target."""
    files = shard_files(data_path, "val")
    tokens = torch.cat([read_shard(f) for f in files]).to(torch.int64)
    if max_tokens > 0:
        tokens = tokens[:max_tokens]
    usable = ((tokens.numel() - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ValueError(
            f"validation set in {data_path} has {tokens.numel()} tokens, shorter than "
            f"seq_len={seq_len} + 1"
        )
    return tokens[: usable + 1]


# ----------------------------------------------------------------------------- loaders


class TokenStream:
    """Shards read in order as one endless stream: `take(n)` returns the next n tokens,
    moving to the next file when one runs out and wrapping from the last to the first."""

    def __init__(self, files: Sequence[str | Path]) -> None:
        if not files:
            raise ValueError("TokenStream needs at least one shard file")
        self.files = [Path(f) for f in files]
        self.file_idx = 0
        self.pos = 0
        self.tokens = read_shard(self.files[0])

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = read_shard(self.files[self.file_idx])
        self.pos = 0

    def take(self, n: int) -> torch.Tensor:
        """The next n tokens (uint16), contiguous in the stream."""
        chunks: list[torch.Tensor] = []
        remaining = n
        while remaining > 0:
            avail = self.tokens.numel() - self.pos
            if avail <= 0:
                self._advance_file()
                continue
            k = min(remaining, avail)
            chunks.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            remaining -= k
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def state_dict(self) -> dict[str, int]:
        return {"file_idx": self.file_idx, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        file_idx, pos = int(state["file_idx"]), int(state["pos"])
        if not 0 <= file_idx < len(self.files):
            raise ValueError(f"stream state: file_idx {file_idx} out of range ({len(self.files)})")
        if file_idx != self.file_idx:
            self.tokens = read_shard(self.files[file_idx])
            self.file_idx = file_idx
        if not 0 <= pos <= self.tokens.numel():
            raise ValueError(f"stream state: pos {pos} beyond {self.files[file_idx]}")
        self.pos = pos


class DistributedTokenLoader:
    """Batches for one rank (upstream `DistributedTokenLoader`).

    Each call takes one global span of `world_size * (local_tokens + 1)` tokens from the
    stream; rank r gets the r-th slice, x = slice[:-1] and y = slice[1:] as [B, T] int64.
    With `seed`, each sequence is instead a window of T+1 tokens at a random offset drawn from
    `default_rng([seed, batch_index])`, so every rank sees the same global batch and a resumed
    run the same windows. `data_path` is a directory (its `fineweb_train_*.bin`) or a glob.
    """

    def __init__(
        self,
        data_path: str | Path,
        rank: int,
        world_size: int,
        device: torch.device | str,
        seed: int | None = None,
    ) -> None:
        if "*" in str(data_path):
            files = sorted(Path(p) for p in glob.glob(str(data_path)))
            if not files:
                raise FileNotFoundError(f"data_path {data_path}: no files match")
        else:
            files = shard_files(data_path, "train")
        self.files = files
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.seed = seed
        self.batches = 0  # next_batch calls so far (seeds the random windows)
        self.stream = TokenStream(files) if seed is None else None
        self._maps: list[np.memmap] = []

    def next_batch(
        self, global_tokens: int, seq_len: int, grad_accum_steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        denom = self.world_size * grad_accum_steps * seq_len
        if global_tokens <= 0 or global_tokens % denom:
            raise ValueError(
                f"train_batch_tokens={global_tokens} must be a positive multiple of world_size "
                f"({self.world_size}) * grad_accum_steps ({grad_accum_steps}) * seq_len "
                f"({seq_len}) = {denom}"
            )
        local_tokens = global_tokens // (self.world_size * grad_accum_steps)
        if self.stream is not None:
            span = local_tokens + 1
            chunk = self.stream.take(span * self.world_size)
            local = chunk[self.rank * span : (self.rank + 1) * span].to(torch.int64)
            x, y = local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len)  # (B, T)
        else:
            windows = self._random_windows(local_tokens // seq_len, seq_len)  # (B, T+1)
            x, y = windows[:, :-1], windows[:, 1:]
        self.batches += 1
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _random_windows(self, local_seqs: int, seq_len: int) -> torch.Tensor:
        """This rank's share of one global draw of windows, each inside a single shard."""
        if not self._maps:
            self._maps = [
                np.memmap(f, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(_read_header(f),))
                for f in self.files
            ]
        starts_per_file = np.array([max(len(m) - seq_len, 0) for m in self._maps])
        total = int(starts_per_file.sum())
        if total == 0:
            raise ValueError(f"no train shard in {self.files[0].parent} holds seq_len+1 tokens")
        rng = np.random.default_rng([self.seed, self.batches])
        picks = rng.integers(0, total, size=self.world_size * local_seqs)
        mine = picks[self.rank * local_seqs : (self.rank + 1) * local_seqs]
        bounds = np.cumsum(starts_per_file)
        file_of = np.searchsorted(bounds, mine, side="right")
        offsets = mine - (bounds[file_of] - starts_per_file[file_of])
        rows = [self._maps[f][o : o + seq_len + 1] for f, o in zip(file_of, offsets)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def state_dict(self) -> dict[str, Any]:
        """Plain ints/lists: enough to continue the exact same data order after a resume."""
        stream = self.stream.state_dict() if self.stream is not None else {}
        return {"files": [f.name for f in self.files], "seed": self.seed,
                "batches": self.batches, **stream}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [f.name for f in self.files]
        if list(state["files"]) != names:
            raise ValueError(f"loader state is for shards {state['files']}, found {names}")
        if state["seed"] != self.seed:
            raise ValueError(f"loader state has seed {state['seed']}, this loader {self.seed}")
        self.batches = int(state["batches"])
        if self.stream is not None:
            self.stream.load_state_dict(state)


# ----------------------------------------------------------------------------- prepared directories

MANIFEST = "manifest.json"


def default_tokenizer_path(data_path: str | Path) -> Path:
    """`tokenizer.model` in `data_path`, else the tokenizer its manifest names."""
    data_path = Path(data_path)
    if (data_path / "tokenizer.model").is_file():
        return data_path / "tokenizer.model"
    if (data_path / "manifest.json").is_file():
        tok = data_path / load_manifest(data_path)["tokenizer"]["file"]
        if tok.is_file():
            return tok
    raise FileNotFoundError(
        f"data_path {data_path}: no tokenizer.model; pass tokenizer_path "
        "(e.g. .../fineweb_1024_bpe.model)"
    )


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The `manifest.json` that `prepare` wrote into `data_dir`."""
    path = Path(data_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        msg = f"{path}: no manifest (run `python -m golf_core.data prepare`)"
        raise FileNotFoundError(msg) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


if __name__ == "__main__":  # the CLI is corpus preparation's: `python -m golf_core.data prepare`
    from golf_core.corpus import main

    sys.exit(main())
