"""The model folder's tokenizer (tokenizer.json via `tokenizers`), its chat template, and incremental detokenizing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

__all__ = ["Detokenizer", "Tokenizer"]


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, *, chat_template: str | None, special: dict[str, str | None]):
        self._tok = tokenizer
        self.chat_template = chat_template
        self.special = special  # bos_token, eos_token, ... as the template sees them

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Tokenizer:
        model_dir = Path(model_dir)
        tok = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        cfg_path = model_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template = cfg.get("chat_template")
        template_file = model_dir / "chat_template.jinja"
        if template is None and template_file.is_file():
            template = template_file.read_text()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        special = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return cls(tok, chat_template=template, special=special)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True, **kwargs) -> str:
        """The prompt text for a conversation; encode it with add_special_tokens=False (the template adds them)."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template (tokenizer_config.json has no chat_template)")
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special, **kwargs
        )


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str):
    raise jinja2.exceptions.TemplateError(message)


@dataclass
class Detokenizer:
    """Turns a growing list of token ids into text deltas, waiting while a multi-byte character is incomplete.

    Decodes a short window (the previous few tokens plus the new ones) so the cost per token stays flat
    and tokenizers that drop a leading space at the start of a decode still read right.
    """

    tokenizer: Tokenizer
    prefix_offset: int
    read_offset: int
    text: str = ""
    ids: list[int] = field(default_factory=list)

    @classmethod
    def for_prompt(cls, tokenizer: Tokenizer, prompt_ids: list[int]) -> Detokenizer:
        n = len(prompt_ids)
        return cls(tokenizer, prefix_offset=max(n - 5, 0), read_offset=n, ids=list(prompt_ids))

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prefix) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta
