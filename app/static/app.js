// segserve web page: vanilla JS, no dependencies. Talks to the same API as any client:
// GET /v1/models, GET /v1/samples, POST /v1/models/{name}/segment?format=json|png, and for
// large images POST /v1/models/{name}/jobs with GET /v1/jobs/{id} for its progress.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: new Map(), file: null, json: null };

function withKey(headers = {}) {
  // SEG_API_KEYS: the key typed into the page goes along as X-API-Key (kept for the tab).
  const key = $("api-key").value.trim();
  return key ? { ...headers, "x-api-key": key } : headers;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function problemMessage(response) {
  // Errors come as application/problem+json: show its title and detail.
  try {
    const body = await response.json();
    if (body.title || body.detail) return `${body.title || response.status}: ${body.detail || ""}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function loadModels() {
  const select = $("model");
  select.replaceChildren();
  state.models.clear();
  $("samples").replaceChildren();
  const response = await fetch("/v1/models", { headers: withKey() });
  if (!response.ok) { showError(await problemMessage(response)); return; }
  for (const model of (await response.json()).models) {
    state.models.set(model.spec.name, model);
    const option = document.createElement("option");
    option.value = model.spec.name;
    option.textContent = `${model.spec.name} ${model.spec.version}` + (model.state === "ready" ? "" : ` (${model.state})`);
    option.disabled = model.state !== "ready";
    select.append(option);
  }
  describeModel();
  const samples = await fetch("/v1/samples", { headers: withKey() });
  if (samples.ok) {
    for (const name of (await samples.json()).models) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `Try a sample (${name})`;
      button.dataset.model = name;
      button.addEventListener("click", () => trySample(name));
      $("samples").append(button);
    }
  }
}

function describeModel() {
  const model = state.models.get($("model").value);
  $("model-info").textContent = model
    ? `${model.spec.classes.length} classes, ${model.spec.input_channels === 1 ? "grey" : "RGB"} input, on ${model.providers.join(", ") || "-"}`
    : "no model is served";
}

async function trySample(name) {
  $("model").value = name;
  describeModel();
  const response = await fetch(`/v1/samples/${encodeURIComponent(name)}`, { headers: withKey() });
  if (!response.ok) { showError(await problemMessage(response)); return; }
  const blob = await response.blob();
  await segment(new File([blob], `${name}-sample`, { type: blob.type }));
}

function decodeRle(counts, width, height) {
  const labels = new Uint8Array(width * height);
  let at = 0;
  for (let i = 0; i < counts.length; i += 2) {
    labels.fill(counts[i], at, at + counts[i + 1]);
    at += counts[i + 1];
  }
  return labels;
}

function paint(canvas, width, height, draw) {
  canvas.width = width;
  canvas.height = height;
  draw(canvas.getContext("2d"));
}

// Above this many pixels an image goes through a job with a progress bar (the service's
// default one-pass limit, SEG_WHOLE_IMAGE_MAX_PIXELS).
const JOB_PIXELS = 1024 * 1024;

// Job results above this many pixels are saved as TIFF instead of drawn on the page.
const RENDER_PIXELS = 4096 * 4096;
// Files above this size go through a job too (one request takes 50 MiB at most).
const JOB_BYTES = 20 * 1024 * 1024;

async function needsJob(file) {
  if (file.size > JOB_BYTES) return true;
  try {
    const bitmap = await createImageBitmap(file);
    return bitmap.width * bitmap.height > JOB_PIXELS;
  } catch (_) {
    // A format the browser cannot decode (TIFF): large TIFF montages are what jobs are for.
    return /\.tiff?$/i.test(file.name) && file.size > 4 * 1024 * 1024;
  }
}

function countClasses(labels, classes) {
  const counts = new Array(classes.length).fill(0);
  for (const label of labels) counts[label] += 1;
  return classes.map((name, index) => ({
    index, name, pixels: counts[index], fraction: counts[index] / Math.max(labels.length, 1),
  }));
}

async function segmentAsJob(file, name) {
  const started = performance.now();
  const progress = $("progress");
  progress.value = 0;
  progress.hidden = false;
  try {
    const submitted = await fetch(`/v1/models/${encodeURIComponent(name)}/jobs`, {
      method: "POST",
      headers: withKey({ "content-type": file.type || "application/octet-stream" }),
      body: file,
    });
    if (!submitted.ok) { showError(await problemMessage(submitted)); $("status").textContent = ""; return; }
    const location = submitted.headers.get("Location");
    let job = await submitted.json();
    while (!["succeeded", "failed", "cancelled"].includes(job.state)) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const polled = await fetch(location, { headers: withKey() });
      if (!polled.ok) { showError(await problemMessage(polled)); return; }
      job = await polled.json();
      if (job.tiles_total) {
        progress.max = job.tiles_total;
        progress.value = job.tiles_done;
      }
      const eta = job.eta_s == null ? "" : `, about ${Math.ceil(job.eta_s)} s left`;
      $("status").textContent = `Job ${job.state}: ${job.tiles_done} of ${job.tiles_total || "?"} tiles${eta}`;
    }
    if (job.state !== "succeeded") {
      showError(job.error ? `${job.error.title}: ${job.error.detail}` : `The job was ${job.state}.`);
      return;
    }
    if (job.width * job.height > RENDER_PIXELS) {
      // Too large to draw here: the class map is saved as the job's tiled TIFF.
      const tiff = await fetch(`${location}/result?format=tiff`, { headers: withKey() });
      if (!tiff.ok) { showError(await problemMessage(tiff)); return; }
      download(await tiff.blob(), `${file.name.replace(/\.[^.]*$/, "")}.${name}.tif`);
      $("result").hidden = true;
      $("status").textContent = `${file.name}: ${job.width} x ${job.height} px, ${job.tiles_total} tiles in ${job.elapsed_s.toFixed(1)} s; the class map was saved as a TIFF`;
      return;
    }
    const result = await fetch(`${location}/result?format=json`, { headers: withKey() });
    if (!result.ok) { showError(await problemMessage(result)); return; }
    const json = await result.json();
    const model = state.models.get(name);
    json.stats = countClasses(decodeRle(json.class_map.counts, json.width, json.height), model.spec.classes);
    state.json = json;
    await render(file, json);
    $("timing").textContent = `job of ${job.tiles_total} tiles: ${job.elapsed_s.toFixed(1)} s, round trip ${((performance.now() - started) / 1000).toFixed(1)} s, on ${model.providers.join(", ")}`;
    $("status").textContent = `${file.name}: ${json.width} x ${json.height} px`;
  } finally {
    progress.hidden = true;
  }
}

async function segment(file) {
  showError("");
  const name = $("model").value;
  if (!name) { showError("No model is ready to segment with."); return; }
  state.file = file;
  $("status").textContent = `Segmenting ${file.name} with ${name}...`;
  if (await needsJob(file)) {
    await segmentAsJob(file, name);
    return;
  }
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/v1/models/${encodeURIComponent(name)}/segment?format=json&encoding=rle`, {
      method: "POST",
      headers: withKey({ "content-type": file.type || "application/octet-stream" }),
      body: file,
    });
  } catch (error) {
    showError(`The service did not answer: ${error}`);
    $("status").textContent = "";
    return;
  }
  if (!response.ok) {
    showError(await problemMessage(response));
    $("status").textContent = "";
    $("result").hidden = true;
    return;
  }
  const json = await response.json();
  state.json = json;
  const roundTrip = performance.now() - started;
  await render(file, json);
  const inference = json.timings_ms.inference;
  $("timing").textContent = `inference ${inference.toFixed(1)} ms, round trip ${roundTrip.toFixed(0)} ms, on ${json.providers.join(", ")}`;
  $("status").textContent = `${file.name}: ${json.width} x ${json.height} px`;
}

