// Browser stand-in for the page-level helpers the WebUI defines (written for these tests, not copied):
// behaviour of script.js @ A1111 v1.10.1 (82a973c) -- gradioApp(), the onUiLoaded / onUiUpdate /
// onAfterUiUpdate callback queues driven by one MutationObserver on the app, "loaded" once #txt2img_prompt
// exists, after-update callbacks debounced by 200 ms -- and updateInput() from javascript/ui.js (dispatch a
// bubbling "input" event so gradio picks up a value set from script). Used only by tests/test_browser.py.

function gradioApp() {
    const app = document.querySelector("gradio-app");
    if (!app) return document;
    if (!app.getElementById) app.getElementById = (id) => document.getElementById(id);
    return app.shadowRoot || app;
}

const webuiCallbacks = {loaded: [], update: [], afterUpdate: []};
const onUiLoaded = (fn) => webuiCallbacks.loaded.push(fn);
const onUiUpdate = (fn) => webuiCallbacks.update.push(fn);
const onAfterUiUpdate = (fn) => webuiCallbacks.afterUpdate.push(fn);

function runWebuiCallbacks(list, arg) {
    list.forEach((fn) => {
        try {
            fn(arg);
        } catch (err) {
            console.error("webui callback failed:", err);
        }
    });
}

document.addEventListener("DOMContentLoaded", () => {
    let loaded = false;
    let afterTimer = null;
    new MutationObserver((mutations) => {
        if (!loaded && gradioApp().querySelector("#txt2img_prompt")) {
            loaded = true;
            runWebuiCallbacks(webuiCallbacks.loaded);
        }
        runWebuiCallbacks(webuiCallbacks.update, mutations);
        clearTimeout(afterTimer);
        afterTimer = setTimeout(() => runWebuiCallbacks(webuiCallbacks.afterUpdate), 200);
    }).observe(gradioApp(), {childList: true, subtree: true});
});

function updateInput(target) {
    const event = new Event("input", {bubbles: true});
    Object.defineProperty(event, "target", {value: target});
    target.dispatchEvent(event);
}
