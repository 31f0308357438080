"""What crosses between the server and a model worker: framed messages over one socket pair.

A frame is two lengths, a small header (pickled: both ends are this package's own processes) and a body. A
batch of requests travels as an Arrow IPC stream; so does an answer that is Arrow or pandas (converted in the
worker, exactly as the runtime would convert it), anything else (NumPy, lists) pickled.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

import pyarrow as pa

_FRAME = struct.Struct("!II")


def frame(header: dict[str, Any], body: bytes | memoryview | pa.Buffer = b"") -> list[Any]:
    """The pieces of one frame, to be written in order (the body is not copied)."""
    head = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL)
    return [_FRAME.pack(len(head), len(memoryview(body))) + head, body]


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """One frame from the stream; `asyncio.IncompleteReadError` when the other end is gone."""
    head_len, body_len = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    header = pickle.loads(await reader.readexactly(head_len))
    body = await reader.readexactly(body_len) if body_len else b""
    return header, body


def read_frame_blocking(stream: Any) -> tuple[dict[str, Any], bytes] | None:
    """One frame from a binary file over the socket; None at its end."""
    lengths = stream.read(_FRAME.size)
    if len(lengths) < _FRAME.size:
        return None
    head_len, body_len = _FRAME.unpack(lengths)
    header = pickle.loads(stream.read(head_len))
    body = stream.read(body_len) if body_len else b""
    if len(body) < body_len:
        return None
    return header, body


def send_blocking(sock: socket.socket, header: dict[str, Any], body: bytes | pa.Buffer = b"") -> None:
    for piece in frame(header, body):
        if len(memoryview(piece)):
            sock.sendall(piece)


def rows_to_ipc(rows: pa.Array | pa.ChunkedArray) -> pa.Buffer:
    return table_to_ipc(pa.table({"rows": rows}))


def table_to_ipc(table: pa.Table) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ipc_to_table(body: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(body)).read_all()


def rows_from_ipc(body: bytes, chunked: bool) -> pa.Array | pa.ChunkedArray:
    """The requests as they were handed over: one array, or a chunked array where the provider takes those."""
    column = ipc_to_table(body).column(0)
    if chunked:
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def encode_output(output: Any) -> tuple[str, pa.Buffer | bytes]:
    """A model's output as (shape, body): Arrow for Arrow and pandas output, converted here the way the runtime
    converts it (`aifuncs._types.to_arrow`), so the server's loop only reads buffers; pickled otherwise."""
    import pandas as pd

    try:
        if isinstance(output, (pa.Array, pa.ChunkedArray)):
            return "array", table_to_ipc(pa.table({"out": output}))
        if isinstance(output, pa.Table):
            return "table", table_to_ipc(output)
        if isinstance(output, pd.Series):
            return "array", table_to_ipc(pa.table({"out": pa.Array.from_pandas(output)}))
        if isinstance(output, pd.DataFrame) and output.shape[1] > 1:
            # A frame of several columns is read as one struct per row whatever the result type.
            struct = pa.Table.from_pandas(output, preserve_index=False).to_struct_array()
            return "array", table_to_ipc(pa.table({"out": struct}))
    except (pa.ArrowException, TypeError, ValueError):
        pass  # the runtime's own conversion will say what is wrong with it
    return "pickle", pickle.dumps(output, protocol=pickle.HIGHEST_PROTOCOL)


def decode_output(shape: str, body: bytes) -> Any:
    if shape == "array":
        column = ipc_to_table(body).column(0)
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    if shape == "table":
        return ipc_to_table(body)
    return pickle.loads(body)
