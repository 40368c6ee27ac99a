"""The original incident, replayed: racing API clients, and what async fan-out made of it.

`race` drives the coaching API over HTTP with many concurrent clients that create, edit,
score, submit and delete the same scorecards in racing order, and records every
successful write's resulting scorecard. `naive_copy` is the old design on the same run:
every write fanned out as an asynchronous job carrying the row, jobs finishing in any
order, the last to finish winning. Comparing it with the source shows the stale rows the
ordered stream never produces.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

DELETED = None


@dataclass
class Recorder:
    """Every successful write: (completion order, scorecard id, resulting row or DELETED)."""

    writes: list[tuple[int, str, dict[str, Any] | None]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, card: str, row: dict[str, Any] | None) -> None:
        with self.lock:
            self.writes.append((len(self.writes), card, row))

    def count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1


def _client_loop(
    base_url: str,
    cards: list[str],
    rounds: int,
    seed: int,
    recorder: Recorder,
    headers: dict[str, str],
) -> None:
    rng = random.Random(seed)
    agents = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(4)]
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as http:
        for _ in range(rounds):
            index = rng.randrange(len(cards))
            card = cards[index]
            roll = rng.random()
            if roll < 0.25:
                response = http.patch(
                    f"/scorecards/{card}", json={"notes": f"note {rng.random():.5f}"}
                )
            elif roll < 0.55:
                scores = [
                    {"criterion_id": f"c{c}", "score": rng.randint(0, 40) / 4, "comment": "ok"}
                    for c in range(rng.randint(1, 5))
                ]
                response = http.put(f"/scorecards/{card}/scores", json=scores)
            elif roll < 0.8:
                response = http.post(f"/scorecards/{card}/submit")
            elif roll < 0.88:
                response = http.delete(f"/scorecards/{card}")
                if response.status_code == 204:
                    recorder.record(card, DELETED)
            else:
                response = http.post(
                    "/scorecards", json={"agent_id": rng.choice(agents), "template_id": agents[0]}
                )
                if response.status_code == 201:
                    cards[index] = response.json()["id"]  # racing clients share the list
                    recorder.record(response.json()["id"], response.json())
            recorder.count(response.status_code)
            if response.status_code == 200 and roll < 0.8:
                recorder.record(card, response.json())


def race(
    base_url: str,
    clients: int,
    scorecards: int,
    rounds: int,
    seed: int = 1,
    headers: dict[str, str] | None = None,
) -> Recorder:
    """Run the racing clients to completion, each request with `headers` (the API's
    bearer token); returns what they wrote."""
    headers = headers or {}
    recorder = Recorder()
    rng = random.Random(seed)
    cards: list[str] = []
    with httpx.Client(base_url=base_url, timeout=30, headers=headers) as http:
        for _ in range(scorecards):
            body = {"agent_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "template_id": str(uuid.UUID(int=rng.getrandbits(128)))}  # fmt: skip
            created = http.post("/scorecards", json=body)
            created.raise_for_status()
            cards.append(created.json()["id"])
            recorder.record(created.json()["id"], created.json())
    threads = [
        threading.Thread(
            target=_client_loop, args=(base_url, cards, rounds, seed + i, recorder, headers)
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return recorder


def naive_copy(recorder: Recorder, seed: int = 2, mean_delay_s: float = 0.05) -> dict[str, Any]:
    """The copy an async fan-out would leave: each write's job finishes after a random delay,
    the job finishing last wins (a stale job can overwrite a newer row)."""
    rng = random.Random(seed)
    finished: dict[str, tuple[float, dict[str, Any] | None]] = {}
    for order, card, row in recorder.writes:
        finish = order * 0.001 + rng.expovariate(1 / mean_delay_s)
        if card not in finished or finish > finished[card][0]:
            finished[card] = (finish, row)
    return {card: row for card, (_, row) in finished.items() if row is not DELETED}


def wait_for(check: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False
