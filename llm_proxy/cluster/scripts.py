"""The Lua scripts Redis runs for shared limits: each check-and-count is one atomic script.

Times are Redis's own (`TIME`), so proxies on machines whose clocks differ still
agree. Windows (rpm, tpm) are hashes of one-second buckets over the last 60
seconds (a bucket leaves the window whole: a limit errs towards refusing, never
towards passing). Slots (parallel, llm_max_concurrent) and budget reservations
are leases: sorted-set members scored by their expiry, renewed by the proxy
holding them while the call runs, so a proxy that dies leaks nothing for longer
than one lease. Money is whole nano-dollars (Lua numbers are doubles: exact to
9e15 nano-USD, $9M), passed as strings where Redis keeps them.
"""

from __future__ import annotations

# KEYS: flight, rpm, tpm, res, resamt, spend
# ARGV: id, lease_ms, parallel, rpm, tpm, est_tokens, budget_nanos (-1: none), est_cost_nanos,
#       db_spend_nanos, period_start_hour
# Returns {0, admit_second} or {1} parallel, {2, retry_ms} rpm, {3, retry_ms} tpm, {4, spent, held} budget.
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, lease = ARGV[1], tonumber(ARGV[2])
local parallel, rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est, budget, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local dbspend, start_hour = tonumber(ARGV[9]), tonumber(ARGV[10])

local function window(key)
  local total, oldest = 0, sec
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s <= sec - 60 then
      redis.call('HDEL', key, flat[i])
    else
      total = total + tonumber(flat[i + 1])
      if s < oldest then oldest = s end
    end
  end
  return total, (oldest + 60 - sec) * 1000
end

if parallel > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= parallel then return {1} end
end
if rpm > 0 then
  local total, wait = window(KEYS[2])
  if total + 1 > rpm then return {2, wait} end
end
if tpm > 0 then
  local total, wait = window(KEYS[3])
  if total + math.max(est, 1) > tpm then return {3, math.max(wait, 1000)} end
end
if budget >= 0 then
  local spent = 0
  local flat = redis.call('HGETALL', KEYS[6])
  for i = 1, #flat, 2 do
    local h = tonumber(flat[i])
    if h < start_hour - 800 then
      redis.call('HDEL', KEYS[6], flat[i])
    elseif h >= start_hour then
      spent = spent + tonumber(flat[i + 1])
    end
  end
  if dbspend > spent then spent = dbspend end
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  for _, m in ipairs(expired) do redis.call('HDEL', KEYS[5], m) end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local held = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[5])) do held = held + tonumber(v) end
  if spent + held >= budget then return {4, spent, held} end
end
if parallel > 0 then
  redis.call('ZADD', KEYS[1], now + lease, id)
  redis.call('PEXPIRE', KEYS[1], lease * 2)
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[2], t[1], 1)
  redis.call('EXPIRE', KEYS[2], 61)
end
if tpm > 0 and est > 0 then
  redis.call('HINCRBY', KEYS[3], t[1], ARGV[6])
  redis.call('EXPIRE', KEYS[3], 61)
end
if budget >= 0 and cost > 0 then
  redis.call('ZADD', KEYS[4], now + lease, id)
  redis.call('HSET', KEYS[5], id, ARGV[8])
  redis.call('PEXPIRE', KEYS[4], lease * 2)
  redis.call('PEXPIRE', KEYS[5], lease * 2)
end
return {0, sec}
"""

# KEYS: gate
# ARGV: id, lease_ms, limit.  Returns 1 (a slot is held) or 0 (all taken).
GATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0  -- (a slot this id already holds, from a try whose answer was lost, is kept)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""

# KEYS: flight, gate, tpm, res, resamt, spend
# ARGV: id, release (1/0), settle (1/0), admit_second ('' if none), est_tokens, real_tokens,
#       real_cost_nanos, spend_ttl_seconds
END = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local id = ARGV[1]
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[5], id)
  local est = tonumber(ARGV[5])
  if est > 0 and ARGV[4] ~= '' and tonumber(ARGV[4]) > sec - 60 and redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then
    if redis.call('HINCRBY', KEYS[3], ARGV[4], -est) <= 0 then redis.call('HDEL', KEYS[3], ARGV[4]) end
  end
  if tonumber(ARGV[6]) > 0 then
    redis.call('HINCRBY', KEYS[3], t[1], ARGV[6])
    redis.call('EXPIRE', KEYS[3], 61)
  end
  if tonumber(ARGV[7]) > 0 then
    redis.call('HINCRBY', KEYS[6], tostring(math.floor(sec / 3600)), ARGV[7])
    redis.call('EXPIRE', KEYS[6], ARGV[8])
  end
end
return 1
"""

# KEYS: lease sets (flight, gate, res) and their companion hashes (resamt: TTL only)
# ARGV: lease_ms, then one member per key ('' for a companion hash).
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local member = ARGV[i + 1]
  if member ~= '' then redis.call('ZADD', key, 'XX', now + lease, member) end
  redis.call('PEXPIRE', key, lease * 2)
end
return #KEYS
"""
