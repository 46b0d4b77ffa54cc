// Book-level behaviour on every page (Jupyter Book loads every .js file in _static/).
// Every content image opens at full size in a new tab: Sphinx links the figures it scaled; this
// links the rest (drawn outputs shown at their natural size).
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".bd-article img").forEach((img) => {
    if (img.closest("a")) return;
    const link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.target = "_blank";
    link.rel = "noopener";
    link.title = "Open the image at full size";
    img.classList.add("enlargeable");
    img.parentNode.insertBefore(link, img);
    link.appendChild(img);
  });
});

// Inline maths wider than its paragraph (on a phone) scrolls within itself instead of being cut off
// at the edge. Only those get the scrolling box: it would shift the baseline of every other formula.
function markWideInlineMath() {
  document.querySelectorAll(".bd-article mjx-container:not([display='true'])").forEach((math) => {
    math.classList.remove("wide-inline-math");
    const box = math.parentElement && math.parentElement.getBoundingClientRect();
    if (box && math.getBoundingClientRect().width > box.width) math.classList.add("wide-inline-math");
  });
}
window.addEventListener("load", () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(markWideInlineMath);
  }
});
window.addEventListener("resize", markWideInlineMath);
