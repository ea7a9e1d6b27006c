"""The job store's atomic steps, as Lua scripts run inside Redis.

Every script receives ``ARGV[1]`` = namespace and ``ARGV[2]`` = now (unix
seconds, as text) and builds its keys from them, because which keys a step
touches (the file's link queue, its job) is only known once the file is read.
That confines the store to a single Redis (no Cluster), as the design assumes.

Which file states an event may start from, and where it leads, are not written
here: the store passes them as ARGV, generated from
``transferd.states.FILE_TRANSITIONS``.  The job-state rule *is* duplicated
(``job_state_of`` below mirrors ``transferd.states.job_state``) and a test runs
both over every small combination of counts and flags.

The job-wide steps (cancel, retry, accept, expire) are in
``transferd.store_lua_jobs``; ``script`` puts the shared helpers (``LIB``)
before the body of either.
"""

from __future__ import annotations

LIB = r"""
local TERMINAL_JOB = {FINISHED = true, FINISHEDDIRTY = true, FAILED = true,
                      CANCELED = true, EXPIRED = true}
local STREAM_MAXLEN = '100000'

local function num(v) return tonumber(v) or 0 end
-- Redis formats Lua numbers itself when they are command arguments; integers
-- are formatted here so counters stay exact integers whatever the Redis version.
local function istr(n) return string.format('%d', n) end
local function fstr(x) return string.format('%.17g', x) end
local function blank(v) return v == nil or v == false or v == '' end

local function allowed(csv, state)
  if blank(state) then return false end
  return string.find(',' .. csv .. ',', ',' .. state .. ',', 1, true) ~= nil
end

local function hash(key)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

local function emit(ns, now, kind, id, job_id, state, error_class)
  if blank(error_class) then
    redis.call('XADD', ns .. ':events', 'MAXLEN', '~', STREAM_MAXLEN, '*',
      'type', kind, 'id', id, 'job_id', job_id, 'state', state, 'ts', now)
  else
    redis.call('XADD', ns .. ':events', 'MAXLEN', '~', STREAM_MAXLEN, '*',
      'type', kind, 'id', id, 'job_id', job_id, 'state', state, 'ts', now,
      'error_class', error_class)
  end
end

-- mirrors transferd.states.job_state
local function job_state_of(accepted, cancel_requested, expired, s, a, f, fl, c)
  local total = s + a + f + fl + c
  if accepted == 0 then return 'AWAITING_ACCEPTANCE' end
  if s + a > 0 then
    if a > 0 or f + fl + c > 0 then return 'ACTIVE' end
    return 'SUBMITTED'
  end
  if cancel_requested == 1 and f < total then return 'CANCELED' end
  if expired == 1 and f < total then return 'EXPIRED' end
  if f == total then return 'FINISHED' end
  if f > 0 then return 'FINISHEDDIRTY' end
  if fl > 0 then return 'FAILED' end
  return 'CANCELED'
end

-- the job's state from its counters and flags; indexes, timestamps and an event follow it
local function recompute(ns, job_id, now)
  local jk = ns .. ':job:' .. job_id
  local v = redis.call('HMGET', jk, 'state', 'accepted', 'cancel_requested', 'expired',
    'n:SUBMITTED', 'n:ACTIVE', 'n:FINISHED', 'n:FAILED', 'n:CANCELED',
    'created_at', 'started_at')
  local new = job_state_of(num(v[2]), num(v[3]), num(v[4]),
    num(v[5]), num(v[6]), num(v[7]), num(v[8]), num(v[9]))
  redis.call('HSET', jk, 'updated_at', now)
  -- float deltas drift; with no active file the true rate is exactly zero
  if num(v[6]) == 0 then redis.call('HSET', jk, 'rate_bps', '0') end
  if new ~= v[1] then
    redis.call('HSET', jk, 'state', new)
    if not blank(v[1]) then redis.call('ZREM', ns .. ':jobs:state:' .. v[1], job_id) end
    redis.call('ZADD', ns .. ':jobs:state:' .. new, v[10], job_id)
    if new == 'ACTIVE' and blank(v[11]) then redis.call('HSET', jk, 'started_at', now) end
    if TERMINAL_JOB[new] then
      redis.call('HSET', jk, 'finished_at', now)
      -- the job's endpoint tokens (transferd.endpoint_tokens) end with it
      redis.call('DEL', ns .. ':creds:' .. job_id)
    else
      redis.call('HSET', jk, 'finished_at', '')
    end
    emit(ns, now, 'job', job_id, job_id, new, nil)
  end
  return new
end

local function queue_score(priority, seq)
  -- priority 9..0 in the high bits (2^44 apart), the FIFO sequence below
  local p = math.max(0, math.min(9, math.floor(priority)))
  return istr((9 - p) * 17592186044416 + seq)
end

-- a file's fair-share flow: "tenant|activity" (policies.fairshare.flow_name)
local function flow_of(tenant, activity)
  if blank(tenant) then tenant = '?' end
  if blank(activity) then activity = 'default' end
  return tenant .. '|' .. activity
end

local function flow_key(ns, link, flow) return ns .. ':qf:' .. link .. '#' .. flow end

-- mirrors policies.fairshare.flow_score: priority with aging, lowest first
local function flow_score(ns, priority, seq)
  local aging = tonumber(redis.call('GET', ns .. ':fair:aging')) or 10000
  local p = math.max(0, math.min(9, math.floor(priority)))
  return istr(seq - p * aging)
end

-- a queued file sits in its link's queue and in its flow's queue
local function enqueue_at(ns, fid, link, priority, flow, seq)
  redis.call('ZADD', ns .. ':q:' .. link, queue_score(num(priority), seq), fid)
  redis.call('ZADD', flow_key(ns, link, flow), flow_score(ns, num(priority), seq), fid)
  redis.call('SADD', ns .. ':qflows:' .. link, flow)
  redis.call('SADD', ns .. ':links', link)
end

local function enqueue(ns, fid, link, priority, flow)
  enqueue_at(ns, fid, link, priority, flow, redis.call('INCR', ns .. ':seq'))
end

local function unflow(ns, fid, link, flow)
  local fq = flow_key(ns, link, flow)
  if redis.call('ZREM', fq, fid) == 1 and redis.call('ZCARD', fq) == 0 then
    redis.call('SREM', ns .. ':qflows:' .. link, flow)
  end
end

-- out of the queue, the retry delay and the dispatch watch (not out of inflight)
local function unqueue(ns, fid, link, flow)
  local q = ns .. ':q:' .. link
  if redis.call('ZREM', q, fid) == 1 and redis.call('ZCARD', q) == 0 then
    redis.call('SREM', ns .. ':links', link)
  end
  unflow(ns, fid, link, flow)
  redis.call('ZREM', ns .. ':delayed', fid)
  redis.call('ZREM', ns .. ':dispatched', fid)
end

local function flow_of_file(f) return flow_of(f.tenant, f.activity) end

-- per-link counters the optimizer reads (td:lstat:{link}): bytes moved (live, from
-- heartbeats), attempts that succeeded or failed and their summed durations
local function link_bytes(ns, link, delta)
  if delta > 0 then redis.call('HINCRBY', ns .. ':lstat:' .. link, 'bytes', istr(delta)) end
end

local function link_outcome(ns, link, outcome, duration_s)
  local k = ns .. ':lstat:' .. link
  redis.call('HINCRBY', k, outcome, 1)
  if duration_s > 0 and duration_s < 1e9 then
    redis.call('HINCRBYFLOAT', k, outcome .. '_s', fstr(duration_s))
  end
end

-- the file leaves ACTIVE: its lease ends, its live progress and rate leave the job totals
local function leave_active(ns, fk, fid, f)
  local jk = ns .. ':job:' .. f.job_id
  local done = num(f.bytes_done)
  local rate = num(f.rate_bps)
  if done ~= 0 then redis.call('HINCRBY', jk, 'bytes_done', istr(-done)) end
  if rate ~= 0 then redis.call('HINCRBYFLOAT', jk, 'rate_bps', fstr(-rate)) end
  redis.call('HSET', fk, 'bytes_done', '0', 'rate_bps', '0', 'lease_owner', '', 'lease_until', '')
  redis.call('ZREM', ns .. ':leases', fid)
  redis.call('SREM', ns .. ':inflight:' .. f.link, fid)
end

-- the file changes state: counters, per-job state index, event
local function move(ns, fk, fid, f, to, now, error_class)
  local jk = ns .. ':job:' .. f.job_id
  redis.call('HINCRBY', jk, 'n:' .. f.state, -1)
  redis.call('HINCRBY', jk, 'n:' .. to, 1)
  redis.call('ZREM', jk .. ':files:' .. f.state, fid)
  redis.call('ZADD', jk .. ':files:' .. to, f.index, fid)
  redis.call('HSET', fk, 'state', to)
  emit(ns, now, 'file', fid, f.job_id, to, error_class)
end

-- a SUBMITTED or ACTIVE file stops for good (cancel, deadline): nothing may still run it
local function stop_file(ns, fid, f, to, now, error_class, reason)
  local fk = ns .. ':file:' .. fid
  if f.state == 'ACTIVE' then
    leave_active(ns, fk, fid, f)
    redis.call('PUBLISH', ns .. ':cancel', fid)
  else
    unqueue(ns, fid, f.link, flow_of_file(f))
    redis.call('SREM', ns .. ':inflight:' .. f.link, fid)
  end
  move(ns, fk, fid, f, to, now, error_class)
  redis.call('HSET', fk, 'finished_at', now, 'not_before', '')
  if not blank(error_class) then
    redis.call('HSET', fk, 'error_class', error_class, 'reason', reason)
  end
end
"""

