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
``PERMISSION_DENIED``. The two errors extend the tree of :mod:`gateway.serving.status`::

    GatewayError
    ├── Unauthenticated     CALLER_UNAUTHENTICATED: no credentials, or ones the policy does not know
    └── PermissionDenied    CALLER_NOT_PERMITTED: a known caller, a method it was not granted
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from typing import Any, Literal

from gateway.failures import GatewayError
from gateway.serving.policy import (
    ALL_METHODS,
    ANONYMOUS,
    METHODS,
    CallerPolicy,
    Policy,
    PolicyError,
    load_policy,
    parse_policy,
    token_digest,
)
from gateway.telemetry.logs import mask_wa_id
from gateway.telemetry.logs import request_id as current_request_id

audit_log = logging.getLogger("gateway.audit")

AUTHORIZATION = "authorization"
XFCC = "x-forwarded-client-cert"

# One XFCC key=value pair and what ends it. A quoted value ends at the first quote not preceded
# by a backslash (Envoy escapes '"' as '\"' and nothing else); the possessive '*+' stops the
# regex from backtracking into reading an escaped quote as the closing one.
_XFCC_PAIR = re.compile(
    r'[ \t]*(?P<key>[A-Za-z]+)[ \t]*=[ \t]*(?:"(?P<quoted>(?:[^"\\]|\\"|\\)*+)"|(?P<bare>[^",;]*))'
    r"[ \t]*(?P<end>[,;]|\Z)"
)
# Audit lines stay one short line even for a garbage request.
_MAX_AUDIT_VALUE = 128


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made an authorized call, and by which credential."""

    name: str
    identified_by: Literal["token", "xfcc"]


class Unauthenticated(GatewayError):
    """No credentials, or none the policy knows (``UNAUTHENTICATED``)."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(message)  # never the token: messages are fixed text
        self.method = method

    @property
    def metadata(self) -> dict[str, str]:
        """The ``ErrorInfo.metadata`` a caller receives."""
        return {"method": self.method}


class PermissionDenied(GatewayError):
    """A known caller called a method the policy does not grant it (``PERMISSION_DENIED``)."""

    def __init__(self, method: str, caller: Caller) -> None:
        super().__init__(f"caller {caller.name!r} may not call {method}")
        self.method = method
        self.caller = caller  # who was refused, for the audit line

    @property
    def metadata(self) -> dict[str, str]:
        """The ``ErrorInfo.metadata`` a caller receives."""
        return {"method": self.method, "caller": self.caller.name}


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
        "wa_id": mask_wa_id(wa_id[-_MAX_AUDIT_VALUE:]),
        "hash": identity_hash[:_MAX_AUDIT_VALUE],
        "outcome": outcome,
    }
    # JsonFormatter takes request_id from the RPC's context; set it for this line when the
    # caller passes another (or logs outside an RPC), rather than adding a second, renamed key.
    token = None
    if request_id is not None and request_id != current_request_id.get():
        token = current_request_id.set(request_id)
    try:
        audit_log.info(
            "AcknowledgeIdentity by %s: %s", fields["caller"], outcome, extra={"fields": fields}
        )
    finally:
        if token is not None:
            current_request_id.reset(token)


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
