// MathJax 3, served from this site (assets/mathjax/, copied from the django-static-mathjax
// package at build time): arithmatex writes \( \) and \[ \] inside .arithmatex elements.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex", enableMenu: false },
  loader: { load: [] },
};
