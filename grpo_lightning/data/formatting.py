"""Prompt formatting with the policy's tokenizer: chat template, system prompt, length limit.

The data module stays free of model code: it receives :meth:`PromptFormatter.prepare`, which
turns each row's prompt (plain text, or a list of ``{"role", "content"}`` messages) into the
exact text the policy will encode, and drops or truncates prompts longer than
``data.max_prompt_length`` tokens.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from grpo_lightning.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

Row = dict[str, Any]
Prompt = str | list[dict[str, str]]

CHAT_MESSAGES_COLUMN = "_chat_messages"
"""Where a row whose prompt is a list of chat messages keeps that list (None in the other rows of
such a dataset) once its prompt column holds the rendered text: reward functions receive the
messages, as TRL passes a conversational dataset's prompts (GRPOModule._score)."""


class PromptFormatter:
    """Formats prompts for one tokenizer and enforces the prompt-length limit."""

    def __init__(
        self,
        tokenizer,
        *,
        prompt_key: str = "prompt",
        apply_chat_template: bool = False,
        system_prompt: Optional[str] = None,
        max_length: Optional[int] = None,
        overlong: str = "drop",
        tools: Optional[list[dict[str, Any]]] = None,
        keep_prompts: bool = False,
    ):
        if apply_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "data.apply_chat_template=true but the tokenizer has no chat template; "
                "use an instruct/chat checkpoint or data.apply_chat_template=false"
            )
        if system_prompt is not None and not apply_chat_template:
            raise ConfigError(
                "data.system_prompt is only used by the chat template; set "
                "data.apply_chat_template=true (or put the text in the prompts)"
            )
        if not apply_chat_template and getattr(tokenizer, "chat_template", None):
            # An instruct model asked in plain text answers far worse, and nothing else would say why.
            log.warning(
                "the tokenizer has a chat template, but data.apply_chat_template=false: prompts reach "
                "the model as plain text; set data.apply_chat_template=true for an instruct/chat model"
            )
        self.tokenizer = tokenizer
        self.prompt_key = prompt_key
        self.apply_chat_template = apply_chat_template
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.overlong = overlong
        self.tools = tools  # schemas the chat template renders into each prompt (agents)
        # Agents render each prompt themselves, after the environment's first observation: the rows
        # keep their prompts as they are, only checked and filtered by length here.
        self.keep_prompts = keep_prompts

    @classmethod
    def from_config(
        cls, cfg: DataConfig, tokenizer, tools: Optional[list[dict[str, Any]]] = None, keep_prompts: bool = False
    ) -> "PromptFormatter":
        return cls(
            tokenizer,
            prompt_key=cfg.prompt_key,
            apply_chat_template=cfg.apply_chat_template,
            system_prompt=cfg.system_prompt,
            max_length=cfg.max_prompt_length,
            overlong=cfg.overlong_prompts,
            tools=tools,
            keep_prompts=keep_prompts,
        )

    @property
    def add_special_tokens(self) -> bool:
        """Whether encoding adds BOS etc.: not after a chat template, which writes its own."""
        return not self.apply_chat_template

    def format(self, prompt: Prompt) -> str:
        """The text the policy encodes for ``prompt``."""
        if isinstance(prompt, str) and not self.apply_chat_template:
            return prompt
        if not isinstance(prompt, (str, list, tuple)):
            raise ConfigError(
                f"a prompt (column data.prompt_key) is {type(prompt).__name__} {prompt!r}; prompts must be "
                "text, or lists of chat messages with data.apply_chat_template=true"
            )
        if not isinstance(prompt, str):
            if not self.apply_chat_template:
                raise ConfigError(
                    "a prompt is a list of chat messages; set data.apply_chat_template=true "
                    "to format it with the tokenizer's chat template"
                )
            messages = [dict(message) for message in prompt]
        else:
            messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None and messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, tokenize=False, add_generation_prompt=True
        )

    def prepare(self, rows: list[Row], split: str) -> list[Row]:
        """Rows whose prompt column is the formatted text, within the length limit."""
        texts = [self.format(row[self.prompt_key]) for row in rows]
        if not self.keep_prompts and any(not isinstance(row[self.prompt_key], str) for row in rows):
            rows = [row | {CHAT_MESSAGES_COLUMN: _messages_or_none(row[self.prompt_key])} for row in rows]
        if self.max_length is None:
            return rows if self.keep_prompts else [row | {self.prompt_key: text} for row, text in zip(rows, texts)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        budget = self.max_length - (self.tokenizer.num_special_tokens_to_add() if self.add_special_tokens else 0)
        kept, changed = [], 0
        for row, text, token_ids in zip(rows, texts, ids):
            if len(token_ids) > budget:
                changed += 1
                if self.overlong == "drop":
                    continue
                if self.keep_prompts:
                    raise ConfigError(
                        "data.overlong_prompts=truncate cannot cut an agent's prompts (they are rendered per "
                        "episode); use data.overlong_prompts=drop or raise data.max_prompt_length"
                    )
                # Keep the end: that is where the question and the generation prompt are.
                text = self.tokenizer.decode(token_ids[-budget:] if budget > 0 else [])
            kept.append(row if self.keep_prompts else row | {self.prompt_key: text})
        if changed:
            action = "dropped" if self.overlong == "drop" else "truncated (kept the last tokens)"
            log.warning(
                "%s: %d of %d prompts are longer than data.max_prompt_length=%d tokens: %s",
                split,
                changed,
                len(rows),
                self.max_length,
                action,
            )
        if not kept:
            raise ConfigError(
                f"all {len(rows)} {split} prompts are longer than data.max_prompt_length="
                f"{self.max_length}; raise it or set data.overlong_prompts=truncate"
            )
        return kept


def _messages_or_none(prompt: Prompt) -> Optional[list[dict[str, str]]]:
    return None if isinstance(prompt, str) else [dict(message) for message in prompt]
