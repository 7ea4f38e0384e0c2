"""JSON codec for job data: dataclasses, dicts, TypedDicts and pydantic models.

Job data is stored as JSON text, never pickled, so a payload can be read by
any process and cannot execute code when decoded. Decoding is driven by the
data type the handler declares, which rebuilds nested dataclasses and the
non-JSON scalars below from their JSON form.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import types
import typing
import uuid
from decimal import Decimal
from functools import cache
from typing import (
    Any,
    TypeVar,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from fantasma.errors import SerializationError

__all__ = ["decode", "encode", "is_supported_type"]

T = TypeVar("T")

try:  # pydantic is optional: models are supported when it is installed.
    from pydantic import BaseModel as _PydanticModel
except ImportError:  # pragma: no cover - exercised only without pydantic
    _PydanticModel = None  # type: ignore[assignment, misc]


def is_supported_type(data_type: object) -> bool:
    """Return whether values of ``data_type`` can be job data."""
    if isinstance(data_type, type) and dataclasses.is_dataclass(data_type):
        return True
    if is_typeddict(data_type) or data_type is dict or get_origin(data_type) is dict:
        return True
    return _is_pydantic_type(data_type)


def _is_pydantic_type(data_type: object) -> bool:
    return (
        _PydanticModel is not None
        and isinstance(data_type, type)
        and issubclass(data_type, _PydanticModel)
    )


def encode(data: object) -> str:
    """Encode job data as JSON text.

    Raises:
        SerializationError: ``data`` is not a dataclass instance, dict or
            pydantic model, or contains a value JSON cannot represent.
    """
    if _PydanticModel is not None and isinstance(data, _PydanticModel):
        return data.model_dump_json()
    if not (
        isinstance(data, dict)
        or (dataclasses.is_dataclass(data) and not isinstance(data, type))
    ):
        raise SerializationError(
            f"cannot serialise job data of type {_type_name(type(data))}: use a "
            "dataclass instance, a dict (or TypedDict) or a pydantic model"
        )
    try:
        return json.dumps(
            _to_json(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"cannot serialise job data of type {_type_name(type(data))}: {exc}"
        ) from exc


def decode(payload: str, data_type: type[T]) -> T:
    """Decode JSON text produced by :func:`encode` into ``data_type``.

    Raises:
        SerializationError: The text is not valid JSON or does not fit
            ``data_type``.
    """
    try:
        raw = json.loads(payload)
        if _is_pydantic_type(data_type):
            return cast("T", cast("Any", data_type).model_validate(raw))
        return cast("T", _from_json(raw, data_type))
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot decode job data as {_type_name(data_type)}: {exc}"
        ) from exc


def _to_json(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str, got {_type_name(type(key))}")
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _to_json(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return _to_json(value.value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if _PydanticModel is not None and isinstance(value, _PydanticModel):
        return value.model_dump(mode="json")
    raise TypeError(
        f"{_type_name(type(value))} is not JSON serialisable; use str, int, float,"
        " bool, None, list, dict, a dataclass, an enum, datetime, date, time,"
        " timedelta, UUID or Decimal"
    )


@cache
def _field_types(data_type: type) -> dict[str, Any]:
    return get_type_hints(data_type)


@cache
def _computed_fields(data_type: type) -> frozenset[str]:
    # Fields declared with init=False are encoded, but the class sets them
    # itself, so its constructor does not accept them back.
    return frozenset(f.name for f in dataclasses.fields(data_type) if not f.init)


_PLAIN_JSON_TYPES = frozenset({str, int, float, bool})


def _from_json(raw: object, hint: Any) -> object:
    if hint is Any or hint is object or raw is None:
        return raw
    # A JSON scalar that already has the declared type needs no conversion;
    # checking that first keeps decoding cheap for the common flat dataclass.
    if type(raw) is hint and hint in _PLAIN_JSON_TYPES:
        return raw
    origin = get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return _from_union(raw, get_args(hint))
    if origin is typing.Literal:
        return raw
    if origin in (list, set, frozenset, tuple):
        return _from_sequence(raw, hint, origin)
    if origin is dict:
        value_hint = get_args(hint)[1] if get_args(hint) else Any
        return {
            key: _from_json(item, value_hint) for key, item in _as_dict(raw).items()
        }
    if not isinstance(hint, type):
        return raw
    if dataclasses.is_dataclass(hint):
        fields = _as_dict(raw)
        hints = _field_types(hint)
        computed = _computed_fields(hint)
        return hint(
            **{
                name: _from_json(item, hints.get(name, Any))
                for name, item in fields.items()
                if name not in computed
            }
        )
    if is_typeddict(hint):
        hints = _field_types(hint)
        return {
            key: _from_json(item, hints.get(key, Any))
            for key, item in _as_dict(raw).items()
        }
    if _is_pydantic_type(hint):
        return cast("Any", hint).model_validate(raw)
    return _from_scalar(raw, hint)


def _from_scalar(raw: object, hint: type) -> object:
    if issubclass(hint, enum.Enum):
        return hint(raw)
    if hint is dt.datetime:
        return dt.datetime.fromisoformat(cast("str", raw))
    if hint is dt.date:
        return dt.date.fromisoformat(cast("str", raw))
    if hint is dt.time:
        return dt.time.fromisoformat(cast("str", raw))
    if hint is dt.timedelta:
        return dt.timedelta(seconds=cast("float", raw))
    if hint is uuid.UUID:
        return uuid.UUID(cast("str", raw))
    if hint is Decimal:
        return Decimal(cast("str", raw))
    if hint is float and isinstance(raw, int):
        return float(raw)
    return raw


def _from_union(raw: object, options: tuple[Any, ...]) -> object:
    candidates = [option for option in options if option is not type(None)]
    if len(candidates) == 1:
        return _from_json(raw, candidates[0])
    return raw


def _from_sequence(raw: object, hint: Any, origin: type) -> object:
    if not isinstance(raw, list):
        raise SerializationError(f"expected a JSON array for {hint}, got {raw!r}")
    args = get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return tuple(_from_json(item, arg) for item, arg in zip(raw, args, strict=True))
    item_hint = args[0] if args else Any
    items = [_from_json(item, item_hint) for item in raw]
    return origin(items) if origin is not list else items


def _as_dict(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SerializationError(f"expected a JSON object, got {raw!r}")
    return raw


def _type_name(data_type: object) -> str:
    module = getattr(data_type, "__module__", "")
    name = getattr(data_type, "__qualname__", repr(data_type))
    return name if module in ("builtins", "") else f"{module}.{name}"
