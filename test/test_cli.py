"""The `vlit-ros` command: every sub-command imports and prints its help."""

import pytest

from vlit_ros import cli


@pytest.mark.parametrize('name', [name for name, _, _ in cli.COMMANDS])
def test_every_sub_command_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([name, '--help'])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f'usage: vlit-ros {name}')


def test_listing_and_unknown_commands(capsys):
    assert cli.main([]) == 2
    listing = capsys.readouterr().out
    for name, _, _ in cli.COMMANDS:
        assert f'  {name} ' in listing
    assert cli.main(['no-such-command']) == 2
    assert 'unknown command' in capsys.readouterr().err
