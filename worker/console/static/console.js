// hatz-worker console: refresh each element with data-live (a URL) every data-every ms,
// replacing its contents with the fragment the server renders. No other script runs.
"use strict";
(function () {
  function refresh(el, every) {
    var timer = null;
    function tick() {
      if (document.hidden) { timer = setTimeout(tick, every); return; }
      fetch(el.getAttribute("data-live"), {
        credentials: "same-origin",
        headers: { "X-Console-Live": "1" },
      }).then(function (response) {
        if (response.status === 401) { window.location.assign(window.location.pathname.split("/").slice(0, 2).join("/") + "/login"); return null; }
        return response.ok ? response.text() : null;
      }).then(function (html) {
        if (html !== null && html !== undefined) {
          // Keep keyboard focus where it was when the focused element is re-rendered.
          var focused = document.activeElement && el.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
          el.innerHTML = html;
          if (focused) { var again = el.querySelector('[href="' + focused.replace(/"/g, "") + '"]'); if (again) { again.focus(); } }
          if (el.querySelector("[data-final]")) { return; }
        }
        timer = setTimeout(tick, every);
      }).catch(function () { timer = setTimeout(tick, every * 2); });
    }
    timer = setTimeout(tick, every);
    return timer;
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live][data-every]").forEach(function (el) {
      var every = parseInt(el.getAttribute("data-every"), 10);
      if (every > 0) { refresh(el, every); }
    });
  });
})();
