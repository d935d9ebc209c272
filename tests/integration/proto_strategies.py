"""Hypothesis strategies that build any protobuf message from its descriptor: random,
boundary and hostile values for every field (strings that try to escape a folder or inject
a command, integers at their limits, NaN and infinities, enum numbers nobody defined, deep
nesting), plus bytes that are no message at all.

Fields that name something on this machine (a local path, a git URL, a GitHub repository)
only get values that point nowhere real, so a request that is accepted cannot make a service
copy or clone something real, or run a random command on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
MAX_DEPTH = 3

#: A folder that does not exist; hostile strings that run a command would touch a file in it.
NOWHERE = "/nonexistent-agentgate-fuzz"


def hostile_strings(marker: Path) -> list[str]:
    """Strings that have broken services elsewhere: traversal, NULs, shell and option
    injection (each would create `marker` if run), format strings, odd Unicode, long ones."""
    return [
        "",
        " ",
        "a",
        "wo-000000000000",
        "run-000000000000",
        "ws-000000000000",
        "lease-000000000000",
        "../../../../etc/passwd",
        "..",
        ".",
        "runs/../../outside",
        "a/b/../../../c",
        "/etc/passwd",
        "\x00",
        "run-\x00x",
        "\n\r\t",
        "é漢字🙂\u202e",
        "%s%n%x{0}{run_id}",
        "' OR 1=1; --",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"; touch {marker}",
        f"--upload-pack=touch {marker}",
        f"-oProxyCommand=touch {marker}",
        f"ext::sh -c touch% {marker}",
        "x" * 5000,
        "/" + "a/" * 300,
    ]


def _nowhere_paths(marker: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", "relative/dir", "..", "/etc/passwd", f"{NOWHERE}", f"{NOWHERE}/../{NOWHERE}", "\x00/"]),
        st.text(max_size=20).map(lambda tail: f"{NOWHERE}/{tail}"),
    )


def _nowhere_urls(marker: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [
                "",
                f"file://{NOWHERE}/repo.git",
                f"--upload-pack=touch {marker}",
                f"ext::sh -c touch% {marker}",
                "http://127.0.0.1:1/none.git",
                "not a url",
                f"{NOWHERE}/repo",
            ]
        ),
        st.text(max_size=20).map(lambda tail: f"file://{NOWHERE}/{tail}"),
    )


def _not_repos(marker: Path) -> st.SearchStrategy[str]:
    # Never owner/name: nothing is cloned from GitHub.
    return st.sampled_from(["", "owner", "/", "a/b/c", "../x", f"; touch {marker}", "-x/y", "a b/c d"])


def field_overrides(marker: Path) -> dict[str, st.SearchStrategy[Any]]:
    """Strategies for fields (by name) that must not point at something real."""
    return {"local_path": _nowhere_paths(marker), "git_url": _nowhere_urls(marker), "github_repo": _not_repos(marker)}


def _strings(marker: Path) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(hostile_strings(marker)),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    )


def _bounded_ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([0, 1, -1 if low < 0 else 2, low, high, low + 1, high - 1]), st.integers(low, high))


def _scalar(field: FieldDescriptor, marker: Path) -> st.SearchStrategy[Any]:
    t = FieldDescriptor
    kind = field.type
    if kind == t.TYPE_STRING:
        return _strings(marker)
    if kind == t.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == t.TYPE_BOOL:
        return st.booleans()
    if kind in (t.TYPE_DOUBLE,):
        return st.floats(allow_nan=True, allow_infinity=True)
    if kind in (t.TYPE_FLOAT,):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if kind in (t.TYPE_INT32, t.TYPE_SINT32, t.TYPE_SFIXED32):
        return _bounded_ints(*INT32)
    if kind in (t.TYPE_INT64, t.TYPE_SINT64, t.TYPE_SFIXED64):
        return _bounded_ints(*INT64)
    if kind in (t.TYPE_UINT32, t.TYPE_FIXED32):
        return _bounded_ints(*UINT32)
    if kind in (t.TYPE_UINT64, t.TYPE_FIXED64):
        return _bounded_ints(*UINT64)
    if kind == t.TYPE_ENUM:
        defined = [value.number for value in field.enum_type.values]
        # Open enums (proto3) carry numbers nobody defined; a service must refuse them.
        return st.one_of(st.sampled_from(defined), st.integers(-3, 1000))
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


@st.composite
def _message(draw: st.DrawFn, descriptor: Descriptor, marker: Path, depth: int, sparse: bool = False) -> Message:
    message = GetMessageClass(descriptor)()
    overrides = field_overrides(marker)
    for field in descriptor.fields:
        if not draw(st.booleans()) or (sparse and not draw(st.booleans())):
            continue  # left unset
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None and depth >= MAX_DEPTH:
                continue
            entries = draw(st.dictionaries(_scalar(key_field, marker), _value(value_field, marker, depth), max_size=3))
            target = getattr(message, field.name)
            for key, value in entries.items():
                if value_field.message_type is not None:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
            continue
        value_strategy = overrides[field.name] if field.name in overrides else _value(field, marker, depth)
        if field.message_type is not None and depth >= MAX_DEPTH:
            continue
        if field.is_repeated:
            values = draw(st.lists(value_strategy, max_size=3))
            target = getattr(message, field.name)
            if field.message_type is not None:
                for value in values:
                    target.add().CopyFrom(value)
            else:
                target.extend(values)
            continue
        value = draw(value_strategy)
        if field.message_type is not None:
            getattr(message, field.name).CopyFrom(value)
        else:
            setattr(message, field.name, value)
    return message


def _value(field: FieldDescriptor, marker: Path, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None:
        return _message(field.message_type, marker, depth + 1)
    return _scalar(field, marker)


def messages(descriptor: Descriptor, marker: Path) -> st.SearchStrategy[Message]:
    """Random messages of `descriptor`'s type, every field maybe set to a hostile value."""
    return _message(descriptor, marker, 0)


def _mutated(base: Message, marker: Path) -> st.SearchStrategy[bytes]:
    """`base` (a valid request) with a few fields replaced by random or hostile values, so
    the request gets past the first checks into the logic behind them."""

    def merge(patch: Message) -> bytes:
        message = type(base)()
        message.CopyFrom(base)
        message.MergeFrom(patch)
        return message.SerializeToString()

    return _message(base.DESCRIPTOR, marker, 0, sparse=True).map(merge)


def request_bytes(descriptor: Descriptor, marker: Path, base: Message | None = None) -> st.SearchStrategy[bytes]:
    """What a client may put on the wire: a random message of the type (mostly; with a valid
    `base`, often that request with a few fields changed), or bytes that may not parse as
    one (wrong wire types, truncated lengths, garbage)."""
    if base is not None:
        return st.one_of(
            _mutated(base, marker),
            _mutated(base, marker),
            messages(descriptor, marker).map(lambda message: message.SerializeToString()),
            st.binary(max_size=64),
        )
    return st.one_of(
        messages(descriptor, marker).map(lambda message: message.SerializeToString()),
        messages(descriptor, marker).map(lambda message: message.SerializeToString()),
        messages(descriptor, marker).map(lambda message: message.SerializeToString()),
        st.binary(max_size=64),
        st.sampled_from([b"\x0a\x05abc", b"\xff\xff\xff\xff", b"\x08", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x02\xc3\x28"]),
    )
