"""The Lua scripts of the Redis session store. Redis runs a script alone, so its checks and
writes cannot interleave with another process's."""

from __future__ import annotations

__all__ = ["APPEND", "RESERVE"]

# KEYS[1] the session's info, KEYS[2] its turns (a list: a turn's index is its position), KEYS[3]
# its request ids (a hash: request id -> "<first index> <count> <outcome>"), KEYS[4] its turn
# lock. ARGV[1] the TTL in seconds (for a session key that has none), ARGV[2] the request id or
# "", ARGV[3] the outcome, ARGV[4] the most turns the session may hold (-1: no limit), ARGV[5]
# the turn lock's owner token or "", ARGV[6..] the turns as JSON.
# Indexes never collide, a pair stays adjacent and a request id is stored once. The turns and
# request ids expire with the session's info: the session's age counts from its creation, and a
# turn does not extend it. Returns the first new index, -1 for no such session, -2 for a request
# id the session already holds, -3 for a session that would pass its turn limit, -4 for a token
# that no longer holds the lock (its lease lapsed); nothing is written for any of them.
APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
  return -4
end
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then
  return -2
end
local start = redis.call('LLEN', KEYS[2])
local adding = #ARGV - 5
local limit = tonumber(ARGV[4])
if limit >= 0 and start + adding > limit then
  return -3
end
if adding > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 6))
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], start .. ' ' .. adding .. ' ' .. ARGV[3])
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  redis.call('PEXPIRE', KEYS[2], left)
  redis.call('PEXPIRE', KEYS[3], left)
else
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[1])
end
return start
"""

# KEYS[1] the owner's sessions (a sorted set: session id scored by its creation time). ARGV[1]
# the new session's creation time, ARGV[2] the creation time before which a session has expired,
# ARGV[3] the most sessions the owner may hold (-1: no limit), ARGV[4] the new session's id,
# ARGV[5] the set's TTL in seconds. Drops the expired ones, then counts and adds in one step, so
# concurrent creates never take an owner past the limit. Returns 0 for an owner at the limit
# (nothing written), 1 when the id was added, 2 when the set held it already.
RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local limit = tonumber(ARGV[3])
if limit >= 0 and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if added == 1 then
  return 1
end
return 2
"""
