"""The agent desk: agent status and capacity, the queue, routing, claim, transfer and idle auto-close.

`Desk` is the service logic; WebSocket handlers (realtime/desk.py) and the HTTP API (api/agents.py) call
it, it reads and writes through storage/desk.py, and it reaches clients through a narrow `Notifier` that
the realtime core provides. See the README, "The agent desk".
"""

from .service import Desk, Notifier

__all__ = ["Desk", "Notifier"]
