"""Names the proto fixes, read from the generated descriptor so they are spelled once.

SERVICE_NAME   # "whatsapp.identity.v1.IdentityService"
METHODS        # ("GetIdentity", "AcknowledgeIdentity", ...) in the proto's order
"""

from __future__ import annotations

from whatsapp.identity.v1 import identity_pb2

_SERVICE = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]

SERVICE_NAME: str = _SERVICE.full_name
METHODS: tuple[str, ...] = tuple(method.name for method in _SERVICE.methods)
STREAMING_METHODS: frozenset[str] = frozenset(
    method.name for method in _SERVICE.methods if method.server_streaming
)

__all__ = ["METHODS", "SERVICE_NAME", "STREAMING_METHODS"]
