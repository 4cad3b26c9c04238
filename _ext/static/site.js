// Site-wide fixes for the riverbank course (loaded on every page by _ext/riverbank_site.py).
(function () {
  // jupyterquiz's numeric answer box has no label; screen readers announce it as a bare "edit".
  function labelQuizInputs() {
    document.querySelectorAll("input.Input-text:not([aria-label])").forEach(function (input) {
      input.setAttribute("aria-label", "Your answer");
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    labelQuizInputs();
    new MutationObserver(labelQuizInputs).observe(document.body, {childList: true, subtree: true});
  });
})();
