"""Hypothesis strategies for any protobuf request, derived from its descriptor: every field by its type,
biased to boundary values and to what the type allows but a service may not expect (huge and negative
integers, NaN and infinities, empty, NUL-bearing and very long strings, unknown enum numbers, invalid
Timestamps and Durations, deep Structs, long repeated fields), plus wire bytes no well-behaved client
sends (invalid UTF-8 in a string, garbage, nesting over protobuf's limit).

Names a service looks things up by (session ids, state keys, agent names) are drawn mostly from a small
set the test's fixture created, so generated requests reach the code behind the lookups instead of all
stopping at NOT_FOUND."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

#: Unicode text a proto string can hold (UTF-8: no surrogates), any other character allowed, NUL too.
_CHARS = st.characters(exclude_categories=["Cs"])
_ODD = ["", "\x00", "a\x00b", " ", "\u202e", "\ufeff", "..", "/", "../x", "%00", "\U0001f600", "é" * 3, "\n"]

INT32 = [0, 1, -1, 2**31 - 1, -(2**31), 100, 101, 1000]
INT64 = [0, 1, -1, 2**63 - 1, -(2**63), 2**53, 2**53 + 1, -(2**53) - 1, 2**31, 10**12, 300_000_000_000]
UINT32 = [0, 1, 2**32 - 1]
UINT64 = [0, 1, 2**64 - 1, 2**63]
DOUBLES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,
    -1e308,
    5e-324,
    2.0**53 + 2,
]


def long_text(low: int = 1000, high: int = 100_000) -> st.SearchStrategy[str]:
    return st.builds(
        lambda n, c: c * n, st.integers(low, high), st.sampled_from(["x", "é", "\U0001f600", "\x00"])
    )


def text() -> st.SearchStrategy[str]:
    return st.one_of(st.text(_CHARS, max_size=40), st.sampled_from(_ODD), long_text())


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """JSON-ish values as a Struct holds them: numbers are doubles (NaN and infinities included)."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(DOUBLES),
        st.text(_CHARS, max_size=20),
        st.sampled_from(_ODD),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.text(_CHARS, max_size=8), st.sampled_from(_ODD)), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def deep_json(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"d": value} if i % 2 else [value]
    return value


def _fill_struct(message: Message, value: Any) -> None:
    if not isinstance(value, dict):
        value = {"v": value}
    message.update(value)  # type: ignore[attr-defined]


def _struct(descriptor: d.Descriptor) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)

    def build(value: Any) -> Message:
        message = cls()
        if descriptor.full_name == "google.protobuf.Struct":
            _fill_struct(message, value)
        elif descriptor.full_name == "google.protobuf.ListValue":
            message.extend(value if isinstance(value, list) else [value])  # type: ignore[attr-defined]
        else:  # google.protobuf.Value
            holder = message_factory.GetMessageClass(descriptor.file.message_types_by_name["Struct"])()
            holder.update({"v": value})  # type: ignore[attr-defined]
            message.CopyFrom(holder.fields["v"])  # type: ignore[attr-defined]
        return message

    depth = st.one_of(st.integers(20, 60), st.just(99), st.integers(101, 160)).map(deep_json)
    return st.one_of(json_values(), depth).map(build)


def _seconds_nanos(descriptor: d.Descriptor, seconds: list[int]) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    return st.builds(
        lambda s, n: cls(seconds=s, nanos=n),
        st.one_of(st.sampled_from(seconds), st.integers(-(2**63), 2**63 - 1), st.integers(-1000, 10**6)),
        st.one_of(
            st.sampled_from([0, 1, -1, 999_999_999, 1_000_000_000, -(2**31), 2**31 - 1]),
            st.integers(-(2**31), 2**31 - 1),
        ),
    )


