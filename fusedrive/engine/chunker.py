"""Content-defined chunking (FastCDC), so an edit or insertion re-uploads only nearby blocks."""

from __future__ import annotations

from typing import Iterator

from fastcdc.fastcdc_cy import fastcdc_cy


def chunk_spans(data: memoryview | bytes, chunking: dict) -> Iterator[tuple[int, int]]:
    """Yield (offset, length) of each chunk of `data`; boundaries depend only on content."""
    if len(data) == 0:
        return
    for chunk in fastcdc_cy(data, chunking["min"], chunking["avg"], chunking["max"], fat=False):
        yield chunk.offset, chunk.length
