"""Who is woken by what: long polls by round changes only, the aggregator also by other processes' uploads.

Under load every accepted upload used to wake every waiting long poll (32 x 32 wake-ups a round at 32
clients), and an upload accepted by another server worker reached the aggregator only at its 50 ms
timeout, which the round's commit then waited for (benchmarks/server_load.py).
"""

from __future__ import annotations

from fedyolo.fedserver.clients import Clients
from fedyolo.fedserver.config import ServerConfig
from fedyolo.fedserver.recovery import recover
from fedyolo.fedserver.rounds import Rounds
from fedyolo.fedserver.store import Store
from fedyolo.fedserver.uploads import Update
from fedyolo.runtime.bundle import open_bundle
from fedyolo.runtime.wire import encode_module

from .conftest import ENROLL_KEY, random_module


def open_rounds(config: ServerConfig) -> Rounds:
    """The rounds as one server worker process holds them: its own store connection to the state."""
    rounds = Rounds(config, open_bundle(config.bundle_dir, verify=False), Store(config.state_dir))
    recover(rounds)
    return rounds


def upload(rounds: Rounds, name: str, seed: int) -> None:
    client_id, _ = Clients(rounds.store, ENROLL_KEY).register(ENROLL_KEY, name)
    task = rounds.task("topics")
    body = encode_module(random_module(task, seed), task)
    answer = rounds.submit(Update(client_id, "topics", 1, f"key-{name}", body, 10, {"loss": 1.0}))
    assert answer.status_code == 201


def test_an_accepted_upload_wakes_the_aggregator_but_not_the_long_polls(config: ServerConfig) -> None:
    # Prepare: round 1 needs two updates (config.min_clients == 2); count who is called.
    rounds = open_rounds(config)
    woken = {"any change": 0, "round moved": 0}
    rounds.listeners.append(lambda: woken.__setitem__("any change", woken["any change"] + 1))
    rounds.round_listeners.append(lambda: woken.__setitem__("round moved", woken["round moved"] + 1))

    # Act: one update, the round stays open.
    upload(rounds, "a", 1)

    # Assert: the aggregator hears of it (to fold it now); a long poll has nothing new to answer.
    assert woken == {"any change": 1, "round moved": 0}

    # Act: the round's commit opens round 2.
    upload(rounds, "b", 2)  # closes round 1
    rounds.commit("topics", 1, rounds.module("topics", 0)[0], None, {})

    # Assert: now the long polls are woken.
    assert woken["round moved"] == 1 and rounds.current("topics").round == 2


def test_an_upload_to_another_worker_wakes_this_workers_aggregator(config: ServerConfig) -> None:
    # Prepare: two workers over one state directory; this one listens.
    here, there = open_rounds(config), open_rounds(config)
    woken: list[str] = []
    here.listeners.append(lambda: woken.append("aggregator"))
    here.refresh(every_s=0)  # the database as this worker last saw it

    # Act: the other worker accepts an update; this one looks (its event loop does every 10 ms).
    upload(there, "a", 1)
    here.refresh(every_s=0)

    # Assert: woken at once, not at its own 50 ms timeout; a second look with nothing new wakes nobody.
    assert woken == ["aggregator"]
    here.refresh(every_s=0)
    assert woken == ["aggregator"]


def test_round_marks_follow_each_tasks_latest_round(config: ServerConfig) -> None:
    # Prepare / Act: round 1 of topics commits; language's stays open.
    rounds = open_rounds(config)
    before = rounds.round_marks()
    upload(rounds, "a", 1)
    upload(rounds, "b", 2)
    rounds.commit("topics", 1, rounds.module("topics", 0)[0], None, {})

    # Assert: the marks (what long polls answer from) moved for topics only.
    assert before == [("language", 1, "open"), ("topics", 1, "open")]
    assert rounds.round_marks() == [("language", 1, "open"), ("topics", 2, "open")]
