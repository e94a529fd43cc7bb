//! The Lua scripts: one per operation, one round trip each (EVALSHA, with one SCRIPT LOAD
//! after a `NOSCRIPT` reply, which `redis::Script` does for us).

use std::sync::LazyLock;

use redis::Script;

/// How long the fencing counter outlives its last use, at least: a new acquisition after it
/// expired starts from the server clock, so numbers keep growing unless the server's clock
/// steps back by more than this much.
pub(crate) const FENCE_TTL_MS: u64 = 60 * 60 * 1000;

/// `KEYS`: lock, fence. `ARGV`: token, ttl ms, fence ttl ms. Returns `{1, fencing}` or
/// `{0, pttl of the holder}`.
///
/// - Takes the lock only if absent. The fencing number is above the last one and no less
///   than the server clock in microseconds, read every time: a counter restored from a
///   snapshot or a lagging replica may be behind numbers already handed out.
/// - The token already holding the lock (its reply was lost) is granted again with a new
///   number; the expiry is never shortened.
/// - A counter that is not an integer from 0 to 2^53 - 2 is an error and leaves the lock and
///   the counter as they were; a busy lock leaves the counter alone.
/// - Numbers are written with `%.0f` (`%d` goes through a C `long`);
///   `redis.replicate_commands()` lets Redis 3.2 and 4 write after `TIME`.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then
  redis.replicate_commands()
end
local function corrupt(got)
  return redis.error_reply('ERR runa-lock: fencing counter ' .. KEYS[2] .. ' is not an integer from 0 to 2^53 - 2 (got ' .. got .. ')')
end
-- The counter, 0 when absent; or nil and what was found instead (a wrong type, not an
-- integer, too big).
local function counter()
  local raw = redis.pcall('GET', KEYS[2])
  if type(raw) == 'table' then
    return nil, 'a value that is not a string'
  end
  if not raw then
    return 0
  end
  local last = tonumber(raw)
  if not last or last ~= last or last < 0 or last >= 9007199254740991 or last % 1 ~= 0 then
    return nil, string.format('%q', string.sub(raw, 1, 40))
  end
  return last
end
local function next_fencing(last)
  local now = redis.call('TIME')
  local fencing = math.max(last + 1, now[1] * 1000000 + now[2])
  redis.call('SET', KEYS[2], string.format('%.0f', fencing), 'PX', ARGV[3])
  return fencing
end
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  local last, got = counter()
  if not last then
    redis.call('DEL', KEYS[1])
    return corrupt(got)
  end
  return {1, next_fencing(last)}
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
local last, got = counter()
if not last then
  return corrupt(got)
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, next_fencing(last)}
",
    )
});

/// `KEYS`: lock. `ARGV`: token, ttl ms. Returns 1 or 0.
///
/// Extends the lock to the ttl from now only while it holds this token, and never shortens
/// it (a late renewal after a longer one changes nothing).
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return 1
end
return 0
",
    )
});

/// `KEYS`: lock. `ARGV`: token, release channel, `PUBLISH` or `SPUBLISH` (a cluster's
/// sharded pub/sub: the channel shares the lock's slot). Returns 1 or 0.
///
/// Deletes the lock only while it holds this token, and announces the release; a refused
/// announcement does not fail it (waiters then poll).
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  local publish = 'PUBLISH'
  if ARGV[3] == 'SPUBLISH' then
    publish = 'SPUBLISH'
  end
  redis.pcall(publish, ARGV[2], '1')
  return 1
end
return 0
",
    )
});
