"""gateway.serving.authz: the policy file, who the caller is, what it may call, and the audit line.

Tokens here are made up and end in ``-SECRET`` so a test can look for them anywhere they must
never appear (error messages, metadata, statuses).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway.failures import GatewayError
from gateway.serving.authz import (
    ALL_METHODS,
    METHODS,
    Authorizer,
    Caller,
    CallerPolicy,
    PermissionDenied,
    Policy,
    PolicyError,
    Unauthenticated,
    audit_acknowledge,
    load_policy,
    parse_policy,
    parse_xfcc,
    token_digest,
)
from gateway.serving.status import DOMAIN, rule_for, to_status
from gateway.telemetry import logs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = ROOT / "deploy" / "authz" / "policy.example.json"

GET = "GetIdentity"
ACK = "AcknowledgeIdentity"
READER_TOKEN = "reader-Kq93xT-SECRET"
VERIFIER_TOKEN = "verifier-Zx71pL-SECRET"
OPS_TOKEN = "ops-Hh20wQ-SECRET"
UNKNOWN_TOKEN = "unknown-Mm55rE-SECRET"
VERIFIER_ID = "spiffe://cluster.local/ns/messaging/sa/verifier"
READER_ID = "spiffe://cluster.local/ns/messaging/sa/reader"
GATEWAY_ID = "spiffe://cluster.local/ns/identity/sa/identity-gateway"
CERT_HASH = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"

Metadata = list[tuple[str, str | bytes]]


def policy_json(*, trust_xfcc: bool = True, **overrides: Any) -> dict[str, Any]:
    """A valid policy document: verifier (token and mesh), reader (token and mesh), ops ("*")."""
    document: dict[str, Any] = {
        "trust_xfcc": trust_xfcc,
        "callers": [
            {
                "name": "verifier",
                "spiffe_ids": [VERIFIER_ID],
                "token_sha256": [token_digest(VERIFIER_TOKEN)],
                "methods": [GET, ACK],
            },
            {
                "name": "reader",
                "spiffe_ids": [READER_ID],
                "token_sha256": [token_digest(READER_TOKEN)],
                "methods": [GET],
            },
            {"name": "ops", "token_sha256": [token_digest(OPS_TOKEN)], "methods": [ALL_METHODS]},
        ],
    }
    document.update(overrides)
    return document


def authorizer(*, trust_xfcc: bool = True) -> Authorizer:
    return authorizer_for(policy_json(trust_xfcc=trust_xfcc))


def authorizer_for(document: dict[str, Any]) -> Authorizer:
    return Authorizer(parse_policy(json.dumps(document)))


def bearer(token: str) -> Metadata:
    return [("authorization", f"Bearer {token}")]


def xfcc(*elements: str) -> Metadata:
    return [("x-forwarded-client-cert", ",".join(elements))]


def sidecar_element(uri: str, *, subject: str = '""') -> str:
    """The element an Istio sidecar appends for the client whose certificate names ``uri``."""
    return f"By={GATEWAY_ID};Hash={CERT_HASH};Subject={subject};URI={uri}"


def policy_error(document: object) -> str:
    """The PolicyError message for ``document`` (JSON-encoded unless already text)."""
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    return str(caught.value)


def with_caller(index: int, **changes: Any) -> dict[str, Any]:
    """The valid policy with caller ``index`` changed (a value of None removes the key)."""
    document = policy_json()
    caller = document["callers"][index]
    for key, value in changes.items():
        if value is None:
            caller.pop(key, None)
        else:
            caller[key] = value
    return document


def unauthenticated(auth: Authorizer, method: str, metadata: Metadata | None) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        auth.authorize(method, metadata)
    return caught.value


# ---- the policy file ----------------------------------------------------------------------------


def test_a_valid_policy_parses_into_callers_and_their_methods() -> None:
    policy = parse_policy(json.dumps(policy_json()))
    assert policy.trust_xfcc is True
    assert [caller.name for caller in policy.callers] == ["verifier", "reader", "ops"]
    assert policy.callers[1].allowed == frozenset({GET})
    assert policy.callers[2].allowed == METHODS


def test_methods_are_the_ones_the_generated_descriptor_declares() -> None:
    assert frozenset({GET, ACK, "ReportIdentityChange", "WatchIdentityChanges"}) == METHODS


def test_trust_xfcc_defaults_to_false() -> None:
    document = policy_json()
    del document["trust_xfcc"]
    assert parse_policy(json.dumps(document)).trust_xfcc is False


def test_the_example_policy_file_is_valid() -> None:
    policy = load_policy(EXAMPLE_POLICY)
    assert {caller.name for caller in policy.callers} == {"verifier", "reporting"}


def test_load_policy_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "authz.json"
    path.write_text(json.dumps(policy_json()), encoding="utf-8")
    assert load_policy(path) == parse_policy(json.dumps(policy_json()))


def test_load_policy_names_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(PolicyError, match=r"cannot read the policy file .*missing\.json"):
        load_policy(missing)


def test_load_policy_names_the_file_of_a_bad_policy(tmp_path: Path) -> None:
    path = tmp_path / "authz.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"authz\.json: not valid JSON: .* line 1 column 2"):
        load_policy(path)


def test_policy_error_is_a_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"callers": [', "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"callers": {}}', '"callers" must be a list'),
        ('{"callers": []}', "callers is empty"),
        ('{"callers": [], "callers": []}', "key 'callers' appears twice"),
        ('{"callers": ["reader"]}', r"callers\[0\] must be an object"),
    ],
)
def test_malformed_documents_are_refused(text: str, expected: str) -> None:
    with pytest.raises(PolicyError, match=expected):
        parse_policy(text)


def test_an_unknown_top_level_key_is_refused() -> None:
    message = policy_error(policy_json(trust_xcc=True))
    assert "unknown key(s) 'trust_xcc'" in message


def test_a_misspelt_caller_key_is_refused() -> None:
    message = policy_error(with_caller(0, spiffe_id=[VERIFIER_ID]))
    assert "callers[0] has unknown key(s) 'spiffe_id'" in message


def test_trust_xfcc_must_be_a_boolean() -> None:
    document = policy_json()
    document["trust_xfcc"] = "yes"
    assert "trust_xfcc must be true or false" in policy_error(document)


def test_a_description_must_be_a_string() -> None:
    assert "description must be a string" in policy_error(with_caller(0, description=1))


def test_an_unknown_method_is_named_with_the_known_ones() -> None:
    message = policy_error(with_caller(1, methods=["GetIdentity", "DeleteIdentity"]))
    assert message.startswith("callers[1]: caller 'reader': methods: unknown method")
    assert "unknown method 'DeleteIdentity'" in message
    assert "AcknowledgeIdentity, GetIdentity" in message


def test_a_full_method_path_is_not_a_method_name() -> None:
    message = policy_error(
        with_caller(1, methods=["/whatsapp.identity.v1.IdentityService/GetIdentity"])
    )
    assert "unknown method" in message


def test_empty_methods_are_refused() -> None:
    assert "methods is empty" in policy_error(with_caller(1, methods=[]))


def test_missing_methods_are_refused() -> None:
    assert 'needs "methods"' in policy_error(with_caller(1, methods=None))


def test_star_must_stand_alone() -> None:
    assert '"*" already means every method' in policy_error(with_caller(2, methods=["*", GET]))


def test_a_method_listed_twice_is_refused() -> None:
    assert "lists 'GetIdentity' twice" in policy_error(with_caller(1, methods=[GET, GET]))


def test_methods_must_be_strings() -> None:
    assert (
        policy_error(with_caller(1, methods=[1])) == "callers[1]: methods must be a list of strings"
    )


def test_a_plaintext_token_is_refused_without_echoing_it() -> None:
    message = policy_error(with_caller(1, token_sha256=[READER_TOKEN]))
    assert "token_sha256[0] must be the SHA-256 hex digest" in message
    assert READER_TOKEN not in message


def test_a_64_character_token_that_is_not_hex_is_refused_without_echoing_it() -> None:
    plaintext = "Z" * 60 + "-SEC"
    message = policy_error(with_caller(1, token_sha256=[plaintext]))
    assert "SHA-256 hex digest" in message
    assert plaintext not in message


def test_an_uppercase_digest_is_accepted() -> None:
    document = with_caller(1, token_sha256=[token_digest(READER_TOKEN).upper()])
    caller = authorizer_for(document).authorize(GET, bearer(READER_TOKEN))
    assert caller == Caller("reader", "token")


def test_a_digest_shared_by_two_callers_is_refused() -> None:
    message = policy_error(with_caller(1, token_sha256=[token_digest(VERIFIER_TOKEN)]))
    assert "listed by two callers, 'verifier' and 'reader'" in message


def test_a_digest_listed_twice_by_one_caller_is_refused_whatever_its_case() -> None:
    digest = token_digest(READER_TOKEN)
    message = policy_error(with_caller(1, token_sha256=[digest, digest.upper()]))
    assert "caller 'reader' lists a token_sha256 digest twice" in message


def test_a_spiffe_id_shared_by_two_callers_is_refused() -> None:
    message = policy_error(with_caller(1, spiffe_ids=[VERIFIER_ID]))
    assert f"spiffe id '{VERIFIER_ID}' is listed by two callers" in message


def test_a_caller_name_used_twice_is_refused() -> None:
    assert "caller name 'verifier' is used twice" in policy_error(with_caller(1, name="verifier"))


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-leading-dash"])
def test_a_caller_name_must_be_a_short_identifier(name: str) -> None:
    assert "must be 1-64 letters" in policy_error(with_caller(1, name=name))


def test_anonymous_is_reserved_for_the_audit_line() -> None:
    assert "reserved" in policy_error(with_caller(1, name="anonymous"))


def test_a_caller_without_credentials_is_refused() -> None:
    message = policy_error(with_caller(1, token_sha256=None, spiffe_ids=None))
    assert "has neither token_sha256 nor spiffe_ids" in message


def test_an_empty_credential_list_is_refused() -> None:
    assert "token_sha256 is empty" in policy_error(with_caller(1, token_sha256=[]))


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "https://cluster.local/ns/messaging/sa/reader",
        "spiffe://Cluster.Local/ns/messaging/sa/reader",
        "spiffe://cluster.local/ns/../sa/reader",
        "spiffe://cluster.local/ns//reader",
        "spiffe://cluster.local/ns/messaging/sa/reader?x=1",
        "spiffe://",
    ],
)
def test_a_malformed_spiffe_id_is_refused(spiffe_id: str) -> None:
    assert "is not a SPIFFE ID" in policy_error(with_caller(1, spiffe_ids=[spiffe_id]))


def test_a_mesh_only_caller_needs_trust_xfcc() -> None:
    document = with_caller(1, token_sha256=None)
    document["trust_xfcc"] = False
    message = policy_error(document)
    assert "caller 'reader' has only spiffe_ids" in message
    assert "trust_xfcc" in message


def test_policies_built_in_code_are_validated_too() -> None:
    with pytest.raises(PolicyError, match="callers is empty"):
        Policy(callers=())
    with pytest.raises(PolicyError, match="unknown method"):
        CallerPolicy(name="x", methods=("Nope",), token_sha256=(token_digest("t"),))


# ---- callers by bearer token --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "method", "name"),
    [
        (READER_TOKEN, GET, "reader"),
        (VERIFIER_TOKEN, GET, "verifier"),
        (VERIFIER_TOKEN, ACK, "verifier"),
    ],
)
def test_a_token_caller_may_call_its_granted_methods(token: str, method: str, name: str) -> None:
    assert authorizer().authorize(method, bearer(token)) == Caller(name, "token")


def test_a_read_only_caller_cannot_acknowledge() -> None:
    with pytest.raises(PermissionDenied) as caught:
        authorizer().authorize(ACK, bearer(READER_TOKEN))
    assert caught.value.metadata == {"method": ACK, "caller": "reader"}
    assert caught.value.caller == Caller("reader", "token")  # so the audit line can name it
    assert str(caught.value) == "caller 'reader' may not call AcknowledgeIdentity"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_star_grants_every_method(method: str) -> None:
    assert authorizer().authorize(method, bearer(OPS_TOKEN)) == Caller("ops", "token")


def test_an_unknown_token_is_unauthenticated() -> None:
    error = unauthenticated(authorizer(), GET, bearer(UNKNOWN_TOKEN))
    assert str(error) == "the bearer token is not known"
    assert error.metadata == {"method": GET}


@pytest.mark.parametrize("metadata", [None, [], [("x-request-id", "r1")]])
def test_missing_credentials_are_unauthenticated(metadata: Metadata | None) -> None:
    error = unauthenticated(authorizer(), GET, metadata)
    assert "no caller credentials" in str(error)


@pytest.mark.parametrize(
    "value",
    [f"Basic {READER_TOKEN}", READER_TOKEN, "Bearer", "Bearer   ", f"Token {READER_TOKEN}"],
)
def test_authorization_that_is_not_a_bearer_token_is_unauthenticated(value: str) -> None:
    error = unauthenticated(authorizer(), GET, [("authorization", value)])
    assert str(error) == "authorization must be 'Bearer <token>'"


def test_the_bearer_scheme_is_case_insensitive() -> None:
    metadata: Metadata = [("authorization", f"bearer  {READER_TOKEN} ")]
    assert authorizer().authorize(GET, metadata) == Caller("reader", "token")


def test_binary_authorization_is_unauthenticated() -> None:
    unauthenticated(authorizer(), GET, [("authorization", READER_TOKEN.encode())])


def test_two_authorization_values_are_unauthenticated() -> None:
    error = unauthenticated(authorizer(), GET, bearer(READER_TOKEN) + bearer(VERIFIER_TOKEN))
    assert "more than one authorization value" in str(error)


def test_a_token_decides_even_when_a_mesh_identity_is_present() -> None:
    metadata = bearer(READER_TOKEN) + xfcc(sidecar_element(VERIFIER_ID))
    assert authorizer().authorize(GET, metadata) == Caller("reader", "token")
    with pytest.raises(PermissionDenied):
        authorizer().authorize(ACK, metadata)


def test_an_unknown_token_is_not_rescued_by_a_mesh_identity() -> None:
    unauthenticated(authorizer(), GET, bearer(UNKNOWN_TOKEN) + xfcc(sidecar_element(VERIFIER_ID)))


def test_errors_never_contain_the_token() -> None:
    auth = authorizer()
    presented: list[tuple[str, Metadata]] = [
        (UNKNOWN_TOKEN, bearer(UNKNOWN_TOKEN)),
        (READER_TOKEN, bearer(READER_TOKEN)),  # known but not granted ACK
        (READER_TOKEN, [("authorization", f"Basic {READER_TOKEN}")]),
        (READER_TOKEN, [("authorization", READER_TOKEN)]),
        (READER_TOKEN, bearer(READER_TOKEN) + bearer(UNKNOWN_TOKEN)),
    ]
    for token, metadata in presented:
        with pytest.raises(GatewayError) as caught:
            auth.authorize(ACK, metadata)
        error: Any = caught.value
        visible = [str(error), repr(error), *error.metadata.values()]
        assert not any(token in text for text in visible), visible
        status = to_status(error)
        assert token.encode() not in status.SerializeToString()


# ---- callers by mesh identity (x-forwarded-client-cert) ----------------------------------------


def test_parse_xfcc_reads_one_element() -> None:
    assert parse_xfcc(sidecar_element(READER_ID)) == [
        [("by", GATEWAY_ID), ("hash", CERT_HASH), ("subject", ""), ("uri", READER_ID)]
    ]


def test_parse_xfcc_reads_envoys_two_element_example() -> None:
    value = (
        "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;"
        "URI=http://testclient.lyft.com,By=http://backend.lyft.com;"
        "Hash=9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e;"
        "URI=http://frontend.lyft.com"
    )
    elements = parse_xfcc(value)
    assert len(elements) == 2
    assert elements[-1][-1] == ("uri", "http://frontend.lyft.com")


def test_parse_xfcc_unquotes_values_with_commas_semicolons_and_escaped_quotes() -> None:
    subject = r'"/C=US/O=Acme, Inc.;x/CN=the \"verifier\""'
    elements = parse_xfcc(f"Subject={subject};URI={VERIFIER_ID};DNS=a.example;DNS=b.example")
    assert elements == [
        [
            ("subject", '/C=US/O=Acme, Inc.;x/CN=the "verifier"'),
            ("uri", VERIFIER_ID),
            ("dns", "a.example"),
            ("dns", "b.example"),
        ]
    ]


def test_parse_xfcc_keys_are_case_insensitive_and_values_are_not() -> None:
    assert parse_xfcc("uri=spiffe://a/B ; Uri = spiffe://c/D") == [
        [("uri", "spiffe://a/B"), ("uri", "spiffe://c/D")]
    ]


@pytest.mark.parametrize(
    "value",
    [
        'Subject="unterminated;URI=spiffe://a',
        'Subject="ends in an escaped quote\\";URI=spiffe://a',
        "URI=spiffe://a,",
        "URI=spiffe://a,,URI=spiffe://b",
        "no-equals-sign",
        'URI=spiffe://a"b',
        'Subject="a"b;URI=spiffe://a',
    ],
)
def test_parse_xfcc_refuses_what_envoy_would_not_write(value: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_xfcc(value)


def test_a_mesh_caller_is_identified_by_the_uri_san() -> None:
    auth = authorizer()
    assert auth.authorize(ACK, xfcc(sidecar_element(VERIFIER_ID))) == Caller("verifier", "xfcc")
    with pytest.raises(PermissionDenied):
        auth.authorize(ACK, xfcc(sidecar_element(READER_ID)))


def test_only_the_last_element_names_the_caller() -> None:
    # A client may send its own header; the sidecar appends the element it vouches for last.
    forged = f"URI={VERIFIER_ID}"
    metadata = xfcc(forged, sidecar_element(READER_ID))
    assert authorizer().authorize(GET, metadata) == Caller("reader", "xfcc")
    with pytest.raises(PermissionDenied):
        authorizer().authorize(ACK, metadata)


def test_several_header_lines_form_one_list() -> None:
    metadata = xfcc(f"URI={VERIFIER_ID}") + xfcc(sidecar_element(READER_ID))
    assert authorizer().authorize(GET, metadata) == Caller("reader", "xfcc")


def test_a_quoted_subject_with_commas_and_quotes_does_not_split_the_element() -> None:
    subject = r'"/O=Acme, Inc./CN=\"x\", URI=spiffe://cluster.local/ns/messaging/sa/verifier"'
    metadata = xfcc(sidecar_element(READER_ID, subject=subject))
    assert authorizer().authorize(GET, metadata) == Caller("reader", "xfcc")


def test_a_forged_prefix_with_a_dangling_quote_is_refused() -> None:
    # The quote would swallow the sidecar's comma and merge its element with the forged one.
    metadata = xfcc(f'URI={VERIFIER_ID};X="', sidecar_element(READER_ID))
    assert "malformed" in str(unauthenticated(authorizer(), GET, metadata))


def test_an_element_without_a_uri_is_unauthenticated() -> None:
    metadata = xfcc(f'By={GATEWAY_ID};Hash={CERT_HASH};Subject="/CN=reader";DNS=reader.local')
    error = unauthenticated(authorizer(), GET, metadata)
    assert str(error) == "the client certificate carries no URI SAN"


def test_a_uri_in_an_earlier_element_does_not_count() -> None:
    metadata = xfcc(f"URI={READER_ID}", f"By={GATEWAY_ID};Hash={CERT_HASH}")
    unauthenticated(authorizer(), GET, metadata)


def test_an_unknown_mesh_identity_is_unauthenticated() -> None:
    metadata = xfcc(sidecar_element("spiffe://cluster.local/ns/other/sa/stranger"))
    error = unauthenticated(authorizer(), GET, metadata)
    assert str(error) == "the client certificate identity is not known"


def test_one_of_several_uri_sans_is_enough() -> None:
    metadata = xfcc(f"{sidecar_element('spiffe://other.domain/x')};URI={READER_ID}")
    assert authorizer().authorize(GET, metadata) == Caller("reader", "xfcc")


def test_uri_sans_naming_two_callers_are_unauthenticated() -> None:
    metadata = xfcc(f"{sidecar_element(VERIFIER_ID)};URI={READER_ID}")
    assert "more than one caller" in str(unauthenticated(authorizer(), GET, metadata))


def test_binary_xfcc_is_unauthenticated() -> None:
    metadata: Metadata = [("x-forwarded-client-cert", sidecar_element(READER_ID).encode())]
    unauthenticated(authorizer(), GET, metadata)


def test_xfcc_is_ignored_unless_the_policy_trusts_it() -> None:
    error = unauthenticated(authorizer(trust_xfcc=False), ACK, xfcc(sidecar_element(VERIFIER_ID)))
    assert "no caller credentials" in str(error)
    # Tokens still work.
    assert authorizer(trust_xfcc=False).authorize(ACK, bearer(VERIFIER_TOKEN)).name == "verifier"


# ---- errors as statuses -------------------------------------------------------------------------


def error_infos(error: GatewayError) -> tuple[int, str, list[error_details_pb2.ErrorInfo]]:
    status = to_status(error)
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    return status.code, status.message, infos


def test_unauthenticated_becomes_unauthenticated_with_its_error_info() -> None:
    # The CALLER_UNAUTHENTICATED rule of gateway.serving.status's table.
    error = unauthenticated(authorizer(), ACK, bearer(UNKNOWN_TOKEN))
    code, message, infos = error_infos(error)
    assert code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert message == "the bearer token is not known"
    assert len(infos) == 1
    assert infos[0].domain == DOMAIN
    assert infos[0].reason == "CALLER_UNAUTHENTICATED" == rule_for(error).reason
    assert dict(infos[0].metadata) == {"method": ACK}


def test_permission_denied_becomes_permission_denied_with_its_error_info() -> None:
    # The CALLER_NOT_PERMITTED rule of gateway.serving.status's table.
    with pytest.raises(PermissionDenied) as caught:
        authorizer().authorize(ACK, bearer(READER_TOKEN))
    code, message, infos = error_infos(caught.value)
    assert code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert message == "caller 'reader' may not call AcknowledgeIdentity"
    assert len(infos) == 1
    assert infos[0].domain == DOMAIN
    assert infos[0].reason == "CALLER_NOT_PERMITTED" == rule_for(caught.value).reason
    assert dict(infos[0].metadata) == {"method": ACK, "caller": "reader"}


# ---- the audit line -----------------------------------------------------------------------------


@pytest.fixture
def audit_lines() -> Iterator[io.StringIO]:
    """The gateway.audit logger's output, formatted as the gateway formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("gateway.audit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_audit_record_names_caller_masked_wa_id_hash_and_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    audit_acknowledge(Caller("verifier", "xfcc"), "16315551234", "UKD6Y/5SqDU=", "OK", "req-1")
    [record] = caplog.records
    assert record.name == "gateway.audit"
    assert record.levelno == logging.INFO
    fields: dict[str, Any] = record.__dict__["fields"]
    assert fields == {
        "event": "acknowledge",
        "caller": "verifier",
        "identified_by": "xfcc",
        "wa_id": "*******1234",
        "hash": "UKD6Y/5SqDU=",
        "outcome": "OK",
    }
    assert "16315551234" not in caplog.text
    json.dumps(fields)  # JSON-able as it is


