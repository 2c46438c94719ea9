"use strict";
// Terms are read from the API's "_str" keys: JavaScript numbers are doubles,
// exact only up to 2**53, and sequence terms run far beyond.

const BEAMS = 8;
const TOP = 5;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

fetch("/health").then((r) => r.json()).then((health) => { $("model").textContent = health.model; }).catch(() => {});

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  explore($("terms").value, Number($("n").value) || 1);
});

async function explore(text, n) {
  document.body.dataset.state = "busy";
  // The fits and the OEIS matches come from endpoints a server may lack
  // (404) or have without their data (503): their sections then stay hidden.
  const [greedy, ranked, fits, matches] = await Promise.all([
    post("/v1/predict", {terms: text, n}),
    post("/v1/predict", {terms: text, beams: BEAMS, top: TOP}),
    post("/v1/guess", {terms: text, n}),
    post("/v1/oeis/search", {terms: text}),
  ]);
  $("error").hidden = greedy.ok;
  $("error").textContent = greedy.ok ? "" : greedy.error;
  showPrediction(greedy);
  showCandidates(ranked);
  showList("fits", fits, (answer) => answer.fits, fitItem);
  showList("oeis", matches, (answer) => answer.matches, matchItem);
  document.body.dataset.state = "done";
}

async function post(path, body) {
  try {
    const response = await fetch(path, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    return {ok: response.ok, error: answer.error ?? `HTTP ${response.status}`, answer};
  } catch (e) {
    return {ok: false, error: `no answer from the server (${e.message})`, answer: {}};
  }
}

function showPrediction(reply) {
  $("prediction").hidden = !reply.ok;
  if (!reply.ok) return;
  const predictions = reply.answer.predictions;
  const next = predictions.filter((p) => p.value_str !== null).map((p) => p.value_str);
  const last = predictions[predictions.length - 1];
  const words = last.value_str === null ? [...next, `(no term: ${last.stop})`] : next;
  $("next").textContent = words.join(" ");
  plot($("plot"), reply.answer.terms_str, next);
}

function showCandidates(reply) {
  $("candidates").hidden = !reply.ok;
  if (!reply.ok) return;
  const rows = reply.answer.candidates.map((c) => barRow(c.value_str, c.prob, "candidate"));
  rows.push(barRow("no integer", reply.answer.no_term_prob, "no-term"));
  $("bars").replaceChildren(...rows);
}

function barRow(label, prob, kind) {
  const row = element("tr", kind);
  const fill = element("div", "fill");
  fill.style.width = `${(100 * prob).toFixed(2)}%`;
  const bar = element("td", "bar");
  bar.append(fill);
  const value = element("td", "value", label);
  value.title = label;
  row.append(value, bar, element("td", "prob", prob.toFixed(4)));
  return row;
}

function showList(id, reply, items, render) {
  const list = reply.ok ? items(reply.answer) : null;
  $(id).hidden = !Array.isArray(list);
  if (!Array.isArray(list)) return;
  const shown = list.length ? list.map(render) : [element("li", "none", "none found")];
  $(id).querySelector("ul").replaceChildren(...shown);
}

function fitItem(fit) {
  const item = element("li", "fit");
  item.append(element("code", "formula", fit.formula),
              ` (${fit.family}; fitted ${fit.fitted}, verified ${fit.verified}) next: `,
              element("span", "terms", termsOf(fit).join(", ")));
  return item;
}

function matchItem(match) {
  const item = element("li", "match");
  const link = element("a", "id", match.id);
  link.href = `https://oeis.org/${encodeURIComponent(match.id)}`;
  item.append(link, ` ${match.name} (offset ${match.offset}) next: `,
              element("span", "terms", termsOf(match).join(", ")));
  return item;
}

function termsOf(answer) {
  return answer.next_str ?? (answer.next ?? []).map(String);
}

function element(tag, kind, text) {
  const made = document.createElement(tag);
  made.className = kind;
  if (text !== undefined) made.textContent = text;
  return made;
}

// The given terms and the predicted ones, drawn as points in SVG; past six
// digits the vertical axis is sign(t)·log10(1 + |t|), so that big terms fit.
function plot(svg, given, next) {
  const width = 800, height = 260, left = 80, right = 16, top = 14, bottom = 26;
  const all = [...given, ...next];
  const logarithmic = all.some((t) => t.replace("-", "").length > 6);
  const ys = all.map((t) => (logarithmic ? symlog(t) : Number(t)));
  const low = Math.min(...ys), high = Math.max(...ys), span = high - low || 1;
  const x = (i) => left + (all.length > 1 ? i / (all.length - 1) : 0.5) * (width - left - right);
  const y = (v) => height - bottom - ((v - low) / span) * (height - top - bottom);
  const shapes = [
    shape("line", "axis", {x1: left, y1: height - bottom, x2: width - right, y2: height - bottom}),
    shape("line", "axis", {x1: left, y1: top, x2: left, y2: height - bottom}),
    shape("polyline", "link", {points: ys.map((v, i) => `${x(i)},${y(v)}`).join(" ")}),
  ];
  ys.forEach((v, i) => {
    const point = shape("circle", i < given.length ? "given" : "predicted", {cx: x(i), cy: y(v), r: 4});
    point.append(shape("title", "", {}, all[i]));
    shapes.push(point);
  });
  const lowest = all[ys.indexOf(low)], highest = all[ys.indexOf(high)];
  shapes.push(shape("text", "y-label", {x: 4, y: height - bottom}, short(lowest)),
              shape("text", "y-label", {x: 4, y: top + 8}, short(highest)),
              shape("text", "x-label", {x: left, y: height - 8}, "1"),
              shape("text", "x-label", {x: x(all.length - 1) - 20, y: height - 8}, String(all.length)));
  if (logarithmic) shapes.push(shape("text", "scale", {x: left + 8, y: top + 8}, "log scale"));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren(...shapes);
}

function shape(tag, kind, attributes, text) {
  const made = document.createElementNS(SVG, tag);
  if (kind) made.setAttribute("class", kind);
  for (const [name, value] of Object.entries(attributes)) made.setAttribute(name, value);
  if (text !== undefined) made.textContent = text;
  return made;
}

function symlog(term) {
  const digits = term.replace("-", "");
  const magnitude = digits.length > 15
    ? Math.log10(Number(digits.slice(0, 15))) + digits.length - 15
    : Math.log10(1 + Number(digits));
  return term.startsWith("-") ? -magnitude : magnitude;
}

function short(term) {
  const digits = term.replace("-", "");
  if (digits.length <= 10) return term;
  return `${term.startsWith("-") ? "-" : ""}${digits[0]}.${digits.slice(1, 4)}e${digits.length - 1}`;
}
