"""The flush LSN reported to Postgres never passes what every sink has made durable."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc.protocol.lsn import Lsn
from cdc.stream.feedback import Progress, flush_lsn, lag_bytes


def test_reports_durable_while_a_received_transaction_is_not_durable() -> None:
    progress = Progress().with_received(Lsn(200)).with_durable(Lsn(100))
    progress = progress.with_keepalive(Lsn(500))
    assert flush_lsn(progress) == 100


def test_follows_the_server_when_idle_and_everything_is_durable() -> None:
    progress = Progress().with_received(Lsn(200)).with_durable(Lsn(200))
    assert flush_lsn(progress) == 200
    assert flush_lsn(progress.with_keepalive(Lsn(900))) == 900


def test_open_transaction_holds_the_flush_at_durable() -> None:
    progress = Progress().with_durable(Lsn(50)).with_received(Lsn(50)).with_keepalive(Lsn(80))
    assert flush_lsn(progress.with_open_transaction(True)) == 50
    assert flush_lsn(progress.with_open_transaction(False)) == 80


def test_never_goes_backwards_on_stale_keepalive() -> None:
    progress = Progress().with_keepalive(Lsn(900)).with_keepalive(Lsn(300))
    assert progress.server_wal_end == 900
    progress = progress.with_durable(Lsn(400)).with_durable(Lsn(100))
    assert progress.durable == 400


lsns = st.integers(min_value=0, max_value=2**40).map(Lsn)


@given(
    events=st.lists(
        st.tuples(st.sampled_from(["recv", "ack", "keepalive", "open", "close"]), lsns),
        max_size=40,
    )
)
def test_flush_never_passes_an_unacknowledged_transaction(
    events: list[tuple[str, Lsn]],
) -> None:
    """Model: transactions end at increasing LSNs; a keepalive only reports a WAL end at or
    after everything received so far. The flush LSN must stay below every received but
    unacknowledged transaction end."""
    progress = Progress()
    received: list[Lsn] = []
    for kind, lsn in events:
        if kind == "recv":
            end = Lsn(max([lsn, *received]) + 1)
            received.append(end)
            progress = progress.with_received(end)
        elif kind == "ack" and received:
            progress = progress.with_durable(received[int(lsn) % len(received)])
        elif kind == "keepalive":
            progress = progress.with_keepalive(Lsn(max([lsn, *received])))
        else:
            progress = progress.with_open_transaction(kind == "open")
        unacked = [r for r in received if r > progress.durable]
        if unacked:
            assert flush_lsn(progress) < min(unacked)
        assert flush_lsn(progress) >= progress.durable


def test_lag_is_what_is_pending() -> None:
    """An idle pipeline with everything durable has no lag, however far the server's WAL
    moved; otherwise the lag runs from the durable end to the server's WAL end."""
    idle = Progress(durable=Lsn(100), received=Lsn(100), server_wal_end=Lsn(5_000))
    assert lag_bytes(idle) == 0
    busy = Progress(durable=Lsn(100), received=Lsn(300), server_wal_end=Lsn(5_000))
    assert lag_bytes(busy) == 4_900
    open_txn = Progress(durable=Lsn(100), received=Lsn(100), open_transaction=True,
                        server_wal_end=Lsn(400))  # fmt: skip
    assert lag_bytes(open_txn) == 300
