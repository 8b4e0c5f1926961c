"""Whether a cached answer read from a shared store may be served for its key (spec §8).

    trustworthy("15550001111:16315551234", payload)   # the answer for that user and sender?

The shared store (Redis) holds whatever any replica, another program using the same database,
or an operator wrote there. So a value read from it is served only if it is what the servicer
caches for that key: a serialized ``GetIdentityResponse`` marked as a cache hit, whose identity
is the key's (same wa_id, same sender) with a valid hash, and no larger than a real answer can
be. Anything else is a miss for that key alone: the store deletes it, and the next read caches
a good one.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.message import DecodeError
from whatsapp.identity.v1 import identity_pb2

from gateway.identifiers import is_identity_hash
from gateway.serving.routes import split_key

# A real cached answer is about 100 bytes (a 128-character hash at most, two timestamps, two
# numbers); anything much larger is not one, and is not worth parsing.
MAX_CACHED_ANSWER_BYTES: Final = 4096


def trustworthy(key: str, payload: bytes) -> bool:
    """Whether ``payload`` is a cached answer for ``key`` (:func:`gateway.serving.routes.
    cache_key`: ``"<sender>:<wa_id>"``, or the bare wa_id of flag mode's sender)."""
    if not payload or len(payload) > MAX_CACHED_ANSWER_BYTES:
        return False
    try:
        answer = identity_pb2.GetIdentityResponse.FromString(payload)
    except DecodeError:
        return False
    sender, wa_id = split_key(key)
    identity = answer.identity
    return (
        answer.cache_hit
        and answer.HasField("identity")
        and identity.wa_id == wa_id
        and identity.sender == sender
        and is_identity_hash(identity.hash)
    )
