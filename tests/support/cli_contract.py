"""The command line's error contract, shared by the CLI tests: a user error is one line
``boundflow: error: ...`` on stderr, exit code 2, no traceback."""

from __future__ import annotations

import re

from boundflow.cli import main


def assert_user_error(capsys, argv: list[str], pattern: str) -> str:
    """Run ``boundflow argv``; assert the contract and that the message matches ``pattern``
    (a regular expression); return the message."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("boundflow: error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]