def test_an_unauthorized_acknowledge_is_audited_as_anonymous(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    audit_acknowledge(None, "16315551234", "UKD6Y/5SqDU=", "CALLER_UNAUTHENTICATED", None)
    fields: dict[str, Any] = caplog.records[0].__dict__["fields"]
    assert fields["caller"] == "anonymous"
    assert fields["identified_by"] is None
    assert fields["outcome"] == "CALLER_UNAUTHENTICATED"


def test_the_audit_line_carries_the_request_id_once(audit_lines: io.StringIO) -> None:
    audit_acknowledge(Caller("reader", "token"), "16315551234", "h=", "PERMISSION_DENIED", "req-7")
    line = json.loads(audit_lines.getvalue())
    assert line["request_id"] == "req-7"
    assert "field_request_id" not in line
    assert line["logger"] == "gateway.audit"
    assert line["event"] == "acknowledge"
    assert line["wa_id"] == "*******1234"
    assert line["hash"] == "h="
    assert line["message"] == "AcknowledgeIdentity by reader: PERMISSION_DENIED"
    assert logs.request_id.get() is None  # the RPC's context is left as it was


def test_the_audit_line_inside_an_rpc_uses_its_request_id(audit_lines: io.StringIO) -> None:
    token = logs.request_id.set("req-rpc")
    try:
        audit_acknowledge(None, "16315551234", "h=", "OK", "req-rpc")
        assert logs.request_id.get() == "req-rpc"
    finally:
        logs.request_id.reset(token)
    assert json.loads(audit_lines.getvalue())["request_id"] == "req-rpc"


def test_garbage_request_values_are_bounded_in_the_audit_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit")
    audit_acknowledge(None, "9" * 100_000, "A" * 100_000, "INVALID_WA_ID", None)
    fields: dict[str, Any] = caplog.records[0].__dict__["fields"]
    assert len(fields["wa_id"]) <= 128
    assert fields["wa_id"].endswith("9999")
    assert len(fields["hash"]) <= 128


def test_an_audit_line_without_a_request_id_keeps_the_rpcs(audit_lines: io.StringIO) -> None:
    token = logs.request_id.set("req-rpc")
    try:
        audit_acknowledge(None, "16315551234", "h=", "OK", None)
    finally:
        logs.request_id.reset(token)
    assert json.loads(audit_lines.getvalue())["request_id"] == "req-rpc"