# Standalone (run inside submit's MULTI, so it must not read what it writes to decide).
# ARGV: ns, job_id, submitted_state, priority, max_retries, retry_delay_s, queue (1/0),
#       first FIFO sequence number, JSON [[index, source, destination, backend, link,
#       size, checksum, metadata_json], ...] with "" for absent values, tenant, activity
# (runs with the LIB helpers: enqueue_at reads only the aging setting, never what it writes)
STORE_FILES = r"""
local ns, job_id, state = ARGV[1], ARGV[2], ARGV[3]
local priority = math.max(0, math.min(9, math.floor(tonumber(ARGV[4]))))
local queue = ARGV[7] == '1'
local seq = tonumber(ARGV[8])
local rows = cjson.decode(ARGV[9])
local by_state = ns .. ':job:' .. job_id .. ':files:' .. state
local flow = flow_of(ARGV[10], ARGV[11])
for i, r in ipairs(rows) do
  local fid = job_id .. '.' .. r[1]
  local fields = {'file_id', fid, 'job_id', job_id, 'index', r[1], 'source', r[2],
    'destination', r[3], 'state', state, 'backend', r[4], 'link', r[5],
    'attempts', '0', 'bytes_done', '0', 'rate_bps', '0',
    'priority', ARGV[4], 'max_retries', ARGV[5], 'retry_delay_s', ARGV[6],
    'tenant', ARGV[10], 'activity', ARGV[11]}
  if r[6] ~= '' then fields[#fields + 1] = 'size'; fields[#fields + 1] = r[6] end
  if r[7] ~= '' then fields[#fields + 1] = 'checksum'; fields[#fields + 1] = r[7] end
  if r[8] ~= '' then fields[#fields + 1] = 'metadata'; fields[#fields + 1] = r[8] end
  redis.call('HSET', ns .. ':file:' .. fid, unpack(fields))
  redis.call('ZADD', by_state, r[1], fid)
  if queue then enqueue_at(ns, fid, r[5], priority, flow, seq + i - 1) end
end
return #rows
"""

