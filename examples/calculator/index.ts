// A Lambda-style handler: an API-Gateway-v2-like event in, {statusCode, headers, body} out.
interface Event {
  queryStringParameters?: Record<string, string>;
}

const ops: Record<string, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
};

export async function handler(event: Event) {
  const q = event.queryStringParameters ?? {};
  const op = ops[q.op ?? ""];
  const a = Number(q.a);
  const b = Number(q.b);
  if (!op || !Number.isFinite(a) || !Number.isFinite(b)) {
    return {
      statusCode: 400,
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ error: "use ?op=add|sub|mul|div&a=<number>&b=<number>" }),
    };
  }
  return {
    statusCode: 200,
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ op: q.op, a, b, result: op(a, b) }),
  };
}
