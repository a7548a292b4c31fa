"""The manifest tables (clips, rejects, longform): Arrow schemas and batched, atomic Parquet writers.

Rows are appended to plain Python column lists and flushed as one row group every
``batch_rows`` rows, so memory stays bounded however long the input is. Each table is written
to ``NAME.parquet.tmp`` and renamed into place only by ``commit()``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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


class TableSink:
    """Column buffers for one table, flushed to a Parquet file in row groups."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int = 1 << 16):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.schema = schema
        self.batch_rows = batch_rows
        self.columns: dict[str, list] = {name: [] for name in schema.names}
        self.rows = 0
        self._writer = pq.ParquetWriter(self.tmp, schema)

    def pending(self) -> int:
        return len(self.columns[self.schema.names[0]])

    def maybe_flush(self) -> None:
        if self.pending() >= self.batch_rows:
            self.flush()

    def _arrays(self) -> list[pa.Array]:
        return [pa.array(self.columns[f.name], type=f.type) for f in self.schema]

    def flush(self) -> None:
        n = self.pending()
        if n == 0:
            return
        self._writer.write_table(pa.Table.from_arrays(self._arrays(), schema=self.schema), row_group_size=n)
        self.rows += n
        for values in self.columns.values():
            values.clear()

    def commit(self) -> None:
        """Flush, close and rename into place."""
        self.flush()
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


class LongformSink(TableSink):
    """The longform table: ``sentences`` is kept as flat columns plus list offsets until flushed."""

    def __init__(self, path: Path, batch_rows: int = 1 << 13):  # ~100k sentences per row group
        super().__init__(path, LONGFORM_SCHEMA, batch_rows)
        del self.columns["sentences"]
        self.sentence_columns: dict[str, list] = {"clip_id": [], "start": [], "end": [], "text": []}
        self.offsets = [0]

    def _arrays(self) -> list[pa.Array]:
        flat = pa.StructArray.from_arrays(
            [pa.array(self.sentence_columns[f.name], type=f.type) for f in SENTENCE_TYPE],
            fields=list(SENTENCE_TYPE))
        sentences = pa.ListArray.from_arrays(pa.array(self.offsets, type=pa.int32()), flat,
                                             type=LONGFORM_SCHEMA.field("sentences").type)
        return [sentences if f.name == "sentences" else pa.array(self.columns[f.name], type=f.type)
                for f in self.schema]

    def flush(self) -> None:
        super().flush()
        for values in self.sentence_columns.values():
            values.clear()
        self.offsets = [0]
