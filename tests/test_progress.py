"""Progress off a terminal: whole lines every few seconds, not carriage-return redraws."""

from __future__ import annotations

import io
import sys


def test_a_bar_written_to_a_log_is_whole_lines_a_few_per_interval(monkeypatch):
    from tqdm import tqdm

    import kit.core.progress as progress

    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 3600.0)  # one interval covers the whole run
    bar = tqdm(total=500, desc="train", **progress.tqdm_options())
    for step in range(500):
        bar.update(1)
        bar.set_postfix_str(f"loss {1 / (step + 1):.3f}", refresh=False)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("train: 100%")
