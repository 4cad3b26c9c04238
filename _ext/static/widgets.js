// Loaded by myst-nb between require.js and the widgets manager, on pages with stored widgets
// (_config.yml, nb_ipywidgets_js).
(function () {
  // The manager loads its fonts and code chunks relative to its AMD module name,
  // "@jupyter-widgets/html-manager/dist/...", which require.js would resolve against the page.
  // Point that name at the vendored copy, next to this file.
  var here = document.currentScript.src;
  var base = here.slice(0, here.lastIndexOf("/") + 1);
  window.require.config({paths: {"@jupyter-widgets/html-manager": base + "npm/html-manager"}});

  // The manager typesets widget labels with MathJax 2's MathJax.Hub.Queue, which MathJax 3 (the
  // site's) does not have: every label threw "reading 'Queue'". Give whatever object ends up in
  // window.MathJax a Hub whose Queue typesets with MathJax 3.
  function withHub(mathjax) {
    if (mathjax && typeof mathjax === "object" && !mathjax.Hub) {
      mathjax.Hub = {Queue: function (job) {
        var element = job && job[2];
        var mj = window.MathJax;
        var ready = mj.startup && mj.startup.promise ? mj.startup.promise : Promise.resolve();
        ready.then(function () {
          if (window.MathJax.typesetPromise) { return window.MathJax.typesetPromise(element ? [element] : undefined); }
        }).catch(function (error) { console.warn("MathJax could not typeset a widget label:", error); });
      }};
    }
    return mathjax;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); }
  });

  // A slider's handle is an ARIA slider with no name (axe: aria-input-field-name); name it after
  // the widget's description label once the manager has drawn it.
  function nameSliders(root) {
    root.querySelectorAll(".widget-slider").forEach(function (slider) {
      var label = slider.querySelector(".widget-label");
      var name = label && label.textContent.trim();
      slider.querySelectorAll(".noUi-handle:not([aria-label])").forEach(function (handle) {
        handle.setAttribute("aria-label", name || "slider");
      });
    });
  }
  new MutationObserver(function () { nameSliders(document); })
    .observe(document.documentElement, {childList: true, subtree: true});
})();
