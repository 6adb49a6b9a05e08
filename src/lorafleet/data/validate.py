"""Validation of one parsed input line: which of the four formats it is, and whether it is a usable chat.

Every problem becomes a `Rejection` with a `Reason` (a small fixed set, counted in the report) and a
message that says what is wrong and where inside the line (`messages[2].role: ...`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, ValidationError


class Reason(StrEnum):
    """Why a line was rejected; the values are what `rejected.jsonl` and the report show."""

    INVALID_UTF8 = "invalid_utf8"
    LINE_TOO_LARGE = "line_too_large"
    INVALID_JSON = "invalid_json"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_FORMAT = "unknown_format"
    INVALID_ROLE = "invalid_role"
    EMPTY_CONTENT = "empty_content"
    INVALID_FIELD = "invalid_field"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    SPECIAL_TOKEN_IN_CONTENT = "special_token_in_content"
    TEMPLATE_ERROR = "template_error"
    NO_TRAINED_TOKENS = "no_trained_tokens"
    NO_END_OF_TURN = "no_end_of_turn"
    TOO_LONG = "too_long"


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    message: str


Format = Literal["openai", "sharegpt", "conversations", "alpaca"]
Role = Literal["system", "user", "assistant"]


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("is blank")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
        raise ValueError("contains an unpaired surrogate escape, which is not valid Unicode text") from None
    return text


Content = Annotated[StrictStr, AfterValidator(_not_blank)]
_LENIENT = ConfigDict(extra="ignore")  # unknown keys (ids, metadata) are allowed and ignored


class Message(BaseModel):
    model_config = _LENIENT
    role: Role
    content: Content


class OpenAIRecord(BaseModel):
    model_config = _LENIENT
    messages: list[Message]


class RoleContentRecord(BaseModel):
    model_config = _LENIENT
    conversations: list[Message]


class ShareGPTTurn(BaseModel):
    model_config = _LENIENT
    from_: Literal["system", "human", "gpt"] = Field(alias="from")
    value: Content


class ShareGPTRecord(BaseModel):
    model_config = _LENIENT
    conversations: list[ShareGPTTurn]


class AlpacaRecord(BaseModel):
    model_config = _LENIENT
    instruction: Content
    input: StrictStr = ""
    output: Content


_SHAREGPT_ROLES: dict[str, Role] = {"system": "system", "human": "user", "gpt": "assistant"}
Chat = list[dict[str, str]]  # [{"role": ..., "content": ...}], the shape chat templates take


def detect_format(obj: dict) -> Format | None:
    """The format of one JSON object, from its keys; None when it matches none of the four."""
    if "messages" in obj:
        return "openai"
    if "conversations" in obj:
        turns = obj["conversations"]
        first = turns[0] if isinstance(turns, list) and turns else None
        return "sharegpt" if isinstance(first, dict) and "from" in first else "conversations"
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    return None


def to_chat(obj: object) -> tuple[Format, Chat] | Rejection:
    """Validate one parsed JSON value and normalise it to a chat of role/content messages.

    Returns the detected format and the chat, or a Rejection saying what is wrong and where.
    """
    if not isinstance(obj, dict):
        return Rejection(Reason.NOT_AN_OBJECT, f"expected a JSON object, got a JSON {_json_type(obj)}")
    fmt = detect_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
        return Rejection(
            Reason.UNKNOWN_FORMAT,
            f"no known format: expected 'messages', 'conversations' or 'instruction'+'output' (keys: {keys})",
        )
    try:
        chat = _normalise(fmt, obj)
    except ValidationError as exc:
        return _rejection_from(fmt, exc)
    if not any(m["role"] == "assistant" for m in chat):
        return Rejection(Reason.NO_ASSISTANT_TURN, f"{fmt} record has no assistant turn, so nothing would be trained")
    return fmt, chat


def _normalise(fmt: Format, obj: dict) -> Chat:
    if fmt == "openai":
        return [{"role": m.role, "content": m.content} for m in OpenAIRecord.model_validate(obj).messages]
    if fmt == "conversations":
        return [{"role": m.role, "content": m.content} for m in RoleContentRecord.model_validate(obj).conversations]
    if fmt == "sharegpt":
        turns = ShareGPTRecord.model_validate(obj).conversations
        return [{"role": _SHAREGPT_ROLES[t.from_], "content": t.value} for t in turns]
    record = AlpacaRecord.model_validate(obj)
    prompt = f"{record.instruction}\n\n{record.input}" if record.input.strip() else record.instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record.output}]


def _rejection_from(fmt: Format, exc: ValidationError) -> Rejection:
    """Turn pydantic's first error into a Rejection whose message names the field's path."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "record"
    field = loc[-1] if loc else None
    got = error.get("input")
    msg = error["msg"].removeprefix("Value error, ")
    detail = f"{msg} (got {_short(got)})" if error["type"] != "missing" else msg
    message = f"{fmt}: {where}: {detail}"
    if field in ("role", "from") and error["type"] == "literal_error":
        return Rejection(Reason.INVALID_ROLE, message)
    if field in ("content", "value", "instruction", "output") and error["type"] in ("value_error", "string_too_short"):
        return Rejection(Reason.EMPTY_CONTENT if "blank" in msg else Reason.INVALID_FIELD, message)
    return Rejection(Reason.INVALID_FIELD, message)


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
