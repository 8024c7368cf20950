"""The legacy happy path of the API document, end to end over a real socket."""

from support import Server, fresh_id


def test_customer_and_agent_exchange_messages_in_a_session(chat_server: Server) -> None:
    """A customer and an agent joined to one session each get every message exactly once, their own included."""
    customer_id = fresh_id()
    session_id = chat_server.open_session(customer_id)
    customer = chat_server.client(customer_id)
    agent = chat_server.client(chat_server.add_agent(fresh_id()))
    customer.join(session_id)
    agent.join(session_id)

    customer.say(session_id, "你好，我需要咨询 😀")
    for peer in (customer, agent):
        frame = peer.recv_type("new_message")
        assert frame["session_id"] == session_id
        assert frame["message"]["content"] == "你好，我需要咨询 😀"
        assert frame["message"]["sender_id"] == customer_id
    assert customer.barrier() == [] and agent.barrier() == []
