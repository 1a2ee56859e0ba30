-- Argo CD health of a fedfleet.io FederatedJob, read from the conditions the fedfleet operator writes.
-- Like a batch Job: Progressing while it trains, Healthy once Complete, Degraded when Failed or Stalled
-- (a child the API server refuses, a crash-looping aggregator), Suspended while spec.suspend holds it.
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
  hs.message = "Waiting for the fedfleet operator to report the job's status"
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
local failed = find(conditions, "Failed")
if is_true(failed) then
  hs.status = "Degraded"
  hs.message = describe(failed)
  return hs
end

local complete = find(conditions, "Complete")
if is_true(complete) then
  hs.status = "Healthy"
  hs.message = describe(complete)
  return hs
end

local stalled = find(conditions, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if status.phase == "Suspended" then
  local running = find(conditions, "Running")
  hs.status = "Suspended"
  hs.message = running ~= nil and describe(running) or "spec.suspend is true"
  return hs
end

-- Still training or starting: say how far it got and what the operator is waiting for.
local progress = ""
if status.round ~= nil and obj.spec ~= nil and obj.spec.rounds ~= nil then
  progress = status.round .. " of " .. obj.spec.rounds .. " rounds done; "
end
local ready = find(conditions, "Ready")
local reconciling = find(conditions, "Reconciling")
hs.status = "Progressing"
if is_true(ready) then
  hs.message = progress .. describe(ready)
elseif is_true(reconciling) then
  hs.message = progress .. describe(reconciling)
else
  hs.message = progress .. "Job is " .. (status.phase or "Pending")
end
return hs
