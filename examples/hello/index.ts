// A Workers-style function: `?name=World` or a JSON body {"name": "World"}.
export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    let name = url.searchParams.get("name");
    if (!name && request.method === "POST") {
      const body = (await request.json().catch(() => ({}))) as { name?: unknown };
      if (typeof body.name === "string") name = body.name;
    }
    const greeting = process.env.GREETING ?? "Hello";
    return Response.json({ message: `${greeting}, ${name ?? "World"}!` });
  },
};
