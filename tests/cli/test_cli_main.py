"""The ``python -m lib_lora`` front end itself: the global --debug flag, one-line errors, and the
dedupe verb's report naming files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.cli import main
from lib_lora.common.errors import UserError
from support.data_images import write_image


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "captions", "{missing}"],  # the global flag, before the verb (the documented way)
        ["captions", "{missing}", "--debug"],  # after the verb
    ],
)
def test_debug_flag_shows_the_traceback_wherever_it_is_given(tmp_path: Path, argv: list[str]) -> None:
    argv = [a.format(missing=tmp_path / "missing") for a in argv]
    with pytest.raises(UserError):  # --debug: the error is raised (full traceback), not one line
        main(argv)


def test_without_debug_an_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["captions", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_dedupe_names_an_unreadable_file_not_a_memory_buffer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_image(tmp_path / "10_x" / "a.png", (64, 64))
    write_image(tmp_path / "10_x" / "b.png", (64, 64), seed=3)
    (tmp_path / "10_x" / "broken.png").write_bytes(b"not an image at all")
    assert main(["dedupe", str(tmp_path), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "BytesIO" not in out + err
    assert (
        "Skipped 10_x/broken.png: cannot read it as an image" in err and "cannot identify image file broken.png" in err
    )
    assert "1 unreadable file skipped" in err
