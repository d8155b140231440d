"""The evaluator: upstream byte tables and counts (golden fixture), bpb, sliding windows."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from eval_dist_worker import SEQ_LEN, VOCAB, TinyLM, problem

from conftest import expected, fixture_dir
from golf_core.data import load_validation_tokens
from golf_core.evaluate import (
    _rank_slice,
    _windows,
    count_target_bytes,
    evaluate_bpb,
    load_byte_tables,
    token_nll,
)


class Uniform(torch.nn.Module):
    """Predicts the uniform distribution over the vocab (all logits zero)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, 1024)


@pytest.fixture(scope="module")
def bpb_dir():
    return fixture_dir("upstream_bpb")


@pytest.fixture(scope="module")
def sp(bpb_dir):
    return spm.SentencePieceProcessor(model_file=str(bpb_dir / "tok.model"))


@pytest.fixture(scope="module")
def tables(bpb_dir):
    return load_byte_tables(bpb_dir / "tok.model", 1024)


@pytest.fixture(scope="module")
def val_dir(bpb_dir, tmp_path_factory):
    """The fixture shard under its upstream name in a directory with no manifest."""
    d = tmp_path_factory.mktemp("val")
    shutil.copy(bpb_dir / "val_000000.bin", d / "fineweb_val_000000.bin")
    return d


def doc_bytes(ids: list[int], tables) -> int:
    """Bytes the rule gives a document read as [BOS] + ids."""
    stream = torch.tensor([1, *ids])
    return int(count_target_bytes(stream[:-1], stream[1:], tables).sum())


# ----------------------------------------------------------------------------- byte tables


def test_byte_tables_follow_the_piece_kinds(sp, tables):
    for i in (0, 1, 2, 3):  # pad, bos, eos, unk
        assert tables.base_bytes[i] == 0 and tables.is_boundary[i]
    assert sp.is_byte(4) and sp.is_byte(259)
    assert (tables.base_bytes[4:260] == 1).all() and not tables.has_leading_space[4:260].any()
    the = sp.piece_to_id("▁the")
    assert tables.base_bytes[the] == 3 and tables.has_leading_space[the]
    assert not tables.is_boundary[4:].any()


def test_byte_tables_past_the_tokenizer_vocab_are_empty_boundaries(bpb_dir):
    wide = load_byte_tables(bpb_dir / "tok.model", 1100)
    assert wide.base_bytes.shape == (1100,)
    assert (wide.base_bytes[1024:] == 0).all() and wide.is_boundary[1024:].all()


def test_byte_tables_reject_a_vocab_smaller_than_the_tokenizer(bpb_dir):
    with pytest.raises(ValueError, match=r"tokenizer has 1024 pieces but vocab_size=512"):
        load_byte_tables(bpb_dir / "tok.model", 512)


def test_byte_tables_name_a_missing_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer_path .*nope.model: no such file"):
        load_byte_tables(tmp_path / "nope.model", 1024)


# ----------------------------------------------------------------------------- golden counts


@pytest.mark.parametrize("seq_len", [64, 1024])
def test_token_and_byte_counts_match_upstream_exactly(val_dir, tables, seq_len):
    want = expected("upstream_bpb")["by_seq_len"][str(seq_len)]
    val = load_validation_tokens(val_dir, seq_len)
    assert val.numel() == want["val_tokens_after_trim"]
    got = evaluate_bpb(Uniform(), val, seq_len, tables, batch_seqs=16)
    assert got["tokens"] == want["token_count"]
    assert got["bytes"] == want["byte_count"]
    assert got["val_loss"] == pytest.approx(want["uniform_model_val_loss"], abs=1e-9)
    assert got["val_bpb"] == pytest.approx(want["uniform_model_val_bpb"], abs=1e-9)


