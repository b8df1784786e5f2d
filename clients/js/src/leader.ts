// Which tab of this browser refreshes. One tab, the leader, spends the refresh token;
// the others ask it over a BroadcastChannel. Deciding in one place keeps exactly one
// refresh in flight however messages and lock grants interleave.
//
// The leader is whoever holds a Web Lock for the page's lifetime: the browser grants
// it to exactly one tab and hands it on when that tab closes. Without Web Locks, a
// heartbeat over the channel elects one: the lowest id heard lately wins. Two leaders
// can exist for a moment there; the server's grace window absorbs that refresh.

export interface Leadership {
  isLeader(): boolean;
  /** Settles once this tab knows whether it leads (a lock grant is asynchronous). */
  ready: Promise<void>;
  close(): void;
}

type Beat = { t: "beat"; id: string };

export function elect(
  name: string,
  id: string,
  channel: BroadcastChannel | null,
  beatMs = 1000,
): Leadership {
  const locks = (globalThis as { navigator?: Navigator }).navigator?.locks;
  if (locks) {
    let leader = false;
    let release: () => void = () => {};
    let settle: () => void = () => {};
    const ready = new Promise<void>((r) => (settle = r));
    const hold = () => {
      leader = true;
      settle();
      return new Promise<void>((r) => (release = r));
    };
    locks
      .request(name, { ifAvailable: true }, (lock) => {
        if (lock) return hold();
        settle();
        // Another tab leads; take over when it closes.
        locks.request(name, hold).catch(() => {});
        return undefined;
      })
      .catch(settle);
    return { isLeader: () => leader, ready, close: () => release() };
  }
  if (!channel) return { isLeader: () => true, ready: Promise.resolve(), close() {} };

  // Fallback: the lowest id that beat within the last three beats leads.
  const seen = new Map<string, number>();
  const beat = () => channel.postMessage({ t: "beat", id } satisfies Beat);
  const onMessage = (e: MessageEvent<Beat>) => {
    if (e.data?.t !== "beat") return;
    // A tab new to us has not heard us yet: answer at once, so all agree quickly.
    if (!seen.has(e.data.id)) beat();
    seen.set(e.data.id, Date.now());
  };
  channel.addEventListener("message", onMessage);
  beat();
  const timer = setInterval(beat, beatMs);
  (timer as { unref?: () => void }).unref?.();
  return {
    ready: Promise.resolve(),
    isLeader() {
      const now = Date.now();
      for (const [other, at] of seen) {
        if (now - at > 3 * beatMs) seen.delete(other);
        else if (other < id) return false;
      }
      return true;
    },
    close() {
      clearInterval(timer);
      channel.removeEventListener("message", onMessage);
    },
  };
}
