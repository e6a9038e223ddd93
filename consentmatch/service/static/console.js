// The consentmatch console: every action is one call to the service's /v1 API, made with the
// session cookie (and its CSRF token on changes). The server checks roles on every call; the
// page only hides what the key may not do. User data is always set as text, never as HTML.
"use strict";

const state = { key: null, captured: {}, streams: {}, approval: new Set() };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function csrfToken() {
  const found = document.cookie.split("; ").find((c) => c.startsWith("cm_csrf="));
  return found ? decodeURIComponent(found.slice("cm_csrf=".length)) : "";
}

class Problem extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// Remove each "(CLI: ...)", "(HTTP: ...)" or "(Python: ...)" aside, nested parentheses included.
function withoutAsides(text) {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    const aside = /^ ?\((CLI|HTTP|Python):/.exec(text.slice(i));
    if (!aside) { out += text[i]; continue; }
    let depth = 0, j = i + aside[0].indexOf("(");
    for (; j < text.length; j++) {
      if (text[j] === "(") depth++;
      else if (text[j] === ")" && --depth === 0) break;
    }
    i = j;
  }
  return out;
}

// What the people at the front are told. The service's problems are written for whoever calls
// the API (headers, CLI flags, Python arguments, commands); the console says the same in words
// for the desk, by the problem's error class where it has its own, else with those asides taken out.
function frontLine(status, problem, url) {
  const detail = problem.detail || `${status} error`;
  if (status === 401 && url === "/v1/session") {
    return "No valid API key: check the key you typed or pasted; a revoked or expired key no longer works " +
      "(ask your administrator for a new one).";
  }
  if (status === 401) {
    return "Your session has ended (signed out, idle too long, or the key was revoked): sign in again.";
  }
  if (problem.error === "ApprovalRequiredError") {
    return "This purpose needs an approver's decision: fill in the case reference and the reason, then check " +
      "the photo again to file the request.";
  }
  if (problem.error === "RateLimitError") {
    return `Too many requests in a minute for this key: wait ${problem.retry_after || 60} s and try again.`;
  }
  return withoutAsides(detail)
    .replace(/;? ?pass allow_duplicate=True \(--allow-duplicate\) for twins or an intended duplicate\./,
      ". If they are twins, or this is intended, ask your administrator.")
    .replace(/ with `consentmatch [^`]*`/g, "")
    .replace(/:? ?`consentmatch [^`]*` (shows|lists) them\./g, ".")
    .replace(/ ?\(?`consentmatch [^`]*`\)?/g, " (ask your administrator)");
}

// One call to the API: JSON or multipart body; the problem's one-line detail on failure.
async function api(method, url, { json, form, blob } = {}) {
  const headers = {};
  let body;
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  const answer = await fetch(url, { method, headers, body, credentials: "same-origin", cache: "no-store" });
  if (!answer.ok) {
    let problem = { detail: `${answer.status} ${answer.statusText}` };
    try { problem = await answer.json(); } catch (e) { /* not a problem body */ }
    if (answer.status === 401 && url !== "/v1/session") signedOut();
    throw new Problem(answer.status, frontLine(answer.status, problem, url));
  }
  if (answer.status === 204) return null;
  if (blob) return answer.blob();
  return { status: answer.status, body: await answer.json() };
}

function say(text) { $("status").textContent = text; }
function fail(error) {
  const box = $("error");
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}
function clearMessages() { $("error").hidden = true; $("error").textContent = ""; say(""); }

// Run a handler with its errors shown in the alert line.
function guarded(handler) {
  return async (event) => {
    if (event && event.preventDefault) event.preventDefault();
    clearMessages();
    try { await handler(event); } catch (error) { fail(error); }
  };
}

// -- sign-in and screens

function hasRole(...roles) { return !!state.key && roles.some((r) => state.key.roles.includes(r)); }

function signedOut() {
  state.key = null;
  for (const stream of Object.values(state.streams)) stream.getTracks().forEach((t) => t.stop());
  state.streams = {};
  $("who").hidden = true;
  $("screens").hidden = true;
  document.querySelectorAll("main > section").forEach((s) => { s.hidden = s.id !== "sign-in"; });
  $("api-key").focus();
}

// "until 16:05 at the latest; 30 minutes without use also signs you out", in the browser's time.
function sessionText(answer) {
  if (!answer.ends_by) return "";
  const at = new Date(answer.ends_by).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const idle = Math.round((answer.idle_timeout_s || 0) / 60);
  return `until ${at} at the latest` + (idle ? `; ${idle} minutes without use also signs you out` : "");
}

async function signedIn(key, answer) {
  state.key = key;
  $("who-until").textContent = sessionText(answer || {});
  $("api-key").value = "";
  $("who-name").textContent = key.name;
  $("who-roles").textContent = key.roles.join(", ");
  $("who").hidden = false;
  $("sign-in").hidden = true;
  $("screens").hidden = false;
  document.querySelectorAll("#screens li").forEach((li) => { li.hidden = !hasRole(li.dataset.role); });
  if (hasRole("operator", "enroller")) await loadPurposes();
  showApproval();
  showScreen();
}

function allowedScreens() {
  return [...document.querySelectorAll("main > section[data-role]")].filter((s) => hasRole(s.dataset.role));
}

function showScreen() {
  if (!state.key) return;
  const allowed = allowedScreens();
  const wanted = allowed.find((s) => `#${s.id}` === location.hash) || allowed[0];
  document.querySelectorAll("main > section").forEach((s) => { s.hidden = s !== wanted; });
  $("none").hidden = !!wanted;
  document.querySelectorAll("#screens a").forEach((a) => {
    if (wanted && a.getAttribute("href") === `#${wanted.id}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  if (!wanted) return;
  const load = { mine: loadMine, approvals: loadApprovals, audit: loadAudit, subjects: loadSubjects }[wanted.id];
  if (load) guarded(load)();
}

async function loadPurposes() {
  const declared = (await api("GET", "/v1/purposes")).body;
  state.approval = new Set(declared.filter((p) => p.needs_approval).map((p) => p.purpose));
  const names = declared.map((p) => p.purpose);
  const searchable = state.key.purposes.length ? state.key.purposes : names;
  document.querySelectorAll("select.purpose-choice").forEach((select) => {
    select.replaceChildren(...searchable.map((p) => el("option", { value: p, text: p })));
  });
  showApproval();
  const box = $("consent-purposes");
  box.replaceChildren(el("legend", { text: "Purposes" }), ...names.map((p) => el("label", { class: "check" },
    el("input", { type: "checkbox", name: "purposes", value: p }), ` ${p}`)));
}

// A purpose that needs approval opens its form's case reference and reason: without them the
// search is refused; with them it is filed for an approver.
function showApproval() {
  for (const prefix of ["desk", "teller"]) {
    const form = $(`${prefix}-form`);
    const needed = state.approval.has(form.purpose.value);
    const details = form.querySelector("details.case");
    details.open = needed || form.case_ref.value.trim() !== "" || form.reason.value.trim() !== "";
    details.querySelector(".needs-approval").hidden = !needed;
  }
}

// -- photos: upload or camera

function chosenPhoto(prefix) {
  const input = $(`${prefix}-photo`);
  if (input.files.length) return input.files[0];
  if (state.captured[prefix]) return state.captured[prefix];
  throw new Error("Choose a photo, or take one with the camera.");
}

async function startCamera(prefix) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("This browser gives no camera here (the console must be opened over https or on this " +
                    "machine): upload a photo instead.");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (error) {
    throw new Error(`No camera could be opened (${error.name}): allow the camera for this page, or upload a photo instead.`);
  }
  state.streams[prefix] = stream;
  const video = $(`${prefix}-video`);
  video.srcObject = stream;
  video.classList.remove("hidden-video");
  document.querySelector(`.camera-take[data-for="${prefix}"]`).hidden = false;
}

async function takePhoto(prefix) {
  const video = $(`${prefix}-video`);
  const canvas = el("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  state.captured[prefix] = await new Promise((done) => canvas.toBlob(done, "image/jpeg", 0.92));
  state.streams[prefix].getTracks().forEach((t) => t.stop());
  delete state.streams[prefix];
  video.srcObject = null;
  video.classList.add("hidden-video");
  document.querySelector(`.camera-take[data-for="${prefix}"]`).hidden = true;
  $(`${prefix}-photo`).value = "";
  say("Photo taken: press the check button.");
}

// The photo with each face boxed and labelled; the same facts are in the list below it.
async function drawFaces(blob, faces) {
  const url = URL.createObjectURL(blob);
  try {
    const image = await new Promise((done, failed) => {
      const img = new Image();
      img.onload = () => done(img);
      img.onerror = () => failed(new Error("The browser cannot show this photo."));
      img.src = url;
    });
    const canvas = el("canvas", { role: "img", "aria-label": "The photo with each face boxed" });
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const g = canvas.getContext("2d");
    g.drawImage(image, 0, 0);
    const line = Math.max(2, Math.round(canvas.width / 250));
    g.lineWidth = line;
    g.font = `${Math.max(14, line * 7)}px sans-serif`;
    faces.forEach((face, i) => {
      const [top, right, bottom, left] = face.box;
      g.strokeStyle = face.colour;
      g.strokeRect(left, top, right - left, bottom - top);
      const label = `${i + 1}. ${face.label}`;
      const width = g.measureText(label).width + 8;
      const y = Math.max(0, top - line * 8);
      g.fillStyle = face.colour;
      g.fillRect(left, y, width, line * 8);
      g.fillStyle = "#fff";
      g.fillText(label, left + 4, y + line * 6);
    });
    return canvas;
  } finally {
    URL.revokeObjectURL(url);
  }
}

function distanceText(distance, tolerance) {
  // verify gives no distance beyond the tolerance: a near miss would tell who is enrolled
  if (distance === null) return `beyond the tolerance (${tolerance.toFixed(2)})`;
  return `distance ${distance.toFixed(2)} (tolerance ${tolerance.toFixed(2)})`;
}

function filed(target, request) {
  target.replaceChildren(el("p", { class: "pending", text:
    `Search request ${request.request_id} filed for case ${request.case_ref}: it waits for an approver. ` +
    "Its outcome and result appear under My requests." }));
}

// -- visitor desk (match) and teller check (verify)

async function deskCheck() {
  const form = $("desk-form");
  const target = $("desk-result");
  target.replaceChildren();  // the last person's result goes as soon as a new check starts, whatever follows
  const photo = chosenPhoto("desk");
  const data = new FormData();
  data.append("photo", photo, photo.name || "camera.jpg");
  data.append("purpose", form.purpose.value);
  if (form.case_ref.value.trim()) data.append("case_ref", form.case_ref.value.trim());
  if (form.reason.value.trim()) data.append("reason", form.reason.value.trim());
  say("Checking...");
  const { status, body } = await api("POST", "/v1/match", { form: data });
  if (status === 202) { filed(target, body); say(""); return; }
  // Only who lies within the tolerance is named; candidates beyond it are never shown here.
  const faces = body.faces.map((f) => {
    if (f.ambiguous) return { ...f, colour: "#a35c00", label: "ambiguous", text:
      "Ambiguous: two enrolled people are nearly as close; no name is given. Check another way." };
    if (f.subject === null) return { ...f, colour: "#b00020", label: "no match", text:
      `No match: nobody enrolled for ${body.purpose} is within the tolerance (${body.tolerance.toFixed(2)}).` };
    return { ...f, colour: "#1b6e20", label: f.subject, text:
      `Match: ${f.subject}, ${distanceText(f.distance, body.tolerance)}.` };
  });
  const list = el("ol", { class: "faces" }, ...faces.map((f) => el("li", { class: "face", text: f.text })));
  const summary = el("p", { text: body.faces.length
    ? `${body.faces.length} face(s) found in ${body.image}; purpose ${body.purpose}.`
    : "No face found in the photo: use a frontal, well-lit photo." });
  target.replaceChildren(summary, await drawFaces(photo, faces), list,
    el("p", { class: "evidence", text: `Audit event ${body.audit_event}; photo SHA-256 ${body.image_sha256}.` }));
  say("Checked.");
}

async function tellerCheck() {
  const form = $("teller-form");
  const target = $("teller-result");
  target.replaceChildren();  // as at the desk: never the last person's verdict beside a new photo
  const photo = chosenPhoto("teller");
  const data = new FormData();
  data.append("photo", photo, photo.name || "camera.jpg");
  data.append("subject", form.subject.value.trim());
  data.append("purpose", form.purpose.value);
  if (form.case_ref.value.trim()) data.append("case_ref", form.case_ref.value.trim());
  if (form.reason.value.trim()) data.append("reason", form.reason.value.trim());
  say("Checking...");
  const { status, body } = await api("POST", "/v1/verify", { form: data });
  if (status === 202) { filed(target, body); say(""); return; }
  const verdict = body.match ? `Match: this is ${body.subject}` : `No match: this is not ${body.subject}`;
  target.replaceChildren(
    el("p", { class: body.match ? "verdict match" : "verdict no-match", text: verdict }),
    el("p", { text: `${distanceText(body.distance, body.tolerance)}; audit event ${body.audit_event}.` }));
  say("Checked.");
}

// -- my requests (operator)

function resultText(request) {
  if (request.status !== "approved") return "";
  // an erasure's clearing (services/erasure.py ERASED_RESULT) is no refusal of the search: said as it is
  if (request.error) return request.error.startsWith("Result erased:") ? request.error : `refused: ${request.error}`;
  const result = request.result;
  if (!result) return "";
  if ("faces" in result) {
    const names = result.faces.map((f) => (f.ambiguous ? "ambiguous" : f.subject || "no match"));
    return names.length ? names.join(", ") : "no face";
  }
  return result.match ? `match: ${result.subject}` : `no match: not ${result.subject}`;
}

async function loadMine() {
  const listed = (await api("GET", "/v1/requests")).body.filter((r) => r.requester === state.key.name);
  const rows = [];
  for (const summary of listed.reverse()) {
    const request = summary.status === "approved"
      ? (await api("GET", `/v1/requests/${encodeURIComponent(summary.request_id)}`)).body : summary;
    rows.push(el("tr", {}, el("td", { text: request.request_id }), el("td", { text: request.case_ref }),
      el("td", { text: request.purpose }), el("td", { class: `status-${request.status}`, text: request.status }),
      el("td", { text: request.decided_by || "" }), el("td", { text: request.decision_reason || "" }),
      el("td", { class: "request-result", text: resultText(request) })));
  }
  $("mine-table").tBodies[0].replaceChildren(...rows);
  if (!rows.length) $("mine-table").tBodies[0].append(el("tr", {}, el("td", { colspan: "7", text: "No requests." })));
}

// -- enrollment (enroller)

async function sha256(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function recordConsent() {
  const form = $("consent-form");
  const purposes = [...form.querySelectorAll("input[name=purposes]:checked")].map((c) => c.value);
  if (!purposes.length) throw new Error("Tick at least one purpose the subject agreed to.");
  const consent = { subject: form.subject.value.trim(), reference: form.reference.value.trim(), purposes };
  if (form.expires.value) consent.expires = form.expires.value;
  if (form.jurisdiction.value.trim()) consent.jurisdiction = form.jurisdiction.value.trim();
  if (form.notice_version.value.trim()) consent.notice_version = form.notice_version.value.trim();
  if (form.evidence.files.length) consent.evidence_sha256 = await sha256(form.evidence.files[0]);
  const { body } = await api("POST", "/v1/consents", { json: consent });
  $("consent-result").replaceChildren(el("p", { text:
    `Consent ${body.reference} recorded for ${body.subject}: ${body.purposes.join(", ")}` +
    (body.expires_at ? `, until ${body.expires_at.slice(0, 10)}` : "") +
    (body.evidence_sha256 ? `; evidence SHA-256 ${body.evidence_sha256}` : "") + "." }));
  $("photos-subject").value = body.subject;
  $("photos-reference").value = body.reference;
}

function enrolledText(body) {
  return `${body.subject}: ${body.templates_added} template(s) added, ${body.templates_total} in all` +
    (body.already_enrolled ? ` (${body.already_enrolled} photo(s) already enrolled)` : "") + ".";
}

async function enrollPhotos() {
  const form = $("photos-form");
  const data = new FormData();
  for (const file of form.photos.files) data.append("photos", file, file.name);
  data.append("consent_ref", form.consent_ref.value.trim());
  say("Enrolling...");
  const subject = encodeURIComponent(form.subject.value.trim());
  const { body } = await api("POST", `/v1/subjects/${subject}/photos`, { form: data });
  $("photos-result").replaceChildren(el("p", { text: `Enrolled ${enrolledText(body)}` }));
  say("Enrolled.");
}

// The manifest as rows of named cells (RFC 4180: quoted cells may hold commas, quotes, newlines).
function parseCsv(text) {
  const rows = [];
  let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(cell); cell = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(cell); rows.push(row); row = []; cell = "";
    } else cell += c;
  }
  if (cell || row.length) { row.push(cell); rows.push(row); }
  const [header, ...body] = rows.filter((r) => r.some((v) => v.trim()));
  if (!header) throw new Error("The manifest is empty: it needs a header row and one row per photo.");
  const names = header.map((h) => h.trim().toLowerCase().replace(/^\ufeff/, ""));
  const missing = ["subject", "photo", "consent_ref", "purposes"].filter((n) => !names.includes(n));
  if (missing.length) throw new Error(`The manifest lacks the column(s) ${missing.join(", ")}.`);
  return body.map((cells, i) => ({ line: i + 2, ...Object.fromEntries(names.map((n, j) => [n, (cells[j] || "").trim()])) }));
}

// A path's folders and name, for matching a manifest's path to a chosen file: "." parts and
// anything up to a ".." dropped (the browser knows nothing above the folder chosen).
function pathParts(path) {
  const parts = String(path).split(/[\\/]+/).filter((p) => p && p !== ".");
  const up = parts.lastIndexOf("..");
  return up < 0 ? parts : parts.slice(up + 1);
}

function endsWith(long, short) {
  return short.length <= long.length && short.every((part, i) => part === long[long.length - short.length + i]);
}

// Which chosen file each manifest path names. A file chosen with its folder (a folder picked:
// webkitRelativePath) or by name alone matches a path when the shorter of the two ends the longer,
// folder by folder. A path that more than one file could be, or a file that could be the photo
// of more than one path (two img1.jpg in different folders, chosen without them), is refused:
// enrolling a guess would put one person's face under another's name.
// Returns a Map from each path to { file } or { error }.
function matchFiles(paths, files) {
  const chosen = [...files].map((file) => ({ file, shown: file.webkitRelativePath || file.name,
    parts: pathParts(file.webkitRelativePath || file.name) }));
  const wanted = new Map();  // the path as its parts joined -> the parts
  for (const path of paths) wanted.set(pathParts(path).join("/"), pathParts(path));
  const hits = (parts, file) => endsWith(parts, file.parts) || endsWith(file.parts, parts);
  const advice = "choose the photos' folder (with the folder picker) rather than the files, so that each keeps " +
    "its folder";
  const found = new Map();
  for (const path of paths) {
    const parts = pathParts(path);
    const candidates = chosen.filter((c) => parts.length && hits(parts, c));
    if (!candidates.length) {
      found.set(path, { error: `${path} was not among the files chosen` });
      continue;
    }
    if (candidates.length > 1) {
      found.set(path, { error: `${path} is ambiguous: ${candidates.length} files chosen could be it ` +
        `(${candidates.map((c) => c.shown).join(", ")}); ${advice}` });
      continue;
    }
    // Another path the file could be, unless one path ends the other (then they may name one file).
    const rivals = [...wanted].filter(([, other]) => !endsWith(other, parts) && !endsWith(parts, other) &&
      hits(other, candidates[0])).map(([key]) => key);
    if (rivals.length) {
      found.set(path, { error: `${path} is ambiguous: the file chosen, ${candidates[0].shown}, could also be ` +
        `${rivals.join(", ")}; ${advice}` });
      continue;
    }
    found.set(path, { file: candidates[0].file });
  }
  return found;
}

// The file a manifest row names (photo or evidence), or an Error saying why there is none.
function fileFor(found, path) {
  const match = found.get(path);
  if (match.error) throw new Error(match.error);
  return match.file;
}

async function bulkUpload() {
  const form = $("bulk-form");
  if (!form.manifest.files.length) throw new Error("Choose the manifest (CSV).");
  const chosen = [...form.photos.files, ...form.folder.files];
  if (!chosen.length) throw new Error("Choose the photos and evidence files, or their folder.");
  const rows = parseCsv(await form.manifest.files[0].text());
  const isHash = (value) => /^[0-9a-fA-F]{64}$/.test(value || "");
  const found = matchFiles([...rows.map((r) => r.photo).filter(Boolean),
    ...rows.map((r) => r.evidence).filter((e) => e && !isHash(e))], chosen);
  const progress = $("bulk-progress");
  const body = $("bulk-table").tBodies[0];
  body.replaceChildren();
  $("bulk-table").hidden = false;
  progress.hidden = false;
  progress.max = rows.length;
  progress.value = 0;
  const consents = new Map();  // reference -> null when recorded, else the refusal
  let enrolled = 0;
  for (const row of rows) {
    let outcome;
    try {
      if (!consents.has(row.consent_ref)) {
        const consent = { subject: row.subject, reference: row.consent_ref,
          purposes: row.purposes.split(";").map((p) => p.trim()).filter(Boolean) };
        if (row.expires) consent.expires = row.expires;
        if (row.jurisdiction) consent.jurisdiction = row.jurisdiction;
        if (row.signer) consent.signer = row.signer;
        if (row.notice_version) consent.notice_version = row.notice_version;
        if (row.email) consent.email = row.email;
        if (isHash(row.evidence)) consent.evidence_sha256 = row.evidence.toLowerCase();
        else if (row.evidence) consent.evidence_sha256 = await sha256(fileFor(found, row.evidence));
        try {
          await api("POST", "/v1/consents", { json: consent });
          consents.set(row.consent_ref, null);
        } catch (error) {
          consents.set(row.consent_ref, error.message);
        }
      }
      if (consents.get(row.consent_ref)) throw new Error(`consent not recorded: ${consents.get(row.consent_ref)}`);
      if (!row.photo) throw new Error("the row names no photo");
      const photo = fileFor(found, row.photo);
      const data = new FormData();
      data.append("photos", photo, photo.name);
      data.append("consent_ref", row.consent_ref);
      const answer = await api("POST", `/v1/subjects/${encodeURIComponent(row.subject)}/photos`, { form: data });
      outcome = el("td", { class: "ok", text: answer.body.already_enrolled ? "already enrolled" : "enrolled" });
      enrolled += 1;
    } catch (error) {
      outcome = el("td", { class: "error", text: error.message });
    }
    body.append(el("tr", {}, el("td", { text: String(row.line) }), el("td", { text: row.subject }),
      el("td", { text: row.photo }), outcome));
    progress.value += 1;
  }
  say(`Bulk upload done: ${enrolled} of ${rows.length} row(s) enrolled.`);
}

// -- approvals (approver)

async function loadApprovals() {
  const pending = (await api("GET", "/v1/requests?status=pending")).body;
  const rows = pending.map((r) => el("tr", {}, el("td", { text: r.request_id }), el("td", { text: r.case_ref }),
    el("td", { text: r.requester }), el("td", { text: r.reason }), el("td", { text: r.purpose }),
    el("td", { text: r.kind === "verify" ? `verify: ${r.subject}` : "match" }),
    el("td", { text: r.created_at.slice(0, 16).replace("T", " ") }),
    el("td", {}, el("button", { type: "button", text: "Review", "aria-label": `Review ${r.request_id}`,
      onclick: guarded(() => review(r)) }))));
  $("approvals-table").tBodies[0].replaceChildren(...rows);
  if (!rows.length) $("approvals-table").tBodies[0].append(el("tr", {}, el("td", { colspan: "8", text: "Nothing waits for approval." })));
}

async function review(request) {
  const probe = await api("GET", `/v1/requests/${encodeURIComponent(request.request_id)}/probe`, { blob: true });
  const img = $("decide-probe");
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(probe);
  $("decide-id").textContent = `${request.request_id} (case ${request.case_ref}, by ${request.requester})`;
  $("decide-form").dataset.request = request.request_id;
  $("decide-form").hidden = false;
  $("decide-result").replaceChildren();
  $("decide-reason").focus();
}

async function decide(event) {
  const form = $("decide-form");
  const verb = event.submitter && event.submitter.value === "deny" ? "deny" : "approve";
  const id = form.dataset.request;
  const { body } = await api("POST", `/v1/requests/${encodeURIComponent(id)}/${verb}`,
                             { json: { reason: form.reason.value.trim() } });
  URL.revokeObjectURL($("decide-probe").src);
  $("decide-probe").removeAttribute("src");
  form.hidden = true;
  form.reason.value = "";
  $("decide-result").replaceChildren(el("p", { text: `Request ${body.request_id} ${body.status}: the probe is destroyed.` }));
  await loadApprovals();
}

// -- audit and subjects (auditor)

async function loadAudit() {
  const check = (await api("GET", "/v1/audit/verify")).body;
  $("chain").textContent = check.intact
    ? `Audit chain intact: ${check.events} events, head ${check.head.slice(0, 16)}...`
    : `Audit chain BROKEN at event ${check.broken_at}: ${check.problem}`;
  $("chain").className = check.intact ? "chain intact" : "chain broken";
  await searchAudit();
}

async function searchAudit() {
  const form = $("audit-form");
  const query = new URLSearchParams();
  for (const name of ["subject", "actor", "action", "purpose", "since", "until"]) {
    if (form[name].value.trim()) query.set(name, form[name].value.trim());
  }
  const events = (await api("GET", `/v1/audit?${query}`)).body.slice(-500).reverse();
  const rows = events.map((e) => el("tr", {}, el("td", { text: String(e.seq) }),
    el("td", { class: "when", text: e.at.slice(0, 19).replace("T", " ") }), el("td", { text: e.actor }),
    el("td", { text: e.action }), el("td", { text: e.subject || "" }), el("td", { text: e.purpose || "" }),
    el("td", { class: "details", text: JSON.stringify(e.details) })));
  $("audit-table").tBodies[0].replaceChildren(...rows);
  say(`${events.length} event(s) shown.`);
}

async function loadSubjects() {
  const subjects = (await api("GET", "/v1/subjects")).body;
  $("subjects-table").tBodies[0].replaceChildren(...subjects.map((s) => el("tr", {},
    el("td", { text: s.subject }), el("td", { text: String(s.templates) }),
    el("td", { text: (s.enrolled_at || "").slice(0, 10) }), el("td", { text: s.active_purposes.join(", ") }),
    el("td", {}, el("button", { type: "button", text: "Download export", "aria-label": `Download the export of ${s.subject}`,
      onclick: guarded(() => download(s.subject)) })))));
  const schedule = (await api("GET", "/v1/retention")).body;
  $("retention-table").tBodies[0].replaceChildren(...schedule.map((r) => el("tr", {},
    el("td", { text: r.subject }), el("td", { text: String(r.templates) }),
    el("td", { text: (r.destroy_by || "").slice(0, 10) }), el("td", { text: r.rule }),
    el("td", { text: r.overdue ? "yes" : "no" }))));
}

async function download(subject) {
  const { body } = await api("GET", `/v1/subjects/${encodeURIComponent(subject)}/export`);
  const url = URL.createObjectURL(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }));
  const link = el("a", { href: url, download: `${subject}-export.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
  say(`Export of ${subject} downloaded.`);
}

// -- wiring

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", guarded(async () => {
    const { body } = await api("POST", "/v1/session", { json: { key: $("api-key").value.trim() } });
    await signedIn(body.key, body);
    say(`Signed in ${sessionText(body)}.`);
  }));
  $("sign-out").addEventListener("click", guarded(async () => {
    await api("DELETE", "/v1/session");
    signedOut();
    say("Signed out.");
  }));
  $("desk-form").addEventListener("submit", guarded(deskCheck));
  $("teller-form").addEventListener("submit", guarded(tellerCheck));
  $("consent-form").addEventListener("submit", guarded(recordConsent));
  $("photos-form").addEventListener("submit", guarded(enrollPhotos));
  $("bulk-form").addEventListener("submit", guarded(bulkUpload));
  $("decide-form").addEventListener("submit", guarded(decide));
  $("audit-form").addEventListener("submit", guarded(searchAudit));
  $("mine-refresh").addEventListener("click", guarded(loadMine));
  $("approvals-refresh").addEventListener("click", guarded(loadApprovals));
  document.querySelectorAll(".camera-start").forEach((b) => b.addEventListener("click",
    guarded(() => startCamera(b.dataset.for))));
  document.querySelectorAll(".camera-take").forEach((b) => b.addEventListener("click",
    guarded(() => takePhoto(b.dataset.for))));
  window.addEventListener("hashchange", () => { clearMessages(); showScreen(); });
  document.querySelectorAll("select.purpose-choice").forEach((s) => s.addEventListener("change", showApproval));
  api("GET", "/v1/session").then(({ body }) => signedIn(body.key, body)).catch(() => signedOut());
});
