"""After "Keep this one" the Test sub-tab lists what is left in the Lora folder.

Seen in the real webui: after Keep the epoch checkboxes still offered the files just moved to
``archive/``, so the next grid stopped with "... is no longer in the output folder".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_lora.ui.tab import build_tab
from support.ui_host import FakeHost, write_fake_lora
from support.ui_tab import value

pytestmark = pytest.mark.ui


def test_keep_refreshes_the_epoch_lists_to_the_kept_file(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    _, tab = build_tab(host)
    host.out.mkdir(parents=True, exist_ok=True)
    for epoch, stem in ((1, "mylora-000001"), (2, "mylora-000002"), (3, "mylora")):
        write_fake_lora(host.out / f"{stem}.safetensors", epoch, 3 * epoch)
    epochs, send_epoch, _, _ = tab.test.list_epochs("mylora", "Lora folder", "", "", "x")
    labels = value(epochs)
    assert len(labels) == 3

    result, keep_choice, epochs, send_epoch = tab.test.keep_epoch("mylora", "Lora folder", "", labels[1])

    assert "Kept mylora-000002 as mylora.safetensors" in result
    assert sorted(p.name for p in host.out.glob("*.safetensors")) == ["mylora.safetensors"]
    assert epochs["choices"] == value(epochs) == ["mylora (epoch 2, step 6)"]
    assert send_epoch["choices"] == ["mylora (epoch 2, step 6)"] and value(send_epoch) == "mylora (epoch 2, step 6)"
    # the grid works on what is listed now
    image, message = tab.test.render_grid(
        "task(1)", "mylora", "Lora folder", "", value(epochs), "redfox", "", 1.0, 1, "", "", "", ""
    )
    assert "no longer" not in message and [p.name for p in host.grids[-1].lora_files] == ["mylora.safetensors"]
