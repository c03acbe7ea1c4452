// The server's HTTP API, as runtime/http_transport.py speaks it: bearer token, JSON errors with a
// stable `code`, and retries with exponential backoff on network errors, 408, 429 and 5xx.

const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

export class FederationError extends Error {
  constructor(code, detail, status = 0) {
    super(`${detail} [${code}]`);
    this.code = code;
    this.status = status;
  }
}

export async function errorOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return new FederationError(String(body.code), String(body.detail), response.status);
  } catch {
    return new FederationError(`http_${response.status}`, text.slice(0, 200), response.status);
  }
}

export class Connection {
  constructor(base, { attempts = 8, baseS = 0.5, maxS = 30, onRetry = () => {} } = {}) {
    this.base = base.replace(/\/$/, "");
    this.token = null;
    this.attempts = attempts;
    this.baseS = baseS;
    this.maxS = maxS;
    this.onRetry = onRetry;
  }

  delay(attempt, retryAfter) {
    const backoff = Math.min(this.maxS, this.baseS * 2 ** attempt) * (0.5 + Math.random() / 2);
    const asked = retryAfter && /^\d+$/.test(retryAfter) ? Math.min(Number(retryAfter), 120) : 0;
    return Math.max(backoff, asked);
  }

  /** fetch, retrying what may succeed later; any other answer (2xx or 4xx) is returned as it is. */
  async request(method, path, { headers = {}, body, signal } = {}) {
    let problem = "";
    for (let attempt = 0; attempt < this.attempts; attempt++) {
      let retryAfter = null;
      try {
        const auth = this.token ? { authorization: `Bearer ${this.token}` } : {};
        const response = await fetch(this.base + path, { method, headers: { ...auth, ...headers }, body, signal });
        if (!RETRY_STATUS.has(response.status)) return response;
        problem = `HTTP ${response.status}`;
        retryAfter = response.headers.get("retry-after");
      } catch (e) {
        if (signal?.aborted) throw e;
        problem = `${e.name}: ${e.message}`;
      }
      if (attempt + 1 < this.attempts) {
        const wait = this.delay(attempt, retryAfter);
        this.onRetry(`${method} ${path} failed (${problem}); retrying in ${wait.toFixed(1)} s`);
        await new Promise((r) => setTimeout(r, wait * 1000));
      }
    }
    throw new FederationError("unreachable", `${method} ${path} failed ${this.attempts} times, last: ${problem}`);
  }

  async json(method, path, options = {}) {
    const response = await this.request(method, path, options);
    if (response.status >= 400) throw await errorOf(response);
    return response.json();
  }

  async bytes(path) {
    const response = await this.request("GET", path);
    if (response.status !== 200) throw await errorOf(response);
    return new Uint8Array(await response.arrayBuffer());
  }
}
