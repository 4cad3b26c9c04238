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

// Search results: Sphinx builds each snippet from the text of the found page's main element,
// which here also holds the page's printed table of contents, and formulas as raw LaTeX
// (`\(W_Q\)`), because MathJax typesets them only in a live page. Snippets are taken from the
// article text alone, with each formula written out in plain characters.
(function () {
  var SYMBOLS = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", theta: "θ", lambda: "λ", mu: "μ",
    pi: "π", sigma: "σ", tau: "τ", phi: "φ", omega: "ω", Omega: "Ω", Delta: "Δ", Theta: "Θ",
    top: "ᵀ", times: "×", cdot: "·", cdots: "⋯", ldots: "…", dots: "…", le: "≤", leq: "≤", ge: "≥",
    geq: "≥", ne: "≠", neq: "≠", approx: "≈", infty: "∞", sum: "Σ", prod: "Π", in: "∈", to: "→",
    rightarrow: "→", leftarrow: "←", mapsto: "↦", pm: "±", sqrt: "√", odot: "⊙", otimes: "⊗",
    log: "log", exp: "exp", max: "max", min: "min", sin: "sin", cos: "cos", quad: " ", qquad: " "
  };
  function plainMath(tex) {
    return tex
      .replace(/^\s*\\[([]|\\[)\]]\s*$/g, "")
      .replace(/\\(?:mathrm|text|mathbf|mathit|operatorname|boldsymbol|mathcal|textrm)\s*\{([^{}]*)\}/g, "$1")
      .replace(/\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])/g, "")
      .replace(/\^\s*\{?\s*\\top\s*\}?/g, "ᵀ")
      .replace(/\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "($1)/($2)")
      .replace(/\\([a-zA-Z]+)/g, function (m, name) { return name in SYMBOLS ? SYMBOLS[name] : name; })
      .replace(/\\[,;:! ]/g, " ")
      .replace(/\\([{}%$&#_])/g, "$1")
      .replace(/[{}]/g, "")
      .replace(/\s+/g, " ")
      .trim();
  }
  function cleanPage(htmlString) {
    var doc = new DOMParser().parseFromString(htmlString, "text/html");
    doc.querySelectorAll(".onlyprint, #jb-print-docs-body, nav, .bd-toc, .header-article, " +
                         ".prev-next-area, footer, .toctree-wrapper").forEach(function (el) { el.remove(); });
    doc.querySelectorAll(".math").forEach(function (el) {
      el.textContent = plainMath(el.textContent.replace(/^\s*\\[([]/, "").replace(/\\[)\]]\s*$/, ""));
    });
    return doc.documentElement.outerHTML;
  }
  function install() {
    if (typeof Search === "undefined" || !Search.htmlToText || Search.htmlToText.riverbank) return;
    var original = Search.htmlToText;
    Search.htmlToText = function (htmlString, anchor) {
      return original(cleanPage(htmlString), anchor).replace(/\s+/g, " ");
    };
    Search.htmlToText.riverbank = true;
  }
  window.riverbankPlainMath = plainMath;  // for the browser tests
  install();
  document.addEventListener("DOMContentLoaded", install);
})();
