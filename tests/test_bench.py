"""The load generator runs end to end against a real server (figures are never asserted, only completeness)."""

import json
import subprocess
import sys

from support import ROOT


def test_bench_latency_scenario_delivers_everything() -> None:
    """A short latency run starts the service, sends and reports every message delivered, none lost or doubled."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "latency", "--duration", "2", "--sessions", "5", "--rate", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["scenario"] == "latency"
    assert row["sent"] > 0 and row["received"] == 2 * row["sent"]
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["errors"] == 0


def test_bench_replay_scenario_reports_pings_and_memory() -> None:
    """A short replay run: hostile sockets ask for replays, the bystander's pings and the memory are reported."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "replay", "--duration", "1", "--sessions", "20", "--content-chars", "100",
         "--hostile", "2", "--replays", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["scenario"] == "replay" and row["hostile"] == 2 and row["messages"] == 20
    assert row["pings"] > 0 and row["ping_p99_ms"] > 0 and "mb_per_hostile" in row


def test_bench_routing_scenario_prints_the_table_with_nothing_lost() -> None:
    """A short routing run (1 and 2 workers, then the bystander) prints the table; nothing lost, doubled, reordered."""
    from conftest import need_mariadb

    need_mariadb()
    result = subprocess.run(
        [sys.executable, "-m", "bench", "routing", "--worker-counts", "1,2", "--duration", "1", "--sessions", "4",
         "--connections", "20", "--rate", "50"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| workers | tree | msg/s | CPU µs per message |" in result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r.get("workers") for r in rows] == [1, 2, None] and rows[-1]["scenario"] == "routing-bystander"
    for row in rows:
        assert row["sent"] > 0 and row["lost"] == 0 and row["duplicated"] == 0 and row["reordered"] == 0
