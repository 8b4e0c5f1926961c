"""Request bytes to messages, for every method: one decoder, one answer to bad bytes.

    decode = decoder(identity_pb2.GetIdentityRequest)
    request = decode(data)          # the message, or Undecodable for bytes that are not one

gRPC would answer a deserializer's exception with a bare ``INTERNAL``; handing
:class:`Undecodable` to the servicer instead lets the boundary answer ``INVALID_ARGUMENT`` with
the usual details.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)


class Undecodable:
    """Stands for request bytes that are not a valid message (bad wire format, invalid UTF-8)."""

    __slots__ = ("message_name",)

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name


def decoder(message: type[M]) -> Callable[[bytes], M | Undecodable]:
    """A function from request bytes to a ``message``, or :class:`Undecodable`."""
    parse = message.FromString
    name = message.DESCRIPTOR.full_name

    def decode(data: bytes) -> M | Undecodable:
        try:
            return parse(data)
        except DecodeError:
            return Undecodable(name)

    return decode
