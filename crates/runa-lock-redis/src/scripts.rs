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
/// greater than the last one and no less than the server's clock in microseconds, so the
/// numbers also keep growing after the counter is lost (a restart without persistence).
/// Returns `{1, fencing}` or `{0, pttl of the holder}`.
///
/// - An attempt with a token that already holds the lock (its earlier attempt ran but the
///   reply was lost) is granted again with the same fencing number, and the lease's ttl
///   starts over, so a retried acquire never orphans the lock or shortens the lease.
/// - The counter is checked before anything is written: a value that is not an integer
///   below 2^53 (past which Lua's numbers lose precision) is an error, and nothing changes.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = redis.call('GET', KEYS[2])
if last then
  last = tonumber(last)
  if not last or last ~= last or last < 0 or last >= 9007199254740992 or last % 1 ~= 0 then
    return redis.error_reply('ERR runa-lock: fencing counter ' .. KEYS[2] .. ' is not an integer below 2^53')
  end
else
  last = 0
end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, string.format('%.0f', last)}
end
if holder then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = redis.call('TIME')
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
local fencing = string.format('%.0f', math.max(last + 1, micros))
redis.call('SET', KEYS[2], fencing, 'PX', ARGV[3])
return {1, fencing}
",
    )
});

/// `KEYS`: lock, fence. `ARGV`: token, ttl ms, fence ttl ms.
///
/// Extends the lock only while it holds this token. Returns 1 or 0.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
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
