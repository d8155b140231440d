"""Validation loss and bits per byte, with the upstream tokenizer-agnostic byte rule.

Follows `build_sentencepiece_luts` and `eval_val` of upstream parameter-golf `train_gpt.py`:
per-token byte tables from the SentencePiece model, float64 sums of loss, tokens and bytes,
all-reduced across ranks, `val_bpb = (val_loss / ln 2) * tokens / bytes`. Ours on top: the
model returns logits and the cross-entropy is computed here (so any model with
`model(input_ids, **model_kwargs) -> [B, T, V]` can be scored, e.g. with a test-time
recurrence depth), and a sliding-window eval that scores each token once with at least
`seq_len - stride` tokens of context.

The byte rule. A target token t after a token p counts
`base_bytes[t] + (has_leading_space[t] and not is_boundary[p])` bytes, where base_bytes is the
UTF-8 length of t's piece without its leading U+2581, 1 for a byte-fallback piece and 0 for a
control/unknown/unused piece. Summed over `[BOS] + encode(doc)` this equals
`len(sp.decode(ids).encode("utf-8"))` for ordinary text, except:
  * it counts the *normalized* text: nmt_nfkc maps compatibility characters (U+FB01 -> "fi",
    full-width -> ASCII) and whitespace collapsing turns newlines, tabs and runs of spaces
    into one space and drops leading/trailing whitespace, so it can differ from the raw
    document's UTF-8 length;
  * a leading U+2581 on the first token after BOS is not counted (BOS is a boundary);
    `sp.decode` drops that space too, so the two still agree;
  * byte-fallback pieces count 1 byte each: equal to the decoded length when they form valid
    UTF-8, but a stray byte decodes to U+FFFD (3 bytes) and counts 1;
  * unknown and control tokens count 0 (an unknown decodes to " ⁇ ").
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class ByteTables:
    """Per-token-id lookup tables of the byte rule, each of length vocab_size."""

    base_bytes: torch.Tensor  # int16
    has_leading_space: torch.Tensor  # bool
    is_boundary: torch.Tensor  # bool

    def to(self, device: torch.device | str) -> ByteTables:
        return ByteTables(*(t.to(device) for t in
                            (self.base_bytes, self.has_leading_space, self.is_boundary)))


def byte_tables_from_processor(sp: Any, vocab_size: int) -> ByteTables:
    """Tables for a loaded `SentencePieceProcessor`; ids past its vocab count 0 and are
    boundaries (upstream `build_sentencepiece_luts`)."""
    sp_vocab = int(sp.vocab_size())
    if sp_vocab > vocab_size:
        raise ValueError(
            f"tokenizer has {sp_vocab} pieces but vocab_size={vocab_size}: the model could not "
            "predict all of them"
        )
    base_bytes = torch.zeros(vocab_size, dtype=torch.int16)
    has_leading_space = torch.zeros(vocab_size, dtype=torch.bool)
    is_boundary = torch.ones(vocab_size, dtype=torch.bool)
    for i in range(sp_vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.encode("utf-8"))
    return ByteTables(base_bytes, has_leading_space, is_boundary)


def load_byte_tables(tokenizer_path: str | Path, vocab_size: int) -> ByteTables:
    """Byte tables of a SentencePiece `.model` file (ours or upstream's fineweb_1024_bpe)."""
    import sentencepiece as spm

    path = Path(tokenizer_path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer_path {path}: no such file")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"tokenizer_path {path}: not a SentencePiece model ({e})") from None
    return byte_tables_from_processor(sp, vocab_size)


def count_target_bytes(
    prev_ids: torch.Tensor, target_ids: torch.Tensor, tables: ByteTables
) -> torch.Tensor:
    """Bytes each target stands for (int16, same shape as target_ids): upstream rule."""
    leading = tables.has_leading_space[target_ids] & ~tables.is_boundary[prev_ids]
    return tables.base_bytes[target_ids] + leading.to(torch.int16)


# ----------------------------------------------------------------------------- windows


def _windows(n_tokens: int, seq_len: int, stride: int | None) -> list[tuple[int, int]]:
    """(start, first scored position) of each window of seq_len inputs + seq_len targets.

    stride None: upstream's non-overlapping sequences over (n-1)//seq_len whole sequences.
    stride s: windows at 0, s, 2s, ...; the first scores all seq_len targets, the others their
    last s, and a final window ending at the last token scores whatever is left, so every
    target 1..n-1 is scored exactly once with at least seq_len - s tokens of context.
    """
    n_targets = n_tokens - 1
    if n_targets < seq_len:
        raise ValueError(f"val_tokens has {n_tokens} tokens, fewer than seq_len={seq_len} + 1")
    if stride is None:
        return [(i * seq_len, 0) for i in range(n_targets // seq_len)]
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride={stride} must be in [1, seq_len={seq_len}]")
    out = [(0, 0)]
    scored = seq_len  # targets 1..scored are done
    start = stride
    while start + seq_len <= n_targets:
        out.append((start, seq_len - stride))
        scored = start + seq_len
        start += stride
    if scored < n_targets:  # the tail: a window ending at the last token
        start = n_targets - seq_len
        out.append((start, seq_len - (n_targets - scored)))
    return out


def _rank_slice(items: list, rank: int, world: int) -> list:
    """A contiguous share of `items` for `rank` (upstream splits sequences this way)."""
    n = len(items)
    return items[(n * rank) // world : (n * (rank + 1)) // world]


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in nats, float64, from float32 logits [..., V].

    logsumexp = max + log(sum(exp(z - max))): the exp/sum over the vocab run in float32 (the
    cost), the final log and subtraction in float64. F.cross_entropy in float32 rounds its
    result to float32 (~2e-8 off for ln 1024, so a uniform model would miss its exact bpb);
    float64 throughout costs ~4x on CPU, this ~1.3x.
    """
    z = logits.float()
    top = z.amax(-1, keepdim=True)  # (..., 1)
    sum_exp = (z - top).exp_().sum(-1)  # (...)
    picked = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    return (top.squeeze(-1) - picked).double() + sum_exp.double().log()


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


def evaluate_bpb(
    model: nn.Module,
    val_tokens: torch.Tensor,
    seq_len: int,
    tables: ByteTables,
    *,
    batch_seqs: int,
    stride: int | None = None,
    device: torch.device | str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """val_loss (nats/token) and val_bpb of `model` on the validation stream.

    stride None is upstream's eval (whole sequences of seq_len, as trimmed by
    `load_validation_tokens`); an integer stride is the sliding-window eval. `batch_seqs` is
    the number of sequences/windows per forward on this rank. Under torch.distributed each
    rank scores a contiguous share of the windows and the sums are all-reduced, so every rank
    returns the same numbers. The model is put in eval mode and its mode restored after.
    """
    if batch_seqs <= 0:
        raise ValueError(f"batch_seqs={batch_seqs} must be positive")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    all_windows = _windows(val_tokens.numel(), seq_len, stride)
    windows = _rank_slice(all_windows, rank, world)
    device = torch.device(device) if device is not None else _model_device(model, val_tokens.device)
    tables = tables.to(device)
    tokens = val_tokens.to(torch.int64)
    offsets = torch.arange(seq_len + 1)
    positions = torch.arange(seq_len, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, tokens, bytes
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for b in range(0, len(windows), batch_seqs):
                starts, firsts = zip(*windows[b : b + batch_seqs])
                rows = tokens[torch.tensor(starts)[:, None] + offsets]  # (B, T+1)
                rows = rows.to(device, non_blocking=True)
                x, y = rows[:, :-1], rows[:, 1:]  # (B, T)
                logits = model(x, **(model_kwargs or {}))  # (B, T, V)
                nll = token_nll(logits, y)  # (B, T) float64
                scored = positions >= torch.tensor(firsts, device=device)[:, None]  # (B, T)
                sums[0] += nll[scored].sum()
                sums[1] += scored.sum()
                sums[2] += count_target_bytes(x, y, tables)[scored].sum(dtype=torch.float64)
    finally:
        model.train(was_training)
    if distributed:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    seconds = time.perf_counter() - t0
    loss_sum, n_tokens, n_bytes = sums.tolist()
    val_loss = loss_sum / n_tokens
    return {
        "val_loss": val_loss,
        "val_bpb": (val_loss / math.log(2.0)) * n_tokens / n_bytes,
        "tokens": int(n_tokens),
        "bytes": int(n_bytes),
        "seq_len": seq_len,
        "stride": stride,
        "windows": len(all_windows),
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds if seconds > 0 else float("inf"),
    }
