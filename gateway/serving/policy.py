"""The caller-authorization policy file: parsed and validated, with no gRPC involved.

Kept apart from :mod:`gateway.serving.authz` (which checks RPCs) so the command line can refuse
a bad policy before anything starts, even in the parent of ``--workers``, which must not load
gRPC.

    policy = load_policy(Path("/etc/identity-gateway/authz.json"))   # PolicyError if invalid

The format is documented in :mod:`gateway.serving.authz`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import contract

# The short names a policy may grant, read from the generated descriptor so they cannot drift.
METHODS: frozenset[str] = frozenset(contract.METHODS)
ALL_METHODS = "*"
# The audit line's caller when authorization is off; so no policy may use it as a name.
ANONYMOUS = "anonymous"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# SPIFFE ID: lowercase trust domain, then path segments of letters, digits, '.', '-', '_'.
_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SPIFFE_MAX_LENGTH = 2048
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
                    f'{contract.SERVICE_NAME} has {", ".join(sorted(METHODS))} (or "*" for all)'
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
