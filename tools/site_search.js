// Client-side search of the rendered lessons (tools/build_site.py appends this to search.js,
// after the index it writes as window.CKPTLAB_SEARCH_INDEX). No server, no network: it works
// from file:// and offline. Every word of the query must appear in a section (its heading or
// its text); heading matches rank first.
(function () {
  "use strict";
  var index = window.CKPTLAB_SEARCH_INDEX || [];

  function words(text) {
    return text.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
  }

  function search(query) {
    var terms = words(query);
    if (terms.length === 0) { return []; }
    var hits = [];
    index.forEach(function (entry) {
      var heading = entry.heading.toLowerCase();
      var body = entry.text.toLowerCase();
      var score = 0;
      for (var i = 0; i < terms.length; i++) {
        var inHeading = heading.indexOf(terms[i]) >= 0;
        var inBody = body.indexOf(terms[i]) >= 0;
        if (!inHeading && !inBody) { return; }
        score += (inHeading ? 3 : 0) + (inBody ? 1 : 0);
      }
      hits.push({entry: entry, score: score});
    });
    hits.sort(function (a, b) { return b.score - a.score; });
    return hits.slice(0, 12).map(function (hit) { return hit.entry; });
  }

  function snippet(text, word) {
    var at = Math.max(0, text.toLowerCase().indexOf(word));
    var start = Math.max(0, at - 60);
    return (start > 0 ? "… " : "") + text.slice(start, start + 180) +
      (start + 180 < text.length ? " …" : "");
  }

  function show(list, query) {
    list.textContent = "";
    if (query.trim() === "") { list.hidden = true; return; }
    list.hidden = false;
    var found = search(query);
    if (found.length === 0) {
      var none = document.createElement("li");
      none.textContent = "No lesson mentions “" + query.trim() + "”.";
      list.appendChild(none);
      return;
    }
    found.forEach(function (entry) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = entry.page + (entry.anchor ? "#" + entry.anchor : "");
      link.textContent = entry.title + (entry.heading !== entry.title ? " › " + entry.heading : "");
      var text = document.createElement("span");
      text.className = "ckptlab-snippet";
      text.textContent = snippet(entry.text, words(query)[0]);
      item.appendChild(link);
      item.appendChild(text);
      list.appendChild(item);
    });
  }

  function install() {
    document.querySelectorAll("form.ckptlab-search").forEach(function (form) {
      var box = form.querySelector("input");
      var list = form.querySelector("ul");
      box.addEventListener("input", function () { show(list, box.value); });
      form.addEventListener("submit", function (event) {
        event.preventDefault();  // Enter opens the first result
        var first = list.querySelector("a");
        if (first) { window.location.href = first.href; }
      });
    });
  }

  window.ckptlabSearch = search;
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", install);
  } else {
    install();
  }
})();
