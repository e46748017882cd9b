"""One small interface over Hugging Face `tokenizer.json` and SentencePiece `.model` files, and the
tokenizer files that travel with a model directory. Paths are `etils.epath` paths (local or gs://)."""

import json

from etils import epath

from oie_jax.errors import UserError

BYTES_FILE = "tokenizer.bytes"  # in a model directory: its tokenizer is the byte tokenizer (no vocabulary file)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    BYTES_FILE,
)


def copy_tokenizer_files(src, dst) -> list[str]:
    """Copies the tokenizer files of `src` (a directory, or one tokenizer.json / .model file; "bytes":
    the marker BYTES_FILE) into the directory `dst`; returns their names."""
    src, dst = str(src), epath.Path(dst)
    if src == "bytes":
        (dst / BYTES_FILE).write_text("oie-jax byte tokenizer: UTF-8 bytes as tokens 3..258, pad 0, BOS 1, EOS 2\n")
        return [BYTES_FILE]
    src = epath.Path(src)
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

    def token_bytes(self) -> list[bytes]:
        """Each token id's bytes as it adds them to a decoded text; b"" for special tokens."""
        raise NotImplementedError

    def decode_batch(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def strips_leading_space(self, pieces: list[bytes] | None = None) -> bool:
        """Whether decoding drops the space that the first token's bytes start with: SentencePiece's dummy
        prefix ("Person" is encoded "▁Person", and decodes back to "Person" at the start of a text).
        `pieces`: `token_bytes()`, when the caller has them already."""
        ids = self.encode("a", add_special_tokens=False)
        pieces = self.token_bytes() if pieces is None else pieces
        return b"".join(pieces[i] for i in ids).startswith(b" ") and not self.decode(ids).startswith(" ")


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

    def token_bytes(self):
        spec = json.loads(self._tok.to_str())
        decoders = spec.get("decoder") or {}
        kinds = {d.get("type") for d in decoders.get("decoders", [decoders])}
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        to_byte = byte_level_alphabet() if "ByteLevel" in kinds else None
        pieces = [b""] * self.vocab_size
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i in special or i >= self.vocab_size:
                continue
            if to_byte is not None and all(c in to_byte for c in token):
                pieces[i] = bytes(to_byte[c] for c in token)
            elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):  # byte fallback
                pieces[i] = bytes([int(token[3:5], 16)])
            else:  # SentencePiece-style pieces: ▁ is a space
                pieces[i] = token.replace("\u2581", " ").encode("utf-8")
        return pieces


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

    def token_bytes(self):
        pieces = []
        for i in range(self.vocab_size):
            piece = self._sp.IdToPiece(i)
            if self._sp.IsControl(i) or self._sp.IsUnknown(i):
                pieces.append(b"")
            elif self._sp.IsByte(i):
                pieces.append(bytes([int(piece[3:5], 16)]))
            else:
                pieces.append(piece.replace("\u2581", " ").encode("utf-8"))
        return pieces


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

    def token_bytes(self):
        return [b""] * self.OFFSET + [bytes([b]) for b in range(256)]


def byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-ins (GPT-2's table) back to bytes: printable Latin-1 bytes stand
    for themselves, the other 68 for code points from 256 up, in byte order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(moved)}}


def load_tokenizer(path) -> Tokenizer:
    """A tokenizer from a directory (tokenizer.json preferred) or a tokenizer.json / .model file;
    "bytes" names the byte tokenizer."""
    if str(path) == "bytes":
        return ByteTokenizer()
    path = epath.Path(path)
    if path.is_dir():
        if (path / BYTES_FILE).exists():
            return ByteTokenizer()
        config = read_config(path / "tokenizer_config.json")
        if (path / "tokenizer.json").exists():
            return HFTokenizer(path / "tokenizer.json", config)
        if (path / "tokenizer.model").exists():
            return SentencePieceTokenizer(path / "tokenizer.model")
        raise UserError(f"no tokenizer.json, tokenizer.model or {BYTES_FILE} in this directory", path)
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