async function render(file, json) {
  const { width, height } = json;
  const palette = state.models.get(json.model.name).spec.palette;
  const labels = decodeRle(json.class_map.counts, width, height);
  const pixels = new ImageData(width, height);
  for (let i = 0; i < labels.length; i++) {
    const [r, g, b] = palette[labels[i]];
    pixels.data.set([r, g, b, 255], i * 4);
  }
  paint($("classmap"), width, height, (ctx) => ctx.putImageData(pixels, 0, 0));
  paint($("overlay"), width, height, (ctx) => ctx.putImageData(pixels, 0, 0));
  // The browser may not decode every format the service takes (TIFF): the input panel then
  // stays empty, the class map still shows.
  try {
    const bitmap = await createImageBitmap(file);
    for (const id of ["input", "overlay-base"]) {
      paint($(id), width, height, (ctx) => ctx.drawImage(bitmap, 0, 0, width, height));
    }
  } catch (_) {
    for (const id of ["input", "overlay-base"]) paint($(id), width, height, () => {});
  }
  setOpacity();
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  for (const stat of json.stats) {
    const row = body.insertRow();
    const [r, g, b] = palette[stat.index];
    row.insertCell().innerHTML = `<span class="swatch" style="background: rgb(${r}, ${g}, ${b})"></span>`;
    row.insertCell().textContent = stat.name;
    const pixelsCell = row.insertCell();
    pixelsCell.className = "num";
    pixelsCell.textContent = stat.pixels.toLocaleString("en");
    const share = row.insertCell();
    share.className = "num";
    share.textContent = `${(100 * stat.fraction).toFixed(1)} %`;
  }
  $("result").hidden = false;
  $("result").dataset.model = json.model.name;
}

function setOpacity() {
  $("overlay").style.opacity = $("opacity").value / 100;
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function downloadPng() {
  if (!state.file || !state.json) return;
  const name = state.json.model.name;
  const response = await fetch(`/v1/models/${encodeURIComponent(name)}/segment?format=png`, {
    method: "POST",
    headers: withKey({ "content-type": state.file.type || "application/octet-stream" }),
    body: state.file,
  });
  if (!response.ok) { showError(await problemMessage(response)); return; }
  download(await response.blob(), `${state.file.name.replace(/\.[^.]*$/, "")}.${name}.png`);
}

function downloadJson() {
  if (!state.json) return;
  const blob = new Blob([JSON.stringify(state.json)], { type: "application/json" });
  download(blob, `${state.file.name.replace(/\.[^.]*$/, "")}.${state.json.model.name}.json`);
}

function wireDropZone() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) segment(event.target.files[0]);
    event.target.value = "";
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) segment(event.dataTransfer.files[0]);
  });
}

window.addEventListener("DOMContentLoaded", () => {
  wireDropZone();
  $("model").addEventListener("change", describeModel);
  $("api-key").value = sessionStorage.getItem("segserve-api-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("segserve-api-key", $("api-key").value.trim());
    showError("");
    loadModels().catch((error) => showError(`Could not list the models: ${error}`));
  });
  $("opacity").addEventListener("input", setOpacity);
  $("download-png").addEventListener("click", downloadPng);
  $("download-json").addEventListener("click", downloadJson);
  loadModels().catch((error) => showError(`Could not list the models: ${error}`));
});
