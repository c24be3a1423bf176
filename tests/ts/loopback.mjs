// Preloaded (node --import) into a server that has no setting for its listen address and would listen on every
// interface (server-everything's `app.listen(PORT)`): a listen on a bare port binds 127.0.0.1 only, so the tests
// never expose it beyond loopback. Nothing else about the server changes.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    const callbacks = args.slice(1).filter((arg) => typeof arg === "function");
    return listen.call(this, Number(args[0]), "127.0.0.1", ...callbacks);
  }
  return listen.apply(this, args);
};
