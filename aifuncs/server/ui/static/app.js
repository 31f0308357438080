// Small behaviours every page shares; the pages work without them.
document.addEventListener("DOMContentLoaded", () => {
  // A range picker submits itself.
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  // Breakdown bars: their width from data-w (a percentage), set here (the page has no inline styles).
  for (const bar of document.querySelectorAll("[data-w]")) {
    bar.style.width = `${Math.max(0, Math.min(100, Number(bar.dataset.w) || 0))}%`;
  }
});
