// node-oidc-provider on 127.0.0.1 for Portcullis' interop tests (tests/interop.rs).
//
// Binds a free port, prints one JSON line to stdout: {"issuer": "http://127.0.0.1:PORT"}, and
// serves until its stdin closes (so it never outlives the test that started it).
//
// What it offers, all on the development login and consent pages (any login, any password):
// - three resource servers (RFC 8707 resource indicators), each with the scopes orders:read and
//   orders:write:
//     https://orders.example/jwt     JWT access tokens (RFC 9068), ES256, 300 s
//     https://orders.example/short   JWT access tokens, ES256, SHORT_TTL seconds (expiry tests)
//     https://orders.example/opaque  opaque access tokens, 300 s, checked by introspection
// - clients:
//     orders-service  confidential, client credentials
//     orders-cli      public (PKCE), authorization code, device authorization, refresh token
//     portcullis      the gateway's own client: introspection (RFC 7662) only
// - revocation (RFC 7009), ID tokens signed RS256, and DPoP-bound access tokens (RFC 9449) for
//   a token request that carries a DPoP proof.
//
// Test control, not part of any standard: POST /interop/rotate puts a new ES256 key first in the
// key set (so it signs from then on) and keeps the old one published, as a provider rotating its
// signing key does. The answer lists the kids: {"kids": [...]}.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const SHORT_TTL = Number(process.env.INTEROP_SHORT_TTL || 3);
const SCOPES = 'orders:read orders:write';
const RESOURCES = {
  'https://orders.example/jwt': { format: 'jwt', ttl: 300 },
  'https://orders.example/short': { format: 'jwt', ttl: SHORT_TTL },
  'https://orders.example/opaque': { format: 'opaque', ttl: 300 },
};

function signingKey(type, alg) {
  const options = type === 'rsa' ? { modulusLength: 2048 } : { namedCurve: 'P-256' };
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg, use: 'sig' };
}

// ES256 keys newest first: the provider signs with the first key that fits the algorithm.
let ecKeys = [signingKey('ec', 'ES256')];
const rsaKey = signingKey('rsa', 'RS256');

function configuration() {
  return {
    clients: [
      {
        client_id: 'orders-service',
        client_secret: 'orders-service-secret',
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
      },
      {
        client_id: 'orders-cli',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        grant_types: [
          'authorization_code',
          'refresh_token',
          'urn:ietf:params:oauth:grant-type:device_code',
        ],
        response_types: ['code'],
        redirect_uris: ['http://127.0.0.1/callback'],
      },
      {
        client_id: 'portcullis',
        client_secret: process.env.INTEROP_GATEWAY_SECRET || 'portcullis-interop-secret',
        grant_types: [],
        redirect_uris: [],
        response_types: [],
      },
    ],
    jwks: { keys: [...ecKeys, rsaKey] },
    cookies: { keys: ['interop-cookie-key-not-a-secret'] },
    scopes: ['openid', 'offline_access', 'orders:read', 'orders:write'],
    pkce: { required: () => true },
    // Every client allowed the refresh_token grant gets one, with or without offline_access.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // RFC 9470 step-up needs how and when the user signed in: the grant's `acr` and
    // `auth_time` go into the access tokens issued for a user (none for client credentials).
    extraTokenClaims: async (ctx, token) => {
      const { AuthorizationCode, RefreshToken, DeviceCode } = ctx.oidc.entities;
      const grant = AuthorizationCode || RefreshToken || DeviceCode;
      if (token.kind !== 'AccessToken' || !grant || !grant.authTime) return undefined;
      return { auth_time: grant.authTime, ...(grant.acr ? { acr: grant.acr } : {}) };
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      // RFC 9449: a token request with a DPoP proof gets a token bound to the proof's key
      // (`token_type: DPoP`, `cnf.jkt` in the JWT and in the introspection answer).
      dPoP: { enabled: true },
      deviceFlow: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A refresh or code exchange without `resource` keeps the resource granted before.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          const server = RESOURCES[indicator];
          if (!server) throw new errors.InvalidTarget();
          return {
            scope: SCOPES,
            audience: indicator,
            accessTokenTTL: server.ttl,
            accessTokenFormat: server.format,
            ...(server.format === 'jwt' ? { jwt: { sign: { alg: 'ES256' } } } : {}),
          };
        },
      },
    },
  };
}

let handler;
function start(issuer) {
  const provider = new Provider(issuer, configuration());
  provider.on('server_error', (_ctx, err) => console.error('provider server_error:', err));
  handler = provider.callback();
}

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/interop/rotate') {
    ecKeys = [signingKey('ec', 'ES256'), ...ecKeys];
    // Grants, sessions and tokens live in the provider's in-memory adapter, which is shared by
    // every Provider in this process, so they survive the restart with the new keys.
    start(issuer);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ kids: ecKeys.map((k) => k.kid) }));
    return;
  }
  handler(req, res);
});

let issuer;
server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  start(issuer);
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
