// A Hono app: its default export has fetch(request, env, ctx), so it is a forge function as is.
import { Hono } from "hono";

const app = new Hono();
const todos: { id: number; title: string }[] = [];

app.get("/", (c) => c.json({ app: "hono-app", routes: ["GET /", "GET /hello/:name", "GET /todos", "POST /todos"] }));
app.get("/hello/:name", (c) => c.json({ message: `Hello, ${c.req.param("name")}!` }));
app.get("/todos", (c) => c.json(todos));
app.post("/todos", async (c) => {
  const body = await c.req.json<{ title?: string }>();
  if (!body.title) return c.json({ error: "title is required" }, 400);
  const todo = { id: todos.length + 1, title: body.title };
  todos.push(todo);
  return c.json(todo, 201);
});

export default app;
