"""What the WhatsApp On-Premises API's error answers mean, classified where they are seen.

    failure = classify(403, upstream_code=1005, operation=ACKNOWLEDGE)   # Failure.AUTH

Most specific first: the acknowledge hash-mismatch rule (409, or 400 with code 1009), then
WhatsApp's error code (it decides whatever the HTTP status was), then the HTTP status
(:data:`gateway.backends.http.HTTP_STATUS_KINDS`). A refused login is ``AUTH`` unless it was
rate limiting or an outage.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from gateway.backends.http import status_kind
from gateway.failures import Failure


class Operation(enum.Enum):
    """Which call an answer belongs to: some outcomes mean different things for each."""

    GET = "GET"
    ACKNOWLEDGE = "PUT"
    LOGIN = "login"


# WhatsApp error codes that decide the outcome whatever the HTTP status was.
WHATSAPP_CODE_KINDS: Mapping[int, Failure] = {
    1000: Failure.UPSTREAM_INTERNAL,
    1005: Failure.AUTH,
    1006: Failure.NOT_FOUND,
    1011: Failure.UNAVAILABLE,
    1014: Failure.UPSTREAM_INTERNAL,
    1015: Failure.RATE_LIMITED,
    1016: Failure.UNAVAILABLE,
    1017: Failure.UNAVAILABLE,
    1018: Failure.UNAVAILABLE,
    1023: Failure.UPSTREAM_INTERNAL,
    1024: Failure.AUTH,
    1031: Failure.AUTH,
}
# WhatsApp's code for "this is not the contact's current hash" (on a 400).
HASH_MISMATCH_CODE = 1009


def classify(status: int, *, upstream_code: int | None, operation: Operation) -> Failure:
    """The kind of failure an error answer of WhatsApp's is."""
    if operation is Operation.LOGIN and status != 429 and status < 500:
        return Failure.AUTH
    if operation is Operation.ACKNOWLEDGE and (
        status == 409 or (status == 400 and upstream_code == HASH_MISMATCH_CODE)
    ):
        return Failure.HASH_MISMATCH
    if upstream_code is not None and upstream_code in WHATSAPP_CODE_KINDS:
        return WHATSAPP_CODE_KINDS[upstream_code]
    return status_kind(status)
