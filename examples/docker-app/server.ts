// A plain Bun server: forge runs its image as is and sends it requests on $PORT.
const port = Number(process.env.PORT ?? 8080);

Bun.serve({
  port,
  fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response("ok");
    return Response.json({
      message: `Hello from a Dockerfile, ${url.searchParams.get("name") ?? "World"}!`,
      bun: Bun.version,
      uid: process.getuid?.() ?? null,
    });
  },
});
console.log(`docker-app listening on ${port}`);
