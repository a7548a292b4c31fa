"""The manifest tables (clips, rejects, longform): Arrow schemas and batched, atomic Parquet writers.

Rows are appended to plain Python column lists and flushed as one row group every
``batch_rows`` rows, so memory stays bounded however long the input is. Each table is written
to a temporary beside it (``lfvila.atomic``: ``.NAME.parquet.<hex>.tmp``) and renamed into place,
durably, only by ``commit()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from lfvila.atomic import AtomicPath

SENTENCE_TYPE = pa.struct([("clip_id", pa.string()), ("start", pa.float64()), ("end", pa.float64()),
                           ("text", pa.string())])

CLIPS_SCHEMA = pa.schema([
    ("source", pa.string()), ("video_id", pa.string()), ("clip_id", pa.string()), ("clip_index", pa.int32()),
    ("start", pa.float64()), ("end", pa.float64()), ("text", pa.string()), ("video_duration", pa.float64()),
    ("clamped", pa.bool_()),
])
REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()), ("video_id", pa.string()), ("clip_id", pa.string()), ("stage", pa.string()),
    ("reason", pa.string()), ("detail", pa.string()), ("value", pa.string()), ("file", pa.string()),
    ("line", pa.int64()),
])
LONGFORM_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("source", pa.string()), ("video_id", pa.string()),
    ("start", pa.float64()), ("end", pa.float64()), ("n_clips", pa.int32()), ("video_duration", pa.float64()),
    ("sentences", pa.list_(SENTENCE_TYPE)),
])


class ArrowSlice(NamedTuple):
    """Rows ``start:stop`` of an Arrow array, appended to a column without a round trip through Python."""

    array: pa.Array
    start: int
    stop: int


class ColumnBuffer:
    """Pending values of one column: Arrow pieces followed by an open Python list.

    ``append`` / ``extend`` take Python values; ``extend`` also takes an ``ArrowSlice``, which
    seals the open list into an Arrow piece first (order is kept). Consecutive slices of the same
    array are merged, so a batch written through many small slices is one piece.
    """

    __slots__ = ("type", "values", "pieces", "sealed_rows")

    def __init__(self, type_: pa.DataType):
        self.type = type_
        self.values: list = []
        self.pieces: list[ArrowSlice] = []
        self.sealed_rows = 0

    def __len__(self) -> int:
        return self.sealed_rows + len(self.values)

    def append(self, value) -> None:
        self.values.append(value)

    def extend(self, values) -> None:
        if type(values) is not ArrowSlice:
            self.values.extend(values)
            return
        if self.values:
            self._seal()
        last = self.pieces[-1] if self.pieces else None
        if last is not None and last.array is values.array and last.stop == values.start:
            self.pieces[-1] = ArrowSlice(last.array, last.start, values.stop)
        else:
            self.pieces.append(values)
        self.sealed_rows += values.stop - values.start

    def _seal(self) -> None:
        array = pa.array(self.values, type=self.type)
        self.pieces.append(ArrowSlice(array, 0, len(array)))
        self.sealed_rows += len(array)
        self.values = []

    def take_array(self) -> pa.Array:
        """All pending values as one Arrow array; the buffer is empty afterwards."""
        if self.values or not self.pieces:
            self._seal()
        arrays = [p.array.slice(p.start, p.stop - p.start) for p in self.pieces]
        self.pieces = []
        self.sealed_rows = 0
        return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


class ColumnGroup:
    """The column buffers of one table (or of the longform sentences) plus one deferred Arrow row range.

    ``add_range(columns, start, stop)`` queues rows of Arrow arrays (one per column); consecutive
    ranges of the same arrays just move the end, so a run of fast-path videos costs one comparison
    each. Indexing (``group[name]``) hands the queued range to the buffers first, so Python values
    appended afterwards keep their order.
    """

    def __init__(self, fields):
        self.buffers: dict[str, ColumnBuffer] = {f.name: ColumnBuffer(f.type) for f in fields}
        self._first = next(iter(self.buffers.values()))
        self._range: list | None = None  # [columns, start, stop]

    def __getitem__(self, name: str) -> ColumnBuffer:
        if self._range is not None:
            self._hand_over()
        return self.buffers[name]

    def __len__(self) -> int:
        queued = self._range[2] - self._range[1] if self._range is not None else 0
        return self._first.sealed_rows + len(self._first.values) + queued

    def add_range(self, columns: dict[str, pa.Array], start: int, stop: int) -> None:
        queued = self._range
        if queued is not None and queued[0] is columns and queued[2] == start:
            queued[2] = stop
            return
        if queued is not None:
            self._hand_over()
        self._range = [columns, start, stop]

    def _hand_over(self) -> None:
        columns, start, stop = self._range
        self._range = None
        for name, buffer in self.buffers.items():
            buffer.extend(ArrowSlice(columns[name], start, stop))

    def take_arrays(self) -> dict[str, pa.Array]:
        if self._range is not None:
            self._hand_over()
        return {name: buffer.take_array() for name, buffer in self.buffers.items()}


class TableSink:
    """Column buffers for one table, flushed to a Parquet file in row groups."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 1 << 16, buffered=None):
        self.path = Path(path)
        self._out = AtomicPath(self.path)
        self.schema = schema
        self.batch_rows = batch_rows
        self.columns = ColumnGroup(schema if buffered is None else buffered)
        self.rows = 0
        try:
            self._writer = pq.ParquetWriter(self._out.tmp, schema)
        except BaseException:  # interrupted while opening: no temporary left behind
            self._out.discard()
            raise

    def pending(self) -> int:
        return len(self.columns)

    def maybe_flush(self) -> None:
        if len(self.columns) >= self.batch_rows:
            self.flush()

    def _arrays(self) -> list[pa.Array]:
        arrays = self.columns.take_arrays()
        return [arrays[f.name] for f in self.schema]

    def flush(self) -> None:
        n = self.pending()
        if n == 0:
            return
        self._writer.write_table(pa.Table.from_arrays(self._arrays(), schema=self.schema), row_group_size=n)
        self.rows += n

    def commit(self) -> None:
        """Flush, close and rename into place (fsynced)."""
        self.flush()
        self._writer.close()
        self._out.commit()

    def abort(self) -> None:
        self._writer.close()
        self._out.discard()


class LongformSink(TableSink):
    """The longform table: ``sentences`` is kept as flat columns plus list offsets until flushed."""

    def __init__(self, path: Path, batch_rows: int = 1 << 13):  # ~100k sentences per row group
        super().__init__(path, LONGFORM_SCHEMA, batch_rows, buffered=[f for f in LONGFORM_SCHEMA if f.name != "sentences"])
        self.sentence_columns = ColumnGroup(list(SENTENCE_TYPE))
        self.offsets = [0]

    def _arrays(self) -> list[pa.Array]:
        sentence_arrays = self.sentence_columns.take_arrays()
        flat = pa.StructArray.from_arrays([sentence_arrays[f.name] for f in SENTENCE_TYPE], fields=list(SENTENCE_TYPE))
        sentences = pa.ListArray.from_arrays(pa.array(self.offsets, type=pa.int32()), flat,
                                             type=LONGFORM_SCHEMA.field("sentences").type)
        self.offsets = [0]
        arrays = self.columns.take_arrays()
        return [sentences if f.name == "sentences" else arrays[f.name] for f in self.schema]
