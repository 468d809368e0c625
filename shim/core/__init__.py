"""The pure translation core: v1/v2 models and the mapping between them. No I/O, no clock, no randomness:
time, ids and random draws are arguments."""

from ._deliveries import Delivery, DeliverySpec, Route
from ._delivery_codes import V1_DESCRIPTIONS, V2_TO_V1, map_error_code, v2_names
from ._listing import CURSOR_KEYS, DEFAULT_SIZE, FILTER_KEYS, MAX_SIZE, ListQuery, match_enum, next_link, parse_list_query
from ._message import STATE_RANK, MessageRecord, State
from ._openapi import SPEC_URI, load_spec, message_request_errors, validator
from ._retry import MAX_RETRY_AFTER_S, next_delay, parse_retry_after
from ._time import iso_from_us, iso_seconds_from_us, parse_time_us
from ._translate_events import (
    DELIVERED_DESCRIPTION,
    apply_status,
    inbound_deliveries,
    inbound_id,
    inbound_record,
    message_uri,
    native_deliveries,
    record_from_v2,
    v1_callback_body,
)
from ._translate_send import (
    LEGACY_V1_BASE,
    SEND_KEY_PREFIX,
    bind_v2,
    pending_id,
    record_from_send,
    rewrite_inbound_media,
    rewrite_outbound_media,
    send_key_of,
    to_v2_request,
    v1_media_url,
    v2_error_to_v1,
    v2_media_url,
    v2_tag,
)
from ._v1_send import MAX_MEDIA_URL, MAX_TAG, MAX_TEXT, SendRequest, is_http_url, parse_send_item
from ._v2 import V2Event, V2Message

__all__ = [
    'CURSOR_KEYS',
    'DEFAULT_SIZE',
    'DELIVERED_DESCRIPTION',
    'FILTER_KEYS',
    'LEGACY_V1_BASE',
    'MAX_MEDIA_URL',
    'MAX_RETRY_AFTER_S',
    'MAX_SIZE',
    'MAX_TAG',
    'MAX_TEXT',
    'SEND_KEY_PREFIX',
    'SPEC_URI',
    'STATE_RANK',
    'V1_DESCRIPTIONS',
    'V2_TO_V1',
    'Delivery',
    'DeliverySpec',
    'ListQuery',
    'MessageRecord',
    'Route',
    'SendRequest',
    'State',
    'V2Event',
    'V2Message',
    'apply_status',
    'bind_v2',
    'inbound_deliveries',
    'inbound_id',
    'inbound_record',
    'is_http_url',
    'iso_from_us',
    'iso_seconds_from_us',
    'load_spec',
    'map_error_code',
    'match_enum',
    'message_request_errors',
    'message_uri',
    'native_deliveries',
    'next_delay',
    'next_link',
    'parse_list_query',
    'parse_retry_after',
    'parse_send_item',
    'parse_time_us',
    'pending_id',
    'record_from_send',
    'record_from_v2',
    'rewrite_inbound_media',
    'rewrite_outbound_media',
    'send_key_of',
    'to_v2_request',
    'v1_callback_body',
    'v1_media_url',
    'v2_error_to_v1',
    'v2_media_url',
    'v2_names',
    'v2_tag',
    'validator',
]
