// One connection of the official SignalR JavaScript client through wsgate, for
// tests/signalr.rs: `node client.mjs <hub-url> <WebSockets|ServerSentEvents|LongPolling> [token]`
// (with a token, the client's `accessTokenFactory` returns it).
// Prints {"transport", "echo", "instance"} as JSON and exits 0, or prints the error and
// exits 1. In Node the client keeps cookies (a tough-cookie jar) across negotiate and the
// transport's requests, as a browser would.
import * as signalR from "@microsoft/signalr";

const [url, transportName, token] = process.argv.slice(2);
const transport = signalR.HttpTransportType[transportName];
if (!url || transport === undefined) {
  console.error("usage: node client.mjs <hub-url> <WebSockets|ServerSentEvents|LongPolling>");
  process.exit(2);
}

const connection = new signalR.HubConnectionBuilder()
  .withUrl(url, token ? { transport, accessTokenFactory: () => token } : { transport })
  .configureLogging(signalR.LogLevel.Warning)
  .build();

try {
  await connection.start();
  const echo = await connection.invoke("Echo", `hello ${transportName}`);
  const instance = await connection.invoke("Instance", "");
  await connection.stop();
  console.log(JSON.stringify({ transport: transportName, echo, instance }));
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ transport: transportName, error: String(e && e.message || e) }));
  process.exit(1);
}