#: Well-known types built by hand: a Struct from JSON values, Timestamps and Durations by their fields.
_WELL_KNOWN: dict[str, Callable[[d.Descriptor], st.SearchStrategy[Message]]] = {
    "google.protobuf.Struct": _struct,
    "google.protobuf.Value": _struct,
    "google.protobuf.ListValue": _struct,
    "google.protobuf.Timestamp": lambda desc: _seconds_nanos(
        desc, [0, -1, 253_402_300_799, 253_402_300_800, -62_135_596_801]
    ),
    "google.protobuf.Duration": lambda desc: _seconds_nanos(
        desc, [0, 1, -1, 315_360_000, 315_360_001, 300_000_000_000]
    ),
}

FieldOverrides = Mapping[str, st.SearchStrategy[Any]]
_NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-_"), min_size=1, max_size=12)


def _sane_special(descriptor: d.Descriptor) -> st.SearchStrategy[Message]:
    """A well-known type with values any service takes: small JSON, a minute, the present."""
    cls = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Struct":
        return st.dictionaries(_NAME, st.one_of(st.integers(0, 100), _NAME, st.booleans()), max_size=3).map(
            lambda v: _filled(cls(), v)
        )
    if name in ("google.protobuf.Value", "google.protobuf.ListValue"):
        holder = message_factory.GetMessageClass(descriptor.file.message_types_by_name["Struct"])
        value = st.one_of(st.integers(0, 100), _NAME, st.lists(st.integers(0, 9), max_size=3))

        def build(v: Any) -> Message:
            item = _filled(holder(), {"v": v}).fields["v"]  # type: ignore[attr-defined]
            return (
                item
                if name == "google.protobuf.Value"
                else item.list_value
                if item.HasField("list_value")
                else cls()
            )

        return value.map(build)
    if name == "google.protobuf.Duration":
        return st.integers(1, 600).map(lambda s: cls(seconds=s))
    if name == "google.protobuf.Timestamp":
        return st.integers(1_700_000_000, 1_800_000_000).map(lambda s: cls(seconds=s))
    return _WELL_KNOWN[name](descriptor)


def _filled(message: Message, value: dict[str, Any]) -> Message:
    message.update(value)  # type: ignore[attr-defined]
    return message


