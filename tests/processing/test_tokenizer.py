"""LanguageTokenizer with a tiny BPE trained here, and the built-in byte tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from smolvla.processing.tokenizer import (
    BYTE_VOCAB_SIZE,
    LanguageTokenizer,
    TokenizerError,
    build_byte_tokenizer,
    distinct_length,
    load_tokenizer,
    save_byte_tokenizer,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>", "<fake_token_around_image>"]
CORPUS = [
    "pick up the red cube and place it in the box",
    "put the blue block on the plate",
    "open the drawer\n",
    "close the drawer and push the button",
] * 20


def train_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bpe")
    train_bpe().save(str(d / "tokenizer.json"))
    # As SmolVLM2's: pad <|im_end|> (id 2), truncation on the left; padding_side is overridden per call.
    cfg = {
        "pad_token": {"content": "<|im_end|>", "special": True},
        "padding_side": "left",
        "truncation_side": "left",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture
def tok(bpe_dir: Path) -> LanguageTokenizer:
    return LanguageTokenizer.from_dir(bpe_dir)


def test_config_read(tok: LanguageTokenizer) -> None:
    assert tok.pad_id == 2 and tok.pad_token == "<|im_end|>"
    assert tok.truncation_side == "left" and tok.padding_side == "left"
    assert tok.token_id("<fake_token_around_image>") == 4 and tok.token_id("<global-img>") == 3


def test_newline_appended_once(tok: LanguageTokenizer) -> None:
    a, _ = tok("open the drawer", 48)
    b, _ = tok("open the drawer\n", 48)
    assert torch.equal(a, b)
    assert tok.decode(a[0].tolist()) == "open the drawer\n"


def test_padding_longest(tok: LanguageTokenizer) -> None:
    tokens, mask = tok(["open the drawer", "pick up the red cube and place it in the box"], 48, "longest")
    assert tokens.dtype == torch.int64 and mask.dtype == torch.bool
    n0, n1 = int(mask[0].sum()), int(mask[1].sum())
    assert tokens.shape == (2, n1) and n0 < n1 and mask[1].all()
    assert (tokens[0, n0:] == 2).all() and not mask[0, n0:].any() and mask[0, :n0].all()  # right padding


def test_padding_longest_single_is_unpadded(tok: LanguageTokenizer) -> None:
    tokens, mask = tok("open the drawer", 48, "longest")
    assert mask.all() and tokens.shape[0] == 1


def test_padding_max_length(tok: LanguageTokenizer) -> None:
    tokens, mask = tok(["open the drawer"], 20, "max_length")
    assert tokens.shape == (1, 20)
    n = int(mask.sum())
    assert (tokens[0, n:] == 2).all()


def test_truncation_left_keeps_the_end(tok: LanguageTokenizer) -> None:
    full, _ = tok("pick up the red cube and place it in the box", 100)
    cut, mask = tok("pick up the red cube and place it in the box", 5, "max_length")
    assert cut.shape == (1, 5) and mask.all()
    assert torch.equal(cut[0], full[0, -5:])  # left truncation: the start is lost, "\n" kept


def test_truncation_right_keeps_the_start(bpe_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "right"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|im_end|>"}))
    tok = LanguageTokenizer.from_dir(d)
    assert tok.truncation_side == "right"  # transformers' default
    full, _ = tok("pick up the red cube and place it in the box", 100)
    cut, _ = tok("pick up the red cube and place it in the box", 5)
    assert torch.equal(cut[0], full[0, :5])


def test_post_processor_applies(bpe_dir: Path, tmp_path: Path) -> None:
    # A tokenizer with a BOS post-processor gets its BOS, as with transformers' add_special_tokens=True;
    # truncation still keeps the total within max_length.
    raw = Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    raw.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    d = tmp_path / "bos"
    d.mkdir()
    raw.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|im_end|>"}))
    tok = LanguageTokenizer.from_dir(d)
    tokens, _ = tok("pick up the red cube and place it in the box", 4)
    assert tokens.shape == (1, 4) and tokens[0, 0] == 1


def test_bad_inputs(tok: LanguageTokenizer) -> None:
    with pytest.raises(ValueError, match=r"task: got \[\]"):
        tok([], 10)
    with pytest.raises(ValueError, match=r"task: got 3 \(int\)"):
        tok(["ok", 3], 10)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="task: got None"):
        tok(None, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="padding"):
        tok("x", 10, "do_not_pad")
    with pytest.raises(TokenizerError, match="<nope>"):
        tok.token_id("<nope>")


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"tokenizer.json not found: looked in {tmp_path}"):
        LanguageTokenizer.from_dir(tmp_path)


def test_no_pad_token(bpe_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
    tok = LanguageTokenizer.from_dir(tmp_path)
    tok("fine without padding", 48)
    with pytest.raises(TokenizerError, match="no pad token"):
        tok(["a", "longer one"], 48)


# -- the built-in byte tokenizer ---------------------------------------------------------------------


def test_byte_tokenizer_layout() -> None:
    tok = build_byte_tokenizer()
    assert tok.get_vocab_size() == BYTE_VOCAB_SIZE == 320
    ids = {
        t: tok.token_to_id(t)
        for t in [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<global-img>",
            "<fake_token_around_image>",
            "<image>",
            "<end_of_utterance>",
        ]
    }
    assert list(ids.values()) == [0, 1, 2, 259, 260, 261, 262]
    assert max(tok.get_vocab().values()) == 319
    assert tok.encode("Az\n", add_special_tokens=True).ids == [ord("A") + 3, ord("z") + 3, ord("\n") + 3]


def test_byte_tokenizer_deterministic() -> None:
    assert build_byte_tokenizer().to_str() == build_byte_tokenizer().to_str()


@settings(max_examples=60, deadline=None, database=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_round_trip(text: str) -> None:
    tok = build_byte_tokenizer()
    ids = tok.encode(text).ids
    if "<" not in text:  # special-token strings inside text map to one id each
        assert ids == [b + 3 for b in text.encode("utf-8")]
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_save_byte_tokenizer(tmp_path: Path) -> None:
    save_byte_tokenizer(tmp_path)
    tok = LanguageTokenizer.from_dir(tmp_path)
    assert tok.pad_id == 2 and tok.truncation_side == "right" and tok.vocab_size == 320
    tokens, mask = tok(["hi", "hello"], 8, "max_length")
    assert tokens.tolist() == [[107, 108, 13, 2, 2, 2, 2, 2], [107, 104, 111, 111, 114, 13, 2, 2]]
    assert mask.sum(1).tolist() == [3, 6]
    first = (tmp_path / "tokenizer.json").read_bytes()
    save_byte_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == first


def test_load_builtin_and_folder(bpe_dir: Path) -> None:
    tiny = load_tokenizer("smolvla/tiny-backbone")
    assert tiny.vocab_size == 320 and tiny.pad_id == 2 and tiny.name == "smolvla/tiny-backbone"
    assert load_tokenizer(bpe_dir).pad_id == 2


def test_distinct_length(tok: LanguageTokenizer) -> None:
    tasks = ["open the door", "open the drawer", "open the door"]
    n = distinct_length(tok, tasks)
    a, b = tok(["open the door", "open the drawer"], n, "max_length")[0]
    assert not torch.equal(a, b)
    a, b = tok(["open the door", "open the drawer"], n - 1, "max_length")[0]
    assert torch.equal(a, b)  # one token less and the two instructions are the same prompt
    assert distinct_length(tok, ["only one task"]) == 1
