-- Tests of freeswitch/nfguard_guard.lua under plain lua5.2, with a stand-in
-- `freeswitch` (hash store, sofia xmlstatus, events, console log) and a
-- stand-in `session`. Prints TAP lines; exits non-zero when a test fails.
--   lua5.2 tests/lua/test_guard.lua [path/to/nfguard_guard.lua]

local here = arg and arg[0] or "tests/lua/test_guard.lua"
local root = (here:match("^(.*)/[^/]*$") or ".") .. "/../../" -- the checkout
local SCRIPT = arg and arg[1] or (root .. "freeswitch/nfguard_guard.lua")

NFGUARD_GUARD_TEST = true
local M = dofile(SCRIPT)
NFGUARD_GUARD_TEST = nil

local NOW = 1700000000
local FUTURE, PAST = tostring(NOW + 300), tostring(NOW - 1)
local META_ENFORCE = "v=1;mode=enforce;transports=tcp,tls,ws,wss;at=" .. NOW
local META_MONITOR = "v=1;mode=monitor;transports=tcp,tls,ws,wss;at=" .. NOW

-- ------------------------------------------------------------ TAP output

local count, failed = 0, 0
local function report(ok, name, detail)
  count = count + 1
  if ok then
    print(string.format("ok %d - %s", count, name))
  else
    failed = failed + 1
    print(string.format("not ok %d - %s", count, name))
    if detail then print("#   " .. tostring(detail):gsub("\n", "\n#   ")) end
  end
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. show(v[k]) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function hex(s)
  if s == nil then return "nil" end
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- ------------------------------------------------------------ stand-ins

