"""Prompts and completions as text or as chat message lists (TRL's "conversational" format).

A conversational prompt is a list of ``{"role", "content"}`` messages, and its completion is the
list of messages the model added, e.g. ``[{"role": "assistant", "content": "..."}]``. A
message's content may also be a list of parts (``{"type": "text", "text": ...}``, images, ...).
"""

from __future__ import annotations

from typing import Any, Union

Message = dict[str, Any]
Conversation = Union[str, list[Message]]  # a plain text, or a list of messages


def content_text(content: Any) -> str:
    """The text of a message's content: the string itself, or its text parts joined (None, as in an
    assistant message that only calls tools: no text).

    >>> content_text([{"type": "image"}, {"type": "text", "text": "a cat"}])
    'a cat'
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def completion_text(completion: Conversation) -> str:
    """The text a reward reads: the completion itself, or the content of its last assistant message.

    >>> completion_text("42")
    '42'
    >>> completion_text([{"role": "assistant", "content": "call the tool"}, {"role": "tool", "content": "7"},
    ...                  {"role": "assistant", "content": "It is 7."}])
    'It is 7.'
    """
    if isinstance(completion, str):
        return completion
    for message in reversed(completion):
        if message.get("role") == "assistant":
            return content_text(message["content"])
    roles = [message.get("role") for message in completion]
    raise ValueError(f"the completion has no assistant message (its roles: {roles})")


def quoted(conversation: Any) -> str:
    """A text or message list as an error message quotes it: the text, or the last message's.

    >>> quoted("2+2?")
    "'2+2?'"
    >>> quoted([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}])
    "user: '2+2?'"
    """
    is_messages = isinstance(conversation, list) and conversation and isinstance(conversation[-1], dict)
    if not is_messages or "content" not in conversation[-1]:
        return repr(conversation)
    last = conversation[-1]
    return f"{last.get('role', 'message')}: {content_text(last['content'])!r}"
