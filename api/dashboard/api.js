// The API client: every request carries the key in the X-API-Key header (never in a URL).

export class ApiError extends Error {
  constructor(status, detail, parameter = null) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.parameter = parameter;
  }
}

export class Api {
  /**
   * @param {string} key  the API key (held by the caller; this object does not store it anywhere else)
   * @param {(err: ApiError) => void} onUnauthorized  called on any 401
   */
  constructor(key, onUnauthorized = () => {}) {
    this.key = key;
    this.onUnauthorized = onUnauthorized;
    this.base = new URL("/", window.location.href);
  }

  url(path, params = {}) {
    const url = new URL(path, this.base);
    for (const [name, value] of Object.entries(params)) {
      if (value === null || value === undefined || value === "") continue;
      url.searchParams.set(name, String(value));
    }
    return url;
  }

  async request(method, path, { params = {}, body = undefined, timeoutMs = 15000 } = {}) {
    const headers = { "X-API-Key": this.key, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(this.url(path, params), {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (exc) {
      throw new ApiError(0, `network error: ${exc.message || exc}`);
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const detail = (data && (data.detail || data.title)) || `HTTP ${response.status}`;
      const err = new ApiError(response.status, detail, data && data.parameter);
      if (response.status === 401) this.onUnauthorized(err);
      throw err;
    }
    return data;
  }

  get(path, params = {}) {
    return this.request("GET", path, { params });
  }

  post(path, body = {}) {
    return this.request("POST", path, { body });
  }

  /** Every item of a paged list (offset/limit/next_offset), up to maxItems. */
  async getAll(path, params = {}, maxItems = 20000) {
    const items = [];
    let offset = 0;
    while (offset !== null && offset !== undefined && items.length < maxItems) {
      const page = await this.get(path, { ...params, offset, limit: 1000 });
      items.push(...page.items);
      offset = page.next_offset;
    }
    return items;
  }
}
