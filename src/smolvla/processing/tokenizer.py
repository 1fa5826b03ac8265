"""The language tokenizer: a `tokenizers` fast tokenizer called the way LeRobot calls SmolVLM2's.

LeRobot runs `AutoTokenizer.from_pretrained(vlm_model_name)(task + "\\n", max_length=48, truncation=True,
padding=pad_language_to, padding_side="right")`. transformers' fast tokenizer is a thin shell around the
`tokenizers` library, so we drive that library directly (no transformers dependency) and reproduce the
shell's behaviour: special tokens from the post-processor (SmolVLM2 has none), truncation on the side that
`tokenizer_config.json` names, padding with its pad token.

`build_byte_tokenizer` makes the deterministic byte-level tokenizer of the built-in small backbones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from smolvla.config import MICRO_BACKBONE, TINY_BACKBONE
from smolvla.errors import MissingFileError, SmolVLAError
from smolvla.io import read_json_object, write_json

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
BUILTIN_TOKENIZERS = (TINY_BACKBONE, MICRO_BACKBONE)

BYTE_VOCAB_SIZE = 320
_BYTE_HEAD = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolVLM2
_BYTE_SPECIALS = ["<global-img>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]  # 259..262
BYTE_OFFSET = len(_BYTE_HEAD)  # byte b has id b + 3


class TokenizerError(SmolVLAError, ValueError):
    """A tokenizer file or a tokenizer input is not usable."""


def _token_content(tok: Any) -> str | None:
    # tokenizer_config.json stores special tokens either as strings or as serialized AddedToken dicts.
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


class LanguageTokenizer:
    """Tokenizes task strings into LeRobot's `observation.language.{tokens,attention_mask}`."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        pad_token: str | None = None,
        truncation_side: str = "right",
        padding_side: str = "right",
        name: str | None = None,
    ) -> None:
        if truncation_side not in ("left", "right"):
            raise TokenizerError(f"truncation_side: got {truncation_side!r}, expected 'left' or 'right'")
        if padding_side not in ("left", "right"):
            raise TokenizerError(f"padding_side: got {padding_side!r}, expected 'left' or 'right'")
        self.tokenizer = tokenizer
        self.truncation_side = truncation_side
        self.padding_side = padding_side  # informational: LeRobot passes padding_side="right" on every call
        self.name = name
        self.pad_token = pad_token
        self.folder: Path | None = None  # where its files were read from, if from files
        self._pad_id = None if pad_token is None else self.token_id(pad_token)

    @classmethod
    def from_dir(cls, path: str | Path, name: str | None = None) -> LanguageTokenizer:
        """Loads `tokenizer.json` (+ `tokenizer_config.json` / `special_tokens_map.json` if present)."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise MissingFileError(
                f"tokenizer.json not found: looked in {path}"
                + ("" if path.is_dir() else " (no such folder)")
                + ". A tokenizer folder needs the `tokenizers` library's tokenizer.json (slow-only "
                "tokenizers, e.g. sentencepiece .model files, are not supported)."
            )
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as e:
            raise TokenizerError(f"{file}: not a valid tokenizers file ({e})") from e
        cfg: dict[str, Any] = {}
        for fname in (
            "special_tokens_map.json",
            "tokenizer_config.json",
        ):  # the latter wins, as in transformers
            f = path / fname
            if f.is_file():
                d = read_json_object(f, TokenizerError)
                cfg.update({k: v for k, v in d.items() if v is not None})
        out = cls(
            tok,
            pad_token=_token_content(cfg.get("pad_token")),
            truncation_side=cfg.get("truncation_side", "right"),
            padding_side=cfg.get("padding_side", "right"),
            name=name if name is not None else str(path),
        )
        out.folder = path
        return out

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        if self._pad_id is None:
            raise TokenizerError(
                f"tokenizer {self.name!r} has no pad token; set pad_token in its tokenizer_config.json"
            )
        return self._pad_id

    def token_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise TokenizerError(f"token {token!r} is not in the vocabulary of tokenizer {self.name!r}")
        return i

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """`encode(...)` as torch tensors: (tokens int64 [B, L], attention_mask bool [B, L])."""
        import torch  # imported here: the exported runtime tokenizes with `encode`, without torch

        tokens, mask = self.encode(*args, **kwargs)
        return torch.from_numpy(tokens), torch.from_numpy(mask)

    def encode(
        self,
        tasks: list[str] | str,
        max_length: int,
        padding: str = "longest",
        *,
        truncation: bool = True,
        padding_side: str = "right",
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 [B, L], attention_mask bool [B, L]) numpy arrays for `task + "\\n"` of each task."""
        if isinstance(tasks, str):
            tasks = [tasks]
        if not isinstance(tasks, (list, tuple)) or not tasks:
            raise TokenizerError(f"task: got {tasks!r}, expected a string or a non-empty list of strings")
        for t in tasks:
            if not isinstance(t, str):
                raise TokenizerError(f"task: got {t!r} ({type(t).__name__}) in {tasks!r}, expected strings")
        if padding not in ("longest", "max_length"):
            raise TokenizerError(f"padding: got {padding!r}, expected 'longest' or 'max_length'")
        if not isinstance(max_length, int) or max_length < 1:
            raise TokenizerError(f"max_length: got {max_length!r}, expected a positive integer")
        if padding_side not in ("left", "right"):
            raise TokenizerError(f"padding_side: got {padding_side!r}, expected 'left' or 'right'")
        # LeRobot's smolvla_new_line_processor: the prompt ends with a newline.
        texts = [t if t.endswith("\n") else t + "\n" for t in tasks]

        # Set truncation and padding on the backend for this call, as transformers does; whatever the
        # tokenizer.json carried is overridden.
        tok = self.tokenizer
        if truncation:
            tok.enable_truncation(max_length, direction=self.truncation_side)
        else:
            tok.no_truncation()
        if padding == "max_length" or len(texts) > 1:
            tok.enable_padding(
                direction=padding_side,
                pad_id=self.pad_id,
                pad_token=self.pad_token,
                length=max_length if padding == "max_length" else None,
            )
        else:
            tok.no_padding()
        # add_special_tokens=True like transformers' default: a post-processor (BOS/EOS) would apply;
        # SmolVLM2's tokenizer has none, so nothing is added there.
        encs = tok.encode_batch(texts, add_special_tokens=True)
        tokens = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=bool)
        return tokens, mask

    def save(self, path: str | Path) -> Path:
        """Writes tokenizer.json and a tokenizer_config.json with the settings `from_dir` reads back."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path / "tokenizer.json"))
        cfg = {"truncation_side": self.truncation_side, "padding_side": self.padding_side}
        if self.pad_token is not None:
            cfg["pad_token"] = self.pad_token
        write_json(path / "tokenizer_config.json", cfg)
        return path


def load_tokenizer(name_or_path: str | Path, *, relative_to: Path | None = None) -> LanguageTokenizer:
    """The tokenizer named by a checkpoint: a built-in name, a folder, or a Hub repo id (or its cache)."""
    name = str(name_or_path)
    if name in BUILTIN_TOKENIZERS:
        return LanguageTokenizer(
            build_byte_tokenizer(), pad_token="<|im_end|>", truncation_side="right", name=name
        )
    from smolvla.hub import resolve_dir

    folder = resolve_dir(name, relative_to=relative_to, allow_patterns=TOKENIZER_FILES, what="tokenizer")
    return LanguageTokenizer.from_dir(folder, name=name)


# --------------------------------------------------------------------------------------------------
# The built-in byte-level tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of the ByteLevel pre-tokenizer."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    out = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


def build_byte_tokenizer() -> Tokenizer:
    """A 320-id byte-level tokenizer, built in code: byte b is id b + 3, so any UTF-8 text round-trips.

    Ids: 0 `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>` (pad, as SmolVLM2), 3..258 the bytes,
    259 `<global-img>`, 260 `<fake_token_around_image>`, 261 `<image>`, 262 `<end_of_utterance>`, and
    263..319 `<|reserved_i|>` so that the vocabulary is exactly the backbones' 320 embeddings.
    A BPE model without merges over the ByteLevel alphabet: every byte is its own token, deterministically.
    """
    b2u = _bytes_to_unicode()
    specials = _BYTE_HEAD + _BYTE_SPECIALS
    specials += [f"<|reserved_{i}|>" for i in range(BYTE_VOCAB_SIZE - 256 - len(specials))]
    vocab = {tok: i for i, tok in enumerate(_BYTE_HEAD)}
    vocab.update({b2u[b]: BYTE_OFFSET + b for b in range(256)})
    vocab.update({tok: BYTE_OFFSET + 256 + i for i, tok in enumerate(specials[len(_BYTE_HEAD) :])})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges, words would not change the result, only cost time.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    # Already in the vocab, so they keep their ids; marking them special makes "<image>" in a text one token.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok


def save_byte_tokenizer(path: str | Path) -> Path:
    """Writes the byte tokenizer as tokenizer.json + tokenizer_config.json (loadable by transformers too)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    build_byte_tokenizer().save(str(path / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<end_of_utterance>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "padding_side": "right",
        "truncation_side": "right",
        "model_max_length": 8192,
        "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
    }
    write_json(path / "tokenizer_config.json", cfg)
    return path


def distinct_length(tokenizer: LanguageTokenizer, tasks: list[str]) -> int:
    """The smallest max_length at which truncation keeps every pair of different tasks different.

    Instructions that only differ past the limit ("turn the faucet handle left" / "... right")
    become the same tokens, and one policy can no longer tell the tasks apart."""
    tasks = sorted(set(tasks))
    if len(tasks) < 2:
        return 1
    _, mask = tokenizer(tasks, 1, "longest", truncation=False)
    longest = int(mask.sum(dim=1).max())
    for n in range(1, longest + 1):
        tokens, _ = tokenizer(tasks, n, "max_length", truncation=True)
        if len({tuple(row) for row in tokens.tolist()}) == len(tasks):
            return n
    return longest
