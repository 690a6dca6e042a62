"""Every Lua script Forwarder runs, each with its KEYS and ARGV, behind a typed call.

Scripts make the writes that must be atomic one round trip: a run's transition (written by
every run's creator and by the workers), beat's claim of its due slots with their run records
and messages, a schedule writer's compare-and-set, beat's read of what is due, and the api's
submission of a run with its message. The run transition is one Lua function that the claim
and the submit scripts include, so every writer applies the same rules. A backfill's check
and claim of past slots (:class:`BackfillSlot`) share one more function, which tells a slot
already run from one still free.

Callers pass typed values (:class:`RunWrite`, :class:`Claim`) and get typed replies; only this
module knows the order of the arguments.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio

from forwarder_worker._redis.keys import (
    ACTIVE_RUNS,
    DUE,
    DURATIONS,
    METRICS,
    RUN,
    SCHEDULE_RUNS,
    SCHEDULE_STATS,
    Keys,
)
from forwarder_worker.names import DURATION_BUCKETS, OVERLAP_SKIP

# The duration histogram's buckets, spelt out as Lua code (field suffixes spelt as Python
# spells the bound, which the api's reader uses; Lua would write 1.0 as "1"): a table literal
# would be built anew on every call of the script, and allocation is most of what a script's
# own Lua costs Redis.
_DURATION_FIELDS = "".join(f", task .. ' le_{bound!r}', 0" for bound in DURATION_BUCKETS)
_DURATION_BUCKET = (
    "".join(
        f"{'if' if i == 0 else 'elseif'} seconds <= {bound!r} then bucket = 'le_{bound!r}'\n  "
        for i, bound in enumerate(DURATION_BUCKETS)
    )
    + "end"
)

# -- the run transition --------------------------------------------------------------------

# Create-or-update a run in one atomic step. A final state is never overwritten by a late
# non-final signal, and RECEIVED never overwrites STARTED or RETRY (signals from the main
# process and the pool child can arrive out of order: a worker sends its RECEIVED writes a few
# milliseconds late, several in one round trip; a retry's message, sent before its RETRY is
# recorded, is received at once and held for its countdown, which the RETRY tells). A
# RECEIVED older than the record's start (an earlier attempt's, landing late) changes
# nothing. Reaching a final state is published on the run's
# key, for the API's long poll, with the final record itself as the payload.
# key: run hash, gkey: global zset, ckey: changed set, prefix: the key prefix (the
# per-schedule keys are derived from it, as Keys names them); fields: a field -> value table
# ('' values are left as they were).
TRANSITION_FUNCTION = (
    """
