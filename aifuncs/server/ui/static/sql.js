// The SQL box: EXPLAIN's cost estimate first, then the run (through the server's sandboxed statements, as
// the signed-in principal), its progress, cancel, and the rows page by page.
const form = document.getElementById("sql");
const text = document.getElementById("sql-text");
const state = document.getElementById("sql-state");
const costBox = document.getElementById("sql-cost");
const resultBox = document.getElementById("sql-result");
const cancel = document.getElementById("sql-cancel");
const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];
const PAGE = 100;
let current = null;

async function call(method, path, body) {
  const response = await fetch(path, {
    method, headers: { "content-type": "application/json", accept: "application/json", "x-csrf-token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new Error((data && (data.message || data.error)) || `The server answered ${response.status}.`);
  return data;
}

function note(box, message, kind) {
  const p = document.createElement(kind === "pre" ? "pre" : "p");
  if (kind !== "pre") p.className = `note ${kind || ""}`;
  p.textContent = message;
  box.replaceChildren(p);
}

async function estimate() {
  state.textContent = "estimating…";
  try {
    const found = await call("POST", "/ui/sql/explain", { statement: text.value });
    const cost = found.cost_usd == null ? "no priced AI calls" : `~$${found.cost_usd.toFixed(4)}`;
    costBox.replaceChildren();
    const head = document.createElement("p");
    head.className = "note cost";
    head.textContent = `Estimated cost: ${cost} · ${found.calls} AI call${found.calls === 1 ? "" : "s"}`;
    costBox.append(head);
    if (found.calls) {
      const pre = document.createElement("pre");
      pre.textContent = found.text;
      costBox.append(pre);
    }
    state.textContent = "";
    return true;
  } catch (error) {
    note(costBox, error.message, "error");
    state.textContent = "";
    return false;
  }
}

function table(columns, rows, start) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    head.append(th);
  }
  const body = t.createTBody();
  for (const row of rows.slice(start, start + PAGE)) {
    const tr = body.insertRow();
    for (const value of row) tr.insertCell().textContent = value == null ? "NULL" : String(value);
  }
  return t;
}

function show(columns, rows, start = 0) {
  const pager = document.createElement("div");
  pager.className = "pager";
  const info = document.createElement("span");
  info.textContent = `rows ${rows.length ? start + 1 : 0}–${Math.min(rows.length, start + PAGE)} of ${rows.length}`;
  pager.append(info);
  for (const [label, to] of [["← Previous", start - PAGE], ["Next →", start + PAGE]]) {
    if (to < 0 || to >= rows.length) continue;
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", () => show(columns, rows, to));
    pager.append(b);
  }
  resultBox.replaceChildren(pager, table(columns, rows, start));
}

async function rowsOf(statement) {
  let rows = statement.result?.data_array || [];
  const chunks = statement.manifest?.total_chunk_count || 1;
  for (let i = 1; i < chunks; i++) rows = rows.concat((await call("GET", `/ui/sql/statements/${statement.statement_id}/chunks/${i}`)).data_array || []);
  return rows;
}

async function run() {
  if (!(await estimate())) return;
  cancel.disabled = false;
  const started = performance.now();
  state.textContent = "running…";
  try {
    let statement = await call("POST", "/ui/sql/statements", { statement: text.value });
    current = statement.statement_id;
    while (["PENDING", "RUNNING"].includes(statement.status.state)) {
      state.textContent = `running… ${((performance.now() - started) / 1000).toFixed(1)} s`;
      await new Promise((done) => setTimeout(done, 500));
      statement = await call("GET", `/ui/sql/statements/${current}`);
    }
    const s = statement.status;
    if (s.state !== "SUCCEEDED") {
      note(resultBox, `${s.state}: ${s.error?.message || ""}`, s.state === "CANCELED" ? "" : "error");
    } else {
      show(statement.manifest.schema.columns, await rowsOf(statement));
    }
    state.textContent = `${s.state.toLowerCase()} in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (error) {
    note(resultBox, error.message, "error");
    state.textContent = "";
  } finally {
    cancel.disabled = true;
    current = null;
  }
}

document.getElementById("sql-explain").addEventListener("click", estimate);
document.getElementById("sql-run").addEventListener("click", run);
cancel.addEventListener("click", async () => {
  if (current) await call("POST", `/ui/sql/statements/${current}/cancel`, {}).catch(() => {});
});
text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    estimate();
  }
});
