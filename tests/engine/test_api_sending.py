"""Sending result files (`engine.server.sending`): a download that ends — complete, abandoned by its client,
or stalled by a client that stops reading — closes the file's handle at once, so that neither a file
handle nor, after the job is deleted, the disk space of its files stays held (it stayed until Python's
garbage collector ran; a stalled client held it for ever)."""

from __future__ import annotations

import asyncio
import os

import pytest

from engine.server import sending
from engine.server.sending import FileSending


@pytest.fixture
def result(tmp_path):
    path = tmp_path / "result_scores.tif"
    path.write_bytes(os.urandom(3 * sending.SEND_BYTES + 5))
    return path


def _send_to(client, path) -> FileSending:
    response = FileSending(open(path, "rb"), path.name, "image/tiff")
    asyncio.run(asyncio.wait_for(response({"type": "http"}, None, client), 10))
    return response


def test_a_whole_download_sends_every_byte_and_closes_the_file(result):
    messages = []

    async def reader(message):
        messages.append(message)

    response = _send_to(reader, result)
    assert response.handle.closed
    head = dict(messages[0]["headers"])
    assert head[b"content-length"] == str(result.stat().st_size).encode()
    assert b'filename="result_scores.tif"' in head[b"content-disposition"]
    assert b"".join(m.get("body", b"") for m in messages[1:]) == result.read_bytes()
    assert messages[-1]["more_body"] is False


def test_a_client_that_goes_away_mid_file_frees_the_file_at_once(result):
    sent = []

    async def gone_after_one_chunk(message):
        if len(sent) == 2:
            raise OSError("the client closed the connection")  # what the server says of a closed socket
        sent.append(message)

    assert _send_to(gone_after_one_chunk, result).handle.closed
    assert len(sent) == 2  # the answer's head and one MB: nothing more was read from the file


def test_a_client_that_stops_reading_is_dropped_and_the_file_freed(result, monkeypatch):
    monkeypatch.setattr(sending, "STALL_S", 0.3)
    sent = []

    async def stops_reading(message):
        sent.append(message)
        if len(sent) == 3:  # its socket buffer is full and never drains
            await asyncio.Event().wait()

    assert _send_to(stops_reading, result).handle.closed
    assert len(sent) == 3
