"use strict";
// The page of the guarded generation service. The token stays in this page's memory (never stored, never in a
// URL); the reply's image is shown through a blob: URL (the CSP allows no other images) and every text is placed
// with textContent. document.body.dataset.state says idle | busy | done | error (for tests and assistive tools).

const $ = (id) => document.getElementById(id);
let imageUrl = null;

function setState(state, message, isError) {
  document.body.dataset.state = state;
  $("status").textContent = message || "";
  $("status").classList.toggle("error", Boolean(isError));
}

function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function show(reply) {
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = null;
  const image = $("image");
  if (reply.image) {
    imageUrl = URL.createObjectURL(pngBlob(reply.image));
    image.src = imageUrl;
    image.classList.remove("hidden");
  } else {
    image.removeAttribute("src");
    image.classList.add("hidden");
  }
  const words = { clean: "Generated", regenerated: "Regenerated after a flag", blurred: "Blurred: still flagged",
                  refused: "Withheld: still flagged", flagged: "Flagged", blocked: "Blocked by the prompt filter" };
  $("caption").textContent = `${words[reply.outcome] || reply.outcome} (seed ${reply.seed}, ${reply.tries} ` +
    `tr${reply.tries === 1 ? "y" : "ies"})` + (reply.prompt_used ? `: ${reply.prompt_used}` : "");
  const list = $("warnings");
  list.replaceChildren();
  for (const text of reply.warnings) {
    const item = document.createElement("li");
    item.textContent = text;
    list.appendChild(item);
  }
  document.body.dataset.outcome = reply.outcome;
  $("result").hidden = false;
}

async function generate(event) {
  event.preventDefault();
  const body = { prompt: $("prompt").value };
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  setState("busy", "Generating...");
  $("generate").disabled = true;
  try {
    const response = await fetch("/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": `Bearer ${$("token").value.trim()}` },
      body: JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
    const reply = await response.json();
    if (!response.ok) {
      setState("error", reply.error || `request failed (${response.status})`, true);
      return;
    }
    show(reply);
    setState("done", "");
  } catch (error) {
    setState("error", `request failed: ${error}`, true);
  } finally {
    $("generate").disabled = false;
  }
}

async function init() {
  $("form").addEventListener("submit", generate);
  try {
    const info = await (await fetch("/api/info", { cache: "no-store" })).json();
    $("prompt").maxLength = info.max_prompt_chars;
  } catch (error) {
    // The server still checks the length; the page only loses the hint.
  }
}

init();
