"""Contract checks for protos/sessionkit/v1/*.proto: every element is documented, the generated
Python modules in sdk/sessionkit/v1 are up to date, and the checkable API design rules hold.

The .proto files are compiled in-process with grpc_tools.protoc (the compiler `make protos` uses)
into a FileDescriptorSet with source info, so the checks see the same comments and types as protoc.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
PROTO_DIR = PROTO_ROOT / "sessionkit" / "v1"
GENERATED_DIR = ROOT / "sdk" / "sessionkit" / "v1"
WELL_KNOWN_PROTOS = Path(os.path.dirname(grpc_tools.__file__)) / "_proto"
PACKAGE = "sessionkit.v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
FieldProto = descriptor_pb2.FieldDescriptorProto
PROTO_FILES = sorted(PROTO_DIR.glob("*.proto"))

# Path numbers of descriptor.proto, as used in SourceCodeInfo.Location.path.
FILE_MESSAGE_TYPE = 4
FILE_ENUM_TYPE = 5
FILE_SERVICE = 6
MESSAGE_FIELD = 2
MESSAGE_NESTED_TYPE = 3
MESSAGE_ENUM_TYPE = 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

# Design-rule breaches that are known and accepted for now, exactly as the test words them, with
# why. Any other breach fails the test, and so does an entry here that no longer occurs (delete it).
KNOWN_DESIGN_EXCEPTIONS: dict[str, str] = {
    "sessionkit.v1.StateService.WatchState: response sessionkit.v1.StateChange "
    "does not end with 'Response'": (
        "the watch stream sends StateChange itself rather than a WatchStateResponse wrapping it; "
        "renaming it changes the generated types the SDK and the services use"
    ),
}


def _protoc(*args: str, proto_root: Path = PROTO_ROOT) -> None:
    """Runs protoc in-process with the include path of `make protos`: protos/, then the
    google/protobuf/*.proto shipped with grpc_tools."""
    argv = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{WELL_KNOWN_PROTOS}", *args]
    code = protoc.main(argv)
    assert code == 0, f"protoc exited with {code} (errors on stderr): {' '.join(argv[1:])}"


def _compile(
    protos: list[Path], out_dir: Path, proto_root: Path = PROTO_ROOT
) -> descriptor_pb2.FileDescriptorSet:
    """The FileDescriptorSet of `protos`, with source info (comments and spans)."""
    out = out_dir / "descriptors.binpb"
    _protoc("--include_source_info", f"--descriptor_set_out={out}", *map(str, protos), proto_root=proto_root)
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    assert sorted(f.name for f in fds.file) == sorted(p.relative_to(proto_root).as_posix() for p in protos)
    return fds


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    assert PROTO_FILES, f"no .proto files in {PROTO_DIR}"
    return _compile(PROTO_FILES, tmp_path_factory.mktemp("descriptors"))


# -- 1. every element documented -------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    kind: str  # service, rpc, message, field, enum, enum value
    full_name: str
    path: tuple[int, ...]
    # For an enum value: the path of its enum.
    enum_path: tuple[int, ...] | None = None


def _enum_elements(
    enum: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]
) -> Iterator[Element]:
    name = f"{scope}.{enum.name}"
    yield Element("enum", name, path)
    for i, value in enumerate(enum.value):
        yield Element("enum value", f"{name}.{value.name}", (*path, ENUM_VALUE, i), enum_path=path)


def _message_elements(
    message: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]
) -> Iterator[Element]:
    if message.options.map_entry:  # synthesized by protoc for a map<K, V> field: not in the source
        return
    name = f"{scope}.{message.name}"
    yield Element("message", name, path)
    for i, field in enumerate(message.field):
        yield Element("field", f"{name}.{field.name}", (*path, MESSAGE_FIELD, i))
    for i, nested in enumerate(message.nested_type):
        yield from _message_elements(nested, name, (*path, MESSAGE_NESTED_TYPE, i))
    for i, enum in enumerate(message.enum_type):
        yield from _enum_elements(enum, name, (*path, MESSAGE_ENUM_TYPE, i))


def _file_elements(fd: descriptor_pb2.FileDescriptorProto) -> Iterator[Element]:
    for i, service in enumerate(fd.service):
        service_name = f"{fd.package}.{service.name}"
        yield Element("service", service_name, (FILE_SERVICE, i))
        for j, method in enumerate(service.method):
            yield Element("rpc", f"{service_name}.{method.name}", (FILE_SERVICE, i, SERVICE_METHOD, j))
    for i, message in enumerate(fd.message_type):
        yield from _message_elements(message, fd.package, (FILE_MESSAGE_TYPE, i))
    for i, enum in enumerate(fd.enum_type):
        yield from _enum_elements(enum, fd.package, (FILE_ENUM_TYPE, i))


def _undocumented(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """The elements without a leading comment, as "<kind> <full name>  (<file>:<line>)"."""
    undocumented: list[str] = []
    for fd in fds.file:
        locations = {tuple(loc.path): loc for loc in fd.source_code_info.location}
        documented: dict[tuple[int, ...], bool] = {}
        for element in _file_elements(fd):
            location = locations.get(element.path)
            assert location is not None, f"protoc gave no source location for {element.full_name}"
            documented[element.path] = bool(location.leading_comments.strip())
            if element.enum_path is not None and documented[element.enum_path]:
                continue  # an enum value of a documented enum
            if not documented[element.path]:
                line = location.span[0] + 1
                undocumented.append(f"{element.kind} {element.full_name}  ({fd.name}:{line})")
    return undocumented


def test_every_element_has_a_leading_comment(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    """Every service, RPC, message (top-level and nested), field (oneof members included) and enum
    has a non-empty leading comment: `//` or `/* */` lines right above it, not separated from it by a
    blank line. Trailing comments do not count.

    Exempt: enum values, when their enum is documented (UNSPECIFIED = 0 and self-explanatory values
    need no comment of their own). The values of an undocumented enum must each be documented.
    """
    undocumented = _undocumented(descriptor_set)
    if undocumented:
        pytest.fail(
            f"{len(undocumented)} element(s) without a leading comment:\n  " + "\n  ".join(undocumented),
            pytrace=False,
        )


# -- 2. generated modules up to date ---------------------------------------------------------------


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python modules protoc generates now, as `make protos` would write them into sdk/."""
    out = tmp_path_factory.mktemp("generated")
    _protoc(f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *map(str, PROTO_FILES))
    return out / "sessionkit" / "v1"


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda p: p.name)
def test_generated_modules_are_up_to_date(proto: Path, regenerated: Path) -> None:
    stale = []
    for suffix in GENERATED_SUFFIXES:
        name = proto.stem + suffix
        fresh = (regenerated / name).read_bytes()
        committed = GENERATED_DIR / name
        if not committed.is_file():
            stale.append(f"{name} (missing)")
        elif committed.read_bytes() != fresh:
            stale.append(f"{name} (differs)")
    if stale:
        pytest.fail(
            f"sdk/sessionkit/v1 is out of date with protos/sessionkit/v1/{proto.name}: "
            f"{', '.join(stale)}; run make protos",
            pytrace=False,
        )


def test_no_generated_module_without_its_proto() -> None:
    stems = {p.stem for p in PROTO_FILES}
    orphans = sorted(
        path.name
        for suffix in GENERATED_SUFFIXES
        for path in GENERATED_DIR.glob(f"*{suffix}")
        if path.name.removesuffix(suffix) not in stems
    )
    assert not orphans, f"generated modules without a .proto in {PROTO_DIR}: {orphans}; delete them"


# -- 3. API design rules ---------------------------------------------------------------------------


def _design_breaches(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}

    def collect(message: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{message.name}"
        messages[name] = message
        for nested in message.nested_type:
            collect(nested, name)

    for fd in fds.file:
        for message in fd.message_type:
            collect(message, fd.package)

    def field(message_name: str, field_name: str) -> FieldProto | None:
        message = messages.get(message_name)
        return next((f for f in message.field if f.name == field_name), None) if message else None

    breaches: list[str] = []
    users: dict[str, list[str]] = defaultdict(list)
    for fd in fds.file:
        for service in fd.service:
            for method in service.method:
                rpc = f"{fd.package}.{service.name}.{method.name}"
                request = method.input_type.removeprefix(".")
                response = method.output_type.removeprefix(".")
                users[request].append(rpc)
                users[response].append(rpc)
                for role, name, suffix in (
                    ("request", request, "Request"),
                    ("response", response, "Response"),
                ):
                    if name == "google.protobuf.Empty":
                        breaches.append(f"{rpc}: {role} is google.protobuf.Empty, not a message of its own")
                    elif not name.endswith(suffix):
                        breaches.append(f"{rpc}: {role} {name} does not end with {suffix!r}")
                if not method.name.startswith("List") or method.client_streaming or method.server_streaming:
                    continue
                for message_name, field_name, type_ in (
                    (request, "page_size", FieldProto.TYPE_INT32),
                    (request, "page_token", FieldProto.TYPE_STRING),
                    (response, "next_page_token", FieldProto.TYPE_STRING),
                ):
                    found = field(message_name, field_name)
                    if found is None or found.type != type_ or found.label == FieldProto.LABEL_REPEATED:
                        kind = "int32" if type_ == FieldProto.TYPE_INT32 else "string"
                        breaches.append(f"{rpc}: {message_name} has no {kind} {field_name}")
    for name, rpcs in sorted(users.items()):
        if len(rpcs) > 1:
            breaches.append(f"{name} is the request or response of several RPCs: {', '.join(sorted(rpcs))}")
    return breaches


def test_api_design_rules(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    """The checkable rules of the conventions in common.proto (Google API design guide):

    - every RPC has a request and a response message of its own: never google.protobuf.Empty, and no
      message is the request or the response of two RPCs (or of one RPC twice);
    - request message names end with "Request", response message names with "Response";
    - a unary List* RPC pages: int32 page_size and string page_token in its request, string
      next_page_token in its response (streaming RPCs are exempt).

    Accepted exceptions are listed, with their reason, in KNOWN_DESIGN_EXCEPTIONS.
    """
    breaches = _design_breaches(descriptor_set)
    new = [b for b in breaches if b not in KNOWN_DESIGN_EXCEPTIONS]
    fixed = [b for b in KNOWN_DESIGN_EXCEPTIONS if b not in breaches]
    if new:
        pytest.fail("API design rules broken:\n  " + "\n  ".join(new), pytrace=False)
    if fixed:
        pytest.fail(
            "no longer broken, remove from KNOWN_DESIGN_EXCEPTIONS:\n  " + "\n  ".join(fixed), pytrace=False
        )


def test_every_file_is_in_the_package(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    wrong = {f.name: f.package for f in descriptor_set.file if f.package != PACKAGE}
    assert not wrong, f"every .proto must declare `package {PACKAGE};`; these do not: {wrong}"


# -- the checkers themselves -----------------------------------------------------------------------

BAD_PROTO = """\
syntax = "proto3";
package other.v1;
import "google/protobuf/empty.proto";

// Documented.
service Things {
  // Documented.
  rpc ListThings(ListThingsRequest) returns (ListThingsResponse);
  // Documented.
  rpc Ping(google.protobuf.Empty) returns (Pong);
  // Documented.
  rpc GetThing(ListThingsRequest) returns (ListThingsResponse);
  rpc Undocumented(UndocumentedRequest) returns (stream UndocumentedResponse);
}

// Documented.
message ListThingsRequest {
  int32 page_size = 1;
  // Documented; but page_token is missing.
  message Nested {
    oneof choice {
      // Documented.
      string a = 1;
      string b = 2;  // trailing only
    }
  }
}

message ListThingsResponse {
  // Documented.
  repeated string things = 1;
}

// Documented.
message Pong {
  // Documented.
  enum Level {
    LEVEL_UNSPECIFIED = 0;
  }
  enum Bare {
    // Documented.
    BARE_UNSPECIFIED = 0;
    UNDOCUMENTED = 1;
  }
}

// Documented.
message UndocumentedRequest {}

// Documented.
message UndocumentedResponse {}
"""


def test_checkers_report_every_breach(tmp_path: Path) -> None:
    """Guards the checkers above against passing vacuously: a proto with known faults must be
    reported exactly."""
    proto = tmp_path / "other" / "v1" / "bad.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text(BAD_PROTO)
    fds = _compile([proto], tmp_path, proto_root=tmp_path)
    assert [u.split("  (")[0] for u in _undocumented(fds)] == [
        "rpc other.v1.Things.Undocumented",
        "field other.v1.ListThingsRequest.page_size",
        "field other.v1.ListThingsRequest.Nested.b",
        "message other.v1.ListThingsResponse",
        "enum other.v1.Pong.Bare",
        "enum value other.v1.Pong.Bare.UNDOCUMENTED",
    ]
    assert _design_breaches(fds) == [
        "other.v1.Things.ListThings: other.v1.ListThingsRequest has no string page_token",
        "other.v1.Things.ListThings: other.v1.ListThingsResponse has no string next_page_token",
        "other.v1.Things.Ping: request is google.protobuf.Empty, not a message of its own",
        "other.v1.Things.Ping: response other.v1.Pong does not end with 'Response'",
        "other.v1.ListThingsRequest is the request or response of several RPCs: "
        "other.v1.Things.GetThing, other.v1.Things.ListThings",
        "other.v1.ListThingsResponse is the request or response of several RPCs: "
        "other.v1.Things.GetThing, other.v1.Things.ListThings",
    ]
