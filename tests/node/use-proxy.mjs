// Node 20 ignores HTTPS_PROXY (and NODE_USE_ENV_PROXY) for fetch(); this makes every fetch() of
// the process go through HTTPS_PROXY / HTTP_PROXY (NO_PROXY honoured), on Node 20 and 22 alike.
// Load it first: node --import ./use-proxy.mjs app.mjs   (npm install undici@6 beside your app)
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";

setGlobalDispatcher(new EnvHttpProxyAgent());
