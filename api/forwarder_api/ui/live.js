/**
 * Live updates by polling, the cheapest way here: lists are small JSON reads the API answers
 * from Redis in well under a millisecond, and a run page long-polls GET /runs/{id}?wait=, so it
 * learns of the end at once with one request held open. Server-sent events would hold a
 * connection per open tab and need a new streaming route for the dashboard alone.
 *
 * A Poller keeps one request in flight per view, backs off (doubling, up to a minute) while
 * the API answers errors, pauses while the tab is hidden, and is stopped (its request
 * aborted) when the user leaves the page.
 */

const MAX_BACKOFF_MS = 60_000;

export class Poller {
  /**
   * tick(signal) does one round of requests and renders them; it returns false when there is
   * nothing more to wait for, a number of ms to wait before the next round, or nothing (the
   * usual interval).
   */
  constructor(tick, { interval = 5000, onError = () => {}, onOk = () => {} } = {}) {
    this.tick = tick;
    this.interval = interval;
    this.onError = onError;
    this.onOk = onOk;
    this.failures = 0;
    this.timer = null;
    this.controller = null;
    this.inFlight = false;
    this.again = false;
    this.stopped = false;
    this.finished = false;
    this.onVisibility = () => {
      if (!document.hidden && this.timer === null && !this.inFlight && !this.finished) {
        this.schedule(0);
      }
    };
  }

  start() {
    document.addEventListener("visibilitychange", this.onVisibility);
    this.schedule(0);
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    this.controller?.abort();
    document.removeEventListener("visibilitychange", this.onVisibility);
  }

  /** Poll now (after an action changed something), or right after the round in flight. */
  refresh() {
    this.finished = false;
    if (this.inFlight) this.again = true;
    else this.schedule(0);
  }

  schedule(ms) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.run();
    }, ms);
  }

  async run() {
    // Hidden: no timer is left; the visibility listener starts again when the tab is shown.
    if (this.stopped || this.inFlight || document.hidden) return;
    this.inFlight = true;
    this.controller = new AbortController();
    let delay = this.interval;
    try {
      const next = await this.tick(this.controller.signal);
      this.failures = 0;
      this.onOk();
      if (next === false) this.finished = true;
      else if (typeof next === "number") delay = next;
    } catch (error) {
      if (this.stopped || error.name === "AbortError") return;
      this.failures += 1;
      delay = Math.min(this.interval * 2 ** this.failures, MAX_BACKOFF_MS);
      this.onError(error, delay);
    } finally {
      this.inFlight = false;
    }
    if (this.again) {
      this.again = false;
      this.finished = false;
      delay = 0;
    }
    if (!this.finished) this.schedule(delay);
  }
}
