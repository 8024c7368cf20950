"""AUTH_MODE=jwt: the token's subject is the identity, on the WebSocket and the HTTP API alike."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from jwtkit import AUDIENCE, ISSUER, JWT_SETTINGS, SECRET, claims, hs256, unsigned, write_keypair

from service.auth import JwtAuthenticator
from service.config import ConfigError, load_settings
from service.errors import Refused
from support import Server, fresh_id, run_cli

AUTH_FAILED = {"type": "error", "error": "认证失败", "code": "auth_failed"}


@pytest.fixture(scope="module")
def jwt_server(server_factory) -> Server:
    return server_factory(**JWT_SETTINGS)


def bad_tokens(user_id: int) -> dict[str, str]:
    return {
        "expired": hs256(user_id, ttl=-60),
        "wrong signature": hs256(user_id, secret="another-secret-0123456789abcdef-0123456789"),
        "wrong audience": hs256(user_id, aud="someone-else"),
        "wrong issuer": hs256(user_id, iss="https://evil.test"),
        "alg none": unsigned(user_id),
        "no expiry": hs256(user_id, exp=None),
        "no subject": hs256(user_id, sub=None),
        "subject not an id": hs256("alice"),
        "not before in the future": hs256(user_id, nbf=int(time.time()) + 3600),
        "garbage": "not.a.token",
        "empty": "",
    }


def test_valid_token_authenticates_its_subject(jwt_server: Server) -> None:
    """`auth` with a valid token (and no user_id) answers auth_success with the token's subject."""
    user_id = fresh_id()
    c = jwt_server.client()
    assert c.request({"type": "auth", "token": hs256(user_id)}) == {"type": "auth_success", "user_id": user_id}
    c.close()


def test_user_id_beside_the_token_must_match_its_subject(jwt_server: Server) -> None:
    """A user_id equal to the subject is fine; any other user_id is refused and changes nothing."""
    user_id = fresh_id()
    c = jwt_server.client()
    assert c.request({"type": "auth", "token": hs256(user_id), "user_id": str(user_id)})["type"] == "auth_success"
    assert c.request({"type": "auth", "token": hs256(user_id), "user_id": user_id + 1}) == AUTH_FAILED
    session_id = jwt_server.http("POST", "/api/sessions", {}, {"Authorization": f"Bearer {hs256(user_id)}"})[1]["id"]
    assert c.request({"type": "join_session", "session_id": session_id})["type"] == "joined_session"
    c.close()


@pytest.mark.parametrize("case", list(bad_tokens(1)))
def test_bad_token_is_refused_and_connection_stays_unauthenticated(jwt_server: Server, case: str) -> None:
    """Expired, forged, foreign-audience, unsigned and malformed tokens answer 认证失败; nothing else works after."""
    c = jwt_server.client()
    assert c.request({"type": "auth", "token": bad_tokens(fresh_id())[case]}) == AUTH_FAILED
    assert c.request({"type": "leave_session"})["error"] == "未认证"
    c.close()


def test_user_id_alone_is_not_an_identity(jwt_server: Server) -> None:
    """The legacy `{"type":"auth","user_id":N}` without a token is refused in jwt mode."""
    c = jwt_server.client()
    assert c.request({"type": "auth", "user_id": fresh_id()}) == AUTH_FAILED
    assert c.request({"type": "auth", "token": 12345}) == AUTH_FAILED
    c.close()


def test_refused_auth_keeps_the_previous_identity_and_session(jwt_server: Server) -> None:
    """A refused re-auth on an authenticated connection changes nothing: same user, still in its session."""
    user_id = fresh_id()
    token = hs256(user_id)
    session_id = jwt_server.http("POST", "/api/sessions", {}, {"Authorization": f"Bearer {token}"})[1]["id"]
    c = jwt_server.client()
    c.request({"type": "auth", "token": token})
    c.join(session_id)
    assert c.request({"type": "auth", "token": hs256(fresh_id(), ttl=-60)}) == AUTH_FAILED
    c.say(session_id, "still me")
    frame = c.recv_type("new_message")
    assert frame["message"]["sender_id"] == user_id
    assert c.request({"type": "leave_session"}) == {"type": "left_session", "session_id": session_id}
    c.close()


def test_role_claim_makes_an_agent(jwt_server: Server) -> None:
    """role=agent in the token lets its subject join and answer any customer's session."""
    customer = fresh_id()
    session_id = jwt_server.http("POST", "/api/sessions", {}, {"Authorization": f"Bearer {hs256(customer)}"})[1]["id"]
    plain, agent = jwt_server.client(), jwt_server.client()
    plain.request({"type": "auth", "token": hs256(fresh_id())})
    agent.request({"type": "auth", "token": hs256(fresh_id(), role="agent")})
    assert plain.request({"type": "join_session", "session_id": session_id})["error"] == "无权访问该会话"
    assert agent.request({"type": "join_session", "session_id": session_id})["type"] == "joined_session"
    plain.close()
    agent.close()


