"""Text corpora that ship offline, for the text tokenizer and (later) the dialogue data."""

from __future__ import annotations


def python_reference_lines() -> list[str]:
    """The lines of Python's `pydoc_data` topics: about 65k words of English reference prose, in the stdlib."""
    from pydoc_data.topics import topics

    return [line for text in topics.values() for line in text.splitlines() if line.strip()]