-- A FreeSWITCH: opts.hash (key -> value in realm nfguard, or false for no
-- mod_hash), opts.xml (profile -> xmlstatus text), opts.globals.
local function fake_freeswitch(opts)
  local fs = { logs = {}, events = {}, api_calls = {} }
  local hash = opts.hash
  function fs.API()
    local api = {}
    function api:execute(cmd, args)
      fs.api_calls[#fs.api_calls + 1] = cmd .. " " .. args
      if opts.api_raises then error("api broke") end
      if cmd == "hash" then
        if hash == false then return "-ERR hash Command not found!\n" end
        local prefix = "select/nfguard/"
        assert(args:sub(1, #prefix) == prefix, "unexpected hash args " .. args)
        local key = args:sub(#prefix + 1)
        assert(not key:find("/", 1, true), "a key with '/': " .. key)
        return (hash or {})[key] or ""
      elseif cmd == "sofia" then
        local prefix, suffix = "xmlstatus profile ", " reg"
        assert(args:sub(1, #prefix) == prefix and args:sub(-#suffix) == suffix, "unexpected sofia args " .. args)
        local profile = args:sub(#prefix + 1, #args - #suffix)
        return (opts.xml or {})[profile] or "Invalid Profile!\n"
      end
      return "-ERR " .. cmd .. " Command not found!\n"
    end
    return api
  end
  function fs.consoleLog(level, msg)
    fs.logs[#fs.logs + 1] = { level = level, msg = msg }
  end
  function fs.getGlobalVariable(name)
    return (opts.globals or {})[name]
  end
  function fs.Event(kind, subclass)
    local e = { kind = kind, subclass = subclass, headers = {}, order = {}, fired = false }
    function e:addHeader(k, v)
      assert(type(k) == "string" and type(v) == "string", "addHeader needs strings")
      self.headers[k] = v
      self.order[#self.order + 1] = k
    end
    function e:fire()
      self.fired = true
      fs.events[#fs.events + 1] = self
    end
    return e
  end
  return fs
end

local function fake_session(vars, raises)
  local s = { vars = vars, executed = {}, hangups = {} }
  function s:getVariable(name)
    if raises and raises[name] then error("no variable for you") end
    return self.vars[name]
  end
  function s:execute(app, data) self.executed[#self.executed + 1] = app .. " " .. tostring(data) end
  function s:hangup(cause) self.hangups[#self.hangups + 1] = cause end
  return s
end

local DEFAULT_VARS = {
  sip_auth_username = "1001", sip_auth_realm = "pbx.test", sip_network_ip = "203.0.113.5",
  sip_network_port = "5061", sip_via_protocol = "tls", sip_call_id = "call-1@phone",
  sofia_profile_name = "internal",
}

local function vars_with(over)
  local v = {}
  for k, x in pairs(DEFAULT_VARS) do v[k] = x end
  for k, x in pairs(over or {}) do
    if x == false then v[k] = nil else v[k] = x end
  end
  return v
end

-- Run the guard for one call through M.run with the stand-in as the global
-- `freeswitch` (so M.freeswitch_env() is exercised) and the clock at NOW.
local function run_call(c)
  local fs = fake_freeswitch(c)
  freeswitch = fs
  local sess = fake_session(vars_with(c.vars), c.raises)
  local env = M.freeswitch_env()
  env.now = function() return c.now or NOW end
  local res = M.run(sess, env)
  freeswitch = nil
  return res, fs, sess
end

-- What happened to the call: "pass", "skip", "refused" or "monitor".
local function outcome(res, fs, sess)
  if #sess.hangups > 0 then return "refused" end
  if #fs.events > 0 then return fs.events[1].headers["nfguard-action"] end
  return res.action
end

local function check_call(c)
  local ok, res, fs, sess = pcall(run_call, c)
  if not ok then return report(false, c.name, "raised: " .. tostring(res)) end
  local got = outcome(res, fs, sess)
  local problems = {}
  if got ~= c.expect then problems[#problems + 1] = "outcome " .. got .. ", want " .. c.expect end
  local ev = fs.events[1]
  if c.expect == "refused" or c.expect == "monitor" then
    if #fs.events ~= 1 then problems[#problems + 1] = #fs.events .. " events" end
    if ev and ev.headers["nfguard-verdict"] ~= c.verdict then
      problems[#problems + 1] = "verdict " .. tostring(ev.headers["nfguard-verdict"]) .. ", want " .. c.verdict
    end
    if ev and c.state and ev.headers["nfguard-state"] ~= c.state then
      problems[#problems + 1] = "state " .. tostring(ev.headers["nfguard-state"])
    end
    local lines = 0
    for _, l in ipairs(fs.logs) do
      if l.msg:find("nfguard guard: refused", 1, true) or l.msg:find("nfguard guard: monitor", 1, true) then
        lines = lines + 1
      end
    end
    if lines ~= 1 then problems[#problems + 1] = lines .. " verdict log lines" end
  else
    if #fs.events ~= 0 then problems[#problems + 1] = "an event fired" end
  end
  if c.expect == "refused" then
    if show(sess.executed) ~= show({ "respond 403 Forbidden" }) or show(sess.hangups) ~= show({ "CALL_REJECTED" }) then
      problems[#problems + 1] = "executed " .. show(sess.executed) .. " hangups " .. show(sess.hangups)
    end
  elseif #sess.executed > 0 or #sess.hangups > 0 then
    problems[#problems + 1] = "touched the call: " .. show(sess.executed) .. show(sess.hangups)
  end
  if c.check then
    local extra = c.check(res, fs, sess)
    if extra then problems[#problems + 1] = extra end
  end
  report(#problems == 0, c.name, table.concat(problems, "; ") .. "\n  result " .. show(res)
    .. "\n  logs " .. show(fs.logs))
end

-- ---------------------------------------------------------- the cases

local function bound(meta, key, value, extra)
  local h = { meta = meta, trusted = "-" }
  h[key] = value
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

local K1001 = "b:1001@pbx.test"
local REAL_XML = read_file(root .. "tests/fixtures/freeswitch-real/sofia_xmlstatus_reg.xml")

local function reg_xml(regs)
  local out = { '<?xml version="1.0" encoding="ISO-8859-1"?>\n<profile>\n  <registrations>\n' }
  for _, r in ipairs(regs) do
    out[#out + 1] = "    <registration>\n        <call-id>x</call-id>\n        <user>" .. r[1] .. "@" .. r[2]
      .. "</user>\n        <network-ip>" .. r[3] .. "</network-ip>\n        <network-port>5060</network-port>\n"
      .. "        <sip-auth-user>" .. r[1] .. "</sip-auth-user>\n        <sip-auth-realm>" .. r[2]
      .. "</sip-auth-realm>\n    </registration>\n"
  end
  out[#out + 1] = "  </registrations>\n</profile>\n"
  return table.concat(out)
end

local function asked_for(key)
  return function(_, fs)
    for _, call in ipairs(fs.api_calls) do
      if call == "hash select/nfguard/" .. key then return nil end
    end
    return "never asked for " .. key .. ": " .. show(fs.api_calls)
  end
end

local function logged(level, text)
  return function(_, fs)
    for _, l in ipairs(fs.logs) do
      if l.level == level and l.msg:find(text, 1, true) then return nil end
    end
    return "no " .. level .. " log with " .. text
  end
end

local cases = {}
local function case(c) cases[#cases + 1] = c end

-- IPv4 binding, exact bytes.
case { name = "bound IPv4 passes", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = {}, expect = "pass" }
case { name = "10.0.0.1 is not bound 10.0.0.12", hash = bound(META_ENFORCE, K1001, "10.0.0.12=" .. FUTURE),
       vars = { sip_network_ip = "10.0.0.1" }, expect = "refused", verdict = "not_bound", state = "nfguard" }
case { name = "10.0.0.12 is not bound 10.0.0.1", hash = bound(META_ENFORCE, K1001, "10.0.0.1=" .. FUTURE),
       vars = { sip_network_ip = "10.0.0.12" }, expect = "refused", verdict = "not_bound" }
case { name = "10.0.0.1 is not 110.0.0.1", hash = bound(META_ENFORCE, K1001, "110.0.0.1=" .. FUTURE),
       vars = { sip_network_ip = "10.0.0.1" }, expect = "refused", verdict = "not_bound" }
case { name = "no binding at all -> not_bound", hash = bound(META_ENFORCE, "b:other@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = {}, expect = "refused", verdict = "not_bound" }

-- IPv6 in its textual forms.
for _, src in ipairs({ "2001:db8::1", "2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:DB8::1",
                       "2001:db8:0::0:1", "[2001:db8::1]", "2001:db8:0:0:0:0:0.0.0.1" }) do
  case { name = "IPv6 " .. src .. " equals bound 2001:db8::1", hash = bound(META_ENFORCE, K1001, "2001:db8::1=" .. FUTURE),
         vars = { sip_network_ip = src }, expect = "pass" }
end
case { name = "IPv6 bound in full form, source compressed",
       hash = bound(META_ENFORCE, K1001, "2001:0db8:0000:0000:0000:0000:0000:0001=" .. FUTURE),
       vars = { sip_network_ip = "2001:db8::1" }, expect = "pass" }
for _, src in ipairs({ "2001:db8::10", "2001:db8::1:0", "2001:db8:0:0:1::", "2001:db8::", "::1" }) do
  case { name = "IPv6 " .. src .. " is not bound 2001:db8::1", hash = bound(META_ENFORCE, K1001, "2001:db8::1=" .. FUTURE),
         vars = { sip_network_ip = src }, expect = "refused", verdict = "not_bound" }
end
case { name = "link-local with a zone id: the zone is stripped", hash = bound(META_ENFORCE, K1001, "fe80::1=" .. FUTURE),
       vars = { sip_network_ip = "fe80::1%eth0" }, expect = "pass" }
case { name = "bound link-local with a zone id, source without", hash = bound(META_ENFORCE, K1001, "fe80::1%eth0=" .. FUTURE),
       vars = { sip_network_ip = "fe80::1" }, expect = "pass" }

-- IPv4-mapped IPv6 is the IPv4 address.
for _, src in ipairs({ "::ffff:10.0.0.1", "::FFFF:10.0.0.1", "::ffff:a00:1", "0:0:0:0:0:ffff:0a00:0001" }) do
  case { name = "mapped " .. src .. " is bound 10.0.0.1", hash = bound(META_ENFORCE, K1001, "10.0.0.1=" .. FUTURE),
         vars = { sip_network_ip = src }, expect = "pass" }
end
case { name = "bound as ::ffff:a00:1, source 10.0.0.1", hash = bound(META_ENFORCE, K1001, "::ffff:a00:1=" .. FUTURE),
       vars = { sip_network_ip = "10.0.0.1" }, expect = "pass" }
case { name = "mapped ::ffff:10.0.0.2 is not bound 10.0.0.1", hash = bound(META_ENFORCE, K1001, "10.0.0.1=" .. FUTURE),
       vars = { sip_network_ip = "::ffff:10.0.0.2" }, expect = "refused", verdict = "not_bound" }
case { name = "IPv4-compatible ::10.0.0.1 is not 10.0.0.1", hash = bound(META_ENFORCE, K1001, "10.0.0.1=" .. FUTURE),
       vars = { sip_network_ip = "::10.0.0.1" }, expect = "refused", verdict = "not_bound" }

-- Names: ASCII case-insensitive, encoded exactly like the daemon.
case { name = "user and realm match ASCII case-insensitively", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "1001", sip_auth_realm = "PBX.Test" }, expect = "pass", check = asked_for(K1001) }
case { name = "upper-case user", hash = bound(META_ENFORCE, "b:bob@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "BoB" }, expect = "pass" }
case { name = "non-ASCII user (UTF-8 bytes as %XX)", hash = bound(META_ENFORCE, "b:j%C3%BCrgen@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "j\195\188rgen" }, expect = "pass", check = asked_for("b:j%C3%BCrgen@pbx.test") }
case { name = "non-ASCII letters are not case-folded (\195\156 is not \195\188)",
       hash = bound(META_ENFORCE, "b:j%C3%BCrgen@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "J\195\156RGEN" }, expect = "refused", verdict = "not_bound",
       check = asked_for("b:j%C3%9Crgen@pbx.test") }
case { name = "user with '@' (Bob@X at PBX.test)", hash = bound(META_ENFORCE, "b:bob%40x@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "Bob@X", sip_auth_realm = "PBX.test" }, expect = "pass",
       check = asked_for("b:bob%40x@pbx.test") }
case { name = "user 'bob' is not 'bob@x'", hash = bound(META_ENFORCE, "b:bob%40x@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "bob", sip_auth_realm = "x@pbx.test" }, expect = "refused", verdict = "not_bound",
       check = asked_for("b:bob@x%40pbx.test") }
case { name = "user with '/'", hash = bound(META_ENFORCE, "b:a%2Fb@pbx.test", "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "a/b" }, expect = "pass", check = asked_for("b:a%2Fb@pbx.test") }
case { name = "user 1001 is not 10011", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_username = "10011" }, expect = "refused", verdict = "not_bound" }
case { name = "username without realm is judged (realm '')", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = { sip_auth_realm = false }, expect = "refused", verdict = "not_bound", check = asked_for("b:1001@") }

-- Several addresses, expiries.
local MULTI = "10.0.0.1=" .. FUTURE .. ",10.0.0.2=" .. FUTURE .. ",2001:db8::1=" .. FUTURE
for _, src in ipairs({ "10.0.0.1", "10.0.0.2", "2001:db8::1" }) do
  case { name = "one of several addresses: " .. src, hash = bound(META_ENFORCE, K1001, MULTI),
         vars = { sip_network_ip = src }, expect = "pass" }
end
case { name = "not one of several addresses", hash = bound(META_ENFORCE, K1001, MULTI),
       vars = { sip_network_ip = "10.0.0.3" }, expect = "refused", verdict = "not_bound" }
case { name = "expired binding -> expired", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. PAST),
       vars = {}, expect = "refused", verdict = "expired" }
case { name = "expiry equal to now still binds", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. NOW),
       vars = {}, expect = "pass" }
case { name = "another address expired, this one unlisted -> not_bound",
       hash = bound(META_ENFORCE, K1001, "10.0.0.9=" .. PAST), vars = {}, expect = "refused", verdict = "not_bound" }
case { name = "expired in monitor -> monitor event", hash = bound(META_MONITOR, K1001, "203.0.113.5=" .. PAST),
       vars = {}, expect = "monitor", verdict = "expired" }

-- Bad entries in a value are ignored, the rest counts.
local BAD = "garbage,10.0.0.1=soon,10.0.0.256=" .. FUTURE .. ",=" .. FUTURE .. ",10.0.0.3=,10.0.0.2=" .. FUTURE
case { name = "bad binding entries ignored, good one binds", hash = bound(META_ENFORCE, K1001, BAD),
       vars = { sip_network_ip = "10.0.0.2" }, expect = "pass" }
case { name = "address with a bad expiry is not bound", hash = bound(META_ENFORCE, K1001, BAD),
       vars = { sip_network_ip = "10.0.0.1" }, expect = "refused", verdict = "not_bound" }
case { name = "address with an empty expiry is not bound", hash = bound(META_ENFORCE, K1001, BAD),
       vars = { sip_network_ip = "10.0.0.3" }, expect = "refused", verdict = "not_bound" }

-- Trusted networks.
local function trusted(nets, src, expect, verdict)
  case { name = "trusted " .. nets .. " / source " .. src .. " -> " .. expect,
         hash = bound(META_ENFORCE, K1001, "192.0.2.200=" .. FUTURE, { trusted = nets }),
         vars = { sip_network_ip = src }, expect = expect, verdict = verdict or "not_bound" }
end
trusted("10.0.0.0/8", "10.200.3.4", "pass")
trusted("10.0.0.0/8", "11.0.0.1", "refused")
trusted("0.0.0.0/0", "198.51.100.7", "pass")
trusted("0.0.0.0/0", "2001:db8::7", "refused")
trusted("::/0", "2001:db8::7", "pass")
trusted("::/0", "198.51.100.7", "refused")
trusted("198.51.100.7/32", "198.51.100.7", "pass")
trusted("198.51.100.7/32", "198.51.100.70", "refused")
trusted("2001:db8::7/128", "2001:db8::7", "pass")
trusted("2001:db8::7/128", "2001:db8::70", "refused")
trusted("10.0.2.0/23", "10.0.2.0", "pass")
trusted("10.0.2.0/23", "10.0.3.255", "pass")
trusted("10.0.2.0/23", "10.0.1.255", "refused")
trusted("10.0.2.0/23", "10.0.4.0", "refused")
trusted("2001:db8:0:8::/61", "2001:db8:0:8::1", "pass")
trusted("2001:db8:0:8::/61", "2001:db8:0:f:ffff:ffff:ffff:ffff", "pass")
trusted("2001:db8:0:8::/61", "2001:db8:0:7::1", "refused")
trusted("2001:db8:0:8::/61", "2001:db8:0:10::1", "refused")
trusted("192.0.2.0/25,2001:db8::/32", "2001:db8:ffff::1", "pass")
trusted("::ffff:10.0.0.0/104", "10.1.2.3", "pass")
trusted("::ffff:10.0.0.0/104", "11.1.2.3", "refused")
trusted("10.0.0.1/8,10.0.0.0/33,junk,10.0.0.0/08,10.0.0.0/,fe80::%eth0/64,192.0.2.0/24", "192.0.2.9", "pass")
trusted("10.0.0.1/8,10.0.0.0/33,junk,10.0.0.0/08,10.0.0.0/,192.0.2.0/24", "10.0.0.1", "refused")
trusted("-", "10.0.0.1", "refused")
trusted("10.0.0.0/8", "::ffff:10.9.9.9", "pass")
case { name = "trusted source passes even without a binding key", hash = { meta = META_ENFORCE, trusted = "203.0.113.0/24" },
       vars = {}, expect = "pass" }

-- No meta: FreeSWITCH's registration table, exactly.
local function fallback(name, vars, expect, extra)
  local c = { name = "fallback: " .. name, hash = extra and extra.hash or { trusted = "-" },
              xml = extra and extra.xml or { internal = REAL_XML }, vars = vars, expect = expect,
              verdict = "not_bound", state = "registrations", globals = extra and extra.globals,
              check = extra and extra.check or logged("NOTICE", "registration table of profile") }
  case(c)
end
local R = { sip_auth_realm = "127.0.0.1" }
local function rv(t)
  local v = {}
  for k, x in pairs(R) do v[k] = x end
  for k, x in pairs(t) do v[k] = x end
  return v
end
fallback("1001 from 127.0.0.2 (real xmlstatus)", rv { sip_network_ip = "127.0.0.2" }, "pass")
fallback("1001's second registration 127.0.0.3", rv { sip_network_ip = "127.0.0.3" }, "pass")
fallback("1001 from 1002's address", rv { sip_network_ip = "127.0.0.4" }, "refused")
fallback("1001 from 127.0.0.20 (1010's)", rv { sip_network_ip = "127.0.0.20" }, "refused")
fallback("1002 from 127.0.0.4", rv { sip_auth_username = "1002", sip_network_ip = "127.0.0.4" }, "pass")
fallback("10011 is not 1001", rv { sip_auth_username = "10011", sip_network_ip = "127.0.0.2" }, "refused")
fallback("100 is not 1001", rv { sip_auth_username = "100", sip_network_ip = "127.0.0.2" }, "refused")
fallback("tenant-b 1001 from its address", { sip_auth_realm = "tenant-b.test", sip_network_ip = "127.0.0.5" }, "pass")
fallback("tenant-b 1001 from tenant-a 1001's address", { sip_auth_realm = "tenant-b.test", sip_network_ip = "127.0.0.2" }, "refused")
fallback("realm 127.0.0.10 is not 127.0.0.1", rv { sip_auth_realm = "127.0.0.10", sip_network_ip = "127.0.0.2" }, "refused")
fallback("a registration from 10.0.0.12 does not bind 10.0.0.1", { sip_network_ip = "10.0.0.1" }, "refused",
  { xml = { internal = reg_xml({ { "1001", "pbx.test", "10.0.0.12" } }) } })
fallback("a registration from 10.0.0.1 binds 10.0.0.1", { sip_network_ip = "10.0.0.1" }, "pass",
  { xml = { internal = reg_xml({ { "1001", "pbx.test", "10.0.0.12" }, { "1001", "pbx.test", "10.0.0.1" } }) } })
fallback("a registration from 10.0.0.1 does not bind 10.0.0.12", { sip_network_ip = "10.0.0.12" }, "refused",
  { xml = { internal = reg_xml({ { "1001", "pbx.test", "10.0.0.1" } }) } })
fallback("registration user 10011 does not bind 1001", { sip_network_ip = "10.0.0.1" }, "refused",
  { xml = { internal = reg_xml({ { "10011", "pbx.test", "10.0.0.1" } }) } })
fallback("case-insensitive user and realm", { sip_auth_username = "BOB", sip_auth_realm = "pbx.TEST", sip_network_ip = "10.0.0.1" },
  "pass", { xml = { internal = reg_xml({ { "bob", "PBX.test", "10.0.0.1" } }) } })
fallback("user with '@' as FreeSWITCH url-encodes it", { sip_auth_username = "Bob@X", sip_network_ip = "10.0.0.1" },
  "pass", { xml = { internal = reg_xml({ { "bob%40x", "pbx.test", "10.0.0.1" } }) } })
fallback("user with '&' as FreeSWITCH url-encodes it", { sip_auth_username = "a&b", sip_network_ip = "10.0.0.1" },
  "pass", { xml = { internal = reg_xml({ { "a%26b", "pbx.test", "10.0.0.1" } }) } })
fallback("non-ASCII user as FreeSWITCH url-encodes it", { sip_auth_username = "j\195\188rgen", sip_network_ip = "10.0.0.1" },
  "pass", { xml = { internal = reg_xml({ { "j%C3%BCrgen", "pbx.test", "10.0.0.1" } }) } })
fallback("user 'bob' is not registered 'bob%40x'", { sip_auth_username = "bob", sip_network_ip = "10.0.0.1" },
  "refused", { xml = { internal = reg_xml({ { "bob%40x", "pbx.test", "10.0.0.1" } }) } })
fallback("a user with '%' never matches (ambiguous in FreeSWITCH's table)", { sip_auth_username = "a%zz", sip_network_ip = "10.0.0.1" },
  "refused", { xml = { internal = reg_xml({ { "a%25zz", "pbx.test", "10.0.0.1" } }) } })
fallback("IPv6 registration, other spelling", { sip_network_ip = "2001:DB8:0:0::1" }, "pass",
  { xml = { internal = reg_xml({ { "1001", "pbx.test", "2001:db8::1" } }) } })
fallback("IPv6 registration, other address", { sip_network_ip = "2001:db8::11" }, "refused",
  { xml = { internal = reg_xml({ { "1001", "pbx.test", "2001:db8::1" } }) } })
fallback("a registration with a garbage network-ip binds nothing", { sip_network_ip = "10.0.0.1" }, "refused",
  { xml = { internal = reg_xml({ { "1001", "pbx.test", "10.0.0.1x" } }) } })
fallback("other profile's table", { sofia_profile_name = "external", sip_network_ip = "127.0.0.2" }, "refused")
fallback("no profile name", rv { sofia_profile_name = false, sip_network_ip = "127.0.0.2" }, "refused")
fallback("mod_hash missing (-ERR) reads as no meta", rv { sip_network_ip = "127.0.0.2" }, "pass", { hash = false })
fallback("mod_hash missing, unregistered address refused", rv { sip_network_ip = "127.0.0.9" }, "refused", { hash = false })
fallback("monitor via nfguard_guard_fallback_mode", rv { sip_network_ip = "127.0.0.9" }, "monitor",
  { globals = { nfguard_guard_fallback_mode = "monitor" } })
fallback("unknown fallback mode is enforce", rv { sip_network_ip = "127.0.0.9" }, "refused",
  { globals = { nfguard_guard_fallback_mode = "loose" } })
fallback("monitor fallback skips claimed udp", rv { sip_network_ip = "127.0.0.9", sip_via_protocol = "udp" }, "skip",
  { globals = { nfguard_guard_fallback_mode = "monitor" }, check = function() end })
fallback("trusted applies in fallback too", rv { sip_network_ip = "127.0.0.9" }, "pass",
  { hash = { trusted = "127.0.0.0/8" }, check = function() end })

-- Unauthenticated calls pass silently, without a single look-up.
local function silent(_, fs)
  if #fs.api_calls > 0 or #fs.logs > 0 then return "looked up or logged: " .. show(fs.api_calls) .. show(fs.logs) end
end
case { name = "no sip_auth_username -> pass silently", hash = bound(META_ENFORCE, K1001, "10.0.0.1=" .. FUTURE),
       vars = { sip_auth_username = false, sip_network_ip = "garbage" }, expect = "pass", check = silent }
case { name = "empty sip_auth_username -> pass silently", hash = bound(META_ENFORCE, K1001, "10.0.0.1=" .. FUTURE),
       vars = { sip_auth_username = "" }, expect = "pass", check = silent }

-- Malformed source address: refused in enforce, an event in monitor.
for _, ip in ipairs({ false, "", " ", "garbage", "10.0.0.256", "010.0.0.1", "10.0.0", "10.0.0.1.2", "1.2.3.4%eth0",
                      "fe80::1%", "1:2:3:4:5:6:7:8:9", "1::2::3", "::ffff:1.2.3", "12345::1", "[10.0.0.1", "0x0a.0.0.1" }) do
  case { name = "malformed network ip " .. show(ip) .. " refused in enforce",
         hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE), vars = { sip_network_ip = ip },
         expect = "refused", verdict = "malformed" }
end
case { name = "malformed network ip in monitor -> event", hash = bound(META_MONITOR, K1001, "203.0.113.5=" .. FUTURE),
       vars = { sip_network_ip = "" }, expect = "monitor", verdict = "malformed" }
case { name = "malformed network ip in fallback enforce", hash = {}, vars = { sip_network_ip = "x" },
       expect = "refused", verdict = "malformed", state = "registrations" }
case { name = "unreadable call variable -> malformed", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = {}, raises = { sip_network_port = true }, expect = "refused", verdict = "malformed" }
case { name = "unreadable username -> malformed, not a pass", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = {}, raises = { sip_auth_username = true }, expect = "refused", verdict = "malformed" }
case { name = "an API that raises -> malformed refusal (enforce)", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = {}, api_raises = true, expect = "refused", verdict = "malformed",
       check = logged("WARNING", "error: ") }

-- Modes and transports.
case { name = "monitor: event fired, call routes", hash = bound(META_MONITOR, K1001, "10.9.9.9=" .. FUTURE),
       vars = {}, expect = "monitor", verdict = "not_bound", check = logged("NOTICE", "monitor: would refuse") }
case { name = "monitor: bound call passes without event", hash = bound(META_MONITOR, K1001, "203.0.113.5=" .. FUTURE),
       vars = {}, expect = "pass" }
case { name = "monitor: claimed udp skipped", hash = bound(META_MONITOR, K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "udp" }, expect = "skip" }
case { name = "enforce: claimed udp judged", hash = bound(META_ENFORCE, K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "udp" }, expect = "refused", verdict = "not_bound" }
case { name = "enforce: claimed udp, bound, passes", hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. FUTURE),
       vars = { sip_via_protocol = "udp" }, expect = "pass" }
for _, t in ipairs({ "tcp", "tls", "ws", "wss", "TLS" }) do
  case { name = "monitor: claimed " .. t .. " judged", hash = bound(META_MONITOR, K1001, "10.9.9.9=" .. FUTURE),
         vars = { sip_via_protocol = t }, expect = "monitor", verdict = "not_bound" }
end
for _, t in ipairs({ false, "", "sctp", "carrier-pigeon" }) do
  case { name = "monitor: transport " .. show(t) .. " is unknown and judged",
         hash = bound(META_MONITOR, K1001, "10.9.9.9=" .. FUTURE), vars = { sip_via_protocol = t },
         expect = "monitor", verdict = "not_bound",
         check = function(_, fs) if fs.events[1].headers["nfguard-transport"] ~= "unknown" then return "transport not unknown" end end }
end
case { name = "monitor with transports=all: udp judged",
       hash = bound("v=1;mode=monitor;transports=all;at=1", K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "udp" }, expect = "monitor", verdict = "not_bound" }
case { name = "monitor with transports=tls: tcp skipped",
       hash = bound("v=1;mode=monitor;transports=tls;at=1", K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "tcp" }, expect = "skip" }
case { name = "monitor with transports=udp,tls: udp judged",
       hash = bound("v=1;mode=monitor;transports=udp,tls;at=1", K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "udp" }, expect = "monitor", verdict = "not_bound" }
case { name = "enforce with transports=tls: tcp still judged",
       hash = bound("v=1;mode=enforce;transports=tls;at=1", K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "tcp" }, expect = "refused", verdict = "not_bound" }

-- Garbled meta: still nfguard's state; unknown mode is enforce.
for _, meta in ipairs({ "garbage", "v=1;mode=weird;transports=tls;at=1", "v=9", ";;;=;mode", "mode=MONITOR" }) do
  case { name = "meta " .. show(meta) .. " -> enforce from nfguard's state",
         hash = bound(meta, K1001, "10.9.9.9=" .. FUTURE), vars = {}, expect = "refused", verdict = "not_bound",
         state = "nfguard" }
end
case { name = "meta with bogus transports -> default set (udp skipped in monitor)",
       hash = bound("v=1;mode=monitor;transports=bogus,,x", K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_via_protocol = "udp" }, expect = "skip" }
case { name = "meta with bogus transports -> default set (tls judged in monitor)",
       hash = bound("v=1;mode=monitor;transports=bogus", K1001, "10.9.9.9=" .. FUTURE),
       vars = {}, expect = "monitor", verdict = "not_bound" }

-- The event, header by header and in order.
local HEADERS = { "nfguard-verdict", "nfguard-action", "nfguard-user", "nfguard-realm", "nfguard-source-ip",
                  "nfguard-source-port", "nfguard-transport", "nfguard-state", "nfguard-call-id", "nfguard-profile" }
local function event_is(want)
  return function(_, fs)
    local e = fs.events[1]
    if e.kind ~= "CUSTOM" or e.subclass ~= "nfguard::guard" then return "event " .. e.kind .. " " .. e.subclass end
    if show(e.order) ~= show(HEADERS) then return "headers " .. show(e.order) end
    if show(e.headers) ~= show(want) then return "values " .. show(e.headers) end
  end
end
case { name = "event headers (enforce)", hash = bound(META_ENFORCE, "b:bob%40x@pbx.test", "10.9.9.9=" .. FUTURE),
       vars = { sip_auth_username = "Bob@X", sip_auth_realm = "PBX.test", sip_network_ip = "2001:DB8::5",
                sip_via_protocol = "WSS" },
       expect = "refused", verdict = "not_bound",
       check = event_is({ ["nfguard-verdict"] = "not_bound", ["nfguard-action"] = "refused", ["nfguard-user"] = "Bob@X",
                          ["nfguard-realm"] = "PBX.test", ["nfguard-source-ip"] = "2001:DB8::5",
                          ["nfguard-source-port"] = "5061", ["nfguard-transport"] = "wss", ["nfguard-state"] = "nfguard",
                          ["nfguard-call-id"] = "call-1@phone", ["nfguard-profile"] = "internal" }) }
case { name = "event headers (monitor, fallback, missing variables)", hash = {},
       globals = { nfguard_guard_fallback_mode = "monitor" },
       vars = { sip_network_port = false, sip_call_id = false, sip_via_protocol = false, sofia_profile_name = false },
       expect = "monitor", verdict = "not_bound",
       check = event_is({ ["nfguard-verdict"] = "not_bound", ["nfguard-action"] = "monitor", ["nfguard-user"] = "1001",
                          ["nfguard-realm"] = "pbx.test", ["nfguard-source-ip"] = "203.0.113.5",
                          ["nfguard-source-port"] = "", ["nfguard-transport"] = "unknown",
                          ["nfguard-state"] = "registrations", ["nfguard-call-id"] = "", ["nfguard-profile"] = "" }) }
case { name = "log line names credential, address, transport, verdict",
       hash = bound(META_ENFORCE, K1001, "10.9.9.9=" .. FUTURE), vars = {}, expect = "refused", verdict = "not_bound",
       check = logged("WARNING", "nfguard guard: refused 1001@pbx.test from 203.0.113.5:5061 over tls: not_bound") }
case { name = "log line puts an IPv6 source in brackets", hash = bound(META_ENFORCE, K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_network_ip = "2001:db8::9" }, expect = "refused", verdict = "not_bound",
       check = logged("WARNING", "from [2001:db8::9]:5061 over tls: not_bound") }
case { name = "log line escapes control bytes of the user", hash = bound(META_ENFORCE, K1001, "10.9.9.9=" .. FUTURE),
       vars = { sip_auth_username = "evil\nnfguard guard: fake" }, expect = "refused", verdict = "not_bound",
       check = function(_, fs)
         for _, l in ipairs(fs.logs) do
           local body = l.msg:sub(1, -2)
           if body:find("\n", 1, true) then return "a newline inside a log line" end
         end
       end }

for _, c in ipairs(cases) do check_call(c) end

-- ------------------------------------------------------ unit functions

local function eq(name, got, want)
  report(got == want, name, "got " .. show(got) .. ", want " .. show(want))
end

eq("enc: Bob@X / PBX.test", M.cred_key("Bob@X", "PBX.test"), "b:bob%40x@pbx.test")
eq("enc: unreserved kept", M.enc("az09._~-"), "az09._~-")
eq("enc: reserved bytes", M.enc(" %/:;=,+&?#[]()'\"\\"), "%20%25%2F%3A%3B%3D%2C%2B%26%3F%23%5B%5D%28%29%27%22%5C")
eq("enc: control and high bytes", M.enc("\0\1\127\128\255"), "%00%01%7F%80%FF")
eq("enc: non-ASCII upper case stays", M.enc("\195\156"), "%C3%9C")
eq("enc: empty", M.enc(""), "")
eq("fs_url_encode: @", M.fs_url_encode("bob@x"), "bob%40x")
eq("fs_url_encode: existing %XX kept", M.fs_url_encode("a%41"), "a%41")
eq("fs_url_encode: lower-case %xx re-encoded", M.fs_url_encode("a%4a"), "a%254a")
eq("fs_url_encode: % at the end", M.fs_url_encode("a%4"), "a%254")
eq("fs_url_encode: safe punctuation kept", M.fs_url_encode("a.b-c_d~e!*'()/$,"), "a.b-c_d~e!*'()/$,")
eq("fs_url_encode: high bytes", M.fs_url_encode("\195\188\127"), "%C3%BC%7F")
eq("ascii_lower leaves high bytes", M.ascii_lower("AZaz\195\156@["), "azaz\195\156@[")

local V6 = {
  { "::", "00000000000000000000000000000000" },
  { "::1", "00000000000000000000000000000001" },
  { "1::", "00010000000000000000000000000000" },
  { "1:2:3:4:5:6:7::", "00010002000300040005000600070000" },
  { "::2:3:4:5:6:7:8", "00000002000300040005000600070008" },
  { "1:2:3:4:5:6:7:8", "00010002000300040005000600070008" },
  { "ABCD:ef01::", "abcdef01000000000000000000000000" },
  { "::1.2.3.4", "00000000000000000000000001020304" },
  { "1:2:3:4:5:6:1.2.3.4", "00010002000300040005000601020304" },
  { "1:2:3:4:5:6:7:8::", nil }, { "::1:2:3:4:5:6:7:8", nil }, { ":::", nil }, { ":1::", nil },
  { "1::2::3", nil }, { "1:2:3:4:5:6:7", nil }, { "1:2:3:4:5:6:7:8:9", nil }, { "12345::", nil },
  { "g::", nil }, { "1.2.3.4::", nil }, { "::1.2.3.4:5", nil }, { "::01.2.3.4", nil }, { "", nil },
  { "1:2:3:4:5:6:7:1.2.3.4", nil }, { "::-1", nil }, { " ::1", nil },
}
for _, t in ipairs(V6) do
  eq("parse_ipv6 " .. show(t[1]), t[2] and hex(M.parse_ipv6(t[1])) or M.parse_ipv6(t[1]), t[2])
end
local V4 = {
  { "0.0.0.0", "00000000" }, { "255.255.255.255", "ffffffff" }, { "10.0.0.12", "0a00000c" },
  { "256.0.0.0", nil }, { "1.2.3", nil }, { "1.2.3.4.", nil }, { ".1.2.3", nil }, { "01.2.3.4", nil },
  { "1.2.3.04", nil }, { "1.2.3.-4", nil }, { "1.2.3.+4", nil }, { "1.2.3.4 ", nil }, { "1.2.3.0x4", nil },
  { "1.2.3.1000", nil }, { "", nil },
}
for _, t in ipairs(V4) do
  eq("parse_ipv4 " .. show(t[1]), t[2] and hex(M.parse_ipv4(t[1])) or M.parse_ipv4(t[1]), t[2])
end
eq("parse_ip strips blanks around", hex(M.parse_ip(" 10.0.0.1\n")), "0a000001")
eq("parse_ip rejects a zone on IPv4", M.parse_ip("10.0.0.1%eth0"), nil)
eq("parse_ip of nil", M.parse_ip(nil), nil)
eq("parse_cidr ::ffff:0:0/96 is IPv4 /0", show(M.parse_cidr("::ffff:0:0/96")), show({ addr = "\0\0\0\0", bits = 0 }))
eq("parse_cidr host bits set", M.parse_cidr("10.0.0.1/31"), nil)
eq("parse_cidr /0 with host bits", M.parse_cidr("10.0.0.0/0"), nil)
eq("parse_cidr 2001:db8::/129", M.parse_cidr("2001:db8::/129"), nil)
eq("xml without registrations", #M.parse_registrations("<profile>\n  <registrations>\n  </registrations>\n</profile>\n"), 0)
eq("Invalid Profile!", #M.parse_registrations("Invalid Profile!\n"), 0)
eq("real xmlstatus: five registrations", #M.parse_registrations(REAL_XML), 5)
eq("<registrations> is not <registration>", #M.parse_registrations("<registrations><sip-auth-user>1</sip-auth-user>"
  .. "<sip-auth-realm>r</sip-auth-realm><network-ip>1.1.1.1</network-ip></registrations>"), 0)

-- Loaded as mod_lua runs it: `session` and `freeswitch` globals, no test flag.
do
  local fs = fake_freeswitch({ hash = bound(META_ENFORCE, K1001, "10.9.9.9=" .. FUTURE) })
  local sess = fake_session(vars_with({}))
  local env = setmetatable({ freeswitch = fs, session = sess }, { __index = _G })
  local chunk = assert(loadfile(SCRIPT, "t", env))
  local ok, err = pcall(chunk)
  report(ok and show(sess.hangups) == show({ "CALL_REJECTED" }) and #fs.events == 1,
    "run as a dialplan app: refuses an unbound call by itself", tostring(err) .. show(sess.hangups))
  local fs2 = fake_freeswitch({ hash = bound(META_ENFORCE, K1001, "203.0.113.5=" .. tostring(os.time() + 300)) })
  local sess2 = fake_session(vars_with({}))
  local ok2, err2 = pcall(assert(loadfile(SCRIPT, "t", setmetatable({ freeswitch = fs2, session = sess2 }, { __index = _G }))))
  report(ok2 and #sess2.hangups == 0 and #fs2.events == 0, "run as a dialplan app: a bound call passes (os.time clock)",
    tostring(err2) .. show(sess2.hangups))
  local env3 = setmetatable({ session = fake_session(vars_with({})) }, { __index = _G })
  local ok3 = pcall(assert(loadfile(SCRIPT, "t", env3)))
  report(ok3 and show(env3.session.hangups) == show({ "CALL_REJECTED" }),
    "no freeswitch API at all: an authenticated call is still refused", show(env3.session.hangups))
end

print("1.." .. count)
if failed > 0 then
  print(string.format("# %d of %d failed", failed, count))
  os.exit(1)
end
