// Runs in <head>, before the first paint: apply the theme the user chose (if any).
(function () {
  try {
    var theme = localStorage.getItem("keymux-theme");
    if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  } catch (e) { /* storage disabled: follow prefers-color-scheme */ }
})();
