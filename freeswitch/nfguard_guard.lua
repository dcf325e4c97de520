--[[
nfguard_guard.lua: the FreeSWITCH-side guard of nfguard (issue 14).

Runs as a dialplan application before any routing:
    <action application="lua" data="/usr/share/nfguard/freeswitch/nfguard_guard.lua"/>
and refuses, with the 403 a wrong password gets, a digest-authenticated call
whose sip_auth_username@sip_auth_realm is not bound to the call's network
address. TLS, WS and WSS are encrypted or masked on the wire, so the kernel
cannot judge them: this script does, from the bindings nfguard writes into
FreeSWITCH's hash store (realm "nfguard"), or, until nfguard has written
them, from FreeSWITCH's own registration table.

Addresses are compared as bytes (4 or 16), never as text, substrings or
patterns: 10.0.0.1 is not 10.0.0.12, and ::1 is 0:0:0:0:0:0:0:1.

Malformed input (a Lua error in mod_lua would let the call through, so
nothing here may raise; run() also catches what slips through):
- sip_auth_username absent or empty: not a digest-authenticated call, pass
  silently. Username present but sip_auth_realm absent/empty: judged with
  realm "" (never bound, so not_bound): FreeSWITCH sets both together, a
  lone username is not "unauthenticated".
- sip_network_ip empty, absent or not an address: verdict "malformed"
  (refused in enforce, an event in monitor). A call variable that cannot be
  read at all, or any Lua error while deciding: "malformed" too, in the
  mode known so far (enforce when unknown).
- IPv4: exactly four decimal octets, 0-255, leading zeros rejected (010 is
  octal to some parsers, decimal to others). IPv6: RFC 4291 text, "::",
  an embedded IPv4 tail, any case; "[...]" brackets are stripped (as
  Python's fsevents.normalize_ip does). A zone id ("fe80::1%eth0") is
  STRIPPED: the kernel's maps hold 16 bytes with no zone, and the daemon's
  canonical text keeps the zone, so both sides compare the bare address.
  ::ffff:a.b.c.d (in any spelling) is the IPv4 address a.b.c.d.
- meta present but garbled: nfguard's state is still "here" (meta is written
  last). Unknown or missing mode -> enforce; unknown transport names are
  ignored; no valid transport left -> the default set.
- trusted / b:<key> values: a bad entry (unparsable address, CIDR with host
  bits set or a zone, expiry not a decimal integer) is ignored, the others
  still count. Ignoring a trusted network or a binding fails closed.
- The hash API answering "-ERR ..." (mod_hash missing) is read as absent:
  no meta -> fallback to the registration table.
- Fallback: a registration matches only on exact (ASCII case-insensitive)
  user and realm and the same address bytes. FreeSWITCH 1.10.12 writes
  <sip-auth-user> URL-encoded (switch_url_encode), <sip-auth-realm> and
  <network-ip> raw (mod_sofia.c show_reg_callback_xml), so the call's user is
  encoded the same way before comparing; nothing is XML-unescaped, because
  FreeSWITCH escapes none of these three fields. A user containing '%' never
  matches there: switch_url_encode keeps an existing %XX, so "a%25zz" and
  "a%zz" print alike and the table cannot tell them apart. No profile name
  or an unknown profile: no registrations -> not_bound.
]]

local M = {}

local byte, char, sub, find, format = string.byte, string.char, string.sub, string.find, string.format
local concat = table.concat

M.REALM = "nfguard"
M.EVENT_SUBCLASS = "nfguard::guard"
M.KNOWN_TRANSPORTS = { udp = true, tcp = true, tls = true, ws = true, wss = true }
M.DEFAULT_TRANSPORTS = { tcp = true, tls = true, ws = true, wss = true }
M.ALL = "all"

-- ---------------------------------------------------------------- strings

