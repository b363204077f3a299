// Progressive enhancement only: every form works without this file.
(function () {
  "use strict";
  function check(input) {
    var raw = input.value.replace(",", ".").trim();
    var v = Number(raw);
    var lo = input.dataset.min === undefined ? -Infinity : Number(input.dataset.min);
    var hi = input.dataset.max === undefined ? Infinity : Number(input.dataset.max);
    var bad = raw !== "" && (isNaN(v) || v < lo || v > hi);
    input.classList.toggle("out-of-range", bad);
    input.setAttribute("aria-invalid", bad ? "true" : "false");
  }
  document.querySelectorAll("input[data-min], input[data-max]").forEach(function (input) {
    input.addEventListener("input", function () { check(input); });
    check(input);
  });
  document.querySelectorAll("form[data-once]").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("button[type=submit]").forEach(function (b) {
        setTimeout(function () { b.disabled = true; }, 0);
      });
    });
  });
})();
