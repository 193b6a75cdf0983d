"""The Test sub-tab's automatic pick: the chart marks the recommended epoch, the words say why."""

from __future__ import annotations

from pathlib import Path

from lib_lora.jobs.score_math import EpochScore, SeedScore, pick_best
from lib_lora.jobs.scoring import ScoreReport
from lib_lora.ui.test_panel import score_chart, score_report_html


def _report(confident: bool) -> ScoreReport:
    scores = []
    for e in range(1, 5):
        fid = 0.2 * e if confident else 0.5
        seeds = [SeedScore(min(1.0, fid + 0.01 * k), 0.8 if e < 4 else 0.05, 0.1 if e < 4 else 0.6) for k in range(3)]
        if not confident:
            seeds = [SeedScore(0.5 + 0.2 * ((k + e) % 2), 0.5, 0.1) for k in range(3)]
        scores.append(EpochScore(f"t-{e:06d}", e, seeds, validation_loss=0.2 - 0.01 * e))
    pick = pick_best(scores)
    return ScoreReport(
        scores, pick, ["blue hair"], "tchar", 40, 1.0, [Path(f"t-{s.epoch:06d}.safetensors") for s in scores]
    )


def test_chart_marks_the_pick_and_draws_scores_and_validation_loss() -> None:
    report = _report(confident=True)
    assert report.pick.confident and report.best.epoch == 3
    svg = score_chart(report)
    assert svg.count("<polyline") == 5 and svg.count('class="lt-score-pick"') == 1
    assert "recommended: t-000003" in svg and "validation loss 0.1700" in svg
    page = score_report_html(report)
    assert "t-000003 is the best epoch" in page and "lt-ok" in page


def test_noise_only_says_so_in_words_and_marks_the_ties() -> None:
    report = _report(confident=False)
    assert not report.pick.confident
    page = score_report_html(report)
    assert "No confident pick" in page and "lt-warning" in page
    assert page.count("#eab30822") == len(report.pick.tied)


def test_train_chart_shows_validation_loss_beside_the_training_loss() -> None:
    from lib_lora.events import StepInfo
    from lib_lora.jobs.manager import JobStatus, StatusEvents
    from lib_lora.ui.html import loss_chart

    status = JobStatus(id="1", kind="train", title="t")
    events = StatusEvents(status)
    for step in (1, 2):
        events.step(StepInfo(1, step, 4, 0.5, 0.5, {"unet": 1e-4}, 0.1, 10.0, 0.2))
    events.validation(1, 2, 0.31)
    assert status.val_losses == [(2, 0.31)]
    svg = loss_chart(status.losses, 4, validation=status.val_losses)
    assert svg.count('class="lt-val-point"') == 1 and "validation loss 0.3100 at step 2" in svg
    assert "validation 0.3100" in svg
    assert "lt-val-point" not in loss_chart(status.losses, 4)


def _svg_text_baselines(svg: str, words: tuple[str, ...]) -> list[float]:
    import re

    return [
        float(m.group(1))
        for m in re.finditer(r'<text [^>]*y="([\d.]+)"[^>]*>([^<]*)</text>', svg)
        if m.group(2) in words
    ]


def test_the_legend_is_above_the_plot_not_on_its_lines() -> None:
    """A score of 1 is drawn on the plot's top edge: the legend must sit above it (it overlapped the
    fidelity line in the browser)."""
    import re

    svg = score_chart(_report(confident=True))
    plot_top = float(re.search(r'<rect x="[\d.]+" y="([\d.]+)"', svg).group(1))
    baselines = _svg_text_baselines(svg, ("score", "fidelity", "flexibility", "drift", "validation loss"))
    assert len(baselines) == 5
    assert all(b <= plot_top - 4 for b in baselines), (baselines, plot_top)  # 11 px text ends at its baseline
