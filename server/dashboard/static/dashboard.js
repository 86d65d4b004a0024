// xenp2v dashboard: refreshes the parts of a page that change, and tails the agent log.
// Everything else is plain server-rendered HTML that works without this script.
"use strict";
(function () {
  const PERIOD = 2000;

  function signedOut(response) {
    if (response.status === 401) { window.location.assign("/signin"); return true; }
    return false;
  }

  // Elements with data-refresh="URL" get their content replaced by URL's HTML.
  async function refresh(el) {
    const response = await fetch(el.dataset.refresh, {credentials: "same-origin", cache: "no-store"});
    if (signedOut(response) || !response.ok) return;
    const html = await response.text();
    if (html === el.dataset.last) return;
    el.dataset.last = html;
    // Keep the keyboard where it was: the focused link or button, found again by its target.
    const focused = el.contains(document.activeElement) ? document.activeElement : null;
    const key = focused && (focused.getAttribute("href") || focused.id);
    const open = Array.from(el.querySelectorAll("details[open] > summary")).map(s => s.textContent);
    el.innerHTML = html;
    el.querySelectorAll("details > summary").forEach(s => {
      if (open.includes(s.textContent)) s.parentElement.open = true;
    });
    if (key) {
      const again = el.querySelector(`[href="${CSS.escape(key)}"]`) || document.getElementById(key);
      if (again) again.focus();
    }
  }

  // <pre data-log="URL" data-next="N">: appends what the agent log gained since byte N. The
  // first look starts within the log's last MiB (at a line); the page keeps at most KEEP
  // characters, dropping the oldest lines, and then offers the whole log as a download.
  const KEEP = 1024 * 1024;
  const decoders = new WeakMap();   // one streaming decoder per log: a character cut between
                                    // two pieces is put together, not shown as two "?"
  async function tail(el) {
    const first = el.dataset.started !== "1" && el.dataset.next === "0";
    const query = first ? "tail=1" : `from=${el.dataset.next}`;
    const response = await fetch(`${el.dataset.log}?${query}`,
                                 {credentials: "same-origin", cache: "no-store"});
    if (signedOut(response) || !response.ok) return;
    if (!decoders.has(el)) decoders.set(el, new TextDecoder("utf-8"));
    const text = decoders.get(el).decode(await response.arrayBuffer(), {stream: true});
    el.dataset.next = response.headers.get("X-Log-Next") || el.dataset.next;
    if (first && Number(response.headers.get("X-Log-Start")) > 0) cut(el);
    if (!text) { if (!el.textContent) el.textContent = "Nothing yet: the agent sends its log as it goes and at the end."; return; }
    if (el.dataset.started !== "1") { el.textContent = ""; el.dataset.started = "1"; }
    const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.append(text);
    if (el.textContent.length > KEEP) {
      const all = el.textContent;
      const from = all.indexOf("\n", all.length - KEEP);
      el.textContent = all.slice(from >= 0 ? from + 1 : all.length - KEEP);
      cut(el);
    }
    if (atBottom) el.scrollTop = el.scrollHeight;
    if (Number(response.headers.get("X-Log-Size")) > Number(el.dataset.next)) await tail(el);
  }

  // The log shown is its end only: say so once, with a link to all of it.
  function cut(el) {
    if (el.dataset.cut === "1") return;
    el.dataset.cut = "1";
    const note = document.createElement("p");
    note.className = "log-cut";
    const link = document.createElement("a");
    link.href = `${el.dataset.log}?download=1`;
    link.textContent = "download the whole log";
    link.setAttribute("download", "");
    note.append("Only the end of a long log is shown here: ", link, ".");
    el.before(note);
  }

  // One request at a time per element, however slow the answers.
  function once(el, fn) {
    if (el.dataset.busy === "1") return;
    el.dataset.busy = "1";
    fn(el).catch(() => {}).finally(() => { el.dataset.busy = ""; });
  }

  function tick() {
    if (document.hidden) return;
    document.querySelectorAll("[data-refresh]").forEach(el => once(el, refresh));
    document.querySelectorAll("[data-log]").forEach(el => once(el, tail));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-log]").forEach(el => once(el, tail));
    window.setInterval(tick, PERIOD);
  });
})();
