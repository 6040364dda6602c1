"""examples/wireless_deadline.py end to end on the inline engine, a few rounds."""

from conftest import load_example


def test_it_reports_both_scenarios(tmp_path, capsys):
    experiment = load_example("wireless_deadline")
    argv = ["--rounds", "3", "--target", "0.5", "--engine", "inline", "--quiet", "--out", str(tmp_path)]
    report = experiment.main(argv)
    assert "### urban-sub6" in report and "### iot-lowpower" in report and "| scaled_sign |" in report
    assert (tmp_path / "report.md").read_text().strip() == report
    assert report in capsys.readouterr().out