def test_byte_count_of_each_document_is_its_decoded_utf8_length(bpb_dir, sp, tables):
    docs = json.loads((bpb_dir / "docs.json").read_text())
    for doc in docs:
        ids = sp.encode(doc)
        assert doc_bytes(ids, tables) == len(sp.decode(ids).encode("utf-8")), doc


def test_byte_count_equals_the_raw_utf8_length_of_already_normal_text(sp, tables):
    doc = "Le café coûte 3 € à Zürich, naïve façade."
    ids = sp.encode(doc)
    assert any(sp.is_byte(i) for i in ids)  # the accents come through byte fallback
    assert doc_bytes(ids, tables) == len(doc.encode("utf-8"))


def test_byte_count_follows_the_normalized_text_not_the_raw_one(sp, tables):
    doc = "two  spaces\tand a tab\nand \ufb01ne print"  # nmt_nfkc: "ﬁ" -> "fi", whitespace runs
    ids = sp.encode(doc)
    assert doc_bytes(ids, tables) == len("two spaces and a tab and fine print")
    assert doc_bytes(ids, tables) < len(doc.encode("utf-8"))


def test_leading_space_after_bos_is_not_counted(sp, tables):
    the = sp.piece_to_id("▁the")
    assert doc_bytes([the], tables) == 3 == len(sp.decode([the]))
    assert doc_bytes([the, the], tables) == 7  # "the the"


def test_a_stray_fallback_byte_counts_one_byte(sp, tables):
    lone = sp.piece_to_id("<0xC3>")  # half of a two-byte UTF-8 character
    assert doc_bytes([lone], tables) == 1
    assert sp.decode([lone]) == "\ufffd"  # decodes to the 3-byte replacement character


# ----------------------------------------------------------------------------- evaluate_bpb


def test_evaluate_matches_a_direct_float64_computation():
    tokens, tables = problem()
    model = TinyLM()
    x = tokens[:-1].reshape(-1, SEQ_LEN)
    y = tokens[1:].reshape(-1, SEQ_LEN)
    with torch.no_grad():
        nll = F.cross_entropy(model(x).double().flatten(0, 1), y.flatten(), reduction="none")
    n_bytes = int(count_target_bytes(x, y, tables).sum())
    got = evaluate_bpb(model, tokens, SEQ_LEN, tables, batch_seqs=3)
    assert got["tokens"] == y.numel() and got["bytes"] == n_bytes
    assert got["val_loss"] == pytest.approx(nll.mean().item(), rel=1e-6)
    want_bpb = nll.mean().item() / math.log(2) * y.numel() / n_bytes
    assert got["val_bpb"] == pytest.approx(want_bpb, rel=1e-6)


def test_token_nll_agrees_with_float64_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 1024, generator=g) * 8
    targets = torch.randint(0, 1024, (3, 50), generator=g)
    want = F.cross_entropy(logits.double().flatten(0, 1), targets.flatten(), reduction="none")
    got = token_nll(logits, targets)
    assert got.dtype == torch.float64 and got.shape == (3, 50)
    assert torch.allclose(got.flatten(), want, rtol=0, atol=1e-5)
    half = token_nll(logits.bfloat16(), targets)  # autocast logits are upcast first
    want_half = F.cross_entropy(logits.bfloat16().double().flatten(0, 1), targets.flatten(),
                                reduction="none")
    assert torch.allclose(half.flatten(), want_half, rtol=0, atol=1e-5)
    uniform = token_nll(torch.zeros(2, 1024), torch.tensor([0, 5]))
    assert uniform.tolist() == [math.log(1024)] * 2  # exact, unlike float32 cross-entropy


@pytest.mark.parametrize("stride", [None, 5])
def test_batch_size_does_not_change_the_result(stride):
    tokens, tables = problem()
    runs = [evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=b, stride=stride)
            for b in (1, 4, 1000)]
    for r in runs[1:]:  # to fp32 rounding: a GEMM may round rows by batch shape (AVX2 MKL)
        assert r["val_loss"] == pytest.approx(runs[0]["val_loss"], rel=1e-6)
        assert (r["tokens"], r["bytes"]) == (runs[0]["tokens"], runs[0]["bytes"])


