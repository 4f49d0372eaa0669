"""Files written whole or not at all."""

import pytest

from generalist.atomic import write_atomically, write_text_atomically


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "results.json"
    write_text_atomically(path, "old")

    def crash(partial):
        partial.write_text("half of the ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, crash)
    assert path.read_text() == "old"
    write_text_atomically(path, "new")  # the next write replaces the stray partial file too
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.json"]
