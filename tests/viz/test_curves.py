"""attnlab.curves: reading metrics.jsonl (resumes, interpolated minutes), the table,
the plot and the command's errors."""

from __future__ import annotations

import json
import math

import pytest

from attnlab import curves
from attnlab.cli import main


def write_log(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return run_dir


def train(step, seconds):
    return {"kind": "train", "step": step, "epoch": 0, "loss": 5.0, "train_seconds": seconds}


def valid(step, bleu, chrf=None, **extra):
    row = {"kind": "valid", "step": step, "epoch": 0, "bleu": bleu, "best": False, "final": False}
    if chrf is not None:
        row["chrf"] = chrf
    row.update(extra)
    return row


def test_metrics_file_name_matches_the_training_loop():
    from attnlab.train.loop import METRICS_FILE

    assert curves.METRICS_FILE == METRICS_FILE


def test_read_curve_interpolates_minutes_and_keeps_the_latest_rows_after_a_resume(tmp_path):
    run = write_log(tmp_path / "a", [
        train(100, 60.0), valid(100, 1.0, 10.0, nll=4.0),
        train(200, 120.0), valid(200, 2.0, 12.0, nll=3.5),
        train(300, 180.0), valid(300, 9.0, 13.0, nll=3.4),   # lost: the run resumed from step 200
        {"kind": "event", "event": "stop", "step": 300},
        train(250, 150.0), valid(250, 2.5, 12.5, nll=3.3),
        train(400, 240.0), valid(350, 3.0, 14.0, nll=3.2, final=True),
    ])
    c = curves.read_curve(run)
    assert c.label == "a" and c.steps == [100, 200, 250, 350]
    assert c.values["bleu"] == [1.0, 2.0, 2.5, 3.0]
    assert list(c.values) == ["bleu", "chrf", "nll"]
    # 350 lies between the train lines at 250 (150 s) and 400 (240 s): 210 s = 3.5 min
    assert c.minutes == pytest.approx([1.0, 2.0, 2.5, 3.5])
    assert c.best("bleu") == (3.0, 350)
    assert c.best("nll", lower_is_better=True) == (3.2, 350)


def test_points_shortly_after_the_last_training_line_are_extrapolated_and_later_ones_not(tmp_path):
    rows = [train(10, 30.0), train(20, 90.0), valid(20, 1.0), valid(25, 2.0), valid(41, 3.0)]
    c = curves.read_curve(write_log(tmp_path / "r", rows))
    assert c.minutes[:2] == pytest.approx([1.5, 2.0])  # 25: 60 s per 10 steps continued
    assert math.isnan(c.minutes[2])  # more than two logging intervals past the last line


def test_table_and_plot(tmp_path):
    a = curves.read_curve(write_log(tmp_path / "att", [train(100, 60.0), valid(100, 1.0, 10.0), train(200, 120.0),
                                                        valid(200, 4.0, 20.0)]), "RNNsearch")
    b = curves.read_curve(write_log(tmp_path / "enc", [train(100, 30.0), valid(100, 0.5, 8.0), train(300, 90.0),
                                                        valid(300, 2.0, 15.0)]))
    text = curves.table([a, b], ["bleu", "chrf"])
    lines = text.splitlines()
    assert len(lines) == 3 and "best bleu" in lines[0] and "last chrf" in lines[0]
    assert lines[1].startswith("RNNsearch") and "4.00 (step 200)" in lines[1] and "20.00" in lines[1]
    assert lines[2].startswith("enc") and "2.00 (step 300)" in lines[2] and "1.5" in lines[2]  # 90 s
    out = curves.plot_curves([a, b], ["bleu", "chrf"], tmp_path / "c.png", x="step")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="--x must be 'minutes' or 'step'"):
        curves.plot_curves([a], ["bleu"], tmp_path / "d.png", x="epoch")


def test_command(tmp_path, capsys):
    a = write_log(tmp_path / "a", [train(50, 30.0), valid(50, 1.5, 11.0)])
    b = write_log(tmp_path / "b", [train(50, 60.0), valid(50, 0.5, 9.0)])
    out = tmp_path / "curves.png"
    assert main(["curves", str(a), str(b), "--labels", "att,enc", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best bleu" in printed and "chrf" not in printed  # default: the first score logged
    assert printed.splitlines()[1].startswith("att") and f"wrote {out}" in printed
    assert out.is_file()

    assert main(["curves", str(a), "--labels", "x,y", "--out", str(out)]) == 1
    assert "--labels: give 1 non-empty names" in capsys.readouterr().err
    assert main(["curves", str(a), "--metric", "rouge_l", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--metric 'rouge_l': run a" in err and "logs bleu, chrf" in err
    assert main(["curves", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["curves", str(tmp_path / "empty"), "--out", str(out)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
    write_log(tmp_path / "young", [train(10, 5.0)])
    assert main(["curves", str(tmp_path / "young"), "--out", str(out)]) == 1
    assert "no validation points yet" in capsys.readouterr().err
    assert main(["curves", str(a), "--out", str(tmp_path / "no" / "c.png")]) == 1
    assert "--out" in capsys.readouterr().err
