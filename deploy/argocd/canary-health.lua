-- Argo CD health check for canaryd's Canary (canaryd.dev/v1alpha1, kind Canary).
--
-- Install it as the argocd-cm key `resource.customizations.health.canaryd.dev_Canary`
-- (deploy/argocd/argocd-cm-patch.yaml). Argo CD sets the global `obj` to the live Canary and
-- reads `status` and `message` from the table the script returns.
--
--   Healthy      Idle or Succeeded, Ready=True, status.observedGeneration current
--   Progressing  no status yet, observedGeneration behind metadata.generation, a rollout
--                under way (Testing, Progressing, Promoting, SwitchingBack), or Ready=Unknown
--   Degraded     RolledBack, or a spec canaryd will not act on (SpecValid=False,
--                ReferencesAllowed=False, Conflict=True)
--   Suspended    Paused: a person has to resume, promote or abort
--
-- The message is canaryd's own one-line `status.message`.
--
-- Argo CD runs health checks in gopher-lua (Lua 5.1) with only the base and table libraries
-- (no string library, so no string methods): this script uses nothing else.
-- tests/it/argocd_health.rs runs it with lua5.4 in the same sandbox on Canaries built from
-- canaryd's own types.

local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- status.message, or `fallback` when canaryd wrote none.
local function say(status, fallback)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return fallback
end

local function result(health, message)
  hs.status = health
  hs.message = message
  return hs
end

local status = obj.status
if status == nil then
  return result("Progressing", "Waiting for canaryd to report on this Canary")
end

-- A status decided on an older spec says nothing about the current one.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  local seen = "none"
  if observed ~= nil then
    seen = tostring(observed)
  end
  return result("Progressing", "Waiting for canaryd to act on generation " .. tostring(generation)
    .. " of the spec (last acted on: " .. seen .. ")")
end

-- A spec canaryd refuses to act on: invalid, a reference without its ReferenceGrant, or a
-- route another Canary drives. Nothing happens until someone changes it.
local refusals = {
  SpecValid = "False",
  ReferencesAllowed = "False",
  Conflict = "True",
}
local refusedReasons = {
  InvalidSpec = true,
  NotGranted = true,
  RouteOwnedByAnother = true,
}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    local stale = c.observedGeneration ~= nil and generation ~= nil and c.observedGeneration < generation
    local refused = refusals[c.type] ~= nil and refusals[c.type] == c.status
    if c.type == "Ready" and c.status == "False" and refusedReasons[c.reason] then
      refused = true
    end
    if refused and not stale then
      return result("Degraded", say(status, c.message))
    end
  end
end

local phase = status.phase
if phase == "Testing" or phase == "Progressing" or phase == "Promoting" or phase == "SwitchingBack" then
  return result("Progressing", say(status, "Rollout in phase " .. phase))
end
if phase == "RolledBack" then
  return result("Degraded", say(status, "The last rollout was rolled back"))
end
if phase == "Paused" then
  return result("Suspended", say(status, "Paused: waiting for canaryd resume, promote or abort"))
end
if phase == "Idle" or phase == "Succeeded" or phase == nil then
  local ready = condition(status, "Ready")
  -- No Ready condition: a canaryd from before the Ready condition; the phase decides.
  if ready == nil or ready.status == "True" then
    return result("Healthy", say(status, "No rollout in progress"))
  end
  if ready.status == "Unknown" then
    return result("Progressing", say(status, ready.message))
  end
  if ready.reason == "Paused" then
    return result("Suspended", say(status, ready.message))
  end
  return result("Degraded", say(status, ready.message))
end
return result("Unknown", "Unknown phase " .. tostring(phase))
