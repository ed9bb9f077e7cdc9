// Generated from scfg_ext/settings.py FIELDS by scfg_ext.webui.controls.hints_js(); do not edit.
// Tooltips for the S-CFG accordion: the browser shows an element's title attribute on hover.
(function () {
  const scfgHints = {
    "scfg_enabled": "Semantic-aware CFG: give every semantic region of the image its own guidance scale.",
    "scfg_min_rate": "Lowest per-region multiplier of the CFG scale (official: 0.8).",
    "scfg_max_rate": "Highest per-region multiplier of the CFG scale (official: 3.0).",
    "scfg_max_scale": "Cap on CFG scale x rate anywhere in the image (official: 15).",
    "scfg_refine": "How self-attention completes the token map: official code (S+3S²)/4, paper (mean of S¹..S⁴) or none.",
    "scfg_foreground": "Which prompt's attention defines the benchmark foreground: the positive prompt (cond) or, as the official code does, the negative prompt (uncond).",
    "scfg_start": "Fraction of the sampling schedule where S-CFG starts (earlier steps use plain CFG).",
    "scfg_end": "Fraction of the sampling schedule where S-CFG ends (later steps use plain CFG).",
    "scfg_hires": "Also use S-CFG on the hires. fix second pass.",
    "scfg_word_weights": "Multiply the guidance of words of the prompt, e.g. 'horse: 1.3, sky: 0.7, red shirt: 1.2' (0 = plain CFG there).",
    "scfg_show_maps": "Add a picture per image to the gallery: the token regions over the image and the rate map.",
    "scfg_maps_step": "Which step the maps show: the middle, first or last step S-CFG guided, or the average over them.",
  };

  function scfgApplyHints() {
    const app = typeof gradioApp === "function" ? gradioApp() : document;
    for (const [suffix, hint] of Object.entries(scfgHints)) {
      app.querySelectorAll(`[id$="_${suffix}"], [id$="_${suffix}-checkbox"]`).forEach((el) => {
        const target = el.querySelector(":scope > .label-wrap") || el; // InputAccordion: its header only
        for (const node of [target, ...target.querySelectorAll("label, span, input, select, textarea")]) {
          if (node.title !== hint) node.title = hint;
        }
      });
    }
  }

  if (typeof onAfterUiUpdate === "function") {
    onAfterUiUpdate(scfgApplyHints); // debounced: not on every DOM mutation of the WebUI
  } else if (typeof onUiUpdate === "function") {
    onUiUpdate(scfgApplyHints);
  } else {
    document.addEventListener("DOMContentLoaded", scfgApplyHints);
  }
})();
