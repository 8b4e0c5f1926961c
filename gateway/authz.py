"""Optional caller authorization (off unless a policy is given) and the acknowledge audit line.

A policy file maps caller credentials to the ``IdentityService`` methods each caller may use, so
that read-only callers cannot acknowledge. :class:`Authorizer` checks one RPC:

    authorizer = Authorizer(load_policy(Path("/etc/identity-gateway/authz.json")))
    caller = authorizer.authorize("AcknowledgeIdentity", context.invocation_metadata())
    audit_acknowledge(caller, wa_id, identity_hash, "OK", request_id)

The policy is JSON (``load_policy`` says exactly what is wrong with a bad one)::

    {"trust_xfcc": true,
     "callers": [
       {"name": "verifier",
        "spiffe_ids": ["spiffe://cluster.local/ns/messaging/sa/verifier"],
        "methods": ["GetIdentity", "AcknowledgeIdentity"]},
       {"name": "reader",
        "token_sha256": ["<the token's SHA-256 digest in hex>"],
        "methods": ["GetIdentity"]}]}

- ``methods`` are short method names of ``whatsapp.identity.v1.IdentityService``, or ``["*"]``.
- ``token_sha256`` lists SHA-256 hex digests of bearer tokens, never the tokens themselves
  (``printf '%s' "$TOKEN" | sha256sum``, or :func:`token_digest`).
- ``spiffe_ids`` are matched against the client certificate's URI SAN, which a mesh sidecar
  passes in ``x-forwarded-client-cert``; only when ``"trust_xfcc": true``.
- ``description`` (a string, top level or per caller) is free text for people.

Who the caller is:

1. ``authorization: Bearer <token>``, when present, decides alone: a token the policy does not
   know is refused even if the call also carries a mesh identity.
2. Otherwise, with ``trust_xfcc``, the URI SANs of the LAST element of
   ``x-forwarded-client-cert``. Envoy appends the element for the connection it terminated after
   any elements the client sent, so only the last one describes the immediate client.
   ``trust_xfcc`` is safe only when every request reaches the gateway through a sidecar that
   terminates mTLS (Istio ``PeerAuthentication`` ``STRICT``): without one, any client can send the
   header and name itself. A header that does not parse cleanly is refused as a whole, so that a
   forged prefix cannot move the element boundaries of the sidecar's own element.

No known identity is ``UNAUTHENTICATED``; a known caller calling a method it was not granted is
``PERMISSION_DENIED``. The two errors extend the tree of :mod:`gateway.errors`::

    GatewayError
    ├── Unauthenticated     CALLER_UNAUTHENTICATED: no credentials, or ones the policy does not know
    └── PermissionDenied    CALLER_NOT_PERMITTED: a known caller, a method it was not granted
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from whatsapp.identity.v1 import identity_pb2

from gateway import logs
from gateway.errors import PermissionDenied, Unauthenticated

audit_log = logging.getLogger("gateway.audit")

_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
# The short names a policy may grant, read from the generated descriptor so they cannot drift.
METHODS: frozenset[str] = frozenset(method.name for method in _SERVICE.methods)
ALL_METHODS = "*"
# The audit line's caller when authorization is off; so no policy may use it as a name.
ANONYMOUS = "anonymous"

AUTHORIZATION = "authorization"
XFCC = "x-forwarded-client-cert"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# SPIFFE ID: lowercase trust domain, then path segments of letters, digits, '.', '-', '_'.
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SPIFFE_MAX_LENGTH = 2048
# One XFCC key=value pair and what ends it. A quoted value ends at the first quote not preceded
# by a backslash (Envoy escapes '"' as '\"' and nothing else); the possessive '*+' stops the
# regex from backtracking into reading an escaped quote as the closing one.
_XFCC_PAIR = re.compile(
    r'[ \t]*(?P<key>[A-Za-z]+)[ \t]*=[ \t]*(?:"(?P<quoted>(?:[^"\\]|\\"|\\)*+)"|(?P<bare>[^",;]*))'
    r"[ \t]*(?P<end>[,;]|\Z)"
)
# Audit lines stay one short line even for a garbage request.
_MAX_AUDIT_VALUE = 128

_CALLER_KEYS = frozenset({"name", "description", "methods", "token_sha256", "spiffe_ids"})
_POLICY_KEYS = frozenset({"description", "callers", "trust_xfcc"})


class PolicyError(ValueError):
    """The policy file is unreadable or invalid; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class CallerPolicy:
    """One caller of the policy: its name, its credentials and the methods it may call."""

    name: str
    methods: tuple[str, ...]
    token_sha256: tuple[str, ...] = ()
    spiffe_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise PolicyError(
                f"caller name {self.name!r} must be 1-64 letters, digits, '.', '-' or '_'"
            )
        if self.name == ANONYMOUS:
            raise PolicyError(f"caller name {ANONYMOUS!r} is reserved for unauthorized audit lines")
        where = f"caller {self.name!r}"
        self._check_methods(where)
        if not self.token_sha256 and not self.spiffe_ids:
            raise PolicyError(f"{where} has neither token_sha256 nor spiffe_ids")
        for index, digest in enumerate(self.token_sha256):
            if not _SHA256_HEX.fullmatch(digest):
                # Never echo the value: it may be a plaintext token pasted by mistake.
                raise PolicyError(
                    f"{where}: token_sha256[{index}] must be the SHA-256 hex digest of the token "
                    "(64 hex characters), never the token itself"
                )
        for index, spiffe_id in enumerate(self.spiffe_ids):
            if not _is_spiffe_id(spiffe_id):
                raise PolicyError(
                    f"{where}: spiffe_ids[{index}] {spiffe_id[:80]!r} is not a SPIFFE ID "
                    "(spiffe://trust-domain/path, trust domain in lowercase)"
                )

    def _check_methods(self, where: str) -> None:
        if not self.methods:
            raise PolicyError(f'{where}: methods is empty; list what it may call, or "*"')
        if ALL_METHODS in self.methods and len(self.methods) > 1:
            raise PolicyError(f'{where}: methods: "*" already means every method; list it alone')
        seen: set[str] = set()
        for method in self.methods:
            if method != ALL_METHODS and method not in METHODS:
                raise PolicyError(
                    f"{where}: methods: unknown method {method[:80]!r}; "
                    f'{_SERVICE.full_name} has {", ".join(sorted(METHODS))} (or "*" for all)'
                )
            if method in seen:
                raise PolicyError(f"{where}: methods lists {method!r} twice")
            seen.add(method)

    @property
    def allowed(self) -> frozenset[str]:
        """The method names this caller may call, with ``"*"`` expanded."""
        return METHODS if ALL_METHODS in self.methods else frozenset(self.methods)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Every caller the gateway accepts, and whether to believe ``x-forwarded-client-cert``."""

    callers: tuple[CallerPolicy, ...]
    trust_xfcc: bool = False

    def __post_init__(self) -> None:
        if not self.callers:
            raise PolicyError("callers is empty: the policy would refuse every call")
        names: set[str] = set()
        digests: dict[str, str] = {}
        spiffe_ids: dict[str, str] = {}
        for caller in self.callers:
            if caller.name in names:
                raise PolicyError(f"caller name {caller.name!r} is used twice")
            names.add(caller.name)
            for digest in caller.token_sha256:
                _claim(digests, digest.lower(), caller.name, "a token_sha256 digest")
            for spiffe_id in caller.spiffe_ids:
                _claim(spiffe_ids, spiffe_id, caller.name, f"spiffe id {spiffe_id!r}")
            if not self.trust_xfcc and not caller.token_sha256:
                raise PolicyError(
                    f"caller {caller.name!r} has only spiffe_ids, which are ignored unless "
                    '"trust_xfcc": true; it could never be identified'
                )


def _claim(owners: dict[str, str], identity: str, name: str, what: str) -> None:
    """Record that ``identity`` names caller ``name``; one identity must name one caller."""
    owner = owners.get(identity)
    if owner == name:
        raise PolicyError(f"caller {name!r} lists {what} twice")
    if owner is not None:
        raise PolicyError(f"{what} is listed by two callers, {owner!r} and {name!r}")
    owners[identity] = name


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made an authorized call, and by which credential."""

    name: str
    identified_by: Literal["token", "xfcc"]


