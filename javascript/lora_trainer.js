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

// Re-renders the Lora cards of txt2img and img2img (the hidden refresh buttons the
// extra-networks pages have), so new epoch files show up without pressing Refresh.
function loraTrainerRefreshLoraCards() {
    ['txt2img', 'img2img'].forEach(function(tabname) {
        var button = gradioApp().getElementById(tabname + '_lora_extra_refresh_internal');
        if (button) {
            button.dispatchEvent(new Event('click'));
        }
    });
}