# ARGV: ns, now, file_id, worker_id, lease_s, claim_from, claim_to
CLAIM = r"""
local ns, now, fid, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fk = ns .. ':file:' .. fid
local f = hash(fk)
if not allowed(ARGV[6], f.state) then return false end
if not blank(f.not_before) and tonumber(f.not_before) > tonumber(now) then return false end
local j = redis.call('HMGET', ns .. ':job:' .. f.job_id, 'accepted', 'cancel_requested')
if num(j[1]) ~= 1 or num(j[2]) == 1 then return false end
local lease_until = string.format('%.6f', tonumber(now) + tonumber(ARGV[5]))
unqueue(ns, fid, f.link, flow_of_file(f))
redis.call('SADD', ns .. ':inflight:' .. f.link, fid)
redis.call('ZADD', ns .. ':leases', lease_until, fid)
move(ns, fk, fid, f, ARGV[7], now, nil)
-- attempts is 0 only before a file's first try, including after a job-wide retry
-- (which resets it): mismatches counted before that are not this run's
if num(f.attempts) == 0 then redis.call('HDEL', fk, 'checksum_mismatches') end
redis.call('HSET', fk, 'attempts', istr(num(f.attempts) + 1), 'lease_owner', worker,
  'lease_until', lease_until, 'started_at', now, 'finished_at', '', 'not_before', '',
  'bytes_done', '0', 'rate_bps', '0')
recompute(ns, f.job_id, now)
return redis.call('HGETALL', fk)
"""