def token_digest(token: str) -> str:
    """The ``token_sha256`` entry for ``token``: ``printf '%s' "$TOKEN" | sha256sum``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file at ``path``; a :class:`PolicyError` names any problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise PolicyError(f"cannot read the policy file {path}: {reason}") from None
    try:
        return parse_policy(text)
    except PolicyError as error:
        raise PolicyError(f"policy file {path}: {error}") from None


def parse_policy(text: str) -> Policy:
    """The :class:`Policy` a policy file's JSON text describes, checked strictly."""
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise PolicyError(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(document, dict):
        raise PolicyError('the policy must be a JSON object with a "callers" list')
    _check_keys(document, _POLICY_KEYS, "the policy")
    _check_description(document, "the policy")
    trust_xfcc = document.get("trust_xfcc", False)
    if not isinstance(trust_xfcc, bool):
        raise PolicyError("trust_xfcc must be true or false")
    raw_callers = document.get("callers")
    if not isinstance(raw_callers, list):
        raise PolicyError('"callers" must be a list of callers')
    callers = tuple(_parse_caller(index, raw) for index, raw in enumerate(raw_callers))
    return Policy(callers=callers, trust_xfcc=trust_xfcc)


def _parse_caller(index: int, raw: object) -> CallerPolicy:
    where = f"callers[{index}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    _check_keys(raw, _CALLER_KEYS, where)
    _check_description(raw, where)
    name = raw.get("name")
    if not isinstance(name, str):
        raise PolicyError(f'{where} needs a "name" string')
    if "methods" not in raw:
        raise PolicyError(f'{where} ({name!r}) needs "methods"')
    methods = _strings(raw, "methods", where)
    token_sha256 = _strings(raw, "token_sha256", where)
    spiffe_ids = _strings(raw, "spiffe_ids", where)
    try:
        return CallerPolicy(name, methods, token_sha256, spiffe_ids)
    except PolicyError as error:
        raise PolicyError(f"{where}: {error}") from None


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    values = raw.get(key, [])
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise PolicyError(f"{where}: {key} must be a list of strings")
    if key in raw and not values and key != "methods":
        raise PolicyError(f"{where}: {key} is empty; leave it out instead")
    return tuple(values)


def _check_keys(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise PolicyError(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _check_description(raw: Mapping[str, Any], where: str) -> None:
    if not isinstance(raw.get("description", ""), str):
        raise PolicyError(f"{where}: description must be a string")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:  # json would silently keep the last one
            raise PolicyError(f"key {key!r} appears twice in one object")
        document[key] = value
    return document


def _is_spiffe_id(value: str) -> bool:
    if len(value) > _SPIFFE_MAX_LENGTH or not _SPIFFE_ID.fullmatch(value):
        return False
    segments = value[len("spiffe://") :].split("/")[1:]
    return not any(segment in (".", "..") for segment in segments)


# ---------------------------------------------------------------------------- identifying callers


@dataclasses.dataclass(frozen=True)
class _Grant:
    """A caller as the authorizer needs it, built once: its identity and what it may call."""

    by_token: Caller
    by_xfcc: Caller
    allowed: frozenset[str]


class Authorizer:
    """Decides, on every RPC, who the caller is and whether it may call the method.

    authorizer = Authorizer(policy)
    caller = authorizer.authorize("GetIdentity", [("authorization", "Bearer s3cr3t")])
    """

    def __init__(self, policy: Policy) -> None:
        self._trust_xfcc = policy.trust_xfcc
        tokens: list[tuple[bytes, _Grant]] = []
        self._spiffe_ids: dict[str, _Grant] = {}
        for caller in policy.callers:
            grant = _Grant(
                Caller(caller.name, "token"), Caller(caller.name, "xfcc"), caller.allowed
            )
            tokens.extend((bytes.fromhex(digest), grant) for digest in caller.token_sha256)
            self._spiffe_ids.update(dict.fromkeys(caller.spiffe_ids, grant))
        self._tokens = tuple(tokens)

    def authorize(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller of ``method`` (a short name such as ``"GetIdentity"``), if it may call it.

        ``metadata`` is the call's invocation metadata (``context.invocation_metadata()``), whose
        keys gRPC has already lowercased. Raises :class:`Unauthenticated` or
        :class:`PermissionDenied`.
        """
        grant, caller = self._identify(method, metadata)
        if method not in grant.allowed:
            raise PermissionDenied(method, caller)
        return caller

    def _identify(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> tuple[_Grant, Caller]:
        authorization: list[str | bytes] = []
        xfcc: list[str | bytes] = []
        for key, value in metadata or ():
            if key == AUTHORIZATION:
                authorization.append(value)
            elif key == XFCC:
                xfcc.append(value)
        if authorization:
            grant = self._by_token(method, authorization)
            return grant, grant.by_token
        if self._trust_xfcc and xfcc:
            grant = self._by_xfcc(method, xfcc)
            return grant, grant.by_xfcc
        raise Unauthenticated(method, "no caller credentials: send 'authorization: Bearer <token>'")

    def _by_token(self, method: str, values: list[str | bytes]) -> _Grant:
        if len(values) > 1:
            raise Unauthenticated(method, "the call carries more than one authorization value")
        value = values[0]
        scheme, _, token = value.strip().partition(" ") if isinstance(value, str) else ("", "", "")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(method, "authorization must be 'Bearer <token>'")
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        # Why constant time: `==` (and a dict lookup) stops at the first differing byte, so a
        # caller timing many guesses could learn a stored value piece by piece. Hashing first
        # already blunts that (a guess cannot steer its digest, and a digest does not let anyone
        # call), and hmac.compare_digest removes the rest. The loop also never stops early, so
        # the time does not say which entry matched either. Policies hold a handful of tokens,
        # so the scan costs microseconds; spiffe ids are not secrets and use a dict.
        found: _Grant | None = None
        for digest, grant in self._tokens:
            if hmac.compare_digest(digest, presented):
                found = grant
        if found is None:
            raise Unauthenticated(method, "the bearer token is not known")
        return found

    def _by_xfcc(self, method: str, values: list[str | bytes]) -> _Grant:
        texts = [value for value in values if isinstance(value, str)]
        try:
            if len(texts) != len(values):
                raise ValueError("binary value")
            # Several header lines are one comma-separated list, in order (RFC 9110 5.3).
            elements = parse_xfcc(",".join(texts))
        except ValueError:
            raise Unauthenticated(method, f"{XFCC} is malformed") from None
        uris = [value for key, value in elements[-1] if key == "uri"] if elements else []
        if not uris:
            raise Unauthenticated(method, "the client certificate carries no URI SAN")
        grants = {self._spiffe_ids[uri] for uri in uris if uri in self._spiffe_ids}
        if not grants:
            raise Unauthenticated(method, "the client certificate identity is not known")
        if len(grants) > 1:
            raise Unauthenticated(method, "the client certificate names more than one caller")
        return grants.pop()


def parse_xfcc(value: str) -> list[list[tuple[str, str]]]:
    """An ``x-forwarded-client-cert`` value as elements of ``(lowercased key, value)`` pairs.

        parse_xfcc('By=spiffe://a;URI=spiffe://b,Subject="O=x, CN=y";URI=spiffe://c')
        # [[("by", "spiffe://a"), ("uri", "spiffe://b")],
        #  [("subject", "O=x, CN=y"), ("uri", "spiffe://c")]]

    Quoted values lose their quotes, and ``\\"`` inside them becomes ``"``. Raises
    ``ValueError`` for anything Envoy would not write, such as an unmatched quote.
    """
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(value):
        match = _XFCC_PAIR.match(value, position)
        if match is None or match.end() == position:
            raise ValueError(f"malformed {XFCC} at offset {position}")
        quoted = match["quoted"]
        text = quoted.replace('\\"', '"') if quoted is not None else match["bare"].strip()
        pairs.append((match["key"].lower(), text))
        position = match.end()
        if match["end"] != ";":
            elements.append(pairs)
            pairs = []
            if match["end"] == "," and position == len(value):
                raise ValueError(f"malformed {XFCC}: ends with ','")
        elif position == len(value):
            elements.append(pairs)  # a trailing ';' ends the last element
    return elements


# ---------------------------------------------------------------------------- the audit line


def audit_acknowledge(
    caller: Caller | None,
    wa_id: str,
    identity_hash: str,
    outcome: str,
    request_id: str | None,
) -> None:
    """Log one ``gateway.audit`` line for an AcknowledgeIdentity attempt, whatever its outcome.

    ``caller`` is ``None`` when authorization is off (or failed before a caller was known) and
    is logged as ``"anonymous"``; ``outcome`` is the gRPC code name (``"OK"``) or the error's
    reason (``"HASH_MISMATCH"``). The ``wa_id`` is masked; the identity hash is not a secret and
    is logged in full. The line carries ``request_id`` like every other line of the RPC.

        audit_acknowledge(caller, "16315551234", "UKD6Y/5SqDU=", "OK", record.request_id)
    """
    fields: dict[str, Any] = {
        "event": "acknowledge",
        "caller": caller.name if caller else ANONYMOUS,
        "identified_by": caller.identified_by if caller else None,
        "wa_id": logs.mask_wa_id(wa_id[-_MAX_AUDIT_VALUE:]),
        "hash": identity_hash[:_MAX_AUDIT_VALUE],
        "outcome": outcome,
    }
    # JsonFormatter takes request_id from the RPC's context; set it for this line when the
    # caller passes another (or logs outside an RPC), rather than adding a second, renamed key.
    context = logs.request_id
    token = None
    if request_id is not None and request_id != context.get():
        token = context.set(request_id)
    try:
        audit_log.info(
            "AcknowledgeIdentity by %s: %s", fields["caller"], outcome, extra={"fields": fields}
        )
    finally:
        if token is not None:
            context.reset(token)


__all__ = [
    "ALL_METHODS",
    "METHODS",
    "Authorizer",
    "Caller",
    "CallerPolicy",
    "PermissionDenied",
    "Policy",
    "PolicyError",
    "Unauthenticated",
    "audit_acknowledge",
    "load_policy",
    "parse_policy",
    "parse_xfcc",
    "token_digest",
]
