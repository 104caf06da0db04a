// Todos in a provisioned Postgres: `forge db create todos`, then `forge deploy examples/todo-db`
// (forge.json binds the database named "todos"; `--db other` binds another). forge injects
// DATABASE_URL; the table is created on first use.
//
//   GET    /          -> {todos: [...]}
//   POST   /          {"title": "..."} -> 201 the todo
//   PATCH  /:id       {"done": true} -> the todo
//   DELETE /:id       -> 204
import { SQL } from "bun";

interface Todo {
  id: number;
  title: string;
  done: boolean;
  created_at: string;
}

let connected: Promise<SQL> | undefined;

// Connected lazily (the environment is the function's once it serves a request); tried again after a failure.
function database(): Promise<SQL> {
  connected ??= (async () => {
    const url = process.env.DATABASE_URL;
    if (!url) throw new HttpError(500, "no DATABASE_URL: create a database (forge db create todos) and deploy with --db todos");
    const sql = new SQL(url, { max: 4, idleTimeout: 30 });
    await sql`create table if not exists todos (
      id serial primary key,
      title text not null check (length(title) between 1 and 200),
      done boolean not null default false,
      created_at timestamptz not null default now()
    )`;
    return sql;
  })().catch((err: unknown) => {
    connected = undefined;
    throw err;
  });
  return connected;
}

export default {
  async fetch(request: Request): Promise<Response> {
    try {
      const sql = await database();
      const path = new URL(request.url).pathname.replace(/\/+$/, "") || "/";
      if (path === "/") {
        if (request.method === "GET") {
          const todos: Todo[] = await sql`select id, title, done, created_at from todos order by id`;
          return Response.json({ todos });
        }
        if (request.method === "POST") {
          const { title } = await body(request);
          if (typeof title !== "string" || title.trim().length === 0 || title.length > 200) throw new HttpError(400, 'send {"title": "..."} (1 to 200 characters)');
          const [todo] = await sql`insert into todos (title) values (${title.trim()}) returning id, title, done, created_at`;
          return Response.json(todo, { status: 201 });
        }
        throw new HttpError(405, "use GET or POST on /");
      }
      const id = Number(/^\/(\d+)$/.exec(path)?.[1] ?? NaN);
      if (!Number.isSafeInteger(id)) throw new HttpError(404, "no such route: try GET /");
      if (request.method === "PATCH") {
        const { done } = await body(request);
        if (typeof done !== "boolean") throw new HttpError(400, 'send {"done": true} or {"done": false}');
        const [todo] = await sql`update todos set done = ${done} where id = ${id} returning id, title, done, created_at`;
        if (!todo) throw new HttpError(404, `no todo ${id}`);
        return Response.json(todo);
      }
      if (request.method === "DELETE") {
        const rows = await sql`delete from todos where id = ${id} returning id`;
        if (rows.length === 0) throw new HttpError(404, `no todo ${id}`);
        return new Response(null, { status: 204 });
      }
      throw new HttpError(405, "use PATCH or DELETE on /:id");
    } catch (err) {
      if (err instanceof HttpError) return Response.json({ error: err.message }, { status: err.status });
      console.error("todo-db:", err);
      return Response.json({ error: "database error" }, { status: 500 });
    }
  },
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function body(request: Request): Promise<Record<string, unknown>> {
  const parsed: unknown = await request.json().catch(() => undefined);
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new HttpError(400, "send a JSON object");
  return parsed as Record<string, unknown>;
}
