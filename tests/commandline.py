"""The CLI as tests call it: in-process `compactlm.cli.main`, its exit code returned."""

import pytest

from compactlm.cli import main


def cli(*args: str) -> int:
    """`compactlm ARGS...` in this process; the exit code (0 when main returns normally)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code or 0


def refused(capsys: pytest.CaptureFixture, *args: str) -> str:
    """`compactlm ARGS...` must refuse: exit 2 and one line on stderr, which is returned."""
    capsys.readouterr()
    code = cli(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err
