import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdentityChangeSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTITY_CHANGE_SOURCE_UNSPECIFIED: _ClassVar[IdentityChangeSource]
    IDENTITY_CHANGE_SOURCE_WEBHOOK: _ClassVar[IdentityChangeSource]
    IDENTITY_CHANGE_SOURCE_REPORT: _ClassVar[IdentityChangeSource]
    IDENTITY_CHANGE_SOURCE_READ: _ClassVar[IdentityChangeSource]
    IDENTITY_CHANGE_SOURCE_ACKNOWLEDGE: _ClassVar[IdentityChangeSource]
IDENTITY_CHANGE_SOURCE_UNSPECIFIED: IdentityChangeSource
IDENTITY_CHANGE_SOURCE_WEBHOOK: IdentityChangeSource
IDENTITY_CHANGE_SOURCE_REPORT: IdentityChangeSource
IDENTITY_CHANGE_SOURCE_READ: IdentityChangeSource
IDENTITY_CHANGE_SOURCE_ACKNOWLEDGE: IdentityChangeSource

class Identity(_message.Message):
    __slots__ = ("wa_id", "hash", "create_time", "acknowledged", "sender")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    hash: str
    create_time: _timestamp_pb2.Timestamp
    acknowledged: bool
    sender: str
    def __init__(self, wa_id: _Optional[str] = ..., hash: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acknowledged: _Optional[bool] = ..., sender: _Optional[str] = ...) -> None: ...

class GetIdentityRequest(_message.Message):
    __slots__ = ("wa_id", "bypass_cache", "sender")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    bypass_cache: bool
    sender: str
    def __init__(self, wa_id: _Optional[str] = ..., bypass_cache: _Optional[bool] = ..., sender: _Optional[str] = ...) -> None: ...

class GetIdentityResponse(_message.Message):
    __slots__ = ("identity", "cache_hit", "fetch_time")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    FETCH_TIME_FIELD_NUMBER: _ClassVar[int]
    identity: Identity
    cache_hit: bool
    fetch_time: _timestamp_pb2.Timestamp
    def __init__(self, identity: _Optional[_Union[Identity, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., fetch_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AcknowledgeIdentityRequest(_message.Message):
    __slots__ = ("wa_id", "hash", "sender")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    hash: str
    sender: str
    def __init__(self, wa_id: _Optional[str] = ..., hash: _Optional[str] = ..., sender: _Optional[str] = ...) -> None: ...

class AcknowledgeIdentityResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportIdentityChangeRequest(_message.Message):
    __slots__ = ("wa_id", "hash", "create_time", "sender")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    hash: str
    create_time: _timestamp_pb2.Timestamp
    sender: str
    def __init__(self, wa_id: _Optional[str] = ..., hash: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sender: _Optional[str] = ...) -> None: ...

class ReportIdentityChangeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchIdentityChangesRequest(_message.Message):
    __slots__ = ("wa_ids", "senders")
    WA_IDS_FIELD_NUMBER: _ClassVar[int]
    SENDERS_FIELD_NUMBER: _ClassVar[int]
    wa_ids: _containers.RepeatedScalarFieldContainer[str]
    senders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, wa_ids: _Optional[_Iterable[str]] = ..., senders: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchIdentityChangesResponse(_message.Message):
    __slots__ = ("change",)
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    change: IdentityChange
    def __init__(self, change: _Optional[_Union[IdentityChange, _Mapping]] = ...) -> None: ...

class IdentityChange(_message.Message):
    __slots__ = ("identity", "source", "observe_time")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    identity: Identity
    source: IdentityChangeSource
    observe_time: _timestamp_pb2.Timestamp
    def __init__(self, identity: _Optional[_Union[Identity, _Mapping]] = ..., source: _Optional[_Union[IdentityChangeSource, str]] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
