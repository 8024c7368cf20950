"""Every refusal the service can give, with its legacy text (byte-exact), a stable code and an HTTP status.

The WebSocket answers `{"type":"error","error":TEXT,"code":CODE}`; the HTTP API `{"error":TEXT,"code":CODE}`
with STATUS. One table, so a refusal reads the same on both.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Problem(Enum):
    # code, text, http status
    BAD_FORMAT = ("bad_format", "消息格式错误", 400)
    UNKNOWN_TYPE = ("unknown_type", "未知消息类型", 400)
    UNAUTHENTICATED = ("unauthenticated", "未认证", 401)
    AUTH_FAILED = ("auth_failed", "认证失败", 401)
    MISSING_USER_ID = ("missing_user_id", "缺少用户ID", 400)
    INVALID_USER_ID = ("invalid_user_id", "用户ID无效", 400)
    INVALID_USER_ID_HEADER = ("invalid_user_id", "用户ID无效", 401)
    MISSING_SESSION_ID = ("missing_session_id", "缺少会话ID", 400)
    INVALID_SESSION_ID = ("invalid_session_id", "会话ID无效", 400)
    MISSING_SESSION_OR_CONTENT = ("missing_fields", "缺少会话ID或消息内容", 400)
    MISSING_CONTENT = ("missing_content", "缺少消息内容", 400)
    INVALID_CONTENT = ("invalid_content", "消息内容无效", 400)
    CONTENT_TOO_LONG = ("content_too_long", "消息内容过长", 413)
    INVALID_CLIENT_MSG_ID = ("invalid_client_msg_id", "client_msg_id无效", 400)
    INVALID_MESSAGE_ID = ("invalid_message_id", "消息ID无效", 400)
    MISSING_MESSAGE_ID = ("missing_message_id", "缺少消息ID", 400)
    INVALID_STATE = ("invalid_state", "状态无效", 400)
    INVALID_PARAMETER = ("invalid_parameter", "参数无效", 400)
    RATE_LIMITED = ("rate_limited", "发送过于频繁", 429)
    SESSION_NOT_FOUND = ("session_not_found", "会话不存在", 404)
    MESSAGE_NOT_FOUND = ("message_not_found", "消息不存在", 404)
    FORBIDDEN = ("forbidden", "无权访问该会话", 403)
    AGENTS_ONLY = ("agents_only", "仅限客服", 403)
    SESSION_CLOSED = ("session_closed", "会话已关闭", 409)
    NOT_IN_SESSION = ("not_in_session", "未加入会话", 400)
    SEND_FAILED = ("send_failed", "消息发送失败", 503)
    STORAGE_DOWN = ("storage_unavailable", "服务暂时不可用", 503)
    NOT_FOUND = ("not_found", "接口不存在", 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", "请求方法不允许", 405)
    PAYLOAD_TOO_LARGE = ("payload_too_large", "请求体过大", 413)
    UNSUPPORTED_MEDIA_TYPE = ("unsupported_media_type", "请求体须为JSON", 415)
    INTERNAL = ("internal_error", "服务器内部错误", 500)
    # The agent desk
    ALREADY_ASSIGNED = ("already_assigned", "会话已被其他客服接入", 409)
    OVER_CAPACITY = ("over_capacity", "客服接待已满", 409)
    AGENT_UNAVAILABLE = ("agent_unavailable", "客服不在线", 409)
    TRANSFER_FORBIDDEN = ("forbidden", "无权转接该会话", 403)
    MISSING_AGENT_ID = ("missing_agent_id", "缺少客服ID", 400)
    INVALID_AGENT_ID = ("invalid_agent_id", "客服ID无效", 400)
    AGENT_NOT_FOUND = ("agent_not_found", "客服不存在", 404)
    INVALID_STATUS = ("invalid_status", "状态无效", 400)
    INVALID_CAPACITY = ("invalid_capacity", "接待上限无效", 400)
    NOT_YOUR_STATUS = ("forbidden", "无权修改该客服", 403)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]

    @property
    def status(self) -> int:
        return self.value[2]

    def frame(self) -> dict[str, Any]:
        return {"type": "error", "error": self.text, "code": self.code}

    def body(self) -> dict[str, Any]:
        return {"error": self.text, "code": self.code}


class Refused(Exception):
    """A request the service declines with a Problem; never carries internals to the client."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.code)
        self.problem = problem
