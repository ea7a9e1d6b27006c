"""The job store's job-wide steps (cancel, retry, accept, expire) as Lua scripts.

Each touches every file of a job, so each runs as a sequence of bounded
batches (``transferd.store.BATCH_FILES`` files per call) that Redis never
blocks on for long; the first batch sets the job flag that makes the rest safe
against racing workers.  Like the per-file steps in ``transferd.store_lua``,
they are run through ``store_lua.script`` (the shared helpers first) and get
``ARGV[1]`` = namespace, ``ARGV[2]`` = now.
"""

from __future__ import annotations

__all__ = ["ACCEPT_BATCH", "CANCEL_BATCH", "EXPIRE_BATCH", "RETRY_BATCH"]

# ARGV: ns, now, job_id, batch, first (1/0), cancel_from, cancel_to
# returns -1 unknown job, -2 job already terminal (unchanged), else files still to cancel
CANCEL_BATCH = r"""
local ns, now, job_id = ARGV[1], ARGV[2], ARGV[3]
local jk = ns .. ':job:' .. job_id
local state = redis.call('HGET', jk, 'state')
if blank(state) then return -1 end
if ARGV[5] == '1' then
  if TERMINAL_JOB[state] then return -2 end
  -- a canceled share is no longer awaiting acceptance: the job must reach CANCELED
  redis.call('HSET', jk, 'cancel_requested', '1', 'accepted', '1')
end
local remaining = 0
for from in string.gmatch(ARGV[6], '[^,]+') do
  local ids = redis.call('ZRANGE', jk .. ':files:' .. from, 0, tonumber(ARGV[4]) - 1)
  for _, fid in ipairs(ids) do
    local f = hash(ns .. ':file:' .. fid)
    if allowed(ARGV[6], f.state) then stop_file(ns, fid, f, ARGV[7], now, nil, nil) end
  end
  remaining = remaining + redis.call('ZCARD', jk .. ':files:' .. from)
end
recompute(ns, job_id, now)
return remaining
"""

# ARGV: ns, now, job_id, batch, first (1/0), retry_from, retry_to
# returns {files retried, files still to retry}; {-1, 0} unknown job
RETRY_BATCH = r"""
local ns, now, job_id = ARGV[1], ARGV[2], ARGV[3]
local jk = ns .. ':job:' .. job_id
local v = redis.call('HMGET', jk, 'state', 'deadline_ts')
if blank(v[1]) then return {-1, 0} end
if ARGV[5] == '1' then
  redis.call('HSET', jk, 'cancel_requested', '0', 'expired', '0')
  if not blank(v[2]) then redis.call('ZADD', ns .. ':deadlines', v[2], job_id) end
end
local n, remaining = 0, 0
for from in string.gmatch(ARGV[6], '[^,]+') do
  local ids = redis.call('ZRANGE', jk .. ':files:' .. from, 0, tonumber(ARGV[4]) - 1)
  for _, fid in ipairs(ids) do
    local fk = ns .. ':file:' .. fid
    local f = hash(fk)
    if allowed(ARGV[6], f.state) then
      move(ns, fk, fid, f, ARGV[7], now, nil)
      redis.call('HSET', fk, 'attempts', '0', 'error_class', '', 'reason', '',
        'not_before', '', 'finished_at', '', 'verified_checksum', '',
        'bytes_done', '0', 'rate_bps', '0')
      enqueue(ns, fid, f.link, f.priority, flow_of_file(f))
      n = n + 1
    end
  end
  remaining = remaining + redis.call('ZCARD', jk .. ':files:' .. from)
end
recompute(ns, job_id, now)
return {n, remaining}
"""

# ARGV: ns, now, job_id, start_index, batch
# returns -1 unknown job, -2 not awaiting acceptance, -3 all queued, else the next start index
ACCEPT_BATCH = r"""
local ns, now, job_id = ARGV[1], ARGV[2], ARGV[3]
local jk = ns .. ':job:' .. job_id
local v = redis.call('HMGET', jk, 'state', 'accepted')
if blank(v[1]) then return -1 end
if ARGV[4] == '0' then
  if num(v[2]) == 1 then return -2 end
  redis.call('HSET', jk, 'accepted', '1')
  recompute(ns, job_id, now)
end
local rows = redis.call('ZRANGEBYSCORE', jk .. ':files:SUBMITTED', ARGV[4], '+inf',
  'WITHSCORES', 'LIMIT', 0, ARGV[5])
if #rows == 0 then return -3 end
for i = 1, #rows, 2 do
  local f = redis.call('HMGET', ns .. ':file:' .. rows[i], 'link', 'priority', 'tenant',
    'activity')
  enqueue(ns, rows[i], f[1], f[2], flow_of(f[3], f[4]))
end
return tonumber(rows[#rows]) + 1
"""

# ARGV: ns, now, job_id, batch, fail_from, fail_to
# returns -1 when there is nothing to expire, else files still to fail
EXPIRE_BATCH = r"""
local ns, now, job_id = ARGV[1], ARGV[2], ARGV[3]
local jk = ns .. ':job:' .. job_id
local v = redis.call('HMGET', jk, 'state', 'deadline_ts')
if blank(v[1]) or TERMINAL_JOB[v[1]] or blank(v[2]) then
  redis.call('ZREM', ns .. ':deadlines', job_id)
  return -1
end
if tonumber(v[2]) > tonumber(now) then return -1 end
-- like a cancel, a passed deadline also closes an unanswered share
redis.call('HSET', jk, 'expired', '1', 'accepted', '1')
local remaining = 0
for from in string.gmatch(ARGV[5], '[^,]+') do
  local ids = redis.call('ZRANGE', jk .. ':files:' .. from, 0, tonumber(ARGV[4]) - 1)
  for _, fid in ipairs(ids) do
    local f = hash(ns .. ':file:' .. fid)
    if allowed(ARGV[5], f.state) then
      stop_file(ns, fid, f, ARGV[6], now, 'expired', 'the job deadline passed')
    end
  end
  remaining = remaining + redis.call('ZCARD', jk .. ':files:' .. from)
end
recompute(ns, job_id, now)
if remaining == 0 then redis.call('ZREM', ns .. ':deadlines', job_id) end
return remaining
"""