# ARGV: ns, now, file_id, worker_id, bytes_done, rate_bps, lease_s
HEARTBEAT = r"""
local ns, now, fid, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fk = ns .. ':file:' .. fid
local f = hash(fk)
if f.state ~= 'ACTIVE' or f.lease_owner ~= worker then return 0 end
local jk = ns .. ':job:' .. f.job_id
local done = math.floor(tonumber(ARGV[5]))
local rate = tonumber(ARGV[6])
local lease_until = string.format('%.6f', tonumber(now) + tonumber(ARGV[7]))
if done ~= num(f.bytes_done) then
  redis.call('HINCRBY', jk, 'bytes_done', istr(done - num(f.bytes_done)))
end
link_bytes(ns, f.link, done - num(f.bytes_done))
if rate ~= num(f.rate_bps) then
  redis.call('HINCRBYFLOAT', jk, 'rate_bps', fstr(rate - num(f.rate_bps)))
end
redis.call('HSET', fk, 'bytes_done', istr(done), 'rate_bps', ARGV[6], 'lease_until', lease_until)
redis.call('ZADD', ns .. ':leases', lease_until, fid)
redis.call('HSET', jk, 'updated_at', now)
return 1
"""

# ARGV: ns, now, file_id, worker_id, verified_checksum, bytes_done, finish_from, finish_to
FINISH = r"""
local ns, now, fid, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fk = ns .. ':file:' .. fid
local f = hash(fk)
if not allowed(ARGV[7], f.state) or f.lease_owner ~= worker then return 0 end
local jk = ns .. ':job:' .. f.job_id
local done = math.floor(tonumber(ARGV[6]))
link_bytes(ns, f.link, done - num(f.bytes_done))
link_outcome(ns, f.link, 'ok', tonumber(now) - num(f.started_at))
leave_active(ns, fk, fid, f)
if done ~= 0 then redis.call('HINCRBY', jk, 'bytes_done', istr(done)) end
-- the bytes copied are the file's size now, whatever was declared or unknown before
if done ~= num(f.size) then
  redis.call('HINCRBY', jk, 'bytes_total', istr(done - num(f.size)))
end
redis.call('HSET', fk, 'size', istr(done))
move(ns, fk, fid, f, ARGV[8], now, nil)
redis.call('HSET', fk, 'bytes_done', istr(done), 'verified_checksum', ARGV[5],
  'finished_at', now, 'error_class', '', 'reason', '', 'not_before', '')
recompute(ns, f.job_id, now)
return 1
"""

# ARGV: ns, now, file_id, worker_id, error_class, reason, retry (1/0), not_before,
#       expected_attempts, requeue_from, requeue_to, fail_from, fail_to,
#       checksum mismatch (1/0: counted in the file's checksum_mismatches)
FAIL = r"""
local ns, now, fid, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fk = ns .. ':file:' .. fid
local f = hash(fk)
if blank(f.state) then return '' end
-- the decision was taken for this attempt; a later attempt's state is not ours to change
if f.lease_owner ~= worker or tostring(num(f.attempts)) ~= ARGV[9] then return f.state end
local retry = ARGV[7] == '1'
local from_csv, to = ARGV[12], ARGV[13]
if retry then from_csv, to = ARGV[10], ARGV[11] end
if not allowed(from_csv, f.state) then return f.state end
link_outcome(ns, f.link, 'fail', tonumber(now) - num(f.started_at))
leave_active(ns, fk, fid, f)
move(ns, fk, fid, f, to, now, ARGV[5])
redis.call('HSET', fk, 'error_class', ARGV[5], 'reason', ARGV[6])
if ARGV[14] == '1' then redis.call('HINCRBY', fk, 'checksum_mismatches', 1) end
if retry then
  redis.call('HSET', fk, 'not_before', ARGV[8])
  if tonumber(ARGV[8]) > tonumber(now) then
    redis.call('ZADD', ns .. ':delayed', ARGV[8], fid)
  else
    enqueue(ns, fid, f.link, f.priority, flow_of_file(f))
  end
else
  redis.call('HSET', fk, 'finished_at', now, 'not_before', '')
end
recompute(ns, f.job_id, now)
return to
"""