class ProtoStrategies:
    """Strategies for messages of a proto package. Each message has at most ``max_wild`` of its fields
    drawn from the wild strategies (any value the type allows, biased to boundaries and oddities), the
    others from sane ones (what a careful client sends), so a request gets past its first check and
    the odd value reaches the code behind it. ``overrides`` maps a field's name (or a message's full
    name) to the sane strategy its values are drawn from (known session ids, keys, agent names)."""

    def __init__(self, overrides: FieldOverrides, max_depth: int = 3, max_wild: int = 2) -> None:
        self.overrides = overrides
        self.max_depth = max_depth
        self.max_wild = max_wild

    def message(
        self, descriptor: d.Descriptor, depth: int = 0, wild: bool = True
    ) -> st.SearchStrategy[Message]:
        override = self.overrides.get(descriptor.full_name)
        if not wild and override is not None:
            return override
        if descriptor.full_name in _WELL_KNOWN:
            return _WELL_KNOWN[descriptor.full_name](descriptor) if wild else _sane_special(descriptor)
        return self._generic(descriptor, depth, wild)

    def _generic(self, descriptor: d.Descriptor, depth: int, wild: bool) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        if depth > self.max_depth:
            return st.just(cls())
        real_oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]
        plain = [f for f in descriptor.fields if f.containing_oneof not in real_oneofs]
        names = [f.name for f in descriptor.fields]

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            wild_fields = (
                draw(st.sets(st.sampled_from(names), max_size=self.max_wild)) if wild and names else set()
            )
            message = cls()
            for field in plain:
                value = draw(self._presence(field, depth, field.name in wild_fields))
                if value is not None:
                    _assign(message, field, value)
            for oneof in real_oneofs:
                field = draw(st.sampled_from(list(oneof.fields)))
                value = draw(self._presence(field, depth, field.name in wild_fields))
                if value is not None:
                    _assign(message, field, value)
            return message

        return build()

    def _presence(self, field: d.FieldDescriptor, depth: int, wild: bool) -> st.SearchStrategy[Any]:
        value = self._value(field, depth, wild)
        # A sane field is present; absence (the default value) is one of the odd cases.
        return st.one_of(st.none(), value) if wild else value

    def _value(self, field: d.FieldDescriptor, depth: int, wild: bool) -> st.SearchStrategy[Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = self._scalar(field.message_type.fields_by_name["key"], wild)
            value = self._single(field.message_type.fields_by_name["value"], depth, wild)
            return st.dictionaries(key, value, max_size=5)
        single = self._single(field, depth, wild)
        if not _is_repeated(field):
            return single
        if not wild:
            return st.lists(single, max_size=3)
        return st.one_of(st.lists(single, max_size=5), st.lists(single, min_size=200, max_size=300))

    def _single(self, field: d.FieldDescriptor, depth: int, wild: bool) -> st.SearchStrategy[Any]:
        override = self.overrides.get(field.name)
        if override is not None and not wild:
            return override
        if field.message_type is not None:
            return self.message(field.message_type, depth + 1, wild)
        return self._scalar(field, wild)

    def _scalar(self, field: d.FieldDescriptor, wild: bool) -> st.SearchStrategy[Any]:
        t = field.type
        if not wild:
            return _sane_scalar(field)
        if t == d.FieldDescriptor.TYPE_STRING:
            return text()
        if t == d.FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=64), st.integers(1, 300_000).map(lambda n: b"\xff" * n))
        if t == d.FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if t == d.FieldDescriptor.TYPE_ENUM:
            numbers = [v.number for v in field.enum_type.values]
            return st.one_of(st.sampled_from(numbers), st.sampled_from([-1, 99, 2**31 - 1]))
        if t == d.FieldDescriptor.TYPE_DOUBLE:
            return st.one_of(st.sampled_from(DOUBLES), st.floats())
        if t == d.FieldDescriptor.TYPE_FLOAT:
            return st.one_of(
                st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 3.4e38]), st.floats(width=32)
            )
        if t in (
            d.FieldDescriptor.TYPE_INT32,
            d.FieldDescriptor.TYPE_SINT32,
            d.FieldDescriptor.TYPE_SFIXED32,
        ):
            return st.one_of(st.sampled_from(INT32), st.integers(-(2**31), 2**31 - 1))
        if t in (
            d.FieldDescriptor.TYPE_INT64,
            d.FieldDescriptor.TYPE_SINT64,
            d.FieldDescriptor.TYPE_SFIXED64,
        ):
            return st.one_of(st.sampled_from(INT64), st.integers(-(2**63), 2**63 - 1))
        if t in (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_FIXED32):
            return st.one_of(st.sampled_from(UINT32), st.integers(0, 2**32 - 1))
        if t in (d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_FIXED64):
            return st.one_of(st.sampled_from(UINT64), st.integers(0, 2**64 - 1))
        raise TypeError(f"no strategy for {field.full_name} of type {t}")


def _sane_scalar(field: d.FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == d.FieldDescriptor.TYPE_STRING:
        return _NAME
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.binary(min_size=1, max_size=32)
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == d.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        return st.floats(0, 1)
    return st.integers(0, 20)


def _is_repeated(field: d.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _assign(message: Message, field: d.FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif _is_repeated(field):
        if field.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


# --- wire bytes no well-behaved client sends -------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        out.append(bits | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def wire_mutations(descriptor: d.Descriptor) -> st.SearchStrategy[bytes]:
    """Serialized requests a protobuf library refuses to build: invalid UTF-8 in a string field,
    garbage, truncated fields (nesting deeper than the parser's limit comes from the deep Structs of
    ``ProtoStrategies``)."""
    strings = [f.number for f in descriptor.fields if f.type == d.FieldDescriptor.TYPE_STRING]
    options: list[st.SearchStrategy[bytes]] = [
        st.binary(min_size=1, max_size=64),
        st.just(b"\x0a\xff\xff\xff\xff\x0f"),  # a length far past the end
        st.just(b"\x80"),  # a truncated varint
    ]
    if strings:
        bad = st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\xf8\x88\x80\x80\x80"]
        )  # \xed\xa0\x80: a surrogate
        options.append(st.builds(_length_delimited, st.sampled_from(strings), bad))
    return st.one_of(options)
