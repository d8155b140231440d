"""Helper for tests/test_eval_distributed.py and tests/test_evaluate.py: a tiny deterministic
language model, a deterministic eval problem, and (run under torchrun) a gloo worker that
evaluates it and writes each rank's result to <out_dir>/rank<r>.json.

    python -m torch.distributed.run --standalone --nproc_per_node=2 eval_dist_worker.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from golf_core.evaluate import ByteTables, evaluate_bpb

VOCAB = 64
SEQ_LEN = 16


class TinyLM(nn.Module):
    """Embedding -> causal running mean -> linear head: logits depend on the whole prefix, so
    how much context a token gets changes its loss (sliding windows differ from blocks)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab, dim, generator=g))
        self.head = nn.Parameter(torch.randn(dim, vocab, generator=g))
        self.modes_seen: list[bool] = []  # self.training at each forward

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        self.modes_seen.append(self.training)
        h = self.emb[x]  # (B, T, D)
        steps = torch.arange(1, x.shape[1] + 1, device=x.device)
        h = h.cumsum(1) / steps[:, None]  # (B, T, D) mean of the prefix
        return (h @ self.head) / temperature  # (B, T, V)


def problem(n_tokens: int = 7 * SEQ_LEN + 1) -> tuple[torch.Tensor, ByteTables]:
    """Deterministic val tokens and byte tables (some boundary ids, some leading spaces)."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (n_tokens,), generator=g)
    tables = ByteTables(
        base_bytes=torch.randint(0, 4, (VOCAB,), generator=g).to(torch.int16),
        has_leading_space=torch.rand(VOCAB, generator=g) < 0.4,
        is_boundary=torch.arange(VOCAB) < 3,
    )
    return tokens, tables


def run_all(batch_seqs: int = 2) -> dict[str, dict]:
    """The evaluations the distributed test compares: blocks, and a sliding window."""
    tokens, tables = problem()
    model = TinyLM()
    return {
        "blocks": evaluate_bpb(model, tokens, SEQ_LEN, tables, batch_seqs=batch_seqs),
        "sliding": evaluate_bpb(model, tokens, SEQ_LEN, tables, batch_seqs=batch_seqs, stride=5),
    }


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    try:
        results = run_all()
        rank = dist.get_rank()
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