-- Split on a literal separator (plain find: no pattern), keeping empty fields.
local function split(s, sep)
  local out, pos = {}, 1
  while true do
    local at = find(s, sep, pos, true)
    if not at then
      out[#out + 1] = sub(s, pos)
      return out
    end
    out[#out + 1] = sub(s, pos, at - 1)
    pos = at + #sep
  end
end
M.split = split

-- Trim ASCII blanks (space, tab, CR, LF): API answers end with a newline.
local function trim(s)
  local i, j = 1, #s
  while i <= j do
    local b = byte(s, i)
    if b ~= 32 and b ~= 9 and b ~= 10 and b ~= 13 then break end
    i = i + 1
  end
  while j >= i do
    local b = byte(s, j)
    if b ~= 32 and b ~= 9 and b ~= 10 and b ~= 13 then break end
    j = j - 1
  end
  return sub(s, i, j)
end
M.trim = trim

-- Lower-case ASCII A-Z only, byte by byte: string.lower follows the C locale
-- and could fold Latin-1 bytes; the kernel (registry.kernel_case) does not.
local function ascii_lower(s)
  local out = {}
  for i = 1, #s do
    local b = byte(s, i)
    if b >= 65 and b <= 90 then b = b + 32 end
    out[i] = char(b)
  end
  return concat(out)
end
M.ascii_lower = ascii_lower

local function is_digit(b) return b >= 48 and b <= 57 end

local function all_digits(s)
  if s == "" then return false end
  for i = 1, #s do
    if not is_digit(byte(s, i)) then return false end
  end
  return true
end

-- Unreserved bytes of enc(): [0-9a-z._~-].
local function enc_keeps(b)
  return is_digit(b) or (b >= 97 and b <= 122) or b == 46 or b == 95 or b == 126 or b == 45
end

-- enc(s) of the contract: ASCII lower-case, then every byte outside
-- [0-9a-z._~-] as %XX (upper-case hex). Must equal fsguard.cred_key's half.
function M.enc(s)
  local out = {}
  for i = 1, #s do
    local b = byte(s, i)
    if b >= 65 and b <= 90 then b = b + 32 end
    out[i] = enc_keeps(b) and char(b) or format("%%%02X", b)
  end
  return concat(out)
end

-- The hash key of a credential: b:<enc(user)>@<enc(realm)>.
function M.cred_key(user, realm)
  return "b:" .. M.enc(user) .. "@" .. M.enc(realm)
end

-- FreeSWITCH's SWITCH_URL_UNSAFE (switch_utils.h, 1.10.12).
local URL_UNSAFE = {}
for _, c in ipairs({ "\r", "\n", " ", "#", "%", "&", "+", ":", ";", "<", "=", ">", "?", "@",
                     "[", "\\", "]", "^", "`", "{", "|", "}", "\"" }) do
  URL_UNSAFE[byte(c)] = true
end

local function is_upper_hex(b)
  return b ~= nil and (is_digit(b) or (b >= 65 and b <= 70))
end

-- switch_url_encode() as FreeSWITCH 1.10.12 writes <sip-auth-user>: bytes
-- outside ' '..'~' and the unsafe ones as %XX, except that an existing %XX
-- (upper-case hex) is kept. Without its 2047-byte truncation: a truncated
-- value then simply never equals (fails closed).
function M.fs_url_encode(s)
  local out, n = {}, #s
  for i = 1, n do
    local b = byte(s, i)
    local escape_kept = b == 37 and n - i > 1
      and is_upper_hex(byte(s, i + 1)) and is_upper_hex(byte(s, i + 2))
    if not escape_kept and (b < 32 or b > 126 or URL_UNSAFE[b]) then
      out[i] = format("%%%02X", b)
    else
      out[i] = char(b)
    end
  end
  return concat(out)
end

-- For log lines only: the caller writes the user name, so no control bytes
-- (a forged line) and no unbounded length reach the console.
local function printable(s)
  if s == nil then return "-" end
  s = tostring(s)
  local out = {}
  for i = 1, math.min(#s, 128) do
    local b = byte(s, i)
    out[i] = (b < 32 or b == 127) and format("\\x%02X", b) or char(b)
  end
  if #s > 128 then out[#out + 1] = "..." end
  return concat(out)
end
M.printable = printable

-- -------------------------------------------------------------- addresses

-- Dotted quad -> 4 bytes; nil unless exactly a.b.c.d with 0-255 and no
-- leading zeros (Python's ipaddress rejects them too).
function M.parse_ipv4(s)
  local parts = split(s, ".")
  if #parts ~= 4 then return nil end
  local out = {}
  for i, p in ipairs(parts) do
    if #p < 1 or #p > 3 or not all_digits(p) then return nil end
    if #p > 1 and byte(p, 1) == 48 then return nil end
    local v = tonumber(p)
    if v > 255 then return nil end
    out[i] = char(v)
  end
  return concat(out)
end

-- One IPv6 group: 1 to 4 hex digits, any case.
local function hex_group(g)
  if #g < 1 or #g > 4 then return nil end
  local v = 0
  for i = 1, #g do
    local b = byte(g, i)
    local d
    if is_digit(b) then d = b - 48
    elseif b >= 97 and b <= 102 then d = b - 87
    elseif b >= 65 and b <= 70 then d = b - 55
    else return nil end
    v = v * 16 + d
  end
  return v
end

-- The 16-bit groups of one side of "::"; an IPv4 tail (two groups) only
-- as the very last field of the address.
local function v6_groups(part, v4_tail_allowed)
  if part == "" then return {} end
  local fields, out = split(part, ":"), {}
  for i, f in ipairs(fields) do
    if i == #fields and v4_tail_allowed and find(f, ".", 1, true) then
      local v4 = M.parse_ipv4(f)
      if not v4 then return nil end
      out[#out + 1] = byte(v4, 1) * 256 + byte(v4, 2)
      out[#out + 1] = byte(v4, 3) * 256 + byte(v4, 4)
    else
      local v = hex_group(f)
      if not v then return nil end
      out[#out + 1] = v
    end
  end
  return out
end

-- IPv6 text (no brackets, no zone) -> 16 bytes, or nil.
function M.parse_ipv6(s)
  local groups
  local gap = find(s, "::", 1, true)
  if gap then
    local head = v6_groups(sub(s, 1, gap - 1), false)
    local tail = v6_groups(sub(s, gap + 2), true)
    if not head or not tail then return nil end
    local missing = 8 - #head - #tail
    if missing < 1 then return nil end -- "::" stands for at least one group
    groups = head
    for _ = 1, missing do groups[#groups + 1] = 0 end
    for _, g in ipairs(tail) do groups[#groups + 1] = g end
  else
    groups = v6_groups(s, true)
    if not groups or #groups ~= 8 then return nil end
  end
  local out = {}
  for i, g in ipairs(groups) do
    out[2 * i - 1] = char(math.floor(g / 256))
    out[2 * i] = char(g % 256)
  end
  return concat(out)
end

local MAPPED_PREFIX = string.rep("\0", 10) .. "\255\255"

-- ::ffff:a.b.c.d is the IPv4 address: the same phone over a dual-stack
-- socket must not count as a second address.
local function unmap(addr)
  if #addr == 16 and sub(addr, 1, 12) == MAPPED_PREFIX then return sub(addr, 13) end
  return addr
end

-- An address as FreeSWITCH or nfguard prints it -> 4 or 16 bytes, or nil.
-- Brackets are stripped; a zone id is stripped (see the top of the file).
function M.parse_ip(text)
  if type(text) ~= "string" then return nil end
  local s = trim(text)
  if #s >= 2 and byte(s, 1) == 91 and byte(s, #s) == 93 then s = sub(s, 2, -2) end
  local is_v6 = find(s, ":", 1, true) ~= nil
  local zone = find(s, "%", 1, true)
  if zone then
    if not is_v6 or zone == #s then return nil end
    s = sub(s, 1, zone - 1)
  end
  local addr
  if is_v6 then addr = M.parse_ipv6(s) else addr = M.parse_ipv4(s) end
  return addr and unmap(addr)
end

-- The host bits of addr past the first bits are all zero.
local function host_bits_clear(addr, bits)
  local full, rem = math.floor(bits / 8), bits % 8
  for i = full + 1, #addr do
    local b = byte(addr, i)
    if i == full + 1 and rem > 0 then b = b % 2 ^ (8 - rem) end
    if b ~= 0 then return false end
  end
  return true
end

-- "net/bits" -> {addr = bytes, bits = n}, or nil. Canonical only: no zone,
-- no host bits set, decimal prefix length without leading zeros. A network
-- inside ::ffff:0:0/96 becomes the IPv4 network (as addresses do).
function M.parse_cidr(text)
  if type(text) ~= "string" then return nil end
  local s = trim(text)
  local slash = find(s, "/", 1, true)
  if not slash then return nil end
  local addr_text, bits_text = sub(s, 1, slash - 1), sub(s, slash + 1)
  if find(addr_text, "%", 1, true) then return nil end
  if not all_digits(bits_text) or (#bits_text > 1 and byte(bits_text, 1) == 48) or #bits_text > 3 then
    return nil
  end
  local addr
  if find(addr_text, ":", 1, true) then addr = M.parse_ipv6(addr_text) else addr = M.parse_ipv4(addr_text) end
  if not addr then return nil end
  local bits = tonumber(bits_text)
  if bits > #addr * 8 or not host_bits_clear(addr, bits) then return nil end
  if #addr == 16 and bits >= 96 and sub(addr, 1, 12) == MAPPED_PREFIX then
    addr, bits = sub(addr, 13), bits - 96
  end
  return { addr = addr, bits = bits }
end

-- addr (bytes) lies in net: same family and the first net.bits bits equal.
function M.in_network(addr, net)
  if #addr ~= #net.addr then return false end
  local full, rem = math.floor(net.bits / 8), net.bits % 8
  if sub(addr, 1, full) ~= sub(net.addr, 1, full) then return false end
  if rem == 0 then return true end
  local unit = 2 ^ (8 - rem)
  return math.floor(byte(addr, full + 1) / unit) == math.floor(byte(net.addr, full + 1) / unit)
end

-- ------------------------------------------------------- hash store values

-- The hash store entry, or nil when absent. mod_hash answers "" for a
-- missing key; "-ERR ..." (e.g. mod_hash not loaded) counts as absent.
function M.hash_get(api, key)
  local out = api:execute("hash", "select/" .. M.REALM .. "/" .. key)
  if type(out) ~= "string" then return nil end
  out = trim(out)
  if out == "" or sub(out, 1, 4) == "-ERR" then return nil end
  return out
end

-- A transports list -> set of names, or M.ALL. Unknown names are ignored;
-- nothing left (or nil) -> the default set.
function M.parse_transports(text)
  if text == nil then return M.DEFAULT_TRANSPORTS end
  text = ascii_lower(trim(text))
  if text == "all" then return M.ALL end
  local set, any = {}, false
  for _, name in ipairs(split(text, ",")) do
    name = trim(name)
    if M.KNOWN_TRANSPORTS[name] then set[name], any = true, true end
  end
  return any and set or M.DEFAULT_TRANSPORTS
end

-- meta -> {mode, transports, at}. Garbage never raises: unknown or missing
-- mode is enforce, transports as parse_transports.
function M.parse_meta(text)
  local fields = {}
  for _, item in ipairs(split(text, ";")) do
    local eq = find(item, "=", 1, true)
    if eq then fields[trim(sub(item, 1, eq - 1))] = trim(sub(item, eq + 1)) end
  end
  local mode = fields.mode == "monitor" and "monitor" or "enforce"
  return { mode = mode, transports = M.parse_transports(fields.transports),
           at = all_digits(fields.at or "") and tonumber(fields.at) or nil,
           version = fields.v }
end

-- trusted -> list of networks ("-" or nil: none; bad entries ignored).
function M.parse_trusted(text)
  local nets = {}
  if text == nil or text == "-" then return nets end
  for _, item in ipairs(split(text, ",")) do
    local net = M.parse_cidr(item)
    if net then nets[#nets + 1] = net end
  end
  return nets
end

-- b:<key> value -> list of {addr, expiry}; bad entries ignored.
function M.parse_bindings(text)
  local out = {}
  if text == nil then return out end
  for _, item in ipairs(split(text, ",")) do
    local eq = find(item, "=", 1, true)
    if eq then
      local addr = M.parse_ip(sub(item, 1, eq - 1))
      local expiry = trim(sub(item, eq + 1))
      if addr and all_digits(expiry) and #expiry <= 15 then
        out[#out + 1] = { addr = addr, expiry = tonumber(expiry) }
      end
    end
  end
  return out
end

-- nil when src is bound (an entry with its bytes, not expired at now),
-- "expired" when it is listed only with past expiries, else "not_bound".
function M.judge_bindings(bindings, src, now)
  local listed = false
  for _, b in ipairs(bindings) do
    if b.addr == src then
      if b.expiry >= now then return nil end
      listed = true
    end
  end
  return listed and "expired" or "not_bound"
end

-- ------------------------------------------------- the registration table

-- Text of the first <name>...</name> in block, or nil.
local function element(block, name)
  local open, close = "<" .. name .. ">", "</" .. name .. ">"
  local s, e = find(block, open, 1, true)
  if not s then return nil end
  local c = find(block, close, e + 1, true)
  if not c then return nil end
  return sub(block, e + 1, c - 1)
end

-- `sofia xmlstatus profile <p> reg` -> list of {user, realm, ip} as
-- FreeSWITCH printed them (user URL-encoded, realm and ip raw).
function M.parse_registrations(xml)
  local regs, pos = {}, 1
  if type(xml) ~= "string" then return regs end
  while true do
    local s, e = find(xml, "<registration>", pos, true)
    if not s then break end
    local c = find(xml, "</registration>", e + 1, true)
    if not c then break end
    local block = sub(xml, e + 1, c - 1)
    local user, realm, ip = element(block, "sip-auth-user"), element(block, "sip-auth-realm"),
      element(block, "network-ip")
    if user and realm and ip then regs[#regs + 1] = { user = user, realm = realm, ip = ip } end
    pos = c + #"</registration>"
  end
  return regs
end

-- The call's user@realm is registered from src in regs: exact user (as
-- FreeSWITCH encodes it) and realm, ASCII case-insensitive; address bytes.
function M.registered(regs, user, realm, src)
  if find(user, "%", 1, true) then return false end -- ambiguous in the table, see the top
  local want_user, want_realm = ascii_lower(M.fs_url_encode(user)), ascii_lower(realm)
  for _, r in ipairs(regs) do
    if ascii_lower(r.user) == want_user and ascii_lower(r.realm) == want_realm
        and M.parse_ip(r.ip) == src then
      return true
    end
  end
  return false
end

-- ------------------------------------------------------------ the decision

-- The claimed transport (the caller's Via): a known name or "unknown".
function M.transport_of(via)
  if type(via) ~= "string" then return "unknown" end
  local t = ascii_lower(trim(via))
  return M.KNOWN_TRANSPORTS[t] and t or "unknown"
end

M.VARIABLES = { "sip_auth_username", "sip_auth_realm", "sip_network_ip", "sip_network_port",
                "sip_via_protocol", "sip_call_id", "sofia_profile_name" }

-- The call variables (strings or nil); vars.unreadable names each variable
-- whose read raised.
function M.read_vars(session)
  local vars, unreadable = {}, nil
  for _, name in ipairs(M.VARIABLES) do
    local ok, v = pcall(function() return session:getVariable(name) end)
    if not ok then
      unreadable = unreadable or {}
      unreadable[name] = true
    elseif type(v) == "string" then
      vars[name] = v
    end
  end
  vars.unreadable = unreadable
  return vars
end

-- Not a digest-authenticated call: sip_auth_username read and empty.
function M.unauthenticated(vars)
  local u = vars.unreadable
  return (vars.sip_auth_username or "") == "" and not (u and (u.all or u.sip_auth_username))
end

-- Decide for one call. ctx collects mode/state as they are learnt, so that
-- run() can still refuse in the right mode if this raises. Returns
-- {action = "pass"|"skip"|"verdict", verdict, mode, state, transport}.
function M.decide(vars, env, ctx)
  ctx = ctx or {}
  if M.unauthenticated(vars) then return { action = "pass", why = "unauthenticated" } end
  local user = vars.sip_auth_username or ""
  local realm = vars.sip_auth_realm or ""
  ctx.transport = M.transport_of(vars.sip_via_protocol)

  local meta_text = M.hash_get(env.api, "meta")
  local transports
  if meta_text then
    local meta = M.parse_meta(meta_text)
    ctx.state, ctx.mode, transports = "nfguard", meta.mode, meta.transports
  else
    local mode = env.global and env.global("nfguard_guard_fallback_mode")
    ctx.state, transports = "registrations", M.DEFAULT_TRANSPORTS
    ctx.mode = (type(mode) == "string" and ascii_lower(trim(mode)) == "monitor") and "monitor" or "enforce"
  end
  local function verdict(v)
    return { action = "verdict", verdict = v, mode = ctx.mode, state = ctx.state, transport = ctx.transport }
  end

  -- Monitor only: the caller's claim decides what is counted here (real UDP
  -- was counted by the kernel). Enforce judges every call whatever it claims.
  if ctx.mode == "monitor" and ctx.transport ~= "unknown" and transports ~= M.ALL
      and not transports[ctx.transport] then
    return { action = "skip", mode = ctx.mode, state = ctx.state, transport = ctx.transport }
  end
  if vars.unreadable then return verdict("malformed") end

  local src = M.parse_ip(vars.sip_network_ip)
  if not src then return verdict("malformed") end

  for _, net in ipairs(M.parse_trusted(M.hash_get(env.api, "trusted"))) do
    if M.in_network(src, net) then return { action = "pass", why = "trusted" } end
  end

  if ctx.state == "nfguard" then
    local bindings = M.parse_bindings(M.hash_get(env.api, M.cred_key(user, realm)))
    local v = M.judge_bindings(bindings, src, env.now())
    if v == nil then return { action = "pass", why = "bound" } end
    return verdict(v)
  end

  local profile = vars.sofia_profile_name or ""
  env.log("NOTICE", format("nfguard guard: no nfguard state in the hash store (no %s/meta); judging %s@%s "
    .. "from FreeSWITCH's registration table of profile %s (%s)", M.REALM, printable(user),
    printable(realm), printable(profile), ctx.mode))
  local regs = {}
  if profile ~= "" then
    regs = M.parse_registrations(env.api:execute("sofia", "xmlstatus profile " .. profile .. " reg"))
  end
  if M.registered(regs, user, realm, src) then return { action = "pass", why = "registered" } end
  return verdict("not_bound")
end

-- The event nfguard turns into its ALERT line.
function M.fire_event(env, vars, res, action)
  local e = env.event(M.EVENT_SUBCLASS)
  local headers = {
    { "nfguard-verdict", res.verdict },
    { "nfguard-action", action },
    { "nfguard-user", vars.sip_auth_username },
    { "nfguard-realm", vars.sip_auth_realm },
    { "nfguard-source-ip", vars.sip_network_ip },
    { "nfguard-source-port", vars.sip_network_port },
    { "nfguard-transport", res.transport },
    { "nfguard-state", res.state },
    { "nfguard-call-id", vars.sip_call_id },
    { "nfguard-profile", vars.sofia_profile_name },
  }
  for _, h in ipairs(headers) do e:addHeader(h[1], h[2] or "") end
  e:fire()
end

-- "ip:port" for a log line, "[v6]:port" when the address has colons.
local function endpoint(ip, port)
  ip = printable(ip)
  if find(ip, ":", 1, true) then ip = "[" .. ip .. "]" end
  return ip .. ":" .. printable(port)
end

-- Carry out a verdict: one log line and the event; in enforce 403 and hang up.
function M.act(session, env, vars, res)
  if res.action ~= "verdict" then return end
  local action = res.mode == "monitor" and "monitor" or "refused"
  env.log(action == "refused" and "WARNING" or "NOTICE",
    format("nfguard guard: %s %s@%s from %s over %s: %s (state %s, profile %s, call-id %s)%s",
      action == "refused" and "refused" or "monitor: would refuse",
      printable(vars.sip_auth_username), printable(vars.sip_auth_realm),
      endpoint(vars.sip_network_ip, vars.sip_network_port), res.transport, res.verdict, res.state,
      printable(vars.sofia_profile_name), printable(vars.sip_call_id),
      res.error and (" [error: " .. printable(res.error) .. "]") or ""))
  -- The refusal must not depend on the event or the 403 getting out.
  pcall(M.fire_event, env, vars, res, action)
  if action == "refused" then
    pcall(function() session:execute("respond", "403 Forbidden") end)
    pcall(function() session:hangup("CALL_REJECTED") end)
  end
end

-- The real FreeSWITCH around the logic (tests pass their own env).
function M.freeswitch_env()
  return {
    api = freeswitch.API(),
    now = os.time,
    log = function(level, msg) freeswitch.consoleLog(level, msg .. "\n") end,
    global = function(name) return freeswitch.getGlobalVariable(name) end,
    event = function(subclass) return freeswitch.Event("CUSTOM", subclass) end,
  }
end

-- Guard one call. Any error becomes a "malformed" verdict in the mode known
-- so far (enforce when none), never a pass.
function M.run(sess, env)
  local ok_vars, vars = pcall(M.read_vars, sess)
  if not ok_vars then vars = { unreadable = { all = true } } end
  if M.unauthenticated(vars) then return { action = "pass", why = "unauthenticated" } end
  local ctx = {}
  local ok, res = pcall(function()
    env = env or M.freeswitch_env()
    return M.decide(vars, env, ctx)
  end)
  if not ok then
    res = { action = "verdict", verdict = "malformed", mode = ctx.mode or "enforce",
            state = ctx.state or "nfguard", transport = ctx.transport or "unknown", error = tostring(res) }
  end
  local acted, err = false, nil
  if env then acted, err = pcall(M.act, sess, env, vars, res) end
  if not acted and res.action == "verdict" and res.mode ~= "monitor" then
    -- No FreeSWITCH API to log or fire through, or act() broke: still refuse.
    pcall(function() sess:execute("respond", "403 Forbidden") end)
    pcall(function() sess:hangup("CALL_REJECTED") end)
    if env then pcall(env.log, "WARNING", "nfguard guard: error while refusing: " .. printable(err)) end
  end
  return res
end

if session ~= nil and not NFGUARD_GUARD_TEST then
  M.run(session)
end

return M
