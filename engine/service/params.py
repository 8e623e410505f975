"""The body of ``POST /v1/videos`` -> a prompt and :class:`~cogvideo_engine.serving.types.SamplingParams`.

The fields are ``prompt``, every ``SamplingParams`` field by its name, and OpenAI's ``model``, ``seconds`` and
``size`` (accepted where they describe what this engine makes). The constraints live in ``SamplingParams``
itself (its checks name the field); this module only maps a JSON object or a multipart form onto it and turns
each failure into an :class:`InvalidRequest` naming the parameter. A form sends strings: each is read as its
field's type (``"true"`` / ``"false"`` for booleans, ``""`` or ``"null"`` for an unset optional one).
"""

from __future__ import annotations

import dataclasses
import typing

from ..serving.types import SamplingParams

SAMPLING_FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams)}
OPENAI_FIELDS = ("model", "seconds", "size")
_TYPES = typing.get_type_hints(SamplingParams)


class InvalidRequest(ValueError):
    """A request the service refuses before any compute: ``status`` (HTTP), ``param`` (the field at fault, or
    None), ``code`` (a short machine-readable reason), ``retry_after`` (seconds, for a 429)."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value", status: int = 422,
                 retry_after: int | None = None):
        super().__init__(message)
        self.param, self.code, self.status, self.retry_after = param, code, status, retry_after


def _from_form(name: str, text: str):
    kind = _TYPES[name]
    optional = type(None) in typing.get_args(kind)
    if optional and text.strip().lower() in ("", "null", "none"):
        return None
    base = next((t for t in (bool, int, float, str) if t is kind or t in typing.get_args(kind)), str)
    if base is bool:
        word = text.strip().lower()
        if word not in ("true", "false", "1", "0"):
            raise InvalidRequest(f"{name} must be true or false, got {text!r}", param=name)
        return word in ("true", "1")
    if base in (int, float):
        try:
            return base(text)
        except ValueError:
            kind_name = "an integer" if base is int else "a number"
            raise InvalidRequest(f"{name} must be {kind_name}, got {text!r}", param=name) from None
    return text


def parse_create(body: dict, *, form: bool = False) -> tuple[str, SamplingParams, dict]:
    """``(prompt, params, openai_fields)`` from a decoded JSON object (``form``: a multipart/urlencoded form's
    string values). Raises :class:`InvalidRequest` (422) naming the field: a missing or empty prompt, an unknown
    field, a value of the wrong type or out of range."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object, got {type(body).__name__}", code="invalid_body")
    unknown = [k for k in body if k != "prompt" and k not in SAMPLING_FIELDS and k not in OPENAI_FIELDS]
    if unknown:
        known = ", ".join(["prompt", *SAMPLING_FIELDS, *OPENAI_FIELDS])
        raise InvalidRequest(f"unknown parameter {unknown[0]!r} (the parameters are: {known})", param=unknown[0],
                             code="unknown_parameter")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequest(f"prompt must be a non-empty string, got {prompt!r}", param="prompt",
                             code="missing_required_parameter" if prompt is None else "invalid_value")
    fields = {k: v for k, v in body.items() if k in SAMPLING_FIELDS}
    if form:
        fields = {k: _from_form(k, v) for k, v in fields.items()}
    try:
        params = SamplingParams(**fields)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(str(error), param=param_named(str(error))) from None
    openai = {k: body[k] for k in OPENAI_FIELDS if k in body and body[k] not in (None, "")}
    return prompt, params, openai


def param_named(message: str) -> str | None:
    """The request field a check's message starts with (the checks name the argument first), else None."""
    word = message.split(" ", 1)[0].strip(":,")
    if word in SAMPLING_FIELDS or word == "prompt":
        return word
    return "prompt" if "prompt" in message.lower() else None
