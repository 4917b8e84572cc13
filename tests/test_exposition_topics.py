"""Exposition by topic (``exposition_http``, ``_upstream``, ``_resources``, ``_self``): the
served text is byte-identical to the text of the code before the split, family order included."""

from __future__ import annotations

import pathlib

from fixed_directory import exposition_texts

GOLDEN = pathlib.Path(__file__).parent


def test_text_and_openmetrics_are_byte_identical_to_before(tmp_path: pathlib.Path) -> None:
    """Text 0.0.4 and OpenMetrics of a fixed directory are the texts the code before the split served."""
    texts = exposition_texts(tmp_path)
    assert texts["text"] == (GOLDEN / "exposition_golden.txt").read_text(encoding="utf-8")
    assert texts["openmetrics"] == (GOLDEN / "exposition_golden.openmetrics").read_text(encoding="utf-8")
