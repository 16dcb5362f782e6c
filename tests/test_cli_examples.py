"""Every command's help example runs as written, in order, in an empty directory (each one's inputs
are the earlier ones' outputs): the help never shows a command that fails."""
import shlex
import shutil
from pathlib import Path

from click.testing import CliRunner

from dnncompress.cli import eval_cmd, finetune, joint, list_cmd, main, pack, prune, quantize, report, run, train, unpack, validate

ORDER = [train, eval_cmd, prune, finetune, quantize, pack, unpack, report, joint, validate, list_cmd, run]
ROOT = Path(__file__).resolve().parent.parent


def test_help_examples_run_as_written(in_tmp):
    shutil.copytree(ROOT / "configs", in_tmp / "configs")
    runner = CliRunner()
    for module in ORDER:
        words = shlex.split(module.EXAMPLE)
        assert words[0] == "dnncompress"
        r = runner.invoke(main, words[1:])
        assert r.exit_code == 0, f"{module.EXAMPLE}\n{r.output[-2000:]}"
        help_text = runner.invoke(main, [words[1], "--help"]).output
        assert module.EXAMPLE in help_text