-- suspendAfterFailures: the entry's `failures`-th failed run in a row takes it out of the due
-- set and marks it paused (with the count), once; counted in the scheduler's metrics. Only a
-- resume or a spec change (the store's upsert script) puts it back.
local function pause_after_failures(prefix, schedule, failures)
  local ekey = prefix .. schedule
  local definition = redis.call('HGET', ekey, 'definition')
  if not definition then return end
  local ok, entry = pcall(cjson.decode, definition)
  if not ok or type(entry) ~= 'table' then return end
  local limit = tonumber(entry['suspend_after'])
  if limit and failures >= limit and redis.call('HEXISTS', ekey, 'paused') == 0 then
    redis.call('HSET', ekey, 'paused', failures)
    redis.call('ZREM', prefix .. '@DUE@', ekey)
    redis.call('HINCRBY', prefix .. '@METRICS@', 'suspended_after_failures', 1)
  end
end

-- A run that ran (started, then succeeded or failed) counts its duration into its task's
-- histogram: a bucket count and the sum (microseconds), fields of one hash (the count is the
-- buckets' total), so the api's scrape reads every task's in one HGETALL and the worker pays
-- no round trip of its own; read from the final record the announcement carries, no read.
-- At most `dcap` fields: a task's first run writes all its fields (zeros), so the hash holds
-- whole tasks, and a task first seen once it is full is not counted (task names are the
-- workers' registered ones, but renamed tasks would pile up for ever).
local function count_duration(prefix, record, now, dcap)
  local started = tonumber(record['started'])
  local task = record['task']
  if not task or not started then return end
  local dkey = prefix .. '@DURATIONS@'
  local sum_field = task .. ' sum_us'
  if redis.call('HEXISTS', dkey, sum_field) == 0 then
    if redis.call('HLEN', dkey) >= dcap then return end
    redis.call('HSET', dkey, sum_field, 0, task .. ' le_inf', 0@DURATION_FIELDS@)
  end
  local seconds = math.max(0, (tonumber(record['finished']) or now) - started)
  local bucket = 'le_inf'
  @DURATION_BUCKET@
  redis.call('HINCRBY', dkey, task .. ' ' .. bucket, 1)
  -- Whole microseconds: HINCRBY costs less than HINCRBYFLOAT (no float text to write).
  redis.call('HINCRBY', dkey, sum_field, math.floor(seconds * 1e6 + 0.5))
end

-- A state a run ends in (a function, not a table: a table would be built on every call).
local function is_final(state)
  return state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED' or state == 'SKIPPED'
end

local function transition(key, gkey, ckey, prefix, id, state, now, ttl, gcap, scap, dcap,
    fields)
  -- What the record holds, read at once: each redis.call costs more than its command.
  local held = redis.call('HMGET', key, 'state', 'schedule', 'slot', 'attempts', 'retries',
    'started', 'worker', 'reason')
  local old = held[1] or nil
  if old and is_final(old) and not is_final(state) then return old end
  if state == 'RECEIVED' and held[6] and
      (tonumber(fields['received'] or '') or math.huge) < (tonumber(held[6]) or 0) then
    return old
  end
  if (old == 'STARTED' or old == 'RETRY') and state == 'RECEIVED' then state = old end
  if state == 'RETRY' and fields['retries'] and fields['retries'] ~= '' then
    -- A late RETRY, once the attempt it announces has started: that attempt's STARTED
    -- (retries as high) stays.
    local seen = tonumber(held[5] or '0') or 0
    if seen >= tonumber(fields['retries']) then return old end
  end
  if old == 'STARTED' and (state == 'RETRY' or
      (is_final(state) and held[4])) then
    -- An attempt ended: append it to the run's attempts (a JSON array), kept only for runs
    -- that retried. The error is this attempt's own: the retry's reason, or the failure.
    local item = {attempt = (tonumber(held[5]) or 0) + 1, state = state, finished = now}
    if held[6] then item['started'] = tonumber(held[6]) end
    if held[7] then item['worker'] = held[7] end
    local err = fields['reason']
    if state == 'FAILURE' then
      err = (fields['error_type'] or 'Error') .. ': ' .. (fields['error'] or '')
    elseif state == 'SUCCESS' then
      err = nil
    end
    if err and err ~= '' then item['error'] = err end
    local text = cjson.encode(item)
    local attempts = held[4]
    if attempts then
      attempts = string.sub(attempts, 1, -2) .. ',' .. text .. ']'
    else
      attempts = '[' .. text .. ']'
    end
    redis.call('HSET', key, 'attempts', attempts)
  end
  -- Every field in one HSET: the id and creation time of a new record, then the fields
  -- given, then the state (later pairs win, as separate writes in this order did).
  local pairs_ = {}
  if not old then
    pairs_ = {'id', id, 'created', now}
    redis.call('ZADD', gkey, now, id)
    -- Ids created longer than ttl ago have (nearly all) lost their records: they go, and
    -- then all but the newest gcap.
    redis.call('ZREMRANGEBYSCORE', gkey, '-inf', '(' .. (now - ttl))
    redis.call('ZREMRANGEBYRANK', gkey, 0, -gcap - 1)
  end
  for k, v in pairs(fields) do
    if v ~= '' then
      pairs_[#pairs_ + 1] = k
      pairs_[#pairs_ + 1] = v
    end
  end
  pairs_[#pairs_ + 1] = 'state'
  pairs_[#pairs_ + 1] = state
  pairs_[#pairs_ + 1] = 'updated'
  pairs_[#pairs_ + 1] = now
  redis.call('HSET', key, unpack(pairs_))
  redis.call('EXPIRE', key, ttl)
  local schedule = held[2] or nil
  if fields['schedule'] and fields['schedule'] ~= '' then schedule = fields['schedule'] end
  -- A schedule's keys are written only while its entry exists: a run that ends after its
  -- schedule was deleted must not bring back the keys the delete removed.
  if schedule and schedule ~= '' and redis.call('EXISTS', prefix .. schedule) == 1 then
    local skey = prefix .. '@SCHEDULE_RUNS@' .. schedule
    if not old then
      redis.call('ZADD', skey, now, id)
      redis.call('ZREMRANGEBYSCORE', skey, '-inf', '(' .. (now - ttl))
      redis.call('ZREMRANGEBYRANK', skey, 0, -scap - 1)
      -- A schedule that created no run for ttl holds only expired ids.
      redis.call('EXPIRE', skey, ttl)
    end
    local stats = prefix .. '@SCHEDULE_STATS@' .. schedule
    local active = prefix .. '@ACTIVE_RUNS@' .. schedule
    if is_final(state) then
      redis.call('SREM', active, id)
      if old ~= state then
        if state ~= 'SKIPPED' then redis.call('HINCRBY', stats, 'total', 1) end
        redis.call('HINCRBY', stats, string.lower(state), 1)
        local reason = fields['reason'] or held[8] or ''
        if state == 'SKIPPED' and string.sub(reason, 1, #'@OVERLAP@') == '@OVERLAP@' then
          redis.call('HINCRBY', stats, 'overlap', 1)
        end
        if state == 'SUCCESS' then
          redis.call('HSET', stats, 'last_success', now, 'consecutive_failures', 0)
        elseif state == 'FAILURE' then
          local failures = redis.call('HINCRBY', stats, 'consecutive_failures', 1)
          redis.call('HSET', stats, 'last_failure', now)
          pause_after_failures(prefix, schedule, failures)
        end
      end
    elseif not old then
      -- A member from its creation to its end (a later non-final state adds nothing). A run
      -- that never ends (its message lost) stays a member; the set goes once its schedule
      -- created no run for ttl, when every member's record has expired.
      redis.call('SADD', active, id)
      redis.call('EXPIRE', active, ttl)
    end
    -- The latest slot only: a backfilled slot is in the past, and must not move it back. A
    -- later transition repeating the slot its record was created with cannot move it.
    if fields['slot'] and fields['slot'] ~= '' and fields['slot'] ~= held[3] and
        (tonumber(fields['slot']) or 0) >
        (tonumber(redis.call('HGET', stats, 'last_schedule')) or 0) then
      redis.call('HSET', stats, 'last_schedule', fields['slot'])
      if not old and state ~= 'SKIPPED' and fields['source'] == 'schedule' then
        -- Written by beat's claim, in the script that puts the message on its queue: how
        -- late this firing landed after its slot.
        redis.call('HSET', stats, 'last_lateness', math.max(0, now - tonumber(fields['slot'])))
      end
    end
    redis.call('SADD', ckey, schedule)
  end
  if is_final(state) and old ~= state then
    -- The final record itself, so a waiter needs no read of its own (bounded: every
    -- stored field is).
    local flat = redis.call('HGETALL', key)
    local record = {}
    for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
    if state == 'SUCCESS' or state == 'FAILURE' then
      count_duration(prefix, record, now, dcap)
    end
    redis.call('PUBLISH', key, cjson.encode(record))
  end
  return state
end
""".replace("@SCHEDULE_RUNS@", SCHEDULE_RUNS)
    .replace("@DUE@", DUE)
    .replace("@METRICS@", METRICS)
    .replace("@DURATIONS@", DURATIONS)
    .replace("@DURATION_FIELDS@", _DURATION_FIELDS)
    .replace("@DURATION_BUCKET@", _DURATION_BUCKET)
    .replace("@SCHEDULE_STATS@", SCHEDULE_STATS)
    .replace("@ACTIVE_RUNS@", ACTIVE_RUNS)
    .replace("@OVERLAP@", OVERLAP_SKIP)
)

# KEYS: run hash, global zset, changed set.  ARGV: prefix, id, state, now, ttl, global cap,
# per-schedule cap, durations field cap, then field/value pairs. Returns the state recorded.
TRANSITION = (
    TRANSITION_FUNCTION
    + """
local fields = {}
for i = 9, #ARGV, 2 do fields[ARGV[i]] = ARGV[i + 1] end
return transition(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), fields)
"""
)

# A task's state as Celery's result backend stores it, with its run's transitions (the
# workers' result backend, forwarder_worker.recording.result_backend). Celery reads the stored
# state before each store (one round trip of its own) and stores nothing over a SUCCESS, so a
# lost worker's late run cannot overwrite a result; here that check is made in the same
# atomic step. Then the SET and PUBLISH Celery would send, then each transition, in order.
# KEYS: Celery's state key, run hash, global zset, changed set.  ARGV: the state (Celery's
# JSON), its expiry in seconds ('' none), prefix, run id, now, ttl, global cap, per-schedule
# cap, durations field cap, then per transition: state, field count, field/value pairs.
# Returns 0 when a SUCCESS was stored already (nothing written), else 1.
STORE_RESULT = (
    TRANSITION_FUNCTION
    + """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
local i = 10
while i <= #ARGV do
  local fields = {}
  local last = i + 1 + 2 * tonumber(ARGV[i + 1])
  for j = i + 2, last, 2 do fields[ARGV[j]] = ARGV[j + 1] end
  transition(KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[i], tonumber(ARGV[5]),
    tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), fields)
  i = last + 1
end
return 1
"""
)

# -- beat's claim --------------------------------------------------------------------------

# Claim due slots: advance an entry only if nobody rewrote its definition (rev) and nobody
# claimed this slot already (its due score is still the one we read). Two beats that both
# read the same slot (a stale holder and its successor) can therefore never both fire it.
# The run record of each won slot is written in the same script, and so is its Celery
# message (LPUSH on its queue), so a slot this beat won is recorded and on its queue or
# neither, whenever beat dies or Redis goes away; a record never waits for a message that
# was never sent. The earliest due time after the claims is returned last, so beat needs
# no separate read for it.
# The claims come as one JSON array, the messages after it as they are: a batch of 500 is
# then ~1,000 arguments, not ~12,000, which beat packed (redis-py encodes each in Python)
# in more time than the script runs.
# KEYS: due set, global runs zset, runs:changed.  ARGV: key prefix, now, ttl, global cap,
# per-schedule cap, durations field cap, the claims, then every message's payload in the
# claims' order. Each claim is [hash key, rev, due score read, new meta, new due ('' leaves
# the due set), runs]; each run is [run id ('' claims only), state, [field, value, ...],
# [list key per message]]: the slot's run, then the missed slots missedRunPolicy All fires
# with it. Returns 1 or 0 per claim (won or lost), then the earliest due score ('' when the
# due set is empty).
CLAIM = (
    TRANSITION_FUNCTION
    + """
local out = {}
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local gcap, scap, dcap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local payload = 8  -- the next claim's first message
for n, claim in ipairs(cjson.decode(ARGV[7])) do
  local key, rev, due, meta, nxt, runs = claim[1], claim[2], claim[3], claim[4], claim[5], claim[6]
  local at = payload
  for _, run in ipairs(runs) do payload = payload + #run[4] end
  out[n] = 0
  if redis.call('HGET', key, 'rev') == rev then
    local score = redis.call('ZSCORE', KEYS[1], key)
    if score and tonumber(score) == tonumber(due) then
      out[n] = 1
      redis.call('HSET', key, 'meta', meta)
      if nxt == '' then
        redis.call('ZREM', KEYS[1], key)
      else
        redis.call('ZADD', KEYS[1], nxt, key)
      end
      for _, run in ipairs(runs) do
        local id, flat = run[1], run[3]
        if id ~= '' then
          local fields = {}
          for j = 1, #flat, 2 do fields[flat[j]] = flat[j + 1] end
          transition(ARGV[1] .. '@RUN@' .. id, KEYS[2], KEYS[3], ARGV[1], id, run[2], now, ttl,
            gcap, scap, dcap, fields)
        end
        for _, list in ipairs(run[4]) do
          redis.call('LPUSH', list, ARGV[at])
          at = at + 1
        end
      end
    end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
out[#out + 1] = first[2] or ''
return out
""".replace("@RUN@", RUN)
)

# -- a schedule writer's compare-and-set ---------------------------------------------------

# Write an entry if its hash and due score are still what the writer read (compare-and-set;
# WATCH/MULTI did the same in four round trips), bump rev, index it and wake beat. A write
# ends a pause after failures (a resume, or a spec change): the mark goes, and the count of
# failed runs in a row starts again.
# KEYS: entry hash, due set, index set, wake list, the entry's run stats hash.  ARGV:
# definition, meta, rev and due score as read ('' for absent), new definition, new meta, new
# rev, new due ('' leaves the due set), entry name. Returns 1 if written, 0 if the entry
# changed meanwhile.
UPSERT = """
local h = redis.call('HMGET', KEYS[1], 'definition', 'meta', 'rev')
if (h[1] or '') ~= ARGV[1] or (h[2] or '') ~= ARGV[2] or (h[3] or '') ~= ARGV[3] then
  return 0
end
local due = redis.call('ZSCORE', KEYS[2], KEYS[1])
if ARGV[4] == '' then
  if due then return 0 end
elseif not due or tonumber(due) ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('HSET', KEYS[1], 'definition', ARGV[5], 'meta', ARGV[6], 'rev', ARGV[7])
if redis.call('HDEL', KEYS[1], 'paused') == 1 then
  redis.call('HSET', KEYS[5], 'consecutive_failures', 0)
end
if ARGV[8] == '' then
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('ZADD', KEYS[2], ARGV[8], KEYS[1])
end
redis.call('SADD', KEYS[3], ARGV[9])
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return 1
"""

# -- beat's read ---------------------------------------------------------------------------

# Every entry due at ARGV[1] (at most ARGV[2]) with its hash fields and score, and the
# earliest due score overall, in one round trip; beat's deferred metrics (ARGV[3..],
# field/increment pairs, on hash KEYS[2]) ride along. More than ARGV[2] due: only a count, and
# beat reads the backlog in fair batches (ScheduleStore.due).
# KEYS: due set, metrics hash.  ARGV: now, limit, then counter/increment pairs. Returns
# {1, earliest} for a backlog, else {0, earliest, then key, score, definition, meta, rev per
# due entry} ('' for a missing field or an empty due set).
READ_DUE = """
for i = 3, #ARGV, 2 do
  if string.find(ARGV[i], 'lateness_sum', 1, true) then
    redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
  else
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[2]) + 1)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #due > 2 * tonumber(ARGV[2]) then return {1, first[2] or ''} end
local out = {0, first[2] or ''}
for j = 1, #due, 2 do
  local h = redis.call('HMGET', due[j], 'definition', 'meta', 'rev')
  out[#out + 1] = due[j]
  out[#out + 1] = due[j + 1]
  out[#out + 1] = h[1] or ''
  out[#out + 1] = h[2] or ''
  out[#out + 1] = h[3] or ''
end
return out
"""

# The hash fields and due score of the entries a backlog batch picked (ScheduleStore.due), in
# one command: one EVALSHA of a batch's keys packs and parses in a fraction of the time of a
# pipeline of an HMGET and a ZSCORE per entry.
# KEYS: due set.  ARGV: entry hash keys. Returns score, definition, meta, rev per key ('' for
# a missing field or score: the entry was deleted or left the due set while being read).
LOAD_DUE = """
local out = {}
for j = 1, #ARGV do
  local h = redis.call('HMGET', ARGV[j], 'definition', 'meta', 'rev')
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], ARGV[j]) or ''
  out[#out + 1] = h[1] or ''
  out[#out + 1] = h[2] or ''
  out[#out + 1] = h[3] or ''
end
return out
"""

# -- the api's submission ------------------------------------------------------------------

# A new run's record, then its message's Redis commands, atomically; nothing if the run was
# recorded already (a retried command: run ids are fresh uuid4s, so the first try landed).
# KEYS: run hash, global zset, changed set, then one key per message command.
# ARGV: the transition's 8 parameters, the number of field/value pairs, the pairs, then one
# (command, payload) pair per message command: 'lpush' (a queue's list) or 'publish' (a
# channel). Returns 0 if the run was recorded already (nothing done), else 1.
SUBMIT = (
    TRANSITION_FUNCTION
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local nfields = tonumber(ARGV[9])
local fields = {}
for i = 10, 9 + 2 * nfields, 2 do fields[ARGV[i]] = ARGV[i + 1] end
transition(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), fields)
local first = 10 + 2 * nfields
for k = 4, #KEYS do
  local at = first + 2 * (k - 4)
  if ARGV[at] == 'lpush' then
    redis.call('LPUSH', KEYS[k], ARGV[at + 1])
  else
    redis.call('PUBLISH', KEYS[k], ARGV[at + 1])
  end
end
return 1
"""
)
SUBMIT_COMMANDS = frozenset({"lpush", "publish"})
"""The Redis commands (kombu's names) a submission's message may consist of."""


# -- a backfill's slots --------------------------------------------------------------------

# Whether past slots of a schedule are free to backfill. A slot is done when the schedule's
# backfilled set holds it, or when one of its run records since `since` (source schedule or
# backfill) was sent for it: any state but SKIPPED, so a slot beat skipped (missed, Forbid)
# can be backfilled and one it ran cannot. It is beat's (pending) at or after the entry's due
# score: beat has not passed it yet, and fires it itself. Slots match within a millisecond
# (an interval's slots are floats, computed from differently placed anchors).
# skey: the schedule's runs zset, bkey: its backfilled set.
BACKFILL_FUNCTION = """
local function ran_slots(prefix, skey, since)
  local slots = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', skey, since, '+inf')) do
    local h = redis.call('HMGET', prefix .. '@RUN@' .. id, 'slot', 'state', 'source')
    if h[1] and h[2] ~= 'SKIPPED' and (h[3] == 'schedule' or h[3] == 'backfill') then
      slots[#slots + 1] = tonumber(h[1])
    end
  end
  return slots
end

local function slot_state(bkey, due, ran, slot)
  if #redis.call('ZRANGEBYSCORE', bkey, slot - 0.001, slot + 0.001, 'LIMIT', 0, 1) > 0 then
    return 1
  end
  for _, other in ipairs(ran) do
    if math.abs(other - slot) < 0.001 then return 1 end
  end
  if due and slot >= tonumber(due) - 0.001 then return 2 end
  return 0
end
""".replace("@RUN@", RUN)

# KEYS: entry hash, due set, backfilled set, the schedule's runs zset.  ARGV: key prefix,
# since (runs created before it are not read), then the slots. Returns {-1} when the entry is
# gone, else per slot 0 (free), 1 (done) or 2 (beat's).
BACKFILL_CHECK = (
    BACKFILL_FUNCTION
    + """
if redis.call('HEXISTS', KEYS[1], 'definition') == 0 then return {-1} end
local due = redis.call('ZSCORE', KEYS[2], KEYS[1])
local ran = ran_slots(ARGV[1], KEYS[4], ARGV[2])
local out = {}
for i = 3, #ARGV do out[#out + 1] = slot_state(KEYS[3], due, ran, tonumber(ARGV[i])) end
return out
"""
)

# Claim free slots for a backfill: each slot still free (as BACKFILL_CHECK tells) goes into
# the backfilled set, and its run record and message (LPUSH on its queue) are written in the
# same step, so a slot is marked done exactly when its run is on its queue. The set is then
# trimmed: slots before ARGV[7] and all but the latest ARGV[8] go, and it expires ARGV[5]
# seconds (the run records' ttl) after the last backfill.
# KEYS: entry hash, due set, backfilled set, the schedule's runs zset, global runs zset,
# runs:changed.  ARGV: key prefix, since, now, ttl, global cap, per-schedule cap, durations
# field cap, oldest slot kept, most slots kept, count, then per slot: slot, run id, state,
# field count, field/value pairs, push count, (list key, payload) pairs. Returns {-1} when the
# entry is gone, else per slot 0 (claimed: recorded and sent), 1 (done) or 2 (beat's).
BACKFILL_CLAIM = (
    TRANSITION_FUNCTION
    + BACKFILL_FUNCTION
    + """
if redis.call('HEXISTS', KEYS[1], 'definition') == 0 then return {-1} end
local prefix, now, ttl = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local gcap, scap, dcap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local due = redis.call('ZSCORE', KEYS[2], KEYS[1])
local ran = ran_slots(prefix, KEYS[4], ARGV[2])
local out, i = {}, 11
for n = 1, tonumber(ARGV[10]) do
  local slot, id, state, nf = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local fields = {}
  for j = 0, nf - 1 do fields[ARGV[i + 4 + 2 * j]] = ARGV[i + 5 + 2 * j] end
  i = i + 4 + 2 * nf
  local pushes, np = i + 1, tonumber(ARGV[i])
  i = i + 1 + 2 * np
  out[n] = slot_state(KEYS[3], due, ran, tonumber(slot))
  if out[n] == 0 then
    redis.call('ZADD', KEYS[3], slot, slot)
    transition(prefix .. '@RUN@' .. id, KEYS[5], KEYS[6], prefix, id, state, now, ttl, gcap,
      scap, dcap, fields)
    for j = 0, np - 1 do
      redis.call('LPUSH', ARGV[pushes + 2 * j], ARGV[pushes + 1 + 2 * j])
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[8])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[9]) - 1)
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('EXPIRE', KEYS[3], ttl) end
return out
""".replace("@RUN@", RUN)
)


class BackfillSlot(NamedTuple):
    """One past slot for a backfill to claim, and the run to write and send if it is free."""

    slot: float
    record: RunWrite
    pushes: Sequence[tuple[str, str]] = ()  # (list key, payload): its message on its queue


class RunLimits(NamedTuple):
    """How long a run record lives and how many runs the histories keep."""

    ttl: int
    global_limit: int
    schedule_limit: int
    duration_tasks: int = 200  # tasks whose durations are counted (the rest are not)

    @property
    def duration_fields(self) -> int:
        """The durations hash's most fields: a count per bucket, ``le_inf`` and the sum, per
        task."""
        return self.duration_tasks * (len(DURATION_BUCKETS) + 2)


class RunWrite(NamedTuple):
    """One transition of one run: the state it reached and the fields to set, as flat
    field/value pairs (``RunLog``'s ``*_write`` methods build them)."""

    run_id: str
    state: str
    fields: Sequence[str] = ()


class Claim(NamedTuple):
    """One due slot for beat to claim, and what to write where the claim wins."""

    name: str  # the entry
    rev: str  # its rev as read
    due: float  # its due score as read
    meta: str  # its new meta (JSON)
    next_due: float | None  # None: it leaves the due set
    record: RunWrite | None = None  # the slot's run record
    pushes: Sequence[tuple[str, str]] = ()  # (list key, payload): its message on its queue
    # More runs written with it where it wins, each a record and its pushes: the older
    # missed slots that missedRunPolicy All fires in the same claim, oldest first.
    more: Sequence[tuple[RunWrite, Sequence[tuple[str, str]]]] = ()


class DueEntry(NamedTuple):
    """A due entry's hash fields and score as beat's read found them ('' for a missing
    field: the entry was deleted while being read)."""

    name: str
    due: float
    definition: str
    meta: str
    rev: str


def _optional(value: float | None) -> str:
    return "" if value is None else repr(value)


def _transition_params(
    keys: Keys, limits: RunLimits, write: RunWrite, now: float
) -> tuple[list[str], list[Any]]:
    """The run transition's KEYS and its eight leading ARGV (the fields follow them)."""
    return [keys.run(write.run_id), keys.runs, keys.changed], [
        keys.prefix,
        write.run_id,
        write.state,
        repr(now),
        limits.ttl,
        limits.global_limit,
        limits.schedule_limit,
        limits.duration_fields,
    ]


class Scripts:
    """The scripts on one (synchronous) client, with the keys and run limits they write."""

    def __init__(self, client: redis.Redis, keys: Keys, limits: RunLimits) -> None:
        self.client = client
        self.keys = keys
        self.limits = limits
        self._transition = client.register_script(TRANSITION)
        self._store_result = client.register_script(STORE_RESULT)
        self._claim = client.register_script(CLAIM)
        self._upsert = client.register_script(UPSERT)
        self._read_due = client.register_script(READ_DUE)
        self._load_due = client.register_script(LOAD_DUE)
        self._backfill_check = client.register_script(BACKFILL_CHECK)
        self._backfill_claim = client.register_script(BACKFILL_CLAIM)

    def _transition_call(self, write: RunWrite, now: float) -> tuple[list[Any], list[Any]]:
        keys, args = _transition_params(self.keys, self.limits, write, now)
        args += write.fields
        # As bytes: a worker sends two of these per run from its pool process, and redis-py's
        # own encoding of each of their ~25 arguments was a large part of its extra CPU.
        return _as_bytes(keys), _as_bytes(args)

    def transition(self, write: RunWrite, now: float, client: Any = None) -> Any:
        """Record ``write`` at ``now``; returns the state recorded. Pass a pipeline as
        ``client`` to batch (the reply is then the pipeline's)."""
        keys, args = self._transition_call(write, now)
        return self._transition(keys=keys, args=args, client=client or self.client)

    def transitions(self, writes: Sequence[RunWrite], now: float) -> list[Any]:
        """Record each of ``writes`` at ``now``, in one round trip; the state each recorded,
        in order (an exception in place of a failed one's).

        EVALSHA in a plain pipeline: redis-py's pipeline of scripts would first ask Redis
        whether the script is loaded, a second round trip every time. Redis without the
        script (restarted, flushed) answers NOSCRIPT; it is then loaded and those are sent
        again."""
        script = self._transition
        calls = [self._transition_call(write, now) for write in writes]
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            with self.client.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                for i, reply in zip(todo, pipe.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
            todo = [i for i in todo if isinstance(replies[i], redis.exceptions.NoScriptError)]
            if not todo:
                break
            script.sha = self.client.script_load(script.script)
        return replies

    def store_result(
        self,
        client: Any,
        key: str,
        value: str | bytes,
        expires: int | None,
        writes: Sequence[RunWrite],
        now: float,
    ) -> bool:
        """Store a task's state ``value`` at Celery's ``key`` (``expires`` seconds; None:
        kept) and record ``writes``, transitions of that task's run, in one atomic step on
        ``client`` (the result backend's); False when a SUCCESS was stored there already and
        nothing was written, as Celery's own store would not."""
        run_id = writes[0].run_id
        keys, leading = _transition_params(self.keys, self.limits, writes[0], now)
        prefix, _, _, *times = leading  # the state left out: each transition gives its own
        args: list[Any] = [value, "" if not expires else int(expires), prefix, run_id, *times]
        for write in writes:
            if write.run_id != run_id:
                raise ValueError(f"transitions of two runs: {run_id}, {write.run_id}")
            args += [write.state, len(write.fields) // 2, *write.fields]
        return bool(
            self._store_result(keys=_as_bytes([key, *keys]), args=_as_bytes(args), client=client)
        )

    def claim(self, claims: Sequence[Claim], now: float) -> tuple[list[bool], float | None]:
        """Claim each slot of ``claims``, writing its record and pushes where it wins, in
        one round trip; True where the claim won, and the earliest due time after the claims
        (None: the due set is empty)."""
        keys, limits = self.keys, self.limits
        payloads: list[str] = []
        batch = []
        for claim in claims:
            runs = []
            for record, pushes in ((claim.record, claim.pushes), *claim.more):
                runs.append(
                    ["", "", (), [key for key, _ in pushes]]
                    if record is None
                    else [record.run_id, record.state, record.fields, [key for key, _ in pushes]]
                )
                payloads += [payload for _, payload in pushes]
            # Scores as their repr, not JSON numbers: the script compares the one read exactly.
            due, next_due = repr(claim.due), _optional(claim.next_due)
            batch.append([keys.entry(claim.name), claim.rev, due, claim.meta, next_due, runs])
        args: list[Any] = [
            keys.prefix,
            repr(now),
            limits.ttl,
            limits.global_limit,
            limits.schedule_limit,
            limits.duration_fields,
            json.dumps(batch, ensure_ascii=False, separators=(",", ":")),
            *payloads,
        ]
        reply = self._claim(keys=[keys.due, keys.runs, keys.changed], args=args)
        first = reply[-1]
        return [bool(r) for r in reply[:-1]], float(first) if first != "" else None

    def upsert(
        self,
        name: str,
        *,
        seen: tuple[str | None, str | None, str | None, float | None],
        definition: str,
        meta: str,
        rev: int,
        due: float | None,
    ) -> bool:
        """Write entry ``name`` (``definition``, ``meta``, ``rev``, due score ``due``; None:
        out of the due set) if its hash and due score are still ``seen`` (definition, meta,
        rev and due as read, None for absent); True if written."""
        keys = self.keys
        seen_definition, seen_meta, seen_rev, seen_due = seen
        written = self._upsert(
            keys=[
                keys.entry(name),
                keys.due,
                keys.index,
                keys.wake,
                keys.schedule_stats(name),
            ],
            args=[
                seen_definition or "",
                seen_meta or "",
                seen_rev or "",
                _optional(seen_due),
                definition,
                meta,
                rev,
                _optional(due),
                name,
            ],
        )
        return bool(written)

    def backfill_check(self, name: str, slots: Sequence[float], since: float) -> list[int] | None:
        """Per slot of entry ``name``: 0 free to backfill, 1 done (backfilled, or a run was
        sent for it), 2 beat's (not passed yet), reading its runs created since ``since``;
        None when the entry is gone."""
        keys = self.keys
        reply = self._backfill_check(
            keys=[keys.entry(name), keys.due, keys.backfilled(name), keys.schedule_runs(name)],
            args=[keys.prefix, repr(since), *(repr(slot) for slot in slots)],
        )
        return None if reply == [-1] else [int(code) for code in reply]

    def backfill_claim(
        self,
        name: str,
        slots: Sequence[BackfillSlot],
        *,
        since: float,
        now: float,
        keep_after: float,
        keep: int,
    ) -> list[int] | None:
        """Claim each of ``slots`` of entry ``name`` that is still free, writing its run
        record and pushes, in one atomic step; per slot 0 (claimed), 1 (done) or 2 (beat's),
        as :meth:`backfill_check`, or None when the entry is gone. The backfilled set then
        keeps at most ``keep`` slots, none before ``keep_after``."""
        keys, limits = self.keys, self.limits
        args: list[Any] = [
            keys.prefix,
            repr(since),
            repr(now),
            limits.ttl,
            limits.global_limit,
            limits.schedule_limit,
            limits.duration_fields,
            repr(keep_after),
            keep,
            len(slots),
        ]
        for item in slots:
            record = item.record
            args += [
                repr(item.slot),
                record.run_id,
                record.state,
                len(record.fields) // 2,
                *record.fields,
                len(item.pushes),
            ]
            for key, payload in item.pushes:
                args += [key, payload]
        reply = self._backfill_claim(
            keys=[
                keys.entry(name),
                keys.due,
                keys.backfilled(name),
                keys.schedule_runs(name),
                keys.runs,
                keys.changed,
            ],
            args=args,
        )
        return None if reply == [-1] else [int(code) for code in reply]

    def read_due(
        self, now: float, limit: int, metrics: Sequence[tuple[str, int | float]] = ()
    ) -> tuple[list[DueEntry] | None, float | None]:
        """The entries due at ``now`` (None when more than ``limit`` are: a backlog) and the
        earliest due time (None: nothing is due ever), adding the (counter, increment) pairs
        of ``metrics`` to the scheduler's counters, in one round trip."""
        args: list[Any] = [repr(now), limit]
        for name, value in metrics:
            args += [name, value]
        reply = self._read_due(keys=[self.keys.due, self.keys.metrics], args=args)
        first = float(reply[1]) if reply[1] != "" else None
        if int(reply[0]):
            return None, first
        name_of = self.keys.entry_name
        return [
            DueEntry(name_of(key), float(score), definition, meta, rev)
            for key, score, definition, meta, rev in (
                reply[j : j + 5] for j in range(2, len(reply), 5)
            )
        ], first

    def load_due(self, keys: Sequence[str]) -> list[DueEntry]:
        """The entries at hash ``keys`` with their due scores, in one round trip; each
        :class:`DueEntry` has '' fields where the entry is gone, and a due of NaN where it
        left the due set meanwhile."""
        if not keys:
            return []
        reply = self._load_due(keys=[self.keys.due], args=list(keys))
        name_of = self.keys.entry_name
        return [
            DueEntry(name_of(key), float(score) if score != "" else math.nan, *fields)
            for key, (score, *fields) in zip(
                keys, (reply[j : j + 4] for j in range(0, len(reply), 4)), strict=True
            )
        ]


class AsyncScripts:
    """The scripts run from an event loop (the api's submission)."""

    def __init__(self, client: redis.asyncio.Redis, keys: Keys, limits: RunLimits) -> None:
        self.keys = keys
        self.limits = limits
        self._submit = client.register_script(SUBMIT)

    async def submit(
        self, write: RunWrite, now: float, commands: Sequence[tuple[str, str, str]]
    ) -> bool:
        """Record ``write`` (a new run) and run its message's ``commands`` ((command, key,
        payload), command in :data:`SUBMIT_COMMANDS`) in one atomic step; False if the run
        was recorded already, and nothing was done."""
        script_keys, args = _transition_params(self.keys, self.limits, write, now)
        args.append(len(write.fields) // 2)
        args += write.fields
        for command, key, payload in commands:
            script_keys.append(key)
            args += [command, payload]
        # Given as bytes: redis-py encodes each other argument with a chain of isinstance
        # checks, half the cost of packing this command's forty-odd arguments.
        return bool(await self._submit(keys=_as_bytes(script_keys), args=_as_bytes(args)))


def _as_bytes(values: Sequence[Any]) -> list[Any]:
    """``values`` as redis-py would send them: text UTF-8 encoded, numbers as their repr
    (anything else is left to redis-py, which refuses what it cannot send)."""
    return [
        value.encode()
        if type(value) is str
        else repr(value).encode()
        if type(value) in (int, float)
        else value
        for value in values
    ]
