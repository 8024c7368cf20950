"""The validators HTTP and WebSocket share (service/fields.py), without sockets."""

from __future__ import annotations

import json

import pytest

from service.errors import Problem, Refused
from service.fields import client_message_id, cursor, message_content, query_int, require_encodable
from service.realtime.protocol import decode

UNENCODABLE = ["\ud800", "a\udfffb", "\udc80", "😀\ud83d"]  # lone surrogates, high and low


@pytest.mark.parametrize("text", UNENCODABLE)
def test_a_frame_holding_a_lone_surrogate_anywhere_is_a_format_error(text: str) -> None:
    """In content, client_msg_id, a nested value or a key: 消息格式错误, before anything else is looked at."""
    for frame in ({"type": "send_message", "content": text}, {"type": "x", "client_msg_id": text},
                  {"type": "x", "a": [{"b": text}]}, {"type": "x", text: 1}):
        with pytest.raises(Refused) as refused:
            decode(json.dumps(frame))
        assert refused.value.problem is Problem.BAD_FORMAT


@pytest.mark.parametrize("text", ["😀", "你好", "\\ud800 as text", "plain"])
def test_text_with_a_utf8_form_passes_including_escaped_surrogate_pairs(text: str) -> None:
    assert decode(json.dumps({"type": "send_message", "content": text}))["content"] == text
    require_encodable({"content": text})


@pytest.mark.parametrize("text", UNENCODABLE)
def test_the_field_validators_refuse_unencodable_text(text: str) -> None:
    for check in (lambda: message_content(text, 5000), lambda: client_message_id(text)):
        with pytest.raises(Refused) as refused:
            check()
        assert refused.value.problem is Problem.BAD_FORMAT


def test_cursors_and_query_integers_keep_their_answers() -> None:
    assert cursor("0", Problem.INVALID_MESSAGE_ID) == 0 and cursor(12, Problem.INVALID_MESSAGE_ID) == 12
    for bad in (True, -1, 1.5, "x", 2**63):
        with pytest.raises(Refused):
            cursor(bad, Problem.INVALID_MESSAGE_ID)
    assert query_int(None, 50, 1, 500) == 50 and query_int("7", 50, 1, 500) == 7
    for bad in ("0", "501", "-1", "٣", "1" * 20):
        with pytest.raises(Refused):
            query_int(bad, 50, 1, 500)
