// The playground: one prompt to 2-3 endpoints at once, each answer streamed into its column as the model
// writes it (fetch + ReadableStream, server-sent events from /ui/playground/stream), then its latency, time to
// first token, tokens and cost; Stop closes the streams (the server stops the upstream requests); the chosen
// endpoints stay in the URL; "Copy as SQL" gives the ai_query call.
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

let running = null; // the AbortController of the answers being read, while any is

function card(name) {
  const box = document.createElement("section");
  box.className = "answer";
  box.dataset.state = "waiting";
  box.setAttribute("aria-label", `Answer of ${name}`);
  box.setAttribute("aria-busy", "true");
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
  return { box, text, meta };
}

function fact(meta, name, label, value) {
  const span = document.createElement("span");
  span.dataset.fact = name;
  span.textContent = `${label} ${value}`;
  meta.append(span);
}

const ms = (value) => `${Math.round(value)} ms`;

function settle(shown, state, message) {
  shown.box.dataset.state = state;
  shown.box.removeAttribute("aria-busy");
  if (!message) return;
  const note = state === "stopped" ? "muted" : "status-5xx";
  if (shown.text.dataset.any) {
    // the text received so far stays; the reason follows it
    const after = document.createElement("small");
    after.className = note;
    after.textContent = ` — ${message}`;
    shown.text.append(after);
  } else {
    shown.text.className = `text ${note}`;
    shown.text.textContent = message;
  }
}

// A failed request's message: the playground route answers JSON; the session and CSRF checks a short fragment.
async function refusal(response) {
  const body = await response.text();
  try {
    const found = JSON.parse(body);
    if (found && found.message) return found.message;
  } catch {
    const found = new DOMParser().parseFromString(body, "text/html").body.textContent.trim();
    if (found) return found;
  }
  return `The server answered ${response.status}.`;
}

// Server-sent events from a fetch body: yields {event, data} as each event's blank line arrives.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

function figures(shown, summary) {
  fact(shown.meta, "latency", "latency", ms(summary.latency_ms));
  fact(shown.meta, "ttft", "first token", ms(summary.ttft_ms));
  const inp = summary.input_tokens, out = summary.output_tokens || 0;
  fact(shown.meta, "tokens", "tokens", inp == null ? "—" : `${inp + out} (${inp}+${out})`);
  fact(shown.meta, "cost", "cost", summary.cost_usd == null ? "— (no prices)" : `$${summary.cost_usd.toFixed(6)}`);
}

async function ask(name, shown, signal) {
  const body = {
    endpoint: name, prompt: form.prompt.value, system: form.system.value,
    temperature: form.temperature.value, max_tokens: form.max_tokens.value,
  };
  const started = performance.now();
  let firstAt = null;
  try {
    const response = await fetch("/ui/playground/stream", {
      method: "POST", signal, body: JSON.stringify(body),
      headers: { "content-type": "application/json", accept: "text/event-stream", "x-csrf-token": csrf },
    });
    if (!response.ok || !response.body) {
      settle(shown, "error", await refusal(response));
      return;
    }
    for await (const { event, data } of events(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (event === "summary") {
        figures(shown, chunk);
      } else if (chunk.error) {
        settle(shown, "error", chunk.message || chunk.error.message);
        return;
      } else {
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
        if (!piece) continue;
        if (firstAt === null) {
          firstAt = performance.now();
          shown.text.className = "text";
          shown.text.textContent = "";
          shown.text.dataset.any = "1";
          shown.box.dataset.state = "streaming";
        }
        shown.text.append(piece);
      }
    }
    if (firstAt === null) shown.text.textContent = "(no text)";
    settle(shown, "done");
  } catch (error) {
    if (signal.aborted) {
      settle(shown, "stopped", "stopped");
      if (firstAt !== null) fact(shown.meta, "ttft", "first token", ms(firstAt - started));
      fact(shown.meta, "stopped", "stopped after", ms(performance.now() - started));
    } else {
      settle(shown, "error", `No answer: ${error}`);
    }
  }
}

async function run() {
  const names = chosen();
  if (!names.length || !form.prompt.value.trim()) {
    form.prompt.focus();
    return;
  }
  if (running) running.abort();
  keepInUrl();
  answers.replaceChildren();
  answers.style.setProperty("--cols", String(Math.min(3, names.length)));
  const mine = new AbortController();
  running = mine;
  stop.disabled = false;
  await Promise.all(names.map((name) => ask(name, card(name), mine.signal)));
  if (running === mine) {
    running = null;
    stop.disabled = true;
  }
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

const stop = document.getElementById("pg-stop");
stop.addEventListener("click", () => {
  if (running) running.abort(); // the server sees each connection close and stops its upstream request
});
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
