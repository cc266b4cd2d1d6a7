"""Progress without a terminal: occasional whole lines, never carriage returns."""

from __future__ import annotations

import io

from recording.progress import LineProgress, progress_bar, progress_iter


def test_without_a_terminal_progress_is_a_few_plain_lines():
    out = io.StringIO()
    bar = progress_bar(1000, "train", "step", initial=100, file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(900):
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    bar.close()  # closing twice prints once
    text = out.getvalue()
    assert "\r" not in text and text.count("\n") == 1  # the interval (30 s) never elapsed: only the last line
    assert text.startswith("train: 1000/1000 steps, 100 %") and "loss 0.5" in text


def test_lines_come_every_interval_with_the_time_left():
    out = io.StringIO()
    bar = LineProgress(10, "eval", "episode", file=out, interval_s=0.0)
    bar.update(4)
    line = out.getvalue().splitlines()[0]
    assert line.startswith("eval: 4/10 episodes, 40 %") and "left" in line


def test_progress_iter_yields_everything_and_ends_with_a_line():
    out = io.StringIO()
    assert list(progress_iter(range(5), 5, "export", "episode", file=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue().startswith("export: 5/5 episodes, 100 %")
