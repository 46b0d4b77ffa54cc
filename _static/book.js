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
