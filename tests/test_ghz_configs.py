"""The ghz load-test configs in bench/ghz/ still fit the contract.

ghz is not installed here, and it would only find a stale config at benchmark time (Go's JSON
decoding even ignores a misspelt key silently). These tests check each config against the
generated descriptors instead: the method exists, the request data parses into its input
message, and the run uses server reflection over plaintext with sane counts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from whatsapp.identity.v1 import identity_pb2

GHZ_DIR = Path(__file__).resolve().parent.parent / "bench" / "ghz"
CONFIGS = sorted(GHZ_DIR.glob("*.json"))
EXPECTED = {
    "acknowledge_identity.json",
    "get_identity_bypass_cache.json",
    "get_identity_cache_hit.json",
}
MAKE_RUN_TARGET = "127.0.0.1:50051"  # where `make run` listens, which bench/ghz/README.md promises

# The ghz config keys these files may use (ghz's runner.Config JSON names). Go's encoding/json
# ignores unknown keys, so a typo such as "concurency" would silently fall back to ghz's default;
# add a key here when a config genuinely needs it.
KNOWN_KEYS = {
    "name",
    "call",
    "host",
    "insecure",
    "data",
    "metadata",
    "total",
    "concurrency",
    "connections",
    "timeout",
    "duration",
    "max-duration",
    "rps",
    "connect-timeout",
    "keepalive",
    "tags",
    "format",
    "output",
    "cpus",
}
# Keys that load a schema from files: these configs rely on the gateway's server reflection.
SCHEMA_FILE_KEYS = {"proto", "protoset", "import-paths"}
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def load(path: Path) -> dict[str, Any]:
    config = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict), f"{path.name}: a ghz config is a JSON object"
    return config


def find_method(call: str) -> MethodDescriptor:
    """The method a ghz `call` ("package.Service.Method") names in identity.proto."""
    service_name, _, method_name = call.rpartition(".")
    for service in identity_pb2.DESCRIPTOR.services_by_name.values():
        if service.full_name == service_name and method_name in service.methods_by_name:
            method: MethodDescriptor = service.methods_by_name[method_name]
            return method
    pytest.fail(f"{call!r} is not a method of {identity_pb2.DESCRIPTOR.name}")


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_request_data(config: dict[str, Any]) -> None:
    """Parse a config's `data` into its method's input message; raises on a stray field."""
    method = find_method(config["call"])
    data = config["data"]
    assert isinstance(data, dict), "unary calls take one object as data"
    request = message_factory.GetMessageClass(method.input_type)()
    # ParseDict refuses unknown fields, so every key in `data` is proven to be a field of the
    # method's input message, and every value to have that field's type.
    json_format.ParseDict(data, request)
    assert request.ListFields(), "data sets no field"


def test_the_documented_configs_exist() -> None:
    missing = EXPECTED - {path.name for path in CONFIGS}
    assert not missing, f"bench/ghz/README.md documents configs that are gone: {missing}"


def test_a_misspelt_data_field_is_caught() -> None:
    # The check must fail for exactly the mistake it exists for: a field ghz would send wrongly.
    config = {"call": "whatsapp.identity.v1.IdentityService.GetIdentity", "data": {"waid": "1"}}
    with pytest.raises(json_format.ParseError, match="waid"):
        parse_request_data(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_calls_an_existing_method_with_valid_request_data(path: Path) -> None:
    parse_request_data(load(path))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_uses_reflection_over_plaintext_with_sane_load(path: Path) -> None:
    config = load(path)

    assert set(config) <= KNOWN_KEYS, f"{path.name}: unknown keys {set(config) - KNOWN_KEYS}"
    assert not set(config) & SCHEMA_FILE_KEYS, f"{path.name}: use server reflection, no protos"
    assert config["insecure"] is True
    assert config["host"] == MAKE_RUN_TARGET
    assert positive_int(config["total"]), config["total"]
    assert positive_int(config["concurrency"]), config["concurrency"]
    # ghz refuses fewer requests than workers, and more connections than workers.
    assert config["total"] >= config["concurrency"]
    connections = config.get("connections", 1)
    assert positive_int(connections), connections
    assert connections <= config["concurrency"]
    assert GO_DURATION.match(config.get("timeout", "20s")), "timeout is a Go duration, e.g. 5s"
    metadata = config.get("metadata", {})
    assert isinstance(metadata, dict)
    for key, value in metadata.items():
        assert isinstance(value, str), f"{path.name}: metadata values are strings"
        assert key == key.lower(), f"{path.name}: gRPC metadata keys are lower case"