# ARGV: ns, now, file_id, worker_id, requeue_from, requeue_to
RELEASE = r"""
local ns, now, fid, worker = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fk = ns .. ':file:' .. fid
local f = hash(fk)
if not allowed(ARGV[5], f.state) or f.lease_owner ~= worker then return 0 end
leave_active(ns, fk, fid, f)
move(ns, fk, fid, f, ARGV[6], now, nil)
redis.call('HSET', fk, 'attempts', istr(math.max(0, num(f.attempts) - 1)), 'not_before', '')
enqueue(ns, fid, f.link, f.priority, flow_of_file(f))
recompute(ns, f.job_id, now)
return 1
"""

# ARGV: ns, now, file_id, members (JSON); a file that is gone is left gone
SET_MEMBERS = r"""
local fk = ARGV[1] .. ':file:' .. ARGV[3]
if redis.call('EXISTS', fk) == 0 then return 0 end
redis.call('HSET', fk, 'members', ARGV[4])
return 1
"""

# ARGV: ns, now, file_id, size
SET_SIZE = r"""
local ns, now, fid = ARGV[1], ARGV[2], ARGV[3]
local fk = ns .. ':file:' .. fid
local v = redis.call('HMGET', fk, 'state', 'size', 'job_id')
if blank(v[1]) then return 0 end
local size = math.floor(tonumber(ARGV[4]))
local delta = size - num(v[2])
if delta ~= 0 then
  redis.call('HINCRBY', ns .. ':job:' .. v[3], 'bytes_total', istr(delta))
end
redis.call('HSET', fk, 'size', istr(size))
return 1
"""

# ARGV: ns, now, link, limit, dispatched_until, claim_from
DISPATCH = r"""
local ns, now, link = ARGV[1], ARGV[2], ARGV[3]
local inflight = ns .. ':inflight:' .. link
local q = ns .. ':q:' .. link
local room = tonumber(ARGV[4]) - redis.call('SCARD', inflight)
local out = {}
while room > 0 do
  local popped = redis.call('ZPOPMIN', q)
  if #popped == 0 then break end
  local fid = popped[1]
  local v = redis.call('HMGET', ns .. ':file:' .. fid, 'state', 'job_id', 'backend', 'not_before',
    'tenant', 'activity')
  unflow(ns, fid, link, flow_of(v[5], v[6]))
  -- entries for files canceled, claimed or delayed since they were queued are dropped
  if allowed(ARGV[6], v[1]) then
    local j = redis.call('HMGET', ns .. ':job:' .. v[2], 'accepted', 'cancel_requested')
    if num(j[1]) == 1 and num(j[2]) == 0 then
      if not blank(v[4]) and tonumber(v[4]) > tonumber(now) then
        redis.call('ZADD', ns .. ':delayed', v[4], fid)
      else
        redis.call('SADD', inflight, fid)
        redis.call('ZADD', ns .. ':dispatched', ARGV[5], fid)
        out[#out + 1] = fid
        out[#out + 1] = v[3]
        room = room - 1
      end
    end
  end
end
if redis.call('ZCARD', q) == 0 then redis.call('SREM', ns .. ':links', link) end
return out
"""

