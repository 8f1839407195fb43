// The page of flava.serve: a text or picture query -> /api/search -> a grid of thumbnails with
// their captions and scores, in the order the API gives. Errors show the API's one sentence.
"use strict";

const $ = (id) => document.getElementById(id);
let k = 12;

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (_) {
    throw new Error("The server cannot be reached; check that flava.serve is running.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new Error((body && body.error) || `The server answered ${response.status}.`);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function card(result) {
  const figure = document.createElement("figure");
  figure.className = "result";
  figure.dataset.key = result.key;
  figure.dataset.rank = result.rank;
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = result.thumbnail;
  img.alt = result.caption || result.key;
  img.loading = "lazy";
  const caption = document.createElement("figcaption");
  const text = document.createElement("span");
  text.className = "caption";
  text.textContent = result.caption || result.key;
  text.title = result.path || result.key;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = result.score.toFixed(3);
  caption.append(text, score);
  figure.append(img, caption);
  return figure;
}

function render(answer) {
  const grid = $("results");
  grid.replaceChildren(...answer.results.map(card));
  const n = answer.results.length;
  $("status").textContent = `${n} result${n === 1 ? "" : "s"} in ${Math.round(answer.took_ms)} ms`;
}

async function run(request) {
  showError("");
  $("status").textContent = "Searching\u2026";
  document.body.classList.add("busy");
  try {
    render(await request());
  } catch (err) {
    $("results").replaceChildren();
    $("status").textContent = "";
    showError(err.message);
  } finally {
    document.body.classList.remove("busy");
  }
}

function searchText(event) {
  if (event) event.preventDefault();
  const q = $("q").value;
  $("query-picture").hidden = true;
  const url = new URL(window.location);
  url.searchParams.set("q", q);
  window.history.replaceState(null, "", url);
  run(() => call(`/api/search?${new URLSearchParams({ q, k })}`));
}

function searchPicture() {
  const file = $("picture").files[0];
  if (!file) return;
  const preview = $("query-picture");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const form = new FormData();
  form.append("image", file);
  form.append("k", k);
  run(() => call("/api/search/image", { method: "POST", body: form }));
  $("picture").value = "";
}

async function start() {
  $("text-form").addEventListener("submit", searchText);
  $("picture").addEventListener("change", searchPicture);
  try {
    const info = await call("/api/health");
    k = info.k;
    const model = info.query_model || `${info.model.preset} (random weights)`;
    $("info").textContent =
      `${info.records} records \u00b7 ${info.field} embeddings, ${info.dim} dimensions \u00b7 ` +
      `${info.kind} index \u00b7 model ${model}`;
  } catch (err) {
    $("info").textContent = "";
    showError(err.message);
  }
  const q = new URLSearchParams(window.location.search).get("q");
  if (q) {
    $("q").value = q;
    searchText();
  }
  document.body.dataset.ready = "true";
}

start();
