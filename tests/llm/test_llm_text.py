"""aensae.llm.text: sources, the split by document hash, packing and the shuffle buffer."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from aensae._validation import InputError  # noqa: E402
from aensae.llm.text import (  # noqa: E402
    WindowStream,
    check_not_empty,
    open_text,
    split_of,
    tokenizer_info,
)


@pytest.fixture(scope="module")
def tok(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


def _docs(tmp_path, n=40):
    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}: " + "word " * (5 + i % 7))
    return folder


def test_split_by_document_hash(tmp_path):
    for doc_id in ("a", "stdlib:os.py", "x:17"):
        u = int(hashlib.sha256(doc_id.encode()).hexdigest()[:16], 16) / 2**64
        assert split_of(doc_id, 0.3) == ("eval" if u < 0.3 else "train")
    src = open_text(str(_docs(tmp_path, 200)))
    ids = [d.id for d in src.documents()]
    ev = {i for i in ids if split_of(i, 0.2) == "eval"}
    assert 20 <= len(ev) <= 60  # about 40 of 200


def test_local_formats_order_and_non_utf8(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    (root / "b.md").write_text("# markdown")
    (root / "a.txt").write_text("plain text")
    (root / "c.jsonl").write_text(json.dumps({"text": "line one"}) + "\n\n"
                                  + json.dumps({"text": "line two", "id": 3}) + "\n")
    pq.write_table(pa.table({"text": ["row zero", "row one"], "n": [0, 1]}),
                   root / "sub" / "d.parquet")
    (root / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    (root / ".hidden.txt").write_text("never read")
    (root / "notes.csv").write_text("ignored")
    src = open_text(str(root))
    docs = [(d.id, d.text) for d in src.documents()]
    assert docs == [("a.txt", "plain text"), ("b.md", "# markdown"), ("c.jsonl:1", "line one"),
                    ("c.jsonl:3", "line two"), ("sub/d.parquet:0", "row zero"),
                    ("sub/d.parquet:1", "row one")]
    assert src.skipped_non_utf8 == 1
    one = open_text(str(root / "a.txt"))
    assert [d.text for d in one.documents()] == ["plain text"]


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        open_text(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"--text .*empty: the folder holds no"):
        open_text(str(tmp_path / "empty"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("   \n")
    src = open_text(str(tmp_path / "blank"))
    with pytest.raises(InputError, match=r"--text .*blank: no text in the train split"):
        check_not_empty(src, "train", 0.05)
    (tmp_path / "j.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(InputError, match=r"--text-column text: .*j.jsonl:1 has no such field"):
        list(open_text(str(tmp_path / "j.jsonl")).documents())
    (tmp_path / "k.jsonl").write_text('{"text": "x"}\nnot json\n')
    with pytest.raises(InputError, match=r"k.jsonl:2 is not valid JSON"):
        list(open_text(str(tmp_path / "k.jsonl")).documents())
    with pytest.raises(InputError, match="hf:NAME"):
        open_text("hf:")


def test_hf_source_streams_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    seen = {}

    def fake_load(name, config, split, streaming):
        seen.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"content": "first"}, {"content": "second", "id": "z"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    src = open_text("hf:owner/data:cfg:validation", text_column="content")
    docs = [(d.id, d.text) for d in src.documents()]
    assert seen == {"name": "owner/data", "config": "cfg", "split": "validation",
                    "streaming": True}
    assert docs == [("owner/data:cfg:validation:0", "first"),
                    ("owner/data:cfg:validation:z", "second")]
    assert open_text("hf:owner/data").hf == ("owner/data", None, "train")


def test_python_docs_fixed_order():
    from pydoc_data.topics import topics

    src = open_text("python-docs")
    docs = src.documents()
    first = [next(docs) for _ in range(len(topics))]
    assert [d.id for d in first] == [f"pydoc_data.topics:{k}" for k in sorted(topics)]
    files = [next(docs).id for _ in range(200)]
    assert all(f.startswith("stdlib:") for f in files)
    assert files == sorted(files)
    assert not any("/test/" in f or f.startswith("stdlib:test/") for f in files)


def _flat(src, tok, split, eval_fraction):
    flat = []
    for d in src.documents():
        if split_of(d.id, eval_fraction) == split:
            flat += tok(d.text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return flat


def test_packing_by_hand(tmp_path, tok):
    folder = _docs(tmp_path, 30)
    src = open_text(str(folder))
    info = tokenizer_info(tok, prepend_bos=False)
    assert info.prefix == () and info.separator == tok.eos_token_id
    assert set(info.special_ids) >= {tok.eos_token_id, tok.bos_token_id}
    stream = WindowStream(src, tok, 16, split="train", eval_fraction=0.2, buffer=1,
                          prepend_bos=False)
    got = np.stack(list(stream))
    flat = _flat(src, tok, "train", 0.2)
    n = len(flat) // 16
    assert got.shape == (n, 16)
    np.testing.assert_array_equal(got, np.array(flat[:n * 16]).reshape(n, 16))
    mask = info.keep_mask(got)
    assert (mask == (got != tok.eos_token_id)).all()
    assert info.keep_mask(got, keep_special=True).all()
    # the eval split reads other documents only
    ev = WindowStream(src, tok, 16, split="eval", eval_fraction=0.2, buffer=1)
    list(ev)
    assert ev.documents + stream.documents == 30
    # default: SmolLM2's tokenizer adds nothing itself, so each window starts with BOS
    assert tokenizer_info(tok).prefix == (tok.bos_token_id,)
    got = np.stack(list(WindowStream(src, tok, 16, eval_fraction=0.2, buffer=1)))
    n = len(flat) // 15
    assert (got[:, 0] == tok.bos_token_id).all() and got.shape == (n, 16)
    np.testing.assert_array_equal(got[:, 1:], np.array(flat[:n * 15]).reshape(n, 15))
    assert not tokenizer_info(tok).keep_mask(got)[:, 0].any()


def test_prefix_tokens_start_every_window(tmp_path):
    from tokenizers import processors

    from aensae.benches.harvest import byte_tokenizer

    tok = byte_tokenizer()
    tok.add_special_tokens({"bos_token": "<s>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    info = tokenizer_info(tok)
    assert info.prefix == (tok.bos_token_id,)
    src = open_text(str(_docs(tmp_path, 5)))
    got = np.stack(list(WindowStream(src, tok, 8, buffer=1, eval_fraction=0.01)))
    assert (got[:, 0] == tok.bos_token_id).all()
    body = got[:, 1:].reshape(-1)
    flat = []
    for d in src.documents():
        flat += tok(d.text, add_special_tokens=False)["input_ids"]
        flat.append(tok.eos_token_id)
    np.testing.assert_array_equal(body, flat[:len(body)])
    assert not info.keep_mask(got)[:, 0].any()


def test_shuffle_buffer(tmp_path, tok):
    src = open_text(str(_docs(tmp_path, 60)))
    ordered = np.stack(list(WindowStream(src, tok, 8, buffer=1)))
    a = np.stack(list(WindowStream(src, tok, 8, buffer=16, seed=3)))
    b = np.stack(list(WindowStream(src, tok, 8, buffer=16, seed=3)))
    c = np.stack(list(WindowStream(src, tok, 8, buffer=16, seed=4)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ordered) and not np.array_equal(a, c)
    key = lambda w: sorted(map(tuple, w))  # noqa: E731 - same windows, another order
    assert key(a) == key(ordered) == key(c)


def test_ctx_must_exceed_prefix(tmp_path, tok):
    with pytest.raises(InputError, match="--ctx"):
        WindowStream(open_text(str(_docs(tmp_path, 2))), tok, 0)
