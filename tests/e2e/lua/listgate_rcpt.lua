-- Drive listgate with OpenDKIM's miltertest, the way Postfix would, and print what it
-- answered; tests/e2e/test_miltertest.py asserts on the printed RESULT lines.
--
--   miltertest -D port=PORT -D offer=6 -s listgate_rcpt.lua     (offer: 6 or 2)
--   miltertest -D sock=unix:/path/to/socket -D offer=6 -s listgate_rcpt.lua
--
-- Output: "RESULT key=value" lines, then "DONE"; on any error "ERROR <message>" and exit 2.
-- Replies are the SMFIR_* command letters ("c" continue, "y" reply code, "r" reject, ...).
--
-- Debian's miltertest (OpenDKIM 2.11.0~beta2) quirks handled here:
--  * uncaught Lua errors are not printed (exit status 1, no text): everything runs in xpcall;
--  * mt.negotiate(conn, version, PROTOCOL, ACTIONS): the third argument is the protocol-step
--    mask and the fourth the action mask, the reverse of what miltertest(8) documents
--    (checked by capturing the SMFIC_OPTNEG packet it sends);
--  * a step the milter negotiated away (SMFIP_NOCONNECT, ...) is a Lua error: test first;
--  * mt.getreply returns the reply command byte as a number (99.0 for 'c');
--  * macros are only sent when asked for with mt.macro (Postfix always sends them).

local OFFERS = {
  -- version, protocol steps, actions; "6" is exactly what Postfix 3.7 offers.
  ["6"] = { version = 6, protocol = 0x1FFFFF, actions = 0x1FF },
  -- SMFI_V2_PROT (NOCONNECT..NOEOH) and SMFI_V2_ACTS (ADDHDRS..QUARANTINE) from mfdef.h.
  ["2"] = { version = 2, protocol = 0x7F, actions = 0x3F },
}

local LIST = "list@example.org"
local MEMBER = "member@example.com"
local OUTSIDER = "outsider@example.net"

local offer_name = tostring(offer or "6")
local offer_spec = OFFERS[offer_name]
local socket_spec = sock or ("inet:" .. tostring(port) .. "@127.0.0.1")

local function result(key, value)
  print("RESULT " .. key .. "=" .. tostring(value))
end

local function letter(code)
  if code == nil then return "nil" end
  return string.char(math.tointeger(code))
end

local function mask(conn, test)
  local m = 0
  for bit = 0, 31 do
    if test(conn, 1 << bit) then m = m | (1 << bit) end
  end
  return m
end

-- Open a milter session up to (and including) HELO; returns the connection.
local function open_session()
  local conn = mt.connect(socket_spec, 20, 0.25)
  if conn == nil then error("mt.connect(" .. socket_spec .. ") failed") end
  local err = mt.negotiate(conn, offer_spec.version, offer_spec.protocol, offer_spec.actions)
  if err ~= nil then error("mt.negotiate: " .. err) end
  mt.macro(conn, SMFIC_CONNECT, "j", "mx.feas.test", "{daemon_name}", "mx.feas.test",
           "v", "Postfix 3.7.11", "_", "client.feas.test [127.0.0.1]")
  if not mt.test_option(conn, SMFIP_NOCONNECT) then
    err = mt.conninfo(conn, "client.feas.test", "127.0.0.1")
    if err ~= nil then error("mt.conninfo: " .. err) end
    if mt.getreply(conn) ~= SMFIR_CONTINUE then
      error("CONNECT answered " .. letter(mt.getreply(conn)))
    end
  end
  if not mt.test_option(conn, SMFIP_NOHELO) then
    err = mt.helo(conn, "client.feas.test")
    if err ~= nil then error("mt.helo: " .. err) end
    if mt.getreply(conn) ~= SMFIR_CONTINUE then
      error("HELO answered " .. letter(mt.getreply(conn)))
    end
  end
  return conn
end

-- One transaction: MAIL FROM then each RCPT; returns the RCPT replies as "c,y,c".
local function transaction(conn, sender, rcpts)
  local replies = {}
  mt.macro(conn, SMFIC_MAIL, "{mail_addr}", sender)
  if mt.test_option(conn, SMFIP_NOMAIL) then
    replies[#replies + 1] = "nomail"
  else
    local err = mt.mailfrom(conn, "<" .. sender .. ">")
    if err ~= nil then error("mt.mailfrom: " .. err) end
    local r = mt.getreply(conn)
    if r ~= SMFIR_CONTINUE then replies[#replies + 1] = "mail:" .. letter(r) end
  end
  for _, rcpt in ipairs(rcpts) do
    mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", rcpt)
    local err = mt.rcptto(conn, "<" .. rcpt .. ">")
    if err ~= nil then error("mt.rcptto: " .. err) end
    replies[#replies + 1] = letter(mt.getreply(conn))
  end
  return table.concat(replies, ",")
end

local function main()
  if offer_spec == nil then error("unknown offer " .. offer_name .. " (use 6 or 2)") end
  result("offer", string.format("%d/0x%x/0x%x", offer_spec.version, offer_spec.actions,
                                offer_spec.protocol))

  local conn = open_session()
  result("actions", string.format("0x%x", mask(conn, mt.test_action)))
  result("protocol", string.format("0x%x", mask(conn, mt.test_option)))
  result("member", transaction(conn, MEMBER, { LIST }))
  mt.disconnect(conn)

  conn = open_session()
  result("nonmember", transaction(conn, OUTSIDER, { LIST }))
  mt.disconnect(conn)

  conn = open_session()
  result("multi", transaction(conn, OUTSIDER,
                              { "alice@example.org", LIST, "bob@example.org" }))
  mt.disconnect(conn)

  -- Two transactions on one connection, separated by SMFIC_ABORT (what Postfix sends on
  -- RSET and after every message), in both orders.
  conn = open_session()
  local first = transaction(conn, OUTSIDER, { LIST })
  mt.abort(conn)
  result("abort_outsider_then_member", first .. "|" .. transaction(conn, MEMBER, { LIST }))
  mt.disconnect(conn)

  conn = open_session()
  first = transaction(conn, MEMBER, { LIST })
  mt.abort(conn)
  result("abort_member_then_outsider", first .. "|" .. transaction(conn, OUTSIDER, { LIST }))
  mt.disconnect(conn)
  print("DONE")
end

local ok, err = xpcall(main, debug.traceback)
if not ok then
  print("ERROR " .. tostring(err))
  os.exit(2)
end
