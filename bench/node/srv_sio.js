// Peer: Socket.IO 4 + @socket.io/redis-adapter (node-redis). WebSocket transport only, no
// permessage-deflate. Events arrive from Redis in the @socket.io/redis-emitter wire format.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const PORT = parseInt(process.env.PORT || "8003");
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
(async () => {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = createServer();
  const io = new Server(httpServer, { transports: ["websocket"], perMessageDeflate: false,
                                      adapter: createAdapter(pub, sub) });
  io.on("connection", () => {});
  httpServer.listen({ port: PORT, host: "127.0.0.1", backlog: 4096 }, () => console.log("listening", PORT));
})();