def test_http_bearer_token_is_the_caller_and_x_user_id_is_ignored(jwt_server: Server) -> None:
    """Bearer identifies the caller; X-User-Id alone is 未认证 (no backend exception); bad tokens 认证失败."""
    user_id = fresh_id()
    status, session = jwt_server.http("POST", "/api/sessions", {}, {"Authorization": f"Bearer {hs256(user_id)}"})
    assert status == 201 and session["user_id"] == user_id
    assert jwt_server.http("GET", f"/api/sessions/{session['id']}") == (401, {"error": "未认证",
                                                                             "code": "unauthenticated"})
    status, body = jwt_server.http("GET", f"/api/sessions/{session['id']}", headers={"X-User-Id": str(user_id)})
    assert (status, body["error"]) == (401, "未认证")
    for token in bad_tokens(user_id).values():
        headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": "Bearer"}
        status, body = jwt_server.http("GET", f"/api/sessions/{session['id']}", headers=headers)
        assert status == 401 and body["error"] in ("认证失败", "未认证"), body
    status, body = jwt_server.http("GET", "/api/sessions", headers={"Authorization": f"Basic {hs256(user_id)}"})
    assert (status, body["error"]) == (401, "认证失败")
    other = fresh_id()
    status, body = jwt_server.http("GET", f"/api/sessions/{session['id']}",
                                   headers={"Authorization": f"Bearer {hs256(other)}", "X-User-Id": str(user_id)})
    assert (status, body["error"]) == (403, "无权访问该会话")


def test_token_command_mints_a_token_the_server_accepts(jwt_server: Server) -> None:
    """`python -m service token USER_ID --agent --ttl S` prints a token with sub, role, aud, iss and exp."""
    user_id = fresh_id()
    result = run_cli(jwt_server.env, "token", str(user_id), "--agent", "--ttl", "120")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert payload["sub"] == str(user_id) and payload["role"] == "agent"
    assert 100 <= payload["exp"] - payload["iat"] <= 120
    c = jwt_server.client()
    assert c.request({"type": "auth", "token": token}) == {"type": "auth_success", "user_id": user_id}
    c.close()


def test_token_command_without_a_secret_says_why(jwt_server: Server) -> None:
    """Without JWT_SECRET the command fails with one clear line instead of minting something useless."""
    env = {k: v for k, v in jwt_server.env.items() if k != "JWT_SECRET"}
    result = run_cli(env, "token", "5")
    assert result.returncode != 0
    assert "JWT_SECRET" in result.stderr and "Traceback" not in result.stderr
    assert run_cli(jwt_server.env, "token", "abc").returncode != 0


# -- asymmetric keys (the authenticator alone: no server needed to prove key and algorithm handling) ---------


class NoAgents:
    def is_agent(self, user_id: int) -> bool:
        return False


def authenticator(**settings: str) -> JwtAuthenticator:
    environ = {"CHAT_ENV_FILE": str(Path(__file__).parent / "no.env")}
    return JwtAuthenticator(load_settings(settings, environ=environ), NoAgents())


@pytest.mark.parametrize("kind,algorithm", [("rsa", "RS256"), ("ec", "ES256")])
def test_public_key_verifies_its_algorithm_only(tmp_path: Path, kind: str, algorithm: str) -> None:
    """RS256/ES256 tokens verify with JWT_PUBLIC_KEY; HS256 signed with that public key (key confusion) fails."""
    path, private = write_keypair(tmp_path, kind)
    auth = authenticator(JWT_PUBLIC_KEY=str(path))
    user_id = fresh_id()
    assert auth.verify(jwt.encode(claims(user_id, aud=None, iss=None), private, algorithm=algorithm)) == (user_id,
                                                                                                          False)
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key  # what a naive verifier would accept
    token = forged.encode(json.dumps(claims(user_id, aud=None, iss=None)).encode(),
                          path.read_bytes(), algorithm="HS256")
    with pytest.raises(Refused):
        auth.verify(token)
    with pytest.raises(Refused):
        auth.verify(hs256(user_id, aud=None, iss=None))


def test_unusable_public_key_is_a_configuration_error(tmp_path: Path) -> None:
    """A JWT_PUBLIC_KEY that is not a PEM public key stops start-up with a message naming the setting."""
    path = tmp_path / "junk.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY"):
        authenticator(JWT_PUBLIC_KEY=str(path))
