"""Picking the best epoch end to end in the standalone app, in-process on its real host (tiny-sd15):
Train with a held-out split (the validation loss in the loss chart and in every epoch file), then
Test -> Score epochs (the chart of the scores and the validation loss, the pick in words) -> Keep
this one; afterwards the Lora folder holds exactly what README.md's "Picking the best epoch" says."""

from __future__ import annotations

import re
from pathlib import Path

from lib_lora.formats import safetensors_io
from lib_lora.standalone.app import StandaloneHost
from lib_lora.ui.tab import build_tab
from support.tagger_tiny import write_tiny_tagger
from support.train_data import make_dataset
from support.ui_host import FakeHost, write_fake_lora
from support.ui_tab import form_args, value

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 64, "train_batch_size": 4, "network_dim": 4,
    "network_alpha": 2, "max_train_epochs": "3", "save_every_n_epochs": "1", "mixed_precision": "no", "seed": 3,
    "learning_rate": 1e-3, "validation_split": 0.4,
}  # fmt: skip


def readme_lora_folder_after_keep(name: str) -> tuple[set[str], set[str]]:
    """What README.md says the Lora folder holds after Keep: (always, where the run made them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Picking the best epoch") :]
    sentence = re.search(r"Afterwards the Lora folder holds (.*?)\.\n", section, re.S)
    assert sentence, "README: the Lora folder after Keep is no longer described"
    always, _, optional = " ".join(sentence.group(1).split()).partition("plus, where the run made them")
    assert optional, sentence.group(1)

    def names(words: str) -> set[str]:
        return {n.replace("name", name, 1).rstrip("/") for n in re.findall(r"`([^`]+)`", words)}

    return names(always), names(optional)


def test_train_with_validation_score_and_keep_in_the_app(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", {"1_alpha": [(64, 64)] * 3, "1_beta": [(64, 64)] * 2})
    lora = tmp_path / "lora"
    host = StandaloneHost(None, lora, device="cpu")
    _, tab = build_tab(host)
    choice = next(iter(host.output_dir_choices()))

    # Train: 3 epochs with 40% of the images held out
    result = tab.train.start_training("t", str(data), "mylora", choice, "", *form_args(tab, **SETTINGS))
    assert "Training finished" in result, result
    _, chart, table, _, _ = tab.train.poll(0)
    assert chart.count('class="lt-val-point"') == 3  # one validation loss per epoch, beside the training loss
    for epoch in ("mylora-000001", "mylora-000002"):
        assert float(safetensors_io.load(lora / f"{epoch}.safetensors")[1]["ss_validation_loss"]) > 0

    # Test: the cost before, then Score epochs
    where = ("mylora", choice, "")
    cost = tab.test.scoring_cost(*where, "1, 2", "red theme", "blue sky")
    assert "6 images per epoch file" in cost and "20 images for 3 files" in cost, cost
    tagger = write_tiny_tagger(tmp_path / "tagger", size=64)
    report_html, keep_choice, keep_line, done = tab.test.score_epochs(
        "s", *where, "1, 2", "red theme", "blue sky", str(tagger), 1.0, 64, 64, 1, 7.0
    )
    assert "Core tags" in report_html, report_html
    assert report_html.count("<polyline") == 5  # fidelity, flexibility, drift, score and the validation loss
    assert report_html.count("lt-score-pick") >= 1
    report = tab.test.report
    assert [s.label for s in report.scores] == ["mylora-000001", "mylora-000002", "mylora"]
    assert all(s.validation_loss is not None for s in report.scores)
    words = report.pick.reason
    assert words.startswith(("No confident pick:", f"{report.best.label} is the best epoch")), words
    assert "20 images rendered and tagged" in done and keep_line == ""
    picked = value(keep_choice)
    assert picked == report.best.label

    # Keep this one
    kept_html, *_ = tab.test.keep_epoch(*where, picked)
    assert "moved, not deleted" in kept_html, kept_html
    always, optional = readme_lora_folder_after_keep("mylora")
    names = {p.name for p in lora.iterdir()}
    assert always <= names <= always | optional, (names, always, optional)
    assert "mylora-grids" in names  # the scoring images, in the app
    assert sorted(p.name for p in (lora / "archive").iterdir()) == [
        f"mylora-00000{e}.{ext}" for e in (1, 2, 3) for ext in ("json", "safetensors")
    ]
    source = "mylora-000003" if picked == "mylora" else picked
    assert (lora / "mylora.safetensors").read_bytes() == (lora / "archive" / f"{source}.safetensors").read_bytes()


def test_keep_after_a_stopped_and_resumed_run_leaves_what_the_readme_says(tmp_path: Path) -> None:
    """A run stopped once (a step save) then resumed, with samples: Keep archives the step save too."""
    host = FakeHost(tmp_path)
    _, tab = build_tab(host)
    out = host.out
    out.mkdir(parents=True)
    for stem, epoch, step in [("mylora-000001", 1, 3), ("mylora-step00000004", 2, 4), ("mylora-000002", 2, 6),
                              ("mylora", 3, 9)]:  # fmt: skip
        write_fake_lora(out / f"{stem}.safetensors", epoch, step)
        (out / f"{stem}.json").write_text("{}", encoding="utf-8")
    (out / "mylora-log.jsonl").write_text("{}\n", encoding="utf-8")
    (out / "mylora-samples").mkdir()
    (out / "mylora-samples" / "mylora-e000001-00.png").write_bytes(b"png")
    where = ("mylora", "Lora folder", "")
    tab.test.list_epochs(*where, "", "")  # Refresh list, then pick epoch 2 in "Epoch to keep"
    label = next(label for label in tab.test.files if label.startswith("mylora-000002 "))
    kept_html, *_ = tab.test.keep_epoch(*where, label)
    assert "moved, not deleted" in kept_html, kept_html
    always, optional = readme_lora_folder_after_keep("mylora")
    names = {p.name for p in out.iterdir()}
    assert always <= names <= always | optional, (names, always, optional)
    assert "mylora-step00000004.safetensors" in {p.name for p in (out / "archive").iterdir()}
