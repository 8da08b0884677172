// The API reference, rendered from the app's own OpenAPI document (no remote assets).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

async function show() {
  const spec = await (await fetch("/openapi.json")).json();
  const root = document.getElementById("api");
  root.append(el("h1", `${spec.info.title} ${spec.info.version}`), el("p", spec.info.description));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [verb, op] of Object.entries(ops)) {
      const box = el("section", "", "op");
      const head = el("div");
      head.append(el("span", verb.toUpperCase(), "verb"), el("code", path));
      box.append(head, el("p", op.description || op.summary || ""));
      const params = (op.parameters || []).map((p) =>
        `${p.name} (${p.in}${p.required ? ", required" : ""})${p.description ? ": " + p.description : ""}`);
      if (op.requestBody) params.push("body: " + Object.keys(op.requestBody.content).join(", "));
      if (params.length) {
        const list = el("ul");
        for (const p of params) list.append(el("li", p));
        box.append(list);
      }
      box.append(el("p", "responses: " + Object.keys(op.responses).join(", "), "muted"));
      root.append(box);
    }
  }
}

show();
