// aol dashboard: refresh the live part of the page, ask for a reason, post controls.
// No library; the page works without this file too (forms post, pages reload by hand).
"use strict";
(() => {
  const live = document.getElementById("live");
  const status = document.getElementById("refresh-status");
  const flash = document.getElementById("flash");
  const dialog = document.getElementById("reason-dialog");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const every = Number(document.body.dataset.refreshMs) || 3000;
  let busy = false;

  function typing() {
    const el = document.activeElement;
    return (dialog && dialog.open) ||
      (live && live.contains(el) && el.matches("input, select, textarea"));
  }

  async function refresh() {
    if (!live || busy || typing()) return;
    busy = true;
    try {
      const r = await fetch(live.dataset.src + location.search,
        { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error(r.status === 401 ? "log in again" : `HTTP ${r.status}`);
      live.innerHTML = await r.text();
      document.body.classList.remove("stale");
      status.textContent = `live: updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      // Never pass an old page off as current: say so, loudly.
      document.body.classList.add("stale");
      status.textContent = `NOT UPDATING (${e.message}); figures below are from earlier`;
    } finally {
      busy = false;
    }
  }
  if (live) setInterval(refresh, every);

  function say(text, ok) {
    flash.textContent = text;
    flash.className = ok ? "ok" : "error";
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-post]");
    if (b && dialog) {
      const form = dialog.querySelector("form");
      form.reset();
      form.action = b.dataset.post;
      dialog.querySelector("[data-what]").textContent = b.dataset.what;
      dialog.showModal();
      form.elements.reason.focus();
    } else if (ev.target.closest("[data-close]")) {
      dialog.close();
    }
  });

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.matches("form[data-control]")) return;
    ev.preventDefault();
    const button = ev.submitter;
    const url = (button && button.getAttribute("formaction")) || form.action;
    const body = new URLSearchParams(new FormData(form));
    try {
      const r = await fetch(url, {
        method: "POST", body, credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      });
      const answer = await r.json().catch(() => ({ message: `HTTP ${r.status}` }));
      say(answer.message, r.ok);
      if (r.ok) {
        form.reset();
        if (dialog && dialog.open) dialog.close();
        refresh();
      }
    } catch (e) {
      say(`not sent: ${e.message}`, false);
    }
  });
})();
