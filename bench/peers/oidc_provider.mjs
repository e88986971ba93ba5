// node oidc-provider 9 issuing ES256 JWT access tokens for client_credentials.
//
// Run only by bench/run.py, which installs oidc-provider@9 with npm into a
// temporary folder, copies this file there and starts it with
// BENCH_PORT, BENCH_CLIENT_ID, BENCH_CLIENT_SECRET and BENCH_AUDIENCE set.
// It listens on 127.0.0.1 only and prints "ready" once it accepts requests.
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const port = Number(process.env.BENCH_PORT);
const audience = process.env.BENCH_AUDIENCE ?? 'https://api.bench';

// One ES256 signing key, made at start.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'bench' };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: process.env.BENCH_CLIENT_ID,
      client_secret: process.env.BENCH_CLIENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [signingKey] },
  // The only key is EC, so client defaults name ES256 too.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  ttl: { ClientCredentials: 300 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Every request names the one resource server, as the Python targets
      // default to one audience.
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        audience,
        scope: '',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});

createServer(provider.callback()).listen(port, '127.0.0.1', () => {
  console.log('ready');
});
