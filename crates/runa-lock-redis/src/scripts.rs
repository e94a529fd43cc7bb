//! The Lua scripts: one per operation, one round trip each (EVALSHA, with one SCRIPT LOAD
//! after a `NOSCRIPT` reply, which `redis::Script` does for us).

use std::sync::LazyLock;

use redis::Script;

/// How long the fencing counter outlives its last use, at least: a new acquisition after it
/// expired starts from the server clock, so numbers keep growing unless the server's clock
/// steps back by more than this much.
pub(crate) const FENCE_TTL_MS: u64 = 60 * 60 * 1000;

/// `KEYS`: lock, fence. `ARGV`: token, ttl ms, fence ttl ms.
///
/// Takes the lock only if it is absent, and in the same script assigns a fencing number
/// greater than the last one and no less than the server's clock in microseconds. Returns
/// `{1, fencing}` or `{0, pttl of the holder}`.
///
/// The clock is read on every acquisition, not only when the counter is missing: a counter
/// can also come back *older* than numbers already handed out (a restart from an RDB
/// snapshot, an AOF that lost its last second, a failover to a lagging replica), and only the
/// clock keeps the next number above those.
///
/// - An attempt with a token that already holds the lock (its earlier attempt ran but the
///   reply was lost) is granted again with a new number, and the lock's expiry is made at
///   least the ttl from now but never earlier than it was: a late duplicate of an attempt
///   must not cut short a lease that was renewed meanwhile.
/// - A counter that is not an integer from 0 to 2^53 - 2 (past 2^53 Lua's numbers lose
///   precision), or not a string at all, is an error; the lock and the counter are left as
///   they were (a lock just taken is deleted again).
/// - A busy lock costs a `GET` and a `PTTL`; the counter is not touched.
/// - Numbers are written with `%.0f`: Redis's Lua formats `%d` through a C `long`, 32 bits
///   on some platforms.
/// - `redis.replicate_commands()` lets Redis 3.2 and 4 accept writes after `TIME` (newer
///   versions always replicate a script's effects, and ignore the call).
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

/// `KEYS`: lock. `ARGV`: token, ttl ms.
///
/// Extends the lock only while it holds this token, to the ttl from now, and never
/// shortens it: a renewal that arrives late (after a longer one) leaves the lock as it is.
/// (`PEXPIRE ... GT` does the same from Redis 7.0; comparing `PTTL` works on every
/// version.) Returns 1 or 0.
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

/// `KEYS`: lock. `ARGV`: token, release channel.
///
/// Deletes the lock only while it holds this token, and announces the release. A refused
/// `PUBLISH` (an ACL without channel rights) does not fail the release: waiters then poll.
/// Returns 1 or 0.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.pcall('PUBLISH', ARGV[2], '1')
  return 1
end
return 0
",
    )
});
