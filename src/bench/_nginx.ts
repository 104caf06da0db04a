/**
 * nginx in front of several forge nodes, as README's "Several nodes" configures it: the one
 * config the cluster tests and `bun src/bench/cluster.ts` run behind.
 */

/** The upstream and proxy settings README documents for several nodes (`servers`: host:port each). */
export function nginxConfig(servers: string[], listen: string, dir: string): string {
  return `user root; worker_processes 1; daemon off; error_log ${dir}/error.log warn; pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  upstream forge {
${servers.map((s) => `    server ${s} max_fails=1 fail_timeout=2s;`).join("\n")}
    keepalive 32;
  }
  server {
    listen ${listen};
    location / {
      proxy_pass http://forge;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 1s;
      # A node that is down or unreachable: the request goes to the next (GET, HEAD and other
      # idempotent methods only; a POST is never sent twice). Not on a 502/503 answer: that
      # may be the function's own, and would take a healthy node out of rotation.
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 3;
      proxy_buffering off;
      proxy_read_timeout 60s;
      client_max_body_size 50m;
    }
  }
}
`;
}

