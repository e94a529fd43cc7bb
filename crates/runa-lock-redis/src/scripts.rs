//! The Lua scripts: one per operation, one round trip each (EVALSHA, with one SCRIPT LOAD
//! after a `NOSCRIPT` reply, which `redis::Script` does for us).

use std::sync::LazyLock;

use redis::Script;

/// How long a fencing counter lives, at least, from when it was started: a new acquisition
/// after it expired starts a new one from the server clock, so numbers keep growing unless
/// the server's clock steps back by more than this much.
pub(crate) const FENCE_TTL_MS: u64 = 60 * 60 * 1000;

/// `KEYS`: lock, fence. `ARGV`: token, ttl ms, fence ttl ms.
///
/// Takes the lock only if it is absent, and in the same script assigns a fencing number
/// greater than every earlier one. Returns `{1, fencing}` or `{0, pttl of the holder}`.
///
/// The common case is two commands: `SET NX PX` and `INCR` of the counter. A counter that
/// is absent (the first acquisition, a restart without persistence, or its expiry) starts at
/// the server's clock in microseconds. That keeps numbers growing across a lost counter: a
/// counter gains one per acquisition, and every acquisition after the first needs a release
/// or an expiry in between, so a counter started from the clock never catches up with it.
///
/// - An attempt with a token that already holds the lock (its earlier attempt ran but the
///   reply was lost) is granted again with the counter's number, and the lease's ttl starts
///   over, so a retried acquire never orphans the lock or shortens the lease.
/// - A counter that is not an integer in 1..2^53 (past which Lua's numbers lose precision)
///   is an error, and the script leaves the lock and the counter as they were.
/// - A busy lock costs a `GET` and a `PTTL`; the counter is not touched.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local function corrupt()
  return redis.error_reply('ERR runa-lock: fencing counter ' .. KEYS[2] .. ' is not an integer below 2^53')
end
local function restart()
  local now = redis.call('TIME')
  local fencing = now[1] * 1000000 + now[2]
  redis.call('SET', KEYS[2], string.format('%d', fencing), 'PX', ARGV[3])
  return fencing
end
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  local fencing = redis.pcall('INCR', KEYS[2])
  if type(fencing) ~= 'number' then
    redis.call('DEL', KEYS[1])
    return corrupt()
  end
  if fencing < 1 or fencing >= 9007199254740992 then
    redis.call('DECR', KEYS[2])
    redis.call('DEL', KEYS[1])
    return corrupt()
  end
  if fencing == 1 then
    fencing = restart()
  end
  return {1, fencing}
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
local last = redis.call('GET', KEYS[2])
if not last then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, restart()}
end
last = tonumber(last)
if not last or last ~= last or last < 1 or last >= 9007199254740992 or last % 1 ~= 0 then
  return corrupt()
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, last}
",
    )
});

/// `KEYS`: lock. `ARGV`: token, ttl ms.
///
/// Extends the lock only while it holds this token. Returns 1 or 0.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
