"""Dataset checks before a run: the shards and tokenizer a config names, and their agreement.

`load_data(mcfg, tcfg)` finds the train/val shards (`data_path`, or the default dataset) and
the SentencePiece tokenizer (`tokenizer_path`, or the one beside the shards), checks every
shard's header, that the tokenizer's vocabulary equals the model's `vocab_size`, that no token
id in the validation stream or the first train shard reaches past it, and that the validation
set holds `train_seq_len`; it returns a `Data` (the paths, the validation tokens and the
per-token byte tables that val_bpb needs). Any mismatch is a ConfigError that names the setting
at fault. Reads only; writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from golf_core import paths
from golf_core.config import ConfigError, ModelConfig, TrainConfig
from golf_core.data import (
    check_shard,
    default_tokenizer_path,
    load_validation_tokens,
    read_shard,
    shard_files,
)
from golf_core.evaluate import load_byte_tables


@dataclass
class Data:
    data_path: Path
    tokenizer_path: Path
    val_tokens: torch.Tensor
    tables: Any  # evaluate.ByteTables


def _tokenizer_vocab(path: Path) -> int:
    import sentencepiece as spm

    try:
        return int(spm.SentencePieceProcessor(model_file=str(path)).vocab_size())
    except (OSError, RuntimeError) as e:
        raise ConfigError(f"tokenizer_path {path}: not a SentencePiece model ({e})") from None


def load_data(mcfg: ModelConfig, tcfg: TrainConfig) -> Data:
    """Find shards and tokenizer, load the val tokens and byte tables; check they agree with
    the model (vocab) and the run (seq_len). ConfigError names the setting at fault."""
    data_path = Path(tcfg.data_path) if tcfg.data_path else paths.default_dataset_dir()
    hint = "" if tcfg.data_path else " (run `python -m golf_core.data prepare` to make it)"
    try:
        train_files = shard_files(data_path, "train")
        tok = (Path(tcfg.tokenizer_path) if tcfg.tokenizer_path
               else default_tokenizer_path(data_path))
    except FileNotFoundError as e:
        raise ConfigError(f"{e}{hint}") from None
    if not tok.is_file():
        raise ConfigError(f"tokenizer_path {tok}: no such file")
    n_pieces = _tokenizer_vocab(tok)
    if n_pieces != mcfg.vocab_size:
        raise ConfigError(f"vocab_size={mcfg.vocab_size} disagrees with the tokenizer {tok} "
                          f"({n_pieces} pieces)")
    try:  # every shard's header and size (cheap), train and val alike, before any is read
        for f in [*train_files, *shard_files(data_path, "val")]:
            check_shard(f)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"data_path: {e}") from None
    try:
        val = load_validation_tokens(data_path, tcfg.train_seq_len, tcfg.val_max_tokens)
    except ValueError as e:
        raise ConfigError(f"train_seq_len={tcfg.train_seq_len} is too long for the validation "
                          f"set (val_max_tokens={tcfg.val_max_tokens}): {e}") from None
    # the first train shard and the val stream stand in for all shards (reading every
    # FineWeb shard would take minutes)
    first_train = (train_files[0].name, read_shard(train_files[0]))
    for name, tokens in (("validation tokens", val), first_train):
        top = int(tokens.to(torch.int32).max())
        if top >= mcfg.vocab_size:
            raise ConfigError(f"vocab_size={mcfg.vocab_size} but the {name} in {data_path} "
                              f"hold token id {top}")
    return Data(data_path, tok, val, load_byte_tables(tok, mcfg.vocab_size))
