"""The JSON document (``json_document``): byte-identical to the document of before the
move out of ``Snapshot`` for a fixed directory, and every object typed by its shape."""

from __future__ import annotations

import pathlib

from fixed_directory import document_text

GOLDEN = pathlib.Path(__file__).with_name("json_document_golden.json")


def test_document_is_byte_identical_to_before(tmp_path: pathlib.Path) -> None:
    """For a fixed directory the document is the text the code before the move produced."""
    assert document_text(tmp_path) == GOLDEN.read_text(encoding="utf-8")
