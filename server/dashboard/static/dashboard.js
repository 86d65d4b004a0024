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

  // <pre data-log="URL" data-next="N">: appends what the agent log gained since byte N.
  async function tail(el) {
    const response = await fetch(`${el.dataset.log}?from=${el.dataset.next}`,
                                 {credentials: "same-origin", cache: "no-store"});
    if (signedOut(response) || !response.ok) return;
    const text = new TextDecoder().decode(await response.arrayBuffer());
    el.dataset.next = response.headers.get("X-Log-Next") || el.dataset.next;
    if (!text) { if (!el.textContent) el.textContent = "Nothing yet: the agent sends its log as it goes and at the end."; return; }
    if (el.dataset.started !== "1") { el.textContent = ""; el.dataset.started = "1"; }
    const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.append(text);
    if (atBottom) el.scrollTop = el.scrollHeight;
    if (Number(response.headers.get("X-Log-Size")) > Number(el.dataset.next)) await tail(el);
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
