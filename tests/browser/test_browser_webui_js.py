"""``javascript/lora_trainer.js`` in headless chromium, against the few webui globals it uses.

After a long task the Lora cards are refreshed. Each extra-networks page's refresh in the webui
1.10.1 rebuilds the built-in Lora's one list of files in place (cleared, then refilled), so two
refreshes at once (txt2img's and img2img's) rendered a half-filled list: in the real webui the
img2img page showed 18 of 25 LoRA cards, and txt2img's page (cached for every new page load) once
showed a single card."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright import sync_api as playwright

from support.browser_app import CHROMIUM_ARGS, chromium_path

pytestmark = [pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]

# the webui's globals the script uses (script.js), and one extra-networks refresh button per tab whose
# click keeps a "refresh" running for 300 ms, as the webui's rebuild of the Lora list does
PAGE = """<!doctype html><html><body>
<div id="tab_txt2img" class="tabitem"></div><div id="tab_img2img" class="tabitem" style="display: none"></div>
<button id="txt2img_lora_extra_refresh_internal"></button><button id="img2img_lora_extra_refresh_internal"></button>
<script>
function gradioApp() { return document; }
function get_uiCurrentTabContent() {
    return document.querySelector('.tabitem[id^=tab_]:not([style*="display: none"])');
}
var uiTabChangeCallbacks = [];
function onUiTabChange(callback) { uiTabChangeCallbacks.push(callback); }
function openTab(name) {
    document.querySelectorAll('.tabitem').forEach(function(el) {
        el.style.display = el.id === 'tab_' + name ? '' : 'none';
    });
    uiTabChangeCallbacks.forEach(function(callback) { callback(); });
}
var running = 0, most = 0, refreshed = [];
['txt2img', 'img2img'].forEach(function(tab) {
    document.getElementById(tab + '_lora_extra_refresh_internal').addEventListener('click', function() {
        running += 1; most = Math.max(most, running); refreshed.push(tab);
        setTimeout(function() { running -= 1; }, 300);
    });
});
</script></body></html>"""


def test_lora_cards_are_refreshed_one_page_at_a_time() -> None:
    source = (ROOT / "javascript" / "lora_trainer.js").read_text(encoding="utf-8")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_content(PAGE)
            page.add_script_tag(content=source)
            page.evaluate("loraTrainerRefreshLoraCards()")  # a training run / grid just ended
            page.wait_for_function("running === 0")  # txt2img's refresh is over (not a fixed wait)
            assert page.evaluate("[most, refreshed]") == [1, ["txt2img"]]
            page.evaluate("openTab('img2img')")  # the user opens img2img: its cards are refreshed then
            page.wait_for_function("running === 0")
            page.evaluate("openTab('txt2img'); openTab('img2img')")  # once, not on every visit
            assert page.evaluate("[most, refreshed]") == [1, ["txt2img", "img2img"]]
        finally:
            browser.close()
