"""A SQLite table or query, opened read-only: the toolkit can never change the database."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import quote

from toolkit.common.errors import first_line, show, show_names
from toolkit.sources.base import Reader, native_path, require_file
from toolkit.sources.options import SourceOptions
from toolkit.sources.records import RawChunk


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _said(e: Exception) -> str:
    """SQLite's message, for ours. When it quotes bytes that are not UTF-8 (a broken schema's names),
    sqlite3 fails to decode it and raises UnicodeDecodeError holding it instead."""
    if isinstance(e, UnicodeDecodeError):
        return first_line(Exception(bytes(e.object).decode("utf-8", "backslashreplace")))
    return first_line(e)


class SqliteReader(Reader, loc_kind="row"):  # its description names the table or the query
    def __init__(self, path: Path, options: SourceOptions):
        super().__init__(path, options)
        require_file(path)
        if options.table and options.query:
            raise self.fail("pass --table or --query, not both")
        uri = f"file:{quote(native_path(path.resolve()))}?mode=ro"
        try:
            self.conn = sqlite3.connect(uri, uri=True)
            # Invalid UTF-8 becomes lone surrogates, reported on its row instead of failing the read.
            self.conn.text_factory = lambda b: b.decode("utf-8", errors="surrogateescape")
            self.conn.execute("PRAGMA query_only = ON")
            tables = [r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")]
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise self.fail(f"not a readable SQLite database ({_said(e)})") from None
        if options.query:
            self.sql = options.query
            self.description = "SQLite query"
        else:
            table = options.table
            if table is None:
                if len(tables) != 1:
                    raise self.fail(f"pass --table NAME or --query SQL (tables: {show_names(tables) or 'none'})")
                table = tables[0]
            elif table not in tables:
                raise self.fail(f"no table {show(table, 40)} (tables: {show_names(tables) or 'none'})")
            try:
                table.encode("utf-8")
            except UnicodeEncodeError:  # sqlite3 takes SQL as UTF-8 only: such a table cannot be named
                raise self.name_error(table, "the table name") from None
            self.sql = f"SELECT * FROM {_quote_ident(table)}"
            self.description = f"SQLite table {show(table, 40)}"
        try:
            self.cursor = self.conn.execute(self.sql)
        except sqlite3.Error as e:
            raise self.fail(f"query failed: {_said(e)}") from None
        except UnicodeDecodeError as e:  # sqlite3 decodes the result's column names, strictly
            raise self.name_error(e.object) from None
        except UnicodeEncodeError:  # a --query from a command line that was not UTF-8
            raise self.fail("the query is not valid UTF-8") from None
        if self.cursor.description is None:
            raise self.fail("the query returns no rows (not a SELECT?)")
        self._names = [d[0] for d in self.cursor.description]

    @property
    def names(self) -> Optional[list[str]]:
        return self._names

    def raw_chunks(self, needed: list[str], chunk_size: int) -> Iterator[RawChunk]:
        self.check_needed(needed)
        index = [self._names.index(c) for c in needed]
        row = 0
        try:
            while True:
                records = self.cursor.fetchmany(chunk_size)
                if not records:
                    break
                chunk = RawChunk(
                    columns={c: [r[i] for r in records] for c, i in zip(needed, index)},
                    locs=list(range(row + 1, row + len(records) + 1)),
                )
                chunk.rows = chunk.locs
                row += len(records)
                yield chunk
        except (sqlite3.Error, UnicodeDecodeError) as e:
            raise self.fail(f"read failed after row {row}: {_said(e)}") from None
        finally:
            self.conn.close()
        if row == 0:
            raise self.fail("no data rows")
