// The playground: one prompt to 2-3 endpoints at once, each answer shown as it arrives, with its latency,
// tokens and cost; the chosen endpoints stay in the URL; "Copy as SQL" gives the ai_query call.
const form = document.getElementById("pg");
const answers = document.getElementById("answers");
const csrf = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"];

const chosen = () => [...form.querySelectorAll("select[name=e]")].map((s) => s.value).filter(Boolean);
const sqlString = (text) => `'${text.replaceAll("'", "''")}'`;

function keepInUrl() {
  const url = new URL(location.href);
  url.searchParams.delete("e");
  for (const name of chosen()) url.searchParams.append("e", name);
  history.replaceState(null, "", url);
}

function card(name) {
  const box = document.createElement("section");
  box.className = "answer";
  box.setAttribute("aria-label", `Answer of ${name}`);
  const head = document.createElement("div");
  head.className = "between";
  const title = document.createElement("b");
  title.textContent = name;
  const focus = document.createElement("button");
  focus.type = "button";
  focus.className = "link";
  focus.textContent = "focus";
  focus.setAttribute("aria-pressed", "false");
  focus.addEventListener("click", () => {
    const on = !box.classList.contains("focus");
    for (const other of answers.children) other.classList.remove("focus");
    box.classList.toggle("focus", on);
    focus.setAttribute("aria-pressed", String(on));
  });
  head.append(title, focus);
  const text = document.createElement("div");
  text.className = "text muted";
  text.textContent = "waiting…";
  const meta = document.createElement("div");
  meta.className = "meta";
  box.append(head, text, meta);
  answers.append(box);
  return { text, meta };
}

function fact(meta, label, value) {
  const span = document.createElement("span");
  span.textContent = `${label} ${value}`;
  meta.append(span);
}

async function ask(name, shown) {
  const body = {
    endpoint: name, prompt: form.prompt.value, system: form.system.value,
    temperature: form.temperature.value, max_tokens: form.max_tokens.value,
  };
  const started = performance.now();
  try {
    const response = await fetch("/ui/playground/ask", {
      method: "POST", headers: { "content-type": "application/json", accept: "application/json", "x-csrf-token": csrf },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => null);
    if (!response.ok || !answer) {
      shown.text.className = "text status-5xx";
      shown.text.textContent = (answer && (answer.message || answer.error)) || `The server answered ${response.status}.`;
      return;
    }
    shown.text.className = "text";
    shown.text.textContent = answer.text ?? "(no text)";
    fact(shown.meta, "latency", `${Math.round(answer.latency_ms)} ms`);
    fact(shown.meta, "tokens", answer.input_tokens == null ? "—" : `${answer.input_tokens + (answer.output_tokens || 0)} (${answer.input_tokens}+${answer.output_tokens || 0})`);
    fact(shown.meta, "cost", answer.cost_usd == null ? "— (no prices)" : `$${answer.cost_usd.toFixed(6)}`);
  } catch (error) {
    shown.text.className = "text status-5xx";
    shown.text.textContent = `No answer: ${error}`;
  }
  shown.meta.dataset.ms = String(Math.round(performance.now() - started));
}

function run() {
  const names = chosen();
  if (!names.length || !form.prompt.value.trim()) {
    form.prompt.focus();
    return;
  }
  keepInUrl();
  answers.replaceChildren();
  answers.style.setProperty("--cols", String(Math.min(3, names.length)));
  for (const name of names) ask(name, card(name));
}

function asSql() {
  const name = chosen()[0] || "my-endpoint";
  const prompt = form.system.value ? `${form.system.value}\n\n${form.prompt.value}` : form.prompt.value;
  const params = [];
  if (form.temperature.value) params.push(`'temperature', ${Number(form.temperature.value)}`);
  if (form.max_tokens.value) params.push(`'max_tokens', ${parseInt(form.max_tokens.value, 10)}`);
  const extra = params.length ? `,\n  modelParameters => named_struct(${params.join(", ")})` : "";
  return `SELECT ai_query(\n  ${sqlString(name)},\n  ${sqlString(prompt)}${extra}\n) AS answer`;
}

document.getElementById("pg-run").addEventListener("click", run);
form.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run();
});
for (const select of form.querySelectorAll("select[name=e]")) select.addEventListener("change", keepInUrl);
document.getElementById("pg-sql").addEventListener("click", async () => {
  const text = asSql();
  const shown = document.getElementById("pg-sql-text");
  shown.textContent = text;
  shown.hidden = false;
  try {
    await navigator.clipboard.writeText(text);
    document.getElementById("pg-copied").textContent = "Copied.";
  } catch {
    document.getElementById("pg-copied").textContent = "Select the SQL below to copy it.";
  }
});
