"""The chat template (ChatML) shared by finetuning data prep and `foundry generate`.

A conversation is a list of `{"role", "content"}` messages: an optional first `system` message,
then `user` and `assistant` turns that alternate, starting with `user`. Each message renders as

    <|im_start|>{role}\\n{content}<|im_end|>\\n

and `add_generation_prompt=True` appends `<|im_start|>assistant\\n` for the model to go on from.

`chat_segments(messages)` cuts the rendered text into pieces that are trained on or not: only
the content of each assistant turn and its closing `<|im_end|>` carry loss (so the model learns
to stop); every system and user turn, and each turn's `<|im_start|>role\\n` header, do not.
`"".join(text for text, _ in chat_segments(m)) == format_chat(m, add_generation_prompt=False)`.

`ensure_chat_tokens(tokenizer)` adds the ChatML special tokens a tokenizer lacks (a model's
embedding then needs rows for them: `foundry finetune` grows it) and `check_chat_encodable`
refuses a tokenizer that cannot encode the template (the markers split into pieces, or text that
does not decode back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tokenizers

from foundry.tokenizer import CHAT_TOKENS

__all__ = [
    "ASSISTANT",
    "IM_END",
    "IM_START",
    "ROLES",
    "SHAREGPT_ROLES",
    "SYSTEM",
    "USER",
    "ChatFormatError",
    "chat_segments",
    "check_chat_encodable",
    "check_roles",
    "ensure_chat_tokens",
    "format_chat",
    "from_sharegpt",
]

IM_START, IM_END = CHAT_TOKENS
SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLES = (SYSTEM, USER, ASSISTANT)
# ShareGPT's `from` names (FastChat's data) and the role each one is.
SHAREGPT_ROLES = {
    "system": SYSTEM,
    "human": USER,
    "user": USER,
    "gpt": ASSISTANT,
    "assistant": ASSISTANT,
    "chatgpt": ASSISTANT,
    "bing": ASSISTANT,
    "bard": ASSISTANT,
}


class ChatFormatError(ValueError):
    """A conversation that does not fit the template; the message says where and why."""


def _role_error(where: str, index: int, expected: str, got: object) -> ChatFormatError:
    return ChatFormatError(f"{where}: message {index} should be {expected}, got role {got!r}")


def check_roles(
    messages: Sequence[Mapping[str, Any]], *, require_assistant: bool = True, where: str = "chat"
) -> None:
    """Raise `ChatFormatError` unless `messages` is [system?] user, assistant, user, ... with
    string contents free of the template's markers; `require_assistant` (training data) also
    asks for at least one assistant turn. `where` prefixes the message (e.g. `file.json:12`)."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ChatFormatError(f"{where}: expected a non-empty list of messages, got {messages!r}")
    start = 0
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
            raise ChatFormatError(
                f"{where}: message {i} should be an object with 'role' and 'content', "
                f"got {message!r}"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ChatFormatError(
                f"{where}: message {i} has role {role!r}; expected one of {ROLES}"
            )
        if not isinstance(content, str):
            raise ChatFormatError(
                f"{where}: message {i} ({role}) content should be a string, "
                f"got {type(content).__name__}"
            )
        marker = next((t for t in CHAT_TOKENS if t in content), None)
        if marker is not None:
            raise ChatFormatError(
                f"{where}: message {i} ({role}) contains the template marker {marker!r} in its "
                "text; it would break the turn structure"
            )
        if i == 0 and role == SYSTEM:
            start = 1
            continue
        expected = USER if (i - start) % 2 == 0 else ASSISTANT
        if role != expected:
            what = "the first turn" if i == start else "alternating user/assistant turns"
            raise _role_error(where, i, f"{expected!r} ({what})", role)
    if require_assistant and not any(m["role"] == ASSISTANT for m in messages):
        raise ChatFormatError(f"{where}: the conversation has no assistant turn to train on")


def from_sharegpt(turns: Sequence[Mapping[str, Any]], *, where: str = "chat") -> list[dict]:
    """ShareGPT's `[{"from": "human", "value": ...}, ...]` as `[{"role", "content"}]`."""
    if not isinstance(turns, Sequence) or isinstance(turns, str):
        raise ChatFormatError(f"{where}: 'conversations' should be a list, got {turns!r}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not {"from", "value"} <= turn.keys():
            raise ChatFormatError(
                f"{where}: turn {i} should be an object with 'from' and 'value', got {turn!r}"
            )
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ChatFormatError(
                f"{where}: turn {i} is from {turn['from']!r}; expected one of "
                f"{sorted(SHAREGPT_ROLES)}"
            )
        messages.append({"role": role, "content": turn["value"]})
    return messages


def _header(role: str) -> str:
    return f"{IM_START}{role}\n"


def chat_segments(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces; see the module docstring."""
    pieces: list[tuple[str, bool]] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == ASSISTANT:
            pieces += [(_header(role), False), (content + IM_END, True), ("\n", False)]
        else:
            pieces.append((_header(role) + content + IM_END + "\n", False))
    return pieces


def format_chat(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
    """ChatML text of `messages` (checked by `check_roles`; a prompt for generation need not
    hold an assistant turn); `add_generation_prompt` appends the assistant's header."""
    check_roles(messages, require_assistant=False)
    if add_generation_prompt and messages[-1]["role"] == ASSISTANT:
        raise ChatFormatError(
            "chat: add_generation_prompt=True after an assistant turn; the last message "
            "should be the user's"
        )
    text = "".join(text for text, _ in chat_segments(messages))
    return text + _header(ASSISTANT) if add_generation_prompt else text


def _backend(tokenizer: Any) -> tokenizers.Tokenizer:
    backend = getattr(tokenizer, "backend", tokenizer)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise TypeError(
            f"expected a foundry tokenizer or a tokenizers.Tokenizer, got {type(tokenizer)}"
        )
    return backend


def ensure_chat_tokens(tokenizer: Any) -> int:
    """Add the ChatML special tokens that `tokenizer` (a `FoundryTokenizer` or a
    `tokenizers.Tokenizer`) lacks; returns how many were added. A `FoundryTokenizer`'s
    `vocab_size` follows, so a model can be checked (or grown) against it."""
    backend = _backend(tokenizer)
    missing = [t for t in CHAT_TOKENS if backend.token_to_id(t) is None]
    if missing:
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in missing])
    if missing and backend is not tokenizer and hasattr(tokenizer, "vocab_size"):
        top = max(backend.token_to_id(t) for t in missing)
        tokenizer.vocab_size = max(tokenizer.vocab_size, top + 1)
    return len(missing)


SAMPLE = [
    {"role": SYSTEM, "content": "You are helpful."},
    {"role": USER, "content": "Hi, who are you?"},
    {"role": ASSISTANT, "content": "An assistant."},
]


def check_chat_encodable(tokenizer: Any, *, setting: str = "tokenizer") -> None:
    """Raise `ChatFormatError` naming `setting` unless each ChatML marker is one token of
    `tokenizer` and a sample conversation decodes back to the text it was encoded from."""
    backend = _backend(tokenizer)
    for token in CHAT_TOKENS:
        ids = backend.encode(token, add_special_tokens=False).ids
        if len(ids) != 1 or backend.token_to_id(token) != ids[0]:
            raise ChatFormatError(
                f"{setting}: the tokenizer cannot encode the chat template: {token!r} is not one "
                f"token (it encodes as {len(ids)} ids {ids[:8]}); add the ChatML tokens "
                "(add_chat_tokens=true) or use a tokenizer that has them"
            )
    text = format_chat(SAMPLE, add_generation_prompt=False)
    ids = backend.encode(text, add_special_tokens=False).ids
    back = backend.decode(ids, skip_special_tokens=False)
    if back != text:
        raise ChatFormatError(
            f"{setting}: the tokenizer cannot encode the chat template: {text!r} decodes back "
            f"as {back!r}"
        )
