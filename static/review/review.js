// Review console: picking a reason template fills the text box (the reviewer then edits it),
// and a header checkbox selects every row of the queue. Loaded as a file: CSP forbids inline
// scripts. Without JavaScript the console still works: an empty reason takes the template's.
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    var select = event.target;
    if (select.matches && select.matches("select[data-fills]")) {
      var target = document.getElementById(select.getAttribute("data-fills"));
      var option = select.options[select.selectedIndex];
      if (target && option && option.getAttribute("data-text")) {
        target.value = option.getAttribute("data-text");
      }
    }
    if (select.matches && select.matches("input.select-all")) {
      var boxes = document.querySelectorAll("table.queue input[name=ids]");
      for (var i = 0; i < boxes.length; i++) { boxes[i].checked = select.checked; }
    }
  });
})();
