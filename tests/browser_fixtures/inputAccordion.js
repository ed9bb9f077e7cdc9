// Browser stand-in for javascript/inputAccordion.js @ A1111 v1.10.1 (82a973c), written for these tests (not
// copied). The behaviour an InputAccordion has in the WebUI:
// - a visible checkbox is put into the accordion's header (id "<accordion>-visible-checkbox");
// - opening/closing the accordion sets that box and the hidden gradio checkbox "<accordion>-checkbox" (the
//   value the scripts receive), as long as the user has not clicked the box itself ("linked");
// - ticking the box opens the accordion while linked; clicking the box unlinks the two and does not toggle
//   the accordion; the server side can set the box with inputAccordionChecked(id, checked).

function inputAccordionChecked(id, checked) {
    const accordion = gradioApp().getElementById(id);
    accordion.visibleCheckbox.checked = checked;
    accordion.onVisibleCheckboxChange();
}

function linkInputAccordion(accordion) {
    const header = accordion.querySelector(".label-wrap");
    const hidden = gradioApp().querySelector(`#${accordion.id}-checkbox input`);
    const extra = gradioApp().querySelector(`#${accordion.id}-extra`);
    const isOpen = () => header.classList.contains("open");
    let linked = true;

    const box = document.createElement("input");
    box.type = "checkbox";
    box.id = `${accordion.id}-visible-checkbox`;
    box.className = `${hidden.className} input-accordion-checkbox`;
    box.checked = isOpen();
    header.querySelector("span").prepend(box);
    if (extra) header.insertBefore(extra, header.lastElementChild);

    accordion.visibleCheckbox = box;
    accordion.onVisibleCheckboxChange = () => {
        if (linked && isOpen() !== box.checked) header.click();
        hidden.checked = box.checked;
        updateInput(hidden);
    };
    accordion.onChecked = (checked) => {
        if (isOpen() !== checked) header.click();
    };

    new MutationObserver(() => {
        accordion.classList.toggle("input-accordion-open", isOpen());
        if (linked) {
            box.checked = isOpen();
            accordion.onVisibleCheckboxChange();
        }
    }).observe(header, {attributes: true, attributeFilter: ["class"]});

    box.addEventListener("click", (event) => {
        linked = false;
        event.stopPropagation();
    });
    box.addEventListener("input", accordion.onVisibleCheckboxChange);
}

onUiLoaded(() => gradioApp().querySelectorAll(".input-accordion").forEach(linkInputAccordion));
