"""WEBSOCKET_SSL: wss:// and https:// on one port through gunicorn's TLS, with a certificate made at test time."""

from __future__ import annotations

import datetime
import ipaddress
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rawws import OP_TEXT, RawWebSocket, frame

from support import Server, fresh_id


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1, valid for a day: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def tls_settings(certificate: tuple[Path, Path]) -> dict[str, str]:
    return {"WEBSOCKET_SSL": "true", "WEBSOCKET_SSL_CERT": str(certificate[0]),
            "WEBSOCKET_SSL_KEY": str(certificate[1])}


@pytest.fixture(scope="module")
def tls_server(server_factory, certificate) -> Server:
    return server_factory(HEARTBEAT_TIMEOUT=2, **tls_settings(certificate))


def test_wss_round_trip_and_https_api(tls_server: Server) -> None:
    """Over TLS a session opens by HTTPS, and customer and agent exchange a message over wss://."""
    assert tls_server.ws_url.startswith("wss://")
    customer = fresh_id()
    session_id = tls_server.open_session(customer)
    agent_id = tls_server.add_agent(fresh_id())  # before connecting: this server closes idle sockets after 2 s
    c = tls_server.client(customer)
    agent = tls_server.client(agent_id)
    c.join(session_id)
    agent.join(session_id)
    agent.say(session_id, "您好，请问有什么可以帮您？")
    assert c.recv_type("new_message")["message"]["content"] == "您好，请问有什么可以帮您？"
    assert agent.recv_type("new_message")["message"]["sender_id"] == agent_id
    status, body = tls_server.http("GET", f"/api/sessions/{session_id}/messages")
    assert status == 200 and len(body["messages"]) == 1
    c.close()
    agent.close()


def test_limits_and_close_codes_hold_over_tls(tls_server: Server) -> None:
    """On TLS sockets, oversize still closes 1009 cleanly and an idle connection is closed (1000) on time."""
    big = RawWebSocket(tls_server.port, "/", tls=True)
    idle = RawWebSocket(tls_server.port, "/", tls=True)
    try:
        assert big.status == 101 and idle.status == 101
        big.recv_data()
        big.send(frame(OP_TEXT, b"", length=10 * 1024 * 1024))
        assert big.expect_close() == 1009
        idle.recv_data()
        started = time.monotonic()
        assert idle.expect_close() == 1000
        assert time.monotonic() - started < 4
    finally:
        big.close()
        idle.close()


def test_plain_http_on_the_tls_port_gets_nothing_useful(tls_server: Server) -> None:
    """A plain-text client on the TLS port is not served (and the server keeps serving TLS clients)."""
    import socket

    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(1024)
        except ConnectionResetError:
            answer = b""
        assert b"200 OK" not in answer
    assert tls_server.http("GET", "/healthz")[0] == 200


def test_stop_closes_wss_clients_with_1001_promptly(server_factory, certificate) -> None:
    """TERM with wss clients open: each gets close 1001 and the server exits without waiting for GRACEFUL_TIMEOUT.

    GRACEFUL_TIMEOUT is set far above the bound, so an exit within the bound proves the sockets were closed
    rather than waited on, however loaded the machine is.
    """
    server = server_factory(GRACEFUL_TIMEOUT=120, **tls_settings(certificate))
    clients = [RawWebSocket(server.port, "/", tls=True) for _ in range(3)]
    for ws in clients:
        ws.recv_data()
    started = time.monotonic()
    code = server.stop(timeout=110)  # SIGKILL only past GRACEFUL_TIMEOUT's reach
    assert code == 0 and time.monotonic() - started < 60, code
    for ws in clients:
        assert ws.expect_close(reply=False) == 1001
        ws.close()


@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_unusable_certificate_refused_at_start_with_one_line(server_factory, tmp_path: Path, certificate,
                                                             broken: str) -> None:
    """A missing or unusable certificate file stops start-up with one line naming the setting, no traceback."""
    cert = tmp_path / "nope.pem"
    if broken == "garbage":
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    server = server_factory(wait=False, WEBSOCKET_SSL="true", WEBSOCKET_SSL_CERT=str(cert),
                            WEBSOCKET_SSL_KEY=str(certificate[1]))
    with pytest.raises(RuntimeError) as failure:
        server.start(timeout=15)
    log = server.log()
    assert "chat: refusing to start: WEBSOCKET_SSL_CERT=" in log and "Traceback" not in log, log
    assert "exited" in str(failure.value)


def test_client_that_never_starts_tls_is_dropped(server_factory, certificate) -> None:
    """HANDSHAKE_TIMEOUT covers the TLS handshake too: a silent TCP client on the TLS port is dropped."""
    import socket

    server = server_factory(HANDSHAKE_TIMEOUT=1, **tls_settings(certificate))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
        started = time.monotonic()
        try:
            assert silent.recv(1024) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 3
    assert server.http("GET", "/healthz")[0] == 200
    server.stop()
