// Train LoRA: the progress hook for the tab's long buttons and refreshing the Lora cards.
// Every global is prefixed loraTrainer.

// _js of a click wrapped by wrap_gradio_gpu_call (WebuiHost.progress_js): puts a task id into the
// first input (an invisible textbox) and starts the webui's progress bar above containerId, as
// javascript/textualInversion.js does for the built-in trainer.
function loraTrainerStartTask(containerId, galleryId, infoId, args) {
    var id = randomId();
    var container = gradioApp().getElementById(containerId);
    var gallery = galleryId ? gradioApp().getElementById(galleryId) : null;
    var info = infoId ? gradioApp().getElementById(infoId) : null;
    if (container && container.parentNode) {
        requestProgress(id, container, gallery, function() {
            loraTrainerRefreshLoraCards();
        }, function(progress) {
            if (info) {
                info.innerHTML = progress.textinfo || '';
            }
        });
    }
    var res = Array.from(args);
    res[0] = id;
    return res;
}

// Re-renders the Lora cards (the hidden refresh button of each extra-networks page), so new epoch
// files show up without pressing Refresh. Never two pages at once: each page's refresh rebuilds the
// built-in Lora's one list of files in place (cleared, then refilled), so a second refresh running
// beside the first renders a half-filled list (cards went missing in the real webui 1.10.1).
// txt2img's cards now ("Send to txt2img" goes there), img2img's when its tab is next opened.
var loraTrainerStaleCards = {};

function loraTrainerClickCardsRefresh(tabname) {
    var button = gradioApp().getElementById(tabname + '_lora_extra_refresh_internal');
    if (button) {
        button.dispatchEvent(new Event('click'));
    }
}

function loraTrainerRefreshLoraCards() {
    loraTrainerClickCardsRefresh('txt2img');
    loraTrainerStaleCards.img2img = true;
}

function loraTrainerOnTabChange() {
    var content = typeof get_uiCurrentTabContent === 'function' ? get_uiCurrentTabContent() : null;
    var tabname = content && content.id ? content.id.replace(/^tab_/, '') : null;
    if (tabname && loraTrainerStaleCards[tabname]) {
        loraTrainerStaleCards[tabname] = false;
        loraTrainerClickCardsRefresh(tabname);
    }
}

if (typeof onUiTabChange === 'function') {
    onUiTabChange(loraTrainerOnTabChange);
}
