"use strict";
// The annotation page. Captions and tags are placed with textContent only (red-team prompts contain
// HTML and script); no inline code anywhere, so the CSP can forbid it.
(() => {
  const $ = (id) => document.getElementById(id);
  const LABELS = { left: "left better", right: "right better", tie: "tie", skip: "skipped" };
  const SIDES = { left: "img-left", right: "img-right" };
  const state = {
    csrf: null, item: null, busy: false, revealed: false,
    breakEvery: 40, sinceBreak: 0, tags: new Set(), overlay: "warning",
    images: { left: "loading", right: "loading" },
  };

  class ApiError extends Error {}

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", cache: "no-store", headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRF-Token"] = state.csrf || "";
      options.body = JSON.stringify(body);
    }
    const res = await fetch(path, options);
    const data = await res.json().catch(() => null);
    if (res.status === 401) {
      location.assign("/login");
      throw new ApiError("signed out");
    }
    return { status: res.status, data };
  }

  // A write keeps its idempotency key across retries: if the first try was stored but its reply was
  // lost, the retry gets 409 "replayed" with the original reply instead of a second decision.
  async function write(path, body) {
    const payload = { ...body, idempotency_key: newKey() };
    for (let attempt = 0; attempt < 5; attempt += 1) {
      let res;
      try {
        res = await api("POST", path, payload);
      } catch (e) {
        if (e instanceof ApiError) throw e;
        await sleep(250 * 2 ** attempt);
        continue;
      }
      if (res.status === 200) return res.data;
      if (res.status === 409 && res.data && res.data.original) return res.data.original;
      throw new ApiError((res.data && res.data.error) || `HTTP ${res.status}`);
    }
    throw new ApiError("could not reach the server; your last decision was not saved");
  }

  function flash(text, kind) {
    const box = $("status");
    box.textContent = text;
    box.className = `status ${kind || ""}`;
  }

  function setRevealed(on) {
    state.revealed = on;
    $("pair").classList.toggle("veiled", !on);
    $("reveal").lastChild.textContent = on ? " Hide" : " Reveal";
  }

  function renderProgress(p) {
    if (!p) return;
    $("progress-mine").textContent = `${p.mine} decided` + (p.mine_skipped ? ` (${p.mine_skipped} skipped)` : "");
    $("progress-overall").textContent = `${p.items_complete} / ${p.items} items complete · ${p.labels} labels · ${p.overlap} per item`;
    const pct = p.items ? Math.round((100 * p.items_complete) / p.items) : 0;
    $("progress-bar").style.width = `${pct}%`;
  }

  function renderTags(tags) {
    const box = $("tags");
    box.replaceChildren();
    tags.forEach((tag, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "tag";
      button.dataset.tag = tag;
      const key = document.createElement("kbd");
      key.textContent = String(index + 1);
      button.append(key, document.createTextNode(` ${tag}`));
      button.addEventListener("click", () => toggleTag(index));
      box.append(button);
    });
  }

  function toggleTag(index) {
    const buttons = $("tags").querySelectorAll("button.tag");
    if (index >= buttons.length) return;
    const tag = buttons[index].dataset.tag;
    if (state.tags.has(tag)) state.tags.delete(tag);
    else state.tags.add(tag);
    buttons[index].classList.toggle("on", state.tags.has(tag));
  }

  // Tags and note of an undone decision come back with its item, so deciding again keeps them.
  function restoreDetails(tags, note) {
    $("tags").querySelectorAll("button.tag").forEach((button, index) => {
      if ((tags || []).includes(button.dataset.tag) !== state.tags.has(button.dataset.tag)) toggleTag(index);
    });
    $("note").value = note || "";
  }

  // A judgement needs both images on screen: left/right/tie stay off until both have loaded
  // (a broken or missing image would otherwise be judged from its alt text). Skip is always allowed.
  function imagesState() {
    const { left, right } = state.images;
    if (left === "failed" || right === "failed") return "failed";
    return left === "loaded" && right === "loaded" ? "loaded" : "loading";
  }

  function updateImagesState() {
    const now = imagesState();
    document.body.dataset.images = now;
    document.querySelectorAll("button[data-choice]").forEach((b) => {
      b.disabled = b.dataset.choice !== "skip" && now !== "loaded";
    });
    if (now === "failed") {
      flash("An image could not be loaded, so this item cannot be judged: skip it (S) or reload the page.", "error");
    }
  }

  function onImageEvent(side, event) {
    // Only the image of the item now on screen counts, not a late event of the previous one.
    if (!state.item || event.target.getAttribute("src") !== state.item.images[side]) return;
    state.images[side] = event.type === "load" ? "loaded" : "failed";
    updateImagesState();
  }

  function render(item, progress) {
    state.item = item;
    state.tags.clear();
    $("note").value = "";
    flash("", "");  // a message about the previous item must not stand under this one
    setRevealed(false);
    renderProgress(progress);
    const done = !item;
    $("workspace").hidden = done;
    $("done").hidden = !done;
    document.body.dataset.assignment = done ? "" : item.assignment_id;
    if (done) return;
    $("caption").textContent = item.caption;
    $("risk").textContent = item.risk;
    $("guideline").textContent = item.guideline || "";
    state.images = { left: "loading", right: "loading" };
    updateImagesState();
    for (const [side, id] of Object.entries(SIDES)) {
      // Dropping src first makes the browser load (and report) the image again even when an undo
      // brings back the same URL.
      $(id).removeAttribute("src");
      $(id).src = item.images[side];
    }
    renderTags(item.tags || []);
    const proposal = $("proposal");
    proposal.hidden = !item.proposal;
    if (item.proposal) {
      proposal.textContent = `Automatic proposal (admin view): ${item.proposal}` +
        ` · scores left ${JSON.stringify(item.scores.left)} · right ${JSON.stringify(item.scores.right)}`;
    }
  }

  async function loadNext() {
    const res = await api("POST", "/api/next", {});
    if (res.status !== 200) throw new ApiError((res.data && res.data.error) || `HTTP ${res.status}`);
    render(res.data.item, res.data.progress);
  }

  async function busy(fn) {
    if (state.busy) return;
    state.busy = true;
    document.body.dataset.state = "busy";
    try {
      await fn();
    } catch (e) {
      flash(e.message, "error");
    } finally {
      state.busy = false;
      document.body.dataset.state = "ready";
    }
  }

  const decide = (choice) => busy(async () => {
    if (!state.item) return;
    if (choice !== "skip" && imagesState() !== "loaded") {
      if (imagesState() === "loading") flash("Wait until both images have loaded.", "");
      return;
    }
    await write("/api/decision", {
      assignment_id: state.item.assignment_id,
      choice,
      tags: Array.from(state.tags),
      note: $("note").value,
    });
    flash(`Saved: ${LABELS[choice]}`, "ok");
    state.sinceBreak += 1;
    await loadNext();
    if (state.sinceBreak >= state.breakEvery) showOverlay("break");
  });

  const undo = () => busy(async () => {
    const res = await write("/api/undo", {});
    if (!res.undone) {
      flash("Nothing to undo", "");
      return;
    }
    state.sinceBreak = Math.max(0, state.sinceBreak - 1);
    await loadNext();
    if (state.item && state.item.assignment_id === res.undone) restoreDetails(res.tags, res.note);
    flash(`Undone (was: ${LABELS[res.choice]}); decide again`, "ok");
  });

  function showOverlay(name) {
    state.overlay = name;
    if (name === "break") $("break-count").textContent = String(state.sinceBreak);
    $(name).hidden = false;
    $(`${name}-ok`).focus();
  }

  function closeOverlay() {
    if (!state.overlay) return;
    $(state.overlay).hidden = true;
    if (state.overlay === "break") state.sinceBreak = 0;
    state.overlay = null;
    document.activeElement.blur();
  }

  function onKey(event) {
    if (state.overlay) {
      if (event.key === "Enter") {
        event.preventDefault();
        closeOverlay();
      }
      return;
    }
    const note = $("note");
    if (event.target === note) {
      if (event.key === "Escape" || (event.key === "Enter" && !event.shiftKey)) {
        event.preventDefault();
        note.blur();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const actions = {
      ArrowLeft: () => decide("left"), a: () => decide("left"),
      ArrowRight: () => decide("right"), d: () => decide("right"),
      ArrowDown: () => decide("tie"), t: () => decide("tie"),
      s: () => decide("skip"),
      u: undo, Backspace: undo,
      v: () => setRevealed(!state.revealed), " ": () => setRevealed(!state.revealed),
      n: () => note.focus(),
    };
    if (/^[1-9]$/.test(key)) {
      event.preventDefault();
      toggleTag(Number(key) - 1);
    } else if (actions[key]) {
      event.preventDefault();
      actions[key]();
    }
  }

  function wire() {
    document.addEventListener("keydown", onKey);
    document.querySelectorAll("button[data-choice]").forEach((b) => b.addEventListener("click", () => decide(b.dataset.choice)));
    $("undo").addEventListener("click", undo);
    $("reveal").addEventListener("click", () => setRevealed(!state.revealed));
    $("frame-left").addEventListener("click", () => setRevealed(!state.revealed));
    $("frame-right").addEventListener("click", () => setRevealed(!state.revealed));
    $("warning-ok").addEventListener("click", closeOverlay);
    $("break-ok").addEventListener("click", closeOverlay);
    for (const [side, id] of Object.entries(SIDES)) {
      // Small images (e.g. the 64x64 synthetic world) are scaled up with hard pixel edges.
      $(id).addEventListener("load", (e) => e.target.classList.toggle("pixelated", e.target.naturalWidth < 256));
      $(id).addEventListener("load", (e) => onImageEvent(side, e));
      $(id).addEventListener("error", (e) => onImageEvent(side, e));
    }
    $("logout").addEventListener("click", async () => {
      await api("POST", "/api/logout", {}).catch(() => null);
      location.assign("/login");
    });
  }

  async function start() {
    wire();
    const res = await api("GET", "/api/session");
    if (res.status !== 200) throw new ApiError("cannot load the session");
    state.csrf = res.data.csrf_token;
    state.breakEvery = res.data.break_every;
    $("note").maxLength = res.data.note_max_chars;
    $("user-name").textContent = res.data.user;
    await loadNext();
    document.body.dataset.state = "ready";
    $("warning-ok").focus();
  }

  start().catch((e) => flash(e.message, "error"));
})();
