"""One small interface over Hugging Face `tokenizer.json` and SentencePiece `.model` files, and the
tokenizer files that travel with a model directory. Paths are `etils.epath` paths (local or gs://)."""

import json

from etils import epath

from oie_jax.errors import UserError

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"
)


def copy_tokenizer_files(src, dst) -> list[str]:
    """Copies the tokenizer files of `src` (a directory, or one tokenizer.json / .model file; "bytes"
    has none) into the directory `dst`; returns their names."""
    if str(src) == "bytes":
        return []
    src, dst = epath.Path(src), epath.Path(dst)
    if src.is_dir():
        pairs = [(src / name, name) for name in TOKENIZER_FILES if (src / name).is_file()]
    else:  # a lone file takes the name a model directory gives it
        pairs = [(src, "tokenizer" + src.suffix)]
    for path, name in pairs:
        (dst / name).write_bytes(path.read_bytes())
    return [name for _, name in pairs]


class Tokenizer:
    """encode/decode text; `add_special_tokens` follows the file's own convention (Llama: BOS only)."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    vocab_size: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(text, add_special_tokens) for text in texts]

    def decode_batch(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]


class HFTokenizer(Tokenizer):
    """A `tokenizer.json` (Llama 3, SmolLM2, ...) through the `tokenizers` library."""

    def __init__(self, path: epath.Path, config: dict | None = None):
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tok = RustTokenizer.from_str(path.read_text())
        except Exception as exc:  # the Rust library raises a bare Exception on bad files
            raise UserError(f"not a valid tokenizer.json ({exc})", path) from None
        config = config or {}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._special_id(config.get("bos_token"))
        self.eos_id = self._special_id(config.get("eos_token"))
        self.pad_id = self._special_id(config.get("pad_token"))

    def _special_id(self, token) -> int | None:
        if isinstance(token, dict):  # tokenizer_config.json may store AddedToken dicts
            token = token.get("content")
        return self._tok.token_to_id(token) if token else None

    def encode(self, text, add_special_tokens=True):
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, add_special_tokens=True):
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens=True):
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` (Llama 2, the 13B OIELLM): BOS prepended, no EOS, like Llama 2."""

    def __init__(self, path: epath.Path):
        import sentencepiece

        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(path.read_bytes())
        except (OSError, RuntimeError, TypeError) as exc:
            raise UserError(f"not a valid SentencePiece model ({exc})", path) from None
        self.vocab_size = self._sp.GetPieceSize()
        self.bos_id, self.eos_id, self.pad_id = (
            i if i >= 0 else None for i in (self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id())
        )

    def encode(self, text, add_special_tokens=True):
        ids = self._sp.EncodeAsIds(text)
        return [self.bos_id, *ids] if add_special_tokens and self.bos_id is not None else ids

    def decode(self, ids, skip_special_tokens=True):
        specials = {self.bos_id, self.eos_id, self.pad_id} if skip_special_tokens else set()
        return self._sp.DecodeIds([i for i in ids if i not in specials])


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens 3..258 after pad 0, BOS 1, EOS 2: no files, any script. For random tiny
    models in tests and debugging runs (`tokenizer = "bytes"`)."""

    OFFSET = 3

    def __init__(self):
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.vocab_size = 256 + self.OFFSET

    def encode(self, text, add_special_tokens=True):
        ids = [byte + self.OFFSET for byte in text.encode("utf-8")]
        return [self.bos_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens=True):
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")


def load_tokenizer(path) -> Tokenizer:
    """A tokenizer from a directory (tokenizer.json preferred) or a tokenizer.json / .model file;
    "bytes" names the byte tokenizer."""
    if str(path) == "bytes":
        return ByteTokenizer()
    path = epath.Path(path)
    if path.is_dir():
        config = read_config(path / "tokenizer_config.json")
        if (path / "tokenizer.json").exists():
            return HFTokenizer(path / "tokenizer.json", config)
        if (path / "tokenizer.model").exists():
            return SentencePieceTokenizer(path / "tokenizer.model")
        raise UserError("no tokenizer.json or tokenizer.model in this directory", path)
    if not path.exists():
        raise UserError("no such tokenizer file", path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    raise UserError("expected a tokenizer.json or a SentencePiece .model file", path)


def read_config(path: epath.Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"invalid JSON ({exc})", path) from None
