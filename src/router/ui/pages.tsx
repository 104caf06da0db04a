/**
 * The dashboard's pages as shells: headings, empty tables and forms with ids. No data is
 * rendered here; app.js fetches it from /v1 and inserts it as text.
 */
import type { Child } from "hono/jsx";
import { Layout } from "./layout.tsx";

export function LoginPage() {
  return (
    <Layout title="Sign in" page="login">
      <form id="login-form" class="card login" autocomplete="off">
        <h1>forge</h1>
        <label for="key">API key</label>
        <input id="key" name="key" type="password" required autofocus spellcheck={false} />
        <p id="login-error" class="error" role="alert" hidden></p>
        <button type="submit">Sign in</button>
        <p class="muted small">The key is kept in this tab only (sessionStorage) and sent to this forge's /v1 API; closing the tab forgets it.</p>
      </form>
    </Layout>
  );
}

export function FunctionsPage() {
  return (
    <Layout title="Functions" page="functions">
      <div class="bar">
        <h1>Functions</h1>
        <label>
          window{" "}
          <select id="window">
            <option value="last5m">last 5 minutes</option>
            <option value="last60m">last 60 minutes</option>
          </select>
        </label>
      </div>
      <Table id="functions" head={["name", "version", "instances", "requests", "p50", "p99", "errors", "cold starts", "latency, last 100"]} />
    </Layout>
  );
}

export function FunctionPage(p: { name: string }) {
  return (
    <Layout title={p.name} page="function" fn={p.name}>
      <div class="bar">
        <h1>
          <a href="/ui/">Functions</a> / <span id="fn-name">{p.name}</span>
        </h1>
        <span class="badge" id="fn-version"></span>
        <a id="fn-url" class="muted" rel="noreferrer"></a>
      </div>
      <div class="columns">
        <Section title="Invoke">
          <form id="invoke-form">
            <label for="invoke-body">body</label>
            <textarea id="invoke-body" rows={4} spellcheck={false}>
              {"{}"}
            </textarea>
            <div class="row">
              <input id="invoke-type" value="application/json" aria-label="Content-Type" />
              <button type="submit">Invoke</button>
            </div>
          </form>
          <p id="invoke-status" class="muted"></p>
          <pre id="invoke-answer" hidden></pre>
        </Section>
        <Section title="Config">
          <dl id="config" class="config"></dl>
        </Section>
      </div>
      <Section title="Versions">
        <Table id="versions" head={["version", "status", "created", "digest", ""]} />
      </Section>
      <Section title="Instances">
        <Table id="instances" head={["id", "state", "start", "in flight", "served", "age", "idle", "memory", "node"]} />
      </Section>
      <Section title="Live logs">
        <p id="logs-status" class="muted"></p>
        <ol id="logs" class="logs"></ol>
      </Section>
      <Section title="Recent invocations">
        <Table id="invocations" head={["time", "status", "duration", "start", "kind", "version", "request id"]} />
      </Section>
      <div class="columns">
        <Section title="Schedules">
          <Table id="schedules" head={["cron", "time zone", "runs", "last run", "last status", "next run"]} />
        </Section>
        <Section title="Dead letters">
          <Table id="dead-letters" head={["id", "attempts", "failed", "error"]} />
        </Section>
      </div>
    </Layout>
  );
}

export function DatabasesPage() {
  return (
    <Layout title="Databases" page="databases">
      <div class="bar">
        <h1>Databases</h1>
      </div>
      <form id="provision-form" class="row card">
        <label for="service-name">service name</label>
        {/* No pattern here: /v1 says what a valid name is, and its message is shown. */}
        <input id="service-name" name="service_name" required maxlength={63} placeholder="checkout" spellcheck={false} />
        <span class="muted">postgres</span>
        <button type="submit">Provision</button>
      </form>
      <p id="provision-error" class="error" role="alert" hidden></p>
      <Table id="databases" head={["service", "status", "backend", "created", "connection", "id", ""]} />
    </Layout>
  );
}

export function NodesPage() {
  return (
    <Layout title="Nodes" page="nodes">
      <div class="bar">
        <h1>Nodes</h1>
      </div>
      <Table id="nodes" head={["id", "url", "driver", "version", "started", "last heartbeat"]} />
    </Layout>
  );
}

// --- internal ---

function Section(p: { title: string; children?: Child }) {
  return (
    <section class="card">
      <h2>{p.title}</h2>
      {p.children}
    </section>
  );
}

/** An empty table app.js fills; its status line says loading, empty or what failed. */
function Table(p: { id: string; head: string[] }) {
  return (
    <div class="table">
      <table id={p.id}>
        <thead>
          <tr>
            {p.head.map((h) => (
              <th>{h}</th>
            ))}
          </tr>
        </thead>
        <tbody></tbody>
      </table>
      <p class="status muted" id={`${p.id}-status`}>
        loading…
      </p>
    </div>
  );
}