# ARGV: ns, now, link, limit, dispatched_until, claim_from, flow...  (the fair-share order)
# returns {file_id, backend, flow, ...}; a flow that runs dry gives up its turns
DISPATCH_FAIR = r"""
local ns, now, link = ARGV[1], ARGV[2], ARGV[3]
local inflight = ns .. ':inflight:' .. link
local q = ns .. ':q:' .. link
local room = tonumber(ARGV[4]) - redis.call('SCARD', inflight)
local out = {}
local i = 7
while room > 0 and i <= #ARGV do
  local flow = ARGV[i]
  local fq = flow_key(ns, link, flow)
  local popped = redis.call('ZPOPMIN', fq)
  if #popped == 0 then
    redis.call('SREM', ns .. ':qflows:' .. link, flow)
    i = i + 1
  else
    local fid = popped[1]
    redis.call('ZREM', q, fid)
    local v = redis.call('HMGET', ns .. ':file:' .. fid, 'state', 'job_id', 'backend', 'not_before')
    -- entries for files canceled, claimed or delayed since they were queued are dropped
    -- (and the same flow tries again)
    if allowed(ARGV[6], v[1]) then
      local j = redis.call('HMGET', ns .. ':job:' .. v[2], 'accepted', 'cancel_requested')
      if num(j[1]) == 1 and num(j[2]) == 0 then
        if not blank(v[4]) and tonumber(v[4]) > tonumber(now) then
          redis.call('ZADD', ns .. ':delayed', v[4], fid)
        else
          redis.call('SADD', inflight, fid)
          redis.call('ZADD', ns .. ':dispatched', ARGV[5], fid)
          out[#out + 1] = fid
          out[#out + 1] = v[3]
          out[#out + 1] = flow
          room = room - 1
          i = i + 1
        end
      end
    end
    if redis.call('ZCARD', fq) == 0 then redis.call('SREM', ns .. ':qflows:' .. link, flow) end
  end
end
if redis.call('ZCARD', q) == 0 then redis.call('SREM', ns .. ':links', link) end
return out
"""

# ARGV: ns, now, max, claim_from
PROMOTE_DELAYED = r"""
local ns, now = ARGV[1], ARGV[2]
local due = redis.call('ZRANGEBYSCORE', ns .. ':delayed', '-inf', now, 'LIMIT', 0, ARGV[3])
local moved = 0
for _, fid in ipairs(due) do
  redis.call('ZREM', ns .. ':delayed', fid)
  local v = redis.call('HMGET', ns .. ':file:' .. fid, 'state', 'link', 'priority', 'tenant',
    'activity')
  if allowed(ARGV[4], v[1]) then
    enqueue(ns, fid, v[2], v[3], flow_of(v[4], v[5]))
    moved = moved + 1
  end
end
return {#due, moved}
"""

# ARGV: ns, now, max, requeue_from, requeue_to, fail_from, fail_to, claim_from
# returns {leases looked at, dispatches looked at, file ids put back or failed...}
REAP = r"""
local ns, now = ARGV[1], ARGV[2]
local out = {0, 0}
local expired = redis.call('ZRANGEBYSCORE', ns .. ':leases', '-inf', now, 'LIMIT', 0, ARGV[3])
out[1] = #expired
for _, fid in ipairs(expired) do
  local fk = ns .. ':file:' .. fid
  local f = hash(fk)
  if not allowed(ARGV[4], f.state) then
    redis.call('ZREM', ns .. ':leases', fid)
  else
    link_outcome(ns, f.link, 'fail', tonumber(now) - num(f.started_at))
    leave_active(ns, fk, fid, f)
    local reason = 'the worker stopped renewing its lease'
    if num(f.attempts) <= num(f.max_retries) then
      move(ns, fk, fid, f, ARGV[5], now, 'lease_expired')
      redis.call('HSET', fk, 'error_class', 'lease_expired', 'reason', reason, 'not_before', '')
      enqueue(ns, fid, f.link, f.priority, flow_of_file(f))
    else
      move(ns, fk, fid, f, ARGV[7], now, 'lease_expired')
      redis.call('HSET', fk, 'error_class', 'lease_expired', 'reason', reason,
        'finished_at', now, 'not_before', '')
    end
    recompute(ns, f.job_id, now)
    out[#out + 1] = fid
  end
end
local stale = redis.call('ZRANGEBYSCORE', ns .. ':dispatched', '-inf', now, 'LIMIT', 0, ARGV[3])
out[2] = #stale
for _, fid in ipairs(stale) do
  redis.call('ZREM', ns .. ':dispatched', fid)
  local v = redis.call('HMGET', ns .. ':file:' .. fid, 'state', 'link', 'priority', 'tenant',
    'activity')
  if allowed(ARGV[8], v[1]) then
    redis.call('SREM', ns .. ':inflight:' .. v[2], fid)
    enqueue(ns, fid, v[2], v[3], flow_of(v[4], v[5]))
    out[#out + 1] = fid
  end
end
return out
"""

# ARGV: accepted, cancel_requested, expired, n_submitted, n_active, n_finished, n_failed,
#       n_canceled — for the test that holds job_state_of equal to transferd.states.job_state
JOB_STATE = r"""
return job_state_of(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
"""


def script(body: str) -> str:
    """A runnable script: the shared helpers followed by ``body``."""
    return LIB + body
