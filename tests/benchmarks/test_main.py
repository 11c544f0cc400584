"""python -m benchmarks: each suite's --help is the suite's own (its options can be discovered), the
shared options reach the suite, and the top level lists the suites."""
from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.__main__ as cli


@pytest.mark.parametrize("suite", sorted(cli.SUITES))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_a_suites_help_is_its_own(suite, flag, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([suite, flag])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks {suite} ")


def test_the_top_level_help_lists_the_suites_and_the_shared_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "usage: python -m benchmarks [-h] SUITE ..." in out
    assert ", ".join(cli.SUITES) in out and "--work DIR" in out and "--out DIR" in out


def test_the_shared_options_go_to_the_suite_and_the_rest_to_its_parser(monkeypatch, tmp_path):
    got = {}

    def suite_main(argv, work, out):
        got.update(argv=argv, work=work, out=out)
        return 3

    monkeypatch.setattr("benchmarks.bundle.main", suite_main)
    # --he is a prefix of --help and --o of --out: with abbreviations they would never reach the suite.
    assert cli.main(["gpu-bundle", "--he", "x", "--out", str(tmp_path), "--o", "y"]) == 3
    assert got == {"argv": ["--he", "x", "--o", "y"], "work": Path(".bench"), "out": tmp_path}


def test_a_suite_is_required_and_must_exist(capsys):
    for argv in ([], ["nope"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
