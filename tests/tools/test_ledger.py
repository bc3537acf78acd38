"""tools/ledger.py: what an ack, a message and a reset mean to a test client's books."""

from __future__ import annotations

import pytest

from tools.ledger import Ledger

pytestmark = pytest.mark.unit


def test_an_ack_settles_its_client_id_and_a_second_id_for_it_is_an_error() -> None:
    books = Ledger(pending={"c-1": "hello", "c-2": "again"})

    books.record_ack({"type": "ack", "client_id": "c-1", "id": 7})
    books.record_ack({"type": "ack", "client_id": "c-1", "id": 7})  # a resend's ack: same id
    assert books.acked == {"c-1": 7} and list(books.pending) == ["c-2"] and books.errors == []

    books.record_ack({"type": "ack", "client_id": "c-1", "id": 9})
    assert books.errors == ["c-1 acked as 7 and 9"]


def test_an_ack_without_a_client_id_is_an_error_and_settles_nothing() -> None:
    books = Ledger(pending={"c-1": "hello"})

    books.record_ack({"type": "ack", "id": 3})

    assert books.acked == {} and list(books.pending) == ["c-1"]
    assert books.errors and "without our client_id" in books.errors[0]


def test_messages_move_the_resume_point_forward_only_and_a_reset_moves_it_to_the_new_epoch() -> None:
    books = Ledger()
    for msg_id in (4, 6, 5):
        books.record_message({"type": "message", "id": msg_id})
    assert books.received == [4, 6, 5] and books.last_id == 6

    books.record_reset({"type": "reset", "epoch": "e2", "last_id": 2})
    assert (books.epoch, books.last_id, books.resets) == ("e2", 2, 1)


def test_book_takes_the_kinds_the_ledger_keeps_and_leaves_the_rest() -> None:
    books = Ledger()
    books.pending["c-1"] = "hi"
    assert books.book({"type": "message", "id": 4})
    assert books.book({"type": "ack", "client_id": "c-1", "id": 5})
    assert books.book({"type": "reset", "epoch": "e9", "last_id": 0})
    assert not books.book({"type": "ready", "epoch": "e9", "last_id": 0})
    assert not books.book({"type": "presence", "count": 1})
    assert (books.received, books.acked, books.pending, books.resets, books.epoch) == (
        [4], {"c-1": 5}, {}, 1, "e9")
