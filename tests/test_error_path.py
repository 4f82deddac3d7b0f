"""One error path: every expected failure is a UserError, printed by the CLI in one line, exit 2;
anything else is a bug and keeps its traceback."""
import click
import pytest
from click.testing import CliRunner

from keras_ptx import cli
from keras_ptx.errors import UserError


def _command(error):
    @cli.command("probe")
    def probe():
        raise error
    return probe


def test_a_user_error_is_one_line_with_exit_status_2():
    result = CliRunner().invoke(_command(UserError("--data x: no such directory")), [])
    assert result.exit_code == 2
    assert result.output == "Error: --data x: no such directory\n"


def test_a_bug_is_not_dressed_up_as_a_user_error():
    result = CliRunner().invoke(_command(ValueError("internal")), [])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "Error:" not in result.output


def test_every_stage_error_is_a_user_error():
    from keras_ptx.config import ConfigError
    from keras_ptx.data.annotations import AnnotationError
    from keras_ptx.data.build import BuildError
    from keras_ptx.data.records_dir import RecordsError
    from keras_ptx.inference.evaluate import EvaluateError
    from keras_ptx.inference.postprocess import PostProcessError
    from keras_ptx.inference.predict import PredictError
    from keras_ptx.model.encoders import WeightsError
    from keras_ptx.rundir import RunDirError
    from keras_ptx.serving.export import ExportError
    from keras_ptx.synthetic.dataset import SyntheticError
    from keras_ptx.training import TrainingError
    for error in (ConfigError, AnnotationError, BuildError, RecordsError, EvaluateError,
                  PostProcessError, PredictError, WeightsError, RunDirError, ExportError,
                  SyntheticError, TrainingError):
        assert issubclass(error, UserError) and not issubclass(error, ValueError), error


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_the_handler(name):
    assert isinstance(cli.main.get_command(None, name), cli.Command)
    assert isinstance(cli.Refused("x"), click.ClickException) and cli.Refused.exit_code == 2
