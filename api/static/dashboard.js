// The dashboard's few behaviours: live regions, filters that apply on change, confirmations.
(function () {
  "use strict";

  // An element with data-refresh="URL" replaces its content with that URL's HTML every few
  // seconds. The URL carries the page's filters, so they survive the refresh.
  function refresh(region) {
    if (document.hidden || region.dataset.busy) return;
    region.dataset.busy = "1";
    fetch(region.dataset.refresh, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        region.innerHTML = html;
        region.removeAttribute("data-stale");
      })
      .catch(function () {
        region.setAttribute("data-stale", "");
      })
      .finally(function () {
        delete region.dataset.busy;
      });
  }

  var seconds = Number(document.body.dataset.refreshSeconds || 5);
  document.querySelectorAll("[data-refresh]").forEach(function (region) {
    setInterval(function () { refresh(region); }, seconds * 1000);
  });

  document.querySelectorAll("form[data-autosubmit] select").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  document.querySelectorAll("input[data-select-all]").forEach(function (all) {
    all.addEventListener("change", function () {
      all.closest("form").querySelectorAll("input[type=checkbox][name]").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  });

  // Delegated, so forms inside refreshed regions keep it.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var submitter = event.submitter;
    var question = (submitter && submitter.dataset.confirm) || (form.dataset && form.dataset.confirm);
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    // A disabled button's name and value are not sent: keep the chosen one's in the form.
    if (submitter && submitter.name) {
      var chosen = document.createElement("input");
      chosen.type = "hidden";
      chosen.name = submitter.name;
      chosen.value = submitter.value;
      form.appendChild(chosen);
    }
    form.querySelectorAll("button[type=submit]").forEach(function (button) {
      button.disabled = true;
      button.classList.add("is-busy");
    });
  });
})();
