"""Chat prompts in a model's own template: the Jinja `chat_template` of its tokenizer files
(tokenizer_config.json, or chat_template.jinja beside it), rendered as Hugging Face's
`apply_chat_template` renders it (sandboxed, blocks trimmed, the special tokens as variables)."""

import base64
import binascii
import datetime
import functools
import json

import numpy as np
from etils import epath

from oie_jax.data.images import ImageError, decode, decode_bytes
from oie_jax.data.tokenizer import read_config
from oie_jax.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


class ChatTemplate:
    def __init__(self, source: str, special_tokens: dict[str, str]):
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise UserError(f"the model's chat template does not compile ({exc})") from None
        self._special_tokens = special_tokens

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for `messages` ({"role", "content"} dicts), ending where the assistant's
        answer begins. A template that rejects the messages raises UserError with its reason."""
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self._special_tokens)
        except TemplateError as exc:
            raise UserError(f"the chat template rejects these messages: {exc}") from None


def _raise(message):
    from jinja2 import TemplateError

    raise TemplateError(message)


@functools.cache
def _cached(source: str, special_tokens: tuple) -> ChatTemplate:
    return ChatTemplate(source, dict(special_tokens))


def load_chat_template(model_dir) -> ChatTemplate | None:
    """The chat template of a model directory, or None when its tokenizer files carry none."""
    model_dir = epath.Path(model_dir)
    config = read_config(model_dir / "tokenizer_config.json")
    source = config.get("chat_template")
    if isinstance(source, list):  # several named templates: the default one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if (model_dir / "chat_template.jinja").is_file():
        source = (model_dir / "chat_template.jinja").read_text()
    if not source:
        return None
    special = {key: _content(value) for key, value in config.items()
               if key.endswith("_token") and _content(value) is not None}
    return _cached(source, tuple(sorted(special.items())))


def _content(token):
    if isinstance(token, dict):  # an AddedToken stored as a dict
        token = token.get("content")
    return token if isinstance(token, str) else None


def checked_messages(messages) -> list[dict]:
    """OpenAI chat messages as the template expects them: a non-empty list of {role, content} with a
    known role and text content (an array of text parts is joined); the URLs of a message's `image_url`
    parts in its "images". Raises UserError naming the message."""
    if not isinstance(messages, list) or not messages:
        raise UserError("'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise UserError(f"messages[{i}]: needs a 'role' among {', '.join(ROLES)}")
        content, images = message.get("content"), []
        if isinstance(content, list):  # content parts: text, and images for a multimodal model
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif (isinstance(part, dict) and part.get("type") == "image_url"
                      and isinstance((part.get("image_url") or {}).get("url"), str)):
                    images.append(part["image_url"]["url"])
                else:
                    raise UserError(f"messages[{i}].content: parts are of type 'text' or 'image_url' ({{url}})")
            content = "".join(texts)
        if not isinstance(content, str):
            raise UserError(f"messages[{i}].content must be a string or a list of text and image_url parts")
        out.append({"role": message["role"], "content": content, **({"images": images} if images else {})})
    return out


def read_image_url(url: str) -> np.ndarray:
    """The RGB picture of an `image_url` part: a base64 data URL, or a file on the server's machine (a
    path or a file:// URL). Nothing is fetched from the network."""
    try:
        if url.startswith("data:"):
            header, _, payload = url.partition(",")
            if not header.endswith(";base64"):
                raise UserError("an image data URL must be base64 (data:image/png;base64,...)")
            try:
                return decode_bytes(base64.b64decode(payload, validate=True))
            except binascii.Error:
                raise UserError("the image data URL is not valid base64") from None
        if url.startswith(("http://", "https://")):
            raise UserError("the server fetches no image from the network: send a data URL, or a path on the server")
        return decode(url.removeprefix("file://"))
    except ImageError as exc:
        raise UserError(f"image_url {url[:60]!r}: {exc}") from None
