"""`python -m service agent add|list|remove`, run as an operator would, on the configuration the server reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import base_env, fresh_id, run_cli


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = Path(tmp_path_factory.mktemp("cli"))
    return base_env(DATABASE_URL=f"sqlite:///{directory}/chat.db", LOG_LEVEL="warning")


def listed(env: dict[str, str]) -> dict[int, list[str]]:
    result = run_cli(env, "agent", "list")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    return {int(row[0]): row[1:] for row in rows}


def test_add_list_rename_remove(env: dict[str, str]) -> None:
    """add creates, add again updates the name, list shows id/time/name, remove deletes."""
    user_id = fresh_id()
    added = run_cli(env, "agent", "add", str(user_id), "--name", "小王")
    assert added.returncode == 0 and added.stdout.strip() == f"added agent {user_id} (小王)", added
    renamed = run_cli(env, "agent", "add", str(user_id), "--name", "王经理")
    assert renamed.returncode == 0 and renamed.stdout.strip() == f"updated agent {user_id} (王经理)", renamed
    created_at, name = listed(env)[user_id]
    assert name == "王经理" and len(created_at) == 19
    removed = run_cli(env, "agent", "remove", str(user_id))
    assert removed.returncode == 0 and removed.stdout.strip() == f"removed agent {user_id}"


def test_remove_unknown_agent_fails(env: dict[str, str]) -> None:
    """Removing a user who is not an agent (or no longer one) exits 1 and says so."""
    user_id = fresh_id()
    result = run_cli(env, "agent", "remove", str(user_id))
    assert result.returncode == 1
    assert f"{user_id} is not an agent" in result.stderr
    assert user_id not in listed(env)


@pytest.mark.parametrize("bad", ["abc", "-5"])
def test_bad_user_id_is_a_usage_error(env: dict[str, str], bad: str) -> None:
    """A user id that is not a positive integer is a usage error (exit 2) naming the value."""
    result = run_cli(env, "agent", "add", "--", bad)
    assert result.returncode == 2
    assert "is not a user id" in result.stderr and "Traceback" not in result.stderr


def test_add_and_remove_several_agents_at_once(env: dict[str, str]) -> None:
    """`agent add A B C` adds all three; `agent remove A B X` removes A and B and exits 1 naming X."""
    ids = [fresh_id() for _ in range(3)]
    added = run_cli(env, "agent", "add", *map(str, ids))
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines() == [f"added agent {uid}" for uid in ids]
    assert set(ids) <= set(listed(env))
    stranger = fresh_id()
    removed = run_cli(env, "agent", "remove", str(ids[0]), str(ids[1]), str(stranger))
    assert removed.returncode == 1
    assert removed.stdout.splitlines() == [f"removed agent {ids[0]}", f"removed agent {ids[1]}"]
    assert f"{stranger} is not an agent" in removed.stderr
    assert set(listed(env)) & set(ids) == {ids[2]}


def test_a_bad_id_among_several_adds_none(env: dict[str, str]) -> None:
    """Every id is checked before any is stored: one bad id is a usage error and nothing is added."""
    good = fresh_id()
    result = run_cli(env, "agent", "add", str(good), "abc")
    assert result.returncode == 2 and "'abc' is not a user id" in result.stderr
    assert good not in listed(env)
