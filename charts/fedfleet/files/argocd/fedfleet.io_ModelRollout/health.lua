-- Argo CD health of a fedfleet.io ModelRollout, read from the Argo Rollouts-style conditions the fedfleet
-- operator writes (exactly one of Progressing, Paused, Degraded and Healthy is True): a rollout waiting for a
-- person (a `pause: {}` step, `kubectl fedfleet pause`, an inconclusive analysis) is Suspended, an aborted one
-- Degraded, a finished one Healthy, as Argo CD shows an Argo Rollout.
-- Written for Lua 5.1 (Argo CD runs gopher-lua): no goto, no integer division.
local hs = {}

local function find(conditions, kind)
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function is_true(condition)
  return condition ~= nil and condition.status == "True"
end

-- "Reason: message", or whichever of the two the condition has.
local function describe(condition)
  local message = condition.message or ""
  if message == "" then
    return condition.reason or ""
  end
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason .. ": " .. message
  end
  return message
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the fedfleet operator to report the rollout's status"
  return hs
end

-- A status written for an older spec says nothing about the current one (as Argo CD's own checks do).
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe generation " .. generation
  return hs
end

local conditions = status.conditions
local weight = ""
if status.weight ~= nil then
  weight = "Weight " .. status.weight .. "%; "
end

local degraded = find(conditions, "Degraded")
if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end

local stalled = find(conditions, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local paused = find(conditions, "Paused")
if is_true(paused) then
  hs.status = "Suspended"
  hs.message = weight .. describe(paused)
  return hs
end

local healthy = find(conditions, "Healthy")
if is_true(healthy) then
  hs.status = "Healthy"
  hs.message = describe(healthy)
  return hs
end

local progressing = find(conditions, "Progressing")
hs.status = "Progressing"
if is_true(progressing) then
  hs.message = weight .. describe(progressing)
else
  hs.message = weight .. "Rollout is " .. (status.phase or "Pending")
end
return hs
