// pbxfront console: the Events page's live tail (server-sent events). Everything else works
// without JavaScript; this file only adds rows as events arrive. No innerHTML: text only.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var url = live.getAttribute("data-stream");
  var after = live.getAttribute("data-after");
  if (after && after !== "0") { url += (url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(after); }
  var source = new EventSource(url);
  live.textContent = "Live: new events appear below as they arrive.";
  function cell(text, label) {
    var td = document.createElement("td");
    td.setAttribute("data-label", label);
    td.textContent = text === null || text === undefined || text === "" ? "-" : String(text);
    return td;
  }
  function table() {
    var holder = document.getElementById("latest");
    var body = holder.querySelector("table.events tbody");
    if (body) { return body; }
    holder.textContent = "";
    var wrap = document.createElement("div");
    wrap.className = "scroll";
    var t = document.createElement("table");
    t.className = "grid events";
    var head = document.createElement("thead");
    var row = document.createElement("tr");
    ["Received", "Kind", "Severity", "Device", "Customer", "Text"].forEach(function (name) {
      var th = document.createElement("th"); th.textContent = name; row.appendChild(th);
    });
    head.appendChild(row); t.appendChild(head);
    body = document.createElement("tbody"); t.appendChild(body);
    wrap.appendChild(t); holder.appendChild(wrap);
    return body;
  }
  source.onmessage = function (message) {
    var event = JSON.parse(message.data);
    var row = document.createElement("tr");
    row.className = "fresh sev-" + (event.severity || "none");
    row.appendChild(cell("just now", "Received"));
    row.appendChild(cell(event.kind + (event.active ? " (active)" : ""), "Kind"));
    row.appendChild(cell(event.severity, "Severity"));
    row.appendChild(cell(event.device_hardware_id, "Device"));
    row.appendChild(cell(event.customer, "Customer"));
    row.appendChild(cell((event.code ? event.code + " " : "") + (event.text || ""), "Text"));
    var body = table();
    body.insertBefore(row, body.firstChild);
  };
  source.onerror = function () { live.textContent = "Live tail interrupted; retrying…"; };
})();
