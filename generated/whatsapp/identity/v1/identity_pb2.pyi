import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Identity(_message.Message):
    __slots__ = ("wa_id", "hash", "create_time", "acknowledged")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    hash: str
    create_time: _timestamp_pb2.Timestamp
    acknowledged: bool
    def __init__(self, wa_id: _Optional[str] = ..., hash: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., acknowledged: _Optional[bool] = ...) -> None: ...

class GetIdentityRequest(_message.Message):
    __slots__ = ("wa_id", "bypass_cache")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    bypass_cache: bool
    def __init__(self, wa_id: _Optional[str] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("wa_id", "hash")
    WA_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    wa_id: str
    hash: str
    def __init__(self, wa_id: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class AcknowledgeIdentityResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
