// One TCP connection from a guest on QEMU's user network, relayed to a server on the host.
// QEMU's guestfwd `cmd:` starts this once per connection with the connection on stdin, stdout
// and stderr (so nothing but relayed bytes is written there). Plain JavaScript: it runs under
// node without the TypeScript loader.
//   node tcp-relay.mjs HOST PORT
import { connect } from 'node:net';

const [host, port] = process.argv.slice(2);
const upstream = connect({ host, port: Number(port) });
process.stdin.pipe(upstream);
upstream.pipe(process.stdout);
// Either side failing ends the connection; the guest sees it closed.
upstream.on('error', () => process.exit(1));
process.stdin.on('error', () => process.exit(1));