def test_stride_equal_to_seq_len_is_the_non_overlapping_eval():
    tokens, tables = problem()
    blocks = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4)
    slide = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4, stride=SEQ_LEN)
    for key in ("val_loss", "val_bpb", "tokens", "bytes"):
        assert slide[key] == blocks[key]


def test_a_smaller_stride_scores_the_same_tokens_with_more_context():
    tokens, tables = problem()
    blocks = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4)
    slide = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4, stride=3)
    assert (slide["tokens"], slide["bytes"]) == (blocks["tokens"], blocks["bytes"])
    assert slide["val_loss"] != pytest.approx(blocks["val_loss"], rel=1e-6)  # context matters
    assert slide["windows"] > blocks["windows"]


@pytest.mark.parametrize("n_tokens,seq_len,stride", [(101, 16, 16), (101, 16, 5), (97, 8, 3),
                                                     (17, 16, 1), (50, 7, 7), (64, 10, 4)])
def test_sliding_windows_score_every_target_once_with_enough_context(n_tokens, seq_len, stride):
    scored = []
    for start, first in _windows(n_tokens, seq_len, stride):
        assert 0 <= start and start + seq_len <= n_tokens - 1
        targets = range(start + first + 1, start + seq_len + 1)
        assert first >= seq_len - stride or start == 0  # context = first + 1 inputs
        scored.extend(targets)
    assert sorted(scored) == list(range(1, n_tokens))


def test_an_untrimmed_stream_is_scored_to_its_last_token_by_the_sliding_eval():
    tokens, tables = problem(n_tokens=7 * SEQ_LEN + 6)
    slide = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4, stride=4)
    blocks = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4)
    assert slide["tokens"] == tokens.numel() - 1
    assert blocks["tokens"] == 7 * SEQ_LEN  # upstream drops the partial sequence


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_shares_partition_the_windows(world):
    items = list(range(23))
    shares = [_rank_slice(items, r, world) for r in range(world)]
    assert sum(shares, []) == items


def test_eval_mode_is_used_and_the_training_mode_restored():
    tokens, tables = problem()
    model = TinyLM().train()
    evaluate_bpb(model, tokens, SEQ_LEN, tables, batch_seqs=4)
    assert model.modes_seen and not any(model.modes_seen)
    assert model.training
    model.eval()
    evaluate_bpb(model, tokens, SEQ_LEN, tables, batch_seqs=4)
    assert not model.training


def test_model_kwargs_reach_the_model():
    tokens, tables = problem()
    plain = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4)
    hot = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4,
                       model_kwargs={"temperature": 1e6})
    assert hot["val_loss"] == pytest.approx(math.log(VOCAB), abs=1e-4)
    assert plain["val_loss"] != pytest.approx(hot["val_loss"], abs=1e-3)


def test_result_reports_its_speed():
    tokens, tables = problem()
    got = evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4)
    assert got["seconds"] > 0
    assert got["tokens_per_s"] == pytest.approx(got["tokens"] / got["seconds"])


@pytest.mark.parametrize("stride,match", [(0, r"stride=0 must be in \[1, seq_len=16\]"),
                                          (17, r"stride=17 must be in \[1, seq_len=16\]")])
def test_bad_stride_is_rejected(stride, match):
    tokens, tables = problem()
    with pytest.raises(ValueError, match=match):
        evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4, stride=stride)


def test_a_stream_shorter_than_one_sequence_is_rejected():
    tokens, tables = problem(n_tokens=SEQ_LEN)
    with pytest.raises(ValueError, match=r"val_tokens has 16 tokens, fewer than seq_len=16 \+ 1"):
        evaluate_bpb(TinyLM(), tokens, SEQ_LEN, tables, batch_seqs=4)
