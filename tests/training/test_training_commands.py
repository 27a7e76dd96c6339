"""The training commands (training.train, training.finetune: they import TensorFlow) refuse a wrong
data layout in one line."""

from __future__ import annotations


def test_a_training_command_given_a_wrong_layout_says_so_in_one_line(tmp_path, capsys):
    from training import cli, finetune, train

    for command in (train.main, finetune.main):
        code = cli.run(command, ["--task", "pneumonia", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
        error = capsys.readouterr().err
        assert code == 2 and error.startswith("error: ") and "split: folder not found" in error
        assert "Traceback" not in error
