// The console's live updates: when an event concerns this page, fetch the page again and
// put its new <main> in place of the old one. The pages are whole without this script
// (server-rendered); it only saves the reload. <main data-live="event names"> says which
// events matter, data-live-client="id" narrows them to one client's, data-live-since
// (seconds since 1970) is where the stream starts.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var names = main.dataset.live.split(" ").filter(Boolean);
  var client = main.dataset.liveClient;
  var busy = false, again = false;

  function typing() {  // never wipe what someone is typing: refresh when they leave the field
    var el = document.activeElement;
    return el && main.contains(el) && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName);
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
    if (!fresh) return;
    var flash = main.querySelector(".flash");  // the last action's outcome stays in view
    if (flash && !fresh.querySelector(".flash")) fresh.prepend(flash);
    main.replaceChildren.apply(main, Array.from(fresh.childNodes));
  }

  function refresh() {
    if (busy || typing()) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {  // logged out (a redirect to /login): leave the page be
        return answer.ok && !answer.redirected ? answer.text().then(swap) : null;
      })
      .catch(function () {})
      .then(function () {  // at most two refreshes a second, however many events come
        setTimeout(function () { busy = false; if (again) { again = false; refresh(); } }, 500);
      });
  }

  function onEvent(message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (!client || event.client_id === client) refresh();
  }

  // From a second before the page was rendered: an event in between is not missed.
  var since = main.dataset.liveSince;
  var source = new EventSource("/api/v1/events/stream" +
                               (since ? "?since=" + encodeURIComponent(since) : ""));
  names.forEach(function (name) { source.addEventListener(name, onEvent); });
  source.addEventListener("open", function () { document.documentElement.dataset.live = "on"; });
  source.addEventListener("error", function () { document.documentElement.dataset.live = "off"; });
  main.addEventListener("focusout", function () {
    if (again && !busy) { again = false; setTimeout(refresh, 0); }
  });
})();
